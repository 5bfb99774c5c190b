"""Development tooling, never imported by the runtime (``cli`` imports ``demo`` only
inside its ``demo`` command): the embedded moto server (``moto``), LocalStack
(``localstack``), the seed flows both deploy (``flows``), their executions
(``executions``), the one AWS environment override list (``env``), the demo
(``demo`` → ``demo_plan`` / ``demo_run`` / ``demo_report``) and the settings reference
(``settings_doc``)."""
