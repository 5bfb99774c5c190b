"""Development tooling, never imported by the runtime: the embedded moto server,
LocalStack and the demo."""
