"""The deploy examples (deploy/**) and the operating guide agree with the code.

Names are read from the code wherever it can be asked: settings from
``BrokerSettings.model_fields``, metric families and their types from the broker's own
``/metrics`` exposition, AWS calls from the ``SqsApi``/``SfnApi`` protocols, outcomes
and dead-letter reasons from their enums.  The few facts the code cannot give (AWS
quotas, the contract of issue 6) are constants here, each checked against the code
where the code has a counterpart.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import botocore.session
import pytest
import yaml
from botocore.validate import ParamValidator
from pydantic import AliasChoices

from broker import BrokerSettings, Outcome, build_router
from broker.activities.processor import _SHUTDOWN_FAIL_TIMEOUT_S
from broker.aws.protocols import DynamoApi, SfnApi, SqsApi
from broker.aws.startup import _STARTUP_LAST_TRY_S
from broker.core.settings import ENV_PREFIX
from broker.core.settings_sources import RETIRED_VARIABLES
from broker.observability.metrics import (
    METRIC_NAMES,
    STANDARD_METRIC_NAMES,
    BrokerGauges,
    MetricsCollector,
    render_metrics,
)
from broker.observability.stats import Stats
from broker.service import _FLUSH_TIMEOUT_S
from broker.sqs.consumer import _RELEASE_TIMEOUT_S
from broker.sqs.envelope import PoisonReason
from tests.cli import clean_env, run_cli

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
K8S_DEPLOYMENT: Final = DEPLOY / "kubernetes" / "deployment.yaml"
K8S_KEDA: Final = DEPLOY / "kubernetes" / "keda-scaledobject.yaml"
K8S_DECISIONS: Final = DEPLOY / "kubernetes" / "decisions.yaml"
ECS_TASK: Final = DEPLOY / "ecs" / "task-definition.json"
ECS_SERVICE: Final = DEPLOY / "ecs" / "service.json"
ECS_TARGET_GROUP: Final = DEPLOY / "ecs" / "decisions-target-group.json"
ECS_TARGET_GROUP_ATTRIBUTES: Final = DEPLOY / "ecs" / "decisions-target-group-attributes.json"
ECS_LISTENER_RULE: Final = DEPLOY / "ecs" / "decisions-listener-rule.json"
IAM_POLICY: Final = DEPLOY / "iam" / "broker-policy.json"
DASHBOARD: Final = DEPLOY / "grafana" / "broker-dashboard.json"
IDEMPOTENCY_TABLE: Final = DEPLOY / "idempotency" / "table.cfn.yaml"
DEPLOY_README: Final = DEPLOY / "README.md"
OPERATIONS: Final = ROOT / "docs" / "operations.md"
EXAMPLES: Final = (
    K8S_DEPLOYMENT,
    K8S_KEDA,
    K8S_DECISIONS,
    ECS_TASK,
    ECS_SERVICE,
    ECS_TARGET_GROUP,
    ECS_TARGET_GROUP_ATTRIBUTES,
    ECS_LISTENER_RULE,
    IAM_POLICY,
    DASHBOARD,
    IDEMPOTENCY_TABLE,
)

#: The metrics of issue 6's contract, with their Prometheus types.
CONTRACT_METRICS: Final = {
    "broker_messages_received_total": "counter",
    "broker_messages_total": "counter",
    "broker_handler_duration_seconds": "histogram",
    "broker_aws_call_duration_seconds": "histogram",
    "broker_aws_poll_duration_seconds": "histogram",
    "broker_aws_call_errors_total": "counter",
    "broker_throttles_total": "counter",
    "broker_handlers_in_flight": "gauge",
    "broker_free_slots": "gauge",
    "broker_delete_batch_size": "histogram",
    "broker_heartbeats_total": "counter",
    "broker_decisions_total": "counter",
    "broker_event_loop_lag_seconds": "gauge",
    "broker_completion_rate_allowed": "gauge",
    "broker_ready": "gauge",
    "broker_draining": "gauge",
    "broker_build_info": "gauge",
    # prometheus_client's process and platform collectors (Linux).
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "python_info": "gauge",
}

#: The IAM actions of issue 6's contract (the policy may hold optional ones besides).
CONTRACT_ACTIONS: Final = frozenset(
    {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueUrl",
        "sqs:GetQueueAttributes",
        "sqs:SendMessage",
        "states:SendTaskSuccess",
        "states:SendTaskFailure",
        "states:SendTaskHeartbeat",
        "states:GetActivityTask",
    }
)
#: Actions IAM only grants on ``"Resource": "*"`` (no resource-level permissions).
UNSCOPED_ACTIONS: Final = frozenset(
    {
        "states:SendTaskSuccess",
        "states:SendTaskFailure",
        "states:SendTaskHeartbeat",
        "states:ListActivities",
        "sns:ListTopics",
    }
)
#: SendTask* refill per account and region in the large regions (design brief; soft quota).
SFN_REFILL_PER_S: Final = 500
SFN_BURST: Final = 3000
#: Fargate's largest container stopTimeout.
ECS_MAX_STOP_TIMEOUT_S: Final = 120
#: After the grace period the broker hands cut-off messages back and fails cut-off
#: activity tasks (side by side), then flushes its deletes.
DRAIN_TAIL_S: Final = max(_RELEASE_TIMEOUT_S, _SHUTDOWN_FAIL_TIMEOUT_S) + _FLUSH_TIMEOUT_S


# -- reading the examples


def k8s_docs(path: Path = K8S_DEPLOYMENT) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_object(kind: str, path: Path = K8S_DEPLOYMENT) -> dict[str, Any]:
    found = [doc for doc in k8s_docs(path) if doc.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def k8s_pod() -> dict[str, Any]:
    spec: dict[str, Any] = k8s_object("Deployment")["spec"]["template"]["spec"]
    return spec


def k8s_container() -> dict[str, Any]:
    containers = k8s_pod()["containers"]
    assert [c["name"] for c in containers] == ["broker"]
    container: dict[str, Any] = containers[0]
    return container


def k8s_env() -> dict[str, str]:
    """The environment the broker container gets: its ConfigMaps, then its own ``env``."""
    configmaps = {
        doc["metadata"]["name"]: doc.get("data", {})
        for doc in k8s_docs()
        if doc.get("kind") == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in k8s_container().get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"envFrom names ConfigMap {name!r}, not in the file"
        env.update(configmaps[name])
    env.update({e["name"]: e["value"] for e in k8s_container().get("env", []) if "value" in e})
    return env


def ecs_container() -> dict[str, Any]:
    containers = json.loads(ECS_TASK.read_text())["containerDefinitions"]
    assert [c["name"] for c in containers] == ["broker"]
    container: dict[str, Any] = containers[0]
    return container


def ecs_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in ecs_container()["environment"]}


ENVIRONMENTS: Final = {"kubernetes": k8s_env, "ecs": ecs_env}


def setting_env_names() -> set[str]:
    """Every environment variable the settings read (prefixed names and the AWS aliases)."""
    names: set[str] = set()
    for field_name, field in BrokerSettings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(ENV_PREFIX + field_name.upper())
    return names


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting leaks in from the environment running the tests."""
    for name in setting_env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def settings_of(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> BrokerSettings:
    """The settings a container of the image gets with ``env``: the image's ENV below it."""
    for name, value in {**image_env(), **env}.items():
        monkeypatch.setenv(name, value)
    return BrokerSettings(_env_file=None)  # type: ignore[call-arg]


@pytest.fixture(params=sorted(ENVIRONMENTS))
def example(
    request: pytest.FixtureRequest, clean_environ: pytest.MonkeyPatch
) -> tuple[str, BrokerSettings]:
    name: str = request.param
    return name, settings_of(ENVIRONMENTS[name](), clean_environ)


def exposed_metric_types() -> dict[str, str]:
    """Family name → type, from the broker's own exposition (every family, even empty)."""
    collector = MetricsCollector(
        Stats(),
        BrokerGauges(in_flight=dict, free_slots=dict, ready=lambda: False, draining=lambda: False),
    )
    text = render_metrics(collector).decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.MULTILINE))


def sample_names() -> set[str]:
    """Names a PromQL expression may use: each family, and a histogram's series."""
    names = set()
    for family, kind in exposed_metric_types().items():
        names.add(family)
        if kind == "histogram":
            names.update(f"{family}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


def metrics_in(promql: str) -> set[str]:
    return set(re.findall(r"\bbroker_[a-z0-9_]+\b", promql))


def dashboard_exprs() -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    dashboard = json.loads(DASHBOARD.read_text())
    walk(dashboard["panels"])
    exprs.extend(v["definition"] for v in dashboard["templating"]["list"] if "definition" in v)
    return exprs


def port_of(port: int | str, container: dict[str, Any]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"port {port!r} is not a named port of the container"
    return int(named[port])


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, arguments = line.partition(" ")
            pairs.append((instruction.upper(), arguments.strip()))
    return pairs


def image_env() -> dict[str, str]:
    """The settings the image's ``ENV`` lines set (its last stage: the one that runs)."""
    instructions = dockerfile_instructions()
    last_from = max(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    env: dict[str, str] = {}
    for instruction, args in instructions[last_from:]:
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args) if "=" in word)  # type: ignore[misc]
    return {name: value for name, value in env.items() if name in setting_env_names()}


def dockerfile_user() -> str:
    users = [args for instruction, args in dockerfile_instructions() if instruction == "USER"]
    assert users, "the Dockerfile sets no USER"
    return users[-1]


# -- every file


def test_every_example_exists_and_parses() -> None:
    found = sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})
    assert found == sorted(EXAMPLES)
    for path in found:
        docs = k8s_docs(path) if path.suffix != ".json" else [json.loads(path.read_text())]
        assert docs, f"{path} is empty"
        assert all(isinstance(doc, dict) for doc in docs), path


def test_the_deploy_readme_explains_every_file() -> None:
    readme = DEPLOY_README.read_text()
    for path in EXAMPLES:
        assert str(path.relative_to(DEPLOY)) in readme, f"deploy/README.md: {path.name}"


def test_every_broker_variable_mentioned_is_a_setting() -> None:
    known = setting_env_names()
    for path in (*EXAMPLES, DEPLOY_README, OPERATIONS, ROOT / "Dockerfile"):
        mentioned = set(re.findall(r"\bBROKER_[A-Z0-9]+(?:_[A-Z0-9]+)*\b", path.read_text()))
        # operations.md names the retired variables that start-up refuses, and why.
        allowed = known | (set(RETIRED_VARIABLES) if path == OPERATIONS else set())
        unknown = mentioned - allowed
        assert not unknown, f"{path.relative_to(ROOT)}: not settings: {sorted(unknown)}"


@pytest.mark.parametrize("platform", sorted(ENVIRONMENTS))
def test_every_variable_set_is_a_setting(platform: str) -> None:
    env = ENVIRONMENTS[platform]()
    assert env, f"{platform}: no environment found"
    assert set(env) <= setting_env_names(), sorted(set(env) - setting_env_names())


def test_the_example_settings_load_and_their_handlers_register(
    example: tuple[str, BrokerSettings],
) -> None:
    platform, settings = example
    assert settings.queues, platform
    assert settings.log_format == "json", f"{platform}: containers log JSON lines"
    router = build_router(settings)
    assert len(router) > 0, f"{platform}: BROKER_HANDLERS registers no handler"


def test_both_platforms_run_the_same_settings(clean_environ: pytest.MonkeyPatch) -> None:
    assert set(k8s_env()) == set(ecs_env())
    assert settings_of(k8s_env(), clean_environ) == settings_of(ecs_env(), clean_environ)


# -- ports, probes, stop timeouts, user


def test_kubernetes_ports_and_probes_match_broker_http_port(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    port = settings_of(k8s_env(), clean_environ).http_port
    assert port, "the example must keep the HTTP server on"
    container = k8s_container()
    assert port_of("http", container) == port
    probes = {
        # /livez is 200 while starting: a startup probe on it would pass at once.
        "startupProbe": "/readyz",
        "livenessProbe": "/livez",
        "readinessProbe": "/readyz",
    }
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert port_of(get["port"], container) == port, probe
    annotations = k8s_object("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    for service_port in k8s_object("Service")["spec"]["ports"]:
        assert port_of(service_port["targetPort"], container) == port


def test_the_startup_probe_outlasts_the_brokers_own_startup_bound(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    """A lookup that fails for good must end the start with the broker's own message
    (exit 1), not with a kill by the startup probe while it is still retrying."""
    settings = settings_of(k8s_env(), clean_environ)
    probe = k8s_container()["startupProbe"]
    window_s = probe["periodSeconds"] * probe["failureThreshold"]
    assert window_s > settings.startup_timeout_s + _STARTUP_LAST_TRY_S, window_s
    text = K8S_DEPLOYMENT.read_text()
    comment = text[
        text.index("startupProbe:") : text.index("httpGet:", text.index("startupProbe:"))
    ]
    assert f"{window_s:.0f} s" in comment, "the comment gives the probe's window"


def test_ecs_ports_and_labels_match_broker_http_port(clean_environ: pytest.MonkeyPatch) -> None:
    port = settings_of(ecs_env(), clean_environ).http_port
    assert port, "the example must keep the HTTP server on"
    container = ecs_container()
    ports = {m["name"]: m["containerPort"] for m in container["portMappings"]}
    # The decision listener's mapping is checked in test_deploy_decisions.py.
    assert ports.pop("http") == port
    assert set(ports) <= {"decisions"}, ports
    labels = container["dockerLabels"]
    assert labels["ECS_PROMETHEUS_EXPORTER_PORT"] == str(port)
    assert labels["ECS_PROMETHEUS_METRICS_PATH"] == "/metrics"


def test_the_orchestrators_wait_for_the_drain(clean_environ: pytest.MonkeyPatch) -> None:
    k8s_grace = settings_of(k8s_env(), clean_environ).shutdown_grace_s
    pod_grace = k8s_pod()["terminationGracePeriodSeconds"]
    assert pod_grace > k8s_grace + DRAIN_TAIL_S, (pod_grace, k8s_grace)

    ecs_grace = settings_of(ecs_env(), clean_environ).shutdown_grace_s
    stop_timeout = ecs_container()["stopTimeout"]
    assert ecs_grace + DRAIN_TAIL_S < stop_timeout <= ECS_MAX_STOP_TIMEOUT_S


def compose_stop_grace_s() -> int:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    period = compose["services"]["broker"]["stop_grace_period"]
    match = re.fullmatch(r"(\d+)s", period)
    assert match, period
    return int(match.group(1))


def test_every_stop_timeout_is_the_same_and_covers_the_drain(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    stop_s = {
        "kubernetes": k8s_pod()["terminationGracePeriodSeconds"],
        "ecs": ecs_container()["stopTimeout"],
        "compose": compose_stop_grace_s(),
    }
    assert len(set(stop_s.values())) == 1, stop_s
    compose_env = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["broker"][
        "environment"
    ]
    grace_s = float(compose_env[f"{ENV_PREFIX}SHUTDOWN_GRACE_S"])
    assert stop_s["compose"] > grace_s + DRAIN_TAIL_S


def test_the_docs_give_the_stop_timeout_deploy_uses() -> None:
    # activities.md, architecture.md and operations.md once disagreed (30 s vs 45 s).
    stop_s = k8s_pod()["terminationGracePeriodSeconds"]
    for doc in ("activities.md", "architecture.md", "operations.md"):
        text = (ROOT / "docs" / doc).read_text()
        text = re.sub(r"\s+", " ", text)  # a figure and its words may be wrapped apart
        mentions = re.findall(r"(\d+) s\)? (?:stop timeout|`stopTimeout`)", text)
        mentions += re.findall(r"`terminationGracePeriodSeconds: (\d+)`", text)
        mentions += re.findall(r"`stop_grace_period: (\d+)s`", text)
        assert mentions, doc
        assert {int(m) for m in mentions} == {stop_s}, (doc, mentions)


def test_without_a_setting_the_default_grace_is_what_must_fit(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    env = {k: v for k, v in k8s_env().items() if k != f"{ENV_PREFIX}SHUTDOWN_GRACE_S"}
    default = BrokerSettings.model_fields["shutdown_grace_s"].default
    assert settings_of(env, clean_environ).shutdown_grace_s == default
    assert k8s_pod()["terminationGracePeriodSeconds"] > default + DRAIN_TAIL_S


def test_the_container_runs_as_the_dockerfile_user() -> None:
    uid = dockerfile_user()
    assert uid == "10001"
    assert any(
        instruction == "RUN" and f"--uid {uid}" in args
        for instruction, args in dockerfile_instructions()
    )

    pod, container = k8s_pod(), k8s_container()
    for context in (pod["securityContext"], container["securityContext"]):
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == int(uid)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "command" not in container, "the image's ENTRYPOINT/CMD run the broker"

    ecs = ecs_container()
    assert ecs["user"] == uid
    assert ecs["readonlyRootFilesystem"] is True
    assert ecs["linuxParameters"]["capabilities"]["drop"] == ["ALL"]


def test_the_image_and_ecs_run_the_same_health_check() -> None:
    checks = [
        args for instruction, args in dockerfile_instructions() if instruction == "HEALTHCHECK"
    ]
    assert len(checks) == 1, "the Dockerfile should have one HEALTHCHECK"
    image_command = json.loads(checks[0].split(" CMD ", 1)[1])
    assert ["CMD", *image_command] == ecs_container()["healthCheck"]["command"]


def test_the_task_definition_is_what_register_task_definition_accepts() -> None:
    """Checked against botocore's ECS model: a misspelt or misplaced key is an error."""
    ecs = botocore.session.get_session().get_service_model("ecs")
    shape = ecs.operation_model("RegisterTaskDefinition").input_shape
    assert shape is not None
    report = ParamValidator().validate(json.loads(ECS_TASK.read_text()), shape)
    assert not report.has_errors(), report.generate_report()


def test_the_ecs_health_check_is_the_broker_healthcheck_command() -> None:
    container = ecs_container()
    command = container["healthCheck"]["command"]
    assert command == ["CMD", "broker", "healthcheck"]
    envs = [args for instruction, args in dockerfile_instructions() if instruction == "ENV"]
    assert any("/opt/broker/bin" in args for args in envs), "broker must be on PATH"
    answer = run_cli(*command[2:], "--help", env=clean_env(), cwd=ROOT)
    assert answer.returncode == 0, answer.stderr
    assert container["logConfiguration"]["logDriver"] == "awslogs"


# -- KEDA


def test_keda_scales_the_deployment_on_every_queue_sized_by_its_concurrency(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(k8s_env(), clean_environ)
    scaled = k8s_object("ScaledObject", K8S_KEDA)
    auth = k8s_object("TriggerAuthentication", K8S_KEDA)
    assert scaled["spec"]["scaleTargetRef"]["name"] == k8s_object("Deployment")["metadata"]["name"]
    assert auth["spec"]["podIdentity"]["provider"] == "aws"

    targets: dict[str, int] = {}
    for trigger in scaled["spec"]["triggers"]:
        assert trigger["type"] == "aws-sqs-queue"
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        queue = trigger["metadata"]["queueURL"].rsplit("/", 1)[-1]
        targets[queue] = int(trigger["metadata"]["queueLength"])
    expected = {q.name: q.concurrency or settings.concurrency for q in settings.queues}
    assert targets == expected


def test_keda_scale_in_is_paced_by_the_hpa_not_by_a_cooldown_it_ignores() -> None:
    """cooldownPeriod applies only to scaling to zero: with minReplicaCount 1 or more it
    does nothing, so it must not be there to look as if it slowed scale-in."""
    spec = k8s_object("ScaledObject", K8S_KEDA)["spec"]
    assert spec["minReplicaCount"] >= 1
    assert "cooldownPeriod" not in spec
    scale_down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert scale_down["stabilizationWindowSeconds"] >= 300
    assert [p["value"] for p in scale_down["policies"] if p["type"] == "Pods"] == [1]


def test_the_fleet_stays_inside_the_step_functions_quota(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(k8s_env(), clean_environ)
    replicas = k8s_object("ScaledObject", K8S_KEDA)["spec"]["maxReplicaCount"]
    rate = settings.completion_rate_per_s
    assert rate is not None, "shared quota: cap each replica (BROKER_COMPLETION_RATE_PER_S)"
    assert replicas * rate <= SFN_REFILL_PER_S
    assert replicas * (settings.completion_burst or rate) <= SFN_BURST


# -- metrics


def test_the_contract_metrics_are_what_the_broker_exposes() -> None:
    exposed = exposed_metric_types()
    assert exposed == CONTRACT_METRICS
    assert set(METRIC_NAMES) | set(STANDARD_METRIC_NAMES) == set(exposed)


def test_every_dashboard_expression_uses_exposed_metrics_only() -> None:
    exprs = dashboard_exprs()
    assert exprs
    known = sample_names()
    used: set[str] = set()
    for expr in exprs:
        metrics = metrics_in(expr)
        assert metrics, f"no broker metric in {expr!r}"
        assert metrics <= known, f"unknown metric in {expr!r}: {sorted(metrics - known)}"
        used |= metrics
    families = {m if m in METRIC_NAMES else re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    missing = set(METRIC_NAMES) - families
    assert not missing, f"the dashboard shows nothing of {sorted(missing)}"


def test_dashboard_outcome_labels_are_outcomes() -> None:
    outcomes = {outcome.value for outcome in Outcome}
    for expr in dashboard_exprs():
        for values in re.findall(r'outcome=~?"([^"]*)"', expr):
            assert set(values.split("|")) <= outcomes, expr


# -- IAM


def iam_statements() -> list[dict[str, Any]]:
    statements: list[dict[str, Any]] = json.loads(IAM_POLICY.read_text())["Statement"]
    return statements


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def iam_action(api: str, method: str) -> str:
    operation = "".join(part.title() for part in method.split("_"))
    if api == "sqs":  # SQS authorizes a batch call as its single-message action
        operation = operation.removesuffix("Batch")
    return f"{api}:{operation}"


def calls_the_broker_makes() -> set[str]:
    actions: set[str] = set()
    for api, protocol in (("sqs", SqsApi), ("states", SfnApi), ("dynamodb", DynamoApi)):
        members = [name for name in vars(protocol) if not name.startswith("_")]
        assert members, protocol
        actions.update(iam_action(api, name) for name in members)
    return actions


def test_the_iam_policy_grants_every_call_and_no_wildcard_action() -> None:
    statements = iam_statements()
    sids = [s.get("Sid", "") for s in statements]
    assert all(re.fullmatch(r"[A-Za-z0-9]+", sid) for sid in sids), sids
    assert len(set(sids)) == len(sids)
    actions: set[str] = set()
    for statement in statements:
        assert statement["Effect"] == "Allow"
        statement_actions = as_list(statement["Action"])
        assert not [a for a in statement_actions if "*" in a], statement["Sid"]
        if "*" in as_list(statement["Resource"]):
            assert set(statement_actions) <= UNSCOPED_ACTIONS, statement["Sid"]
        actions.update(statement_actions)
    assert actions >= CONTRACT_ACTIONS, sorted(CONTRACT_ACTIONS - actions)
    assert calls_the_broker_makes() <= actions, sorted(calls_the_broker_makes() - actions)


def test_send_task_actions_are_granted_on_every_resource() -> None:
    # SendTask* take a token, not an ARN: a scoped statement is denied at run time.
    for statement in iam_statements():
        sent = set(as_list(statement["Action"])) & UNSCOPED_ACTIONS
        if sent:
            assert as_list(statement["Resource"]) == ["*"], statement["Sid"]


def test_the_iam_policy_covers_the_example_queues(clean_environ: pytest.MonkeyPatch) -> None:
    settings = settings_of(k8s_env(), clean_environ)

    def queues_granted(action: str) -> set[str]:
        granted = set()
        for statement in iam_statements():
            if action in as_list(statement["Action"]):
                for arn in as_list(statement["Resource"]):
                    assert re.fullmatch(r"arn:aws:sqs:REGION:ACCOUNT:[\w-]+", arn), arn
                    granted.add(arn.rsplit(":", 1)[-1])
        return granted

    sources = {q.name for q in settings.queues}
    dead_letters = {q.dead_letter_queue for q in settings.queues if q.dead_letter_queue}
    assert dead_letters
    for action in ("sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility"):
        assert sources <= queues_granted(action), action
    assert sources | dead_letters <= queues_granted("sqs:GetQueueUrl")
    assert dead_letters <= queues_granted("sqs:SendMessage")


# -- the operating guide


def test_the_operating_guide_explains_every_metric_outcome_and_reason() -> None:
    guide = OPERATIONS.read_text()
    for name in METRIC_NAMES:
        assert f"\n| `{name}` |" in guide, f"docs/operations.md: no table row for {name}"
    for outcome in Outcome:
        assert f"`{outcome.value}`" in guide, outcome
    errors = (ROOT / "docs" / "errors.md").read_text()
    reason_row = next(line for line in errors.splitlines() if line.startswith("| `broker.reason`"))
    reasons = set(re.findall(r"`(\w+)`", reason_row.split("|")[2]))
    assert {reason.value for reason in PoisonReason} <= reasons
    for reason in reasons:
        assert f"`{reason}`" in guide, reason


def test_the_operating_guide_links_resolve_and_its_alerts_use_exposed_metrics() -> None:
    guide = OPERATIONS.read_text()
    links = re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", guide)
    for link in ("settings.md", "errors.md"):
        assert link in links, link
    for link in links:
        assert (OPERATIONS.parent / link).exists(), link
    blocks = re.findall(r"```(?:promql|yaml)\n(.*?)```", guide, flags=re.DOTALL)
    queries = [m for block in blocks for m in metrics_in(block)]
    assert queries, "the guide gives no example alert"
    assert set(queries) <= sample_names(), sorted(set(queries) - sample_names())


# -- the image's steps, outside Docker


def build_context(dest: Path) -> None:
    """Copy what the Dockerfile's build stage COPYs, where it COPYs it."""
    for instruction, args in dockerfile_instructions():
        if instruction != "COPY" or "--from" in args:
            continue
        *sources, target = args.split()
        for source in sources:
            origin = ROOT / source
            where = dest / target if target not in (".", "./") else dest
            if origin.is_dir():
                shutil.copytree(
                    origin, where, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                where.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, where / origin.name)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.timeout(900)
def test_the_dockerfile_steps_install_a_working_broker(tmp_path: Path) -> None:
    """The image's RUN steps, run here: a fresh venv, the same pip install, the CLI works.

    Differences on purpose: the venv is under tmp_path instead of /opt/broker, pip's
    cache is used (``--no-cache-dir`` dropped) and Python is this interpreter.
    """
    instructions = dockerfile_instructions()
    workdir = next(args for instruction, args in instructions if instruction == "WORKDIR")
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    install = next(run for run in runs if "pip install" in run)
    install = re.sub(r"^(--\S+\s+)+", "", install)  # RUN --mount=... flags are Docker's
    assert "/opt/broker" in install, install
    assert "venv" in install, install

    context = tmp_path / "src"
    context.mkdir()
    build_context(context)
    assert workdir == "/src"
    venv = tmp_path / "opt-broker"
    command = (
        install.replace("/opt/broker", str(venv))
        .replace("--no-cache-dir", "")
        .replace("python -m venv", f"{sys.executable} -m venv")
    )
    environ = clean_env()
    environ.pop("VIRTUAL_ENV", None)
    environ["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    built = subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=context,
        env=environ,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    assert built.returncode == 0, f"{command}\n{built.stdout[-3000:]}\n{built.stderr[-3000:]}"
    # `pip install .` into a fresh venv warns of nothing deprecated (setuptools did, twice,
    # of `project.license` as a table).
    said = [
        line for line in (built.stdout + built.stderr).splitlines() if "deprecat" in line.lower()
    ]
    assert not said, "\n".join(said)

    # ENV PATH=/opt/broker/bin:$PATH, ENTRYPOINT ["broker"]: the command the image runs.
    environ["PATH"] = f"{venv / 'bin'}{os.pathsep}{environ.get('PATH', '')}"
    broker = shutil.which("broker", path=environ["PATH"])
    assert broker == str(venv / "bin" / "broker")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [broker, *args],
            cwd=tmp_path,
            env={**environ, **extra},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    for command_name in ("run", "check", "handlers", "healthcheck", "redrive"):
        assert command_name in helped.stdout

    listed = run("handlers", BROKER_HANDLERS='["handlers.seeds:router"]')
    assert listed.returncode == 0, listed.stderr
    assert "handlers.seeds" in listed.stdout, listed.stdout  # the image ships the seeds

    # HEALTHCHECK / ECS healthCheck: nothing listens on this port, so unhealthy (1).
    unhealthy = run("healthcheck", BROKER_HTTP_PORT=str(free_port()))
    assert unhealthy.returncode == 1, (unhealthy.stdout, unhealthy.stderr)
