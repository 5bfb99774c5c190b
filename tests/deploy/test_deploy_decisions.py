"""The deploy examples expose the decision listener, and only it, to the public side.

Kubernetes: deploy/kubernetes/decisions.yaml (a Service for the container port
``decisions`` and an Ingress for ``/decisions/`` of the public host).  ECS: the service
puts only that port behind the ALB target group (deploy/ecs/service.json,
decisions-target-group.json, decisions-listener-rule.json).  Ports and paths are read
from the settings the examples load and from the links the code makes with them; the
keys come from a Secret / Secrets Manager, never from the plain settings.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.session
import pytest
from botocore.validate import ParamValidator

from broker import BrokerSettings, build_router
from broker.decisions.links import DecisionKeys, DecisionLink, LinkCodec, new_key
from tests.cli import clean_env
from tests.deploy.test_deploy import (
    ECS_LISTENER_RULE,
    ECS_SERVICE,
    ECS_TARGET_GROUP,
    ECS_TARGET_GROUP_ATTRIBUTES,
    K8S_DECISIONS,
    as_list,
    ecs_container,
    ecs_env,
    iam_statements,
    k8s_container,
    k8s_env,
    k8s_object,
    port_of,
    setting_env_names,
    settings_of,
)

KEYS = "BROKER_DECISION_KEYS"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No setting leaks in from the environment running the tests (as in test_deploy)."""
    for name in setting_env_names():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def k8s_settings(monkeypatch: pytest.MonkeyPatch) -> BrokerSettings:
    return settings_of(k8s_env(), monkeypatch)


def read(path: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def public_link(settings: BrokerSettings) -> str:
    """A link as the broker with these settings makes it (a fresh key, a dummy token)."""
    assert settings.decision_base_url, "the examples set BROKER_DECISION_BASE_URL"
    codec = LinkCodec(DecisionKeys.parse([new_key()]), settings.decision_base_url)
    return codec.make(DecisionLink(token="t" * 40, action="approve", expires_at=datetime.now(UTC)))


# -- the settings


def test_both_platforms_configure_the_decision_listener(clean_environ: pytest.MonkeyPatch) -> None:
    for env in (k8s_env(), ecs_env()):
        assert KEYS not in env, "the keys come from a Secret, not from the plain settings"
        settings = settings_of(env, clean_environ)
        assert settings.decision_port
        assert settings.decision_port != settings.http_port
        base = urlsplit(settings.decision_base_url or "")
        assert base.scheme == "https", "TLS ends in front of the broker: links are https"
        assert settings.decision_topic
        assert settings.decision_topic.startswith("arn:aws:sns:")
        # Coherent: a handler of the example makes links and publishes them, so the
        # listener, the keys and the topic serve something (and the topic is looked up).
        routes = list(build_router(settings))
        assert [r.message_type for r in routes if r.options.decisions], "no decisions=True"
        assert [r.message_type for r in routes if r.options.notify], "no notify=True"


def test_the_keys_come_from_a_kubernetes_secret_and_secrets_manager() -> None:
    k8s = {e["name"]: e for e in k8s_container().get("env", [])}
    ref = k8s[KEYS]["valueFrom"]["secretKeyRef"]
    assert ref["key"] == KEYS
    assert ref["name"]
    # The example's approval handler (decisions=True) cannot start without keys.
    assert not ref.get("optional", False)
    ecs = {s["name"]: s["valueFrom"] for s in ecs_container()["secrets"]}
    assert ecs[KEYS].startswith("arn:aws:secretsmanager:")


def test_a_secret_made_as_the_comments_say_loads(clean_environ: pytest.MonkeyPatch) -> None:
    """The value of the comment's ``kubectl create secret ... --from-literal=`` run by a
    shell with the broker on PATH: a list of keys the broker accepts."""
    comment = (K8S_DECISIONS.parent / "deployment.yaml").read_text()
    found = re.search(rf"--from-literal={KEYS}=(.+)$", comment, flags=re.MULTILINE)
    assert found, "deployment.yaml: the kubectl command for the keys' Secret"
    shell = subprocess.run(
        ["/bin/sh", "-c", f"printf %s {found.group(1)}"],
        env={**clean_env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    settings = settings_of({**k8s_env(), KEYS: shell.stdout}, clean_environ)
    assert len(settings.decision_keys) == 1
    DecisionKeys.parse([key.get_secret_value() for key in settings.decision_keys])


# -- Kubernetes


def test_kubernetes_routes_only_the_decision_port_and_path(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    settings = k8s_settings(clean_environ)
    container = k8s_container()
    assert port_of("decisions", container) == settings.decision_port

    service = k8s_object("Service", K8S_DECISIONS)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for service_port in service_ports.values():
        assert port_of(service_port["targetPort"], container) == settings.decision_port

    link = urlsplit(public_link(settings))
    ingress = k8s_object("Ingress", K8S_DECISIONS)
    tls_hosts = {host for tls in ingress["spec"]["tls"] for host in tls["hosts"]}
    paths = []
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] == link.hostname
        assert rule["host"] in tls_hosts, "TLS for every public host"
        for path in rule["http"]["paths"]:
            backend = path["backend"]["service"]
            assert backend["name"] == service["metadata"]["name"]
            assert backend["port"]["name"] in service_ports
            assert path["pathType"] == "Prefix"
            paths.append(path["path"])
    assert paths == ["/decisions/"]
    assert link.path.startswith(paths[0]), (link.path, paths)


def test_probes_and_metrics_stay_cluster_internal(clean_environ: pytest.MonkeyPatch) -> None:
    settings = k8s_settings(clean_environ)
    internal = k8s_object("Service")
    assert internal["spec"].get("type", "ClusterIP") == "ClusterIP"
    container = k8s_container()
    public = k8s_object("Service", K8S_DECISIONS)
    for service_port in public["spec"]["ports"]:
        assert port_of(service_port["targetPort"], container) != settings.http_port
    ingress = json.dumps(k8s_object("Ingress", K8S_DECISIONS)["spec"])
    assert internal["metadata"]["name"] + '"' not in ingress
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert port_of(container[probe]["httpGet"]["port"], container) == settings.http_port


# -- ECS and the ALB


@pytest.mark.parametrize(
    ("path", "service", "operation"),
    [
        (ECS_SERVICE, "ecs", "CreateService"),
        (ECS_TARGET_GROUP, "elbv2", "CreateTargetGroup"),
        (ECS_LISTENER_RULE, "elbv2", "CreateRule"),
    ],
)
def test_the_ecs_and_alb_examples_are_what_the_api_accepts(
    path: Any, service: str, operation: str
) -> None:
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    assert shape is not None
    report = ParamValidator().validate(read(path), shape)
    assert not report.has_errors(), report.generate_report()


def test_the_alb_forwards_only_decision_links_to_the_decision_port(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    settings = settings_of(ecs_env(), clean_environ)
    mappings = {m["name"]: m["containerPort"] for m in ecs_container()["portMappings"]}
    assert mappings["decisions"] == settings.decision_port

    balanced = read(ECS_SERVICE)["loadBalancers"]
    assert [(lb["containerName"], lb["containerPort"]) for lb in balanced] == [
        ("broker", settings.decision_port)
    ]
    target_group = read(ECS_TARGET_GROUP)
    assert target_group["Port"] == settings.decision_port
    assert target_group["TargetType"] == "ip", "awsvpc (Fargate) tasks register by IP"
    # Health from /livez on the internal port.  ECS replaces a task its load balancer
    # marks unhealthy, and /readyz is 503 after three failed receives: during an SQS or
    # IAM outage every task would be replaced (docs/operations.md, "Which check where").
    assert target_group["HealthCheckPort"] == str(settings.http_port)
    assert target_group["HealthCheckPath"] == "/livez"

    rule = read(ECS_LISTENER_RULE)
    forwards = [a for a in rule["Actions"] if a["Type"] == "forward"]
    assert [a["TargetGroupArn"] for a in forwards] == [lb["targetGroupArn"] for lb in balanced]
    assert balanced[0]["targetGroupArn"].split("/")[1] == target_group["Name"]
    conditions = {c["Field"]: c for c in rule["Conditions"]}
    link = urlsplit(public_link(settings))
    assert conditions["host-header"]["HostHeaderConfig"]["Values"] == [link.hostname]
    patterns = conditions["path-pattern"]["PathPatternConfig"]["Values"]
    assert patterns == ["/decisions/*"]
    assert link.path.startswith(patterns[0].removesuffix("*"))
    assert "HTTPS" in rule["ListenerArn"], "the rule belongs on the HTTPS listener"


def test_the_target_group_deregisters_within_the_drain(clean_environ: pytest.MonkeyPatch) -> None:
    """ECS deregisters a stopping task, waits the deregistration delay, then sends SIGTERM:
    ELB's default 300 s would add five minutes to every deploy and scale-in."""
    settings = settings_of(ecs_env(), clean_environ)
    attributes = read(ECS_TARGET_GROUP_ATTRIBUTES)
    assert attributes["TargetGroupArn"] == read(ECS_SERVICE)["loadBalancers"][0]["targetGroupArn"]
    values = {a["Key"]: a["Value"] for a in attributes["Attributes"]}
    delay_s = int(values["deregistration_delay.timeout_seconds"])
    # As long as the broker gives work in flight after SIGTERM; a decision is one short call.
    assert delay_s == settings.shutdown_grace_s
    assert delay_s < ecs_container()["stopTimeout"]
    model = botocore.session.get_session().get_service_model("elbv2")
    shape = model.operation_model("ModifyTargetGroupAttributes").input_shape
    assert shape is not None
    report = ParamValidator().validate(attributes, shape)
    assert not report.has_errors(), report.generate_report()


# -- IAM


def test_the_policy_lets_the_broker_check_and_publish_to_the_topic(
    clean_environ: pytest.MonkeyPatch,
) -> None:
    topic = k8s_settings(clean_environ).decision_topic
    granted: set[str] = set()
    for statement in iam_statements():
        if topic in as_list(statement["Resource"]):
            granted.update(as_list(statement["Action"]))
    assert granted == {"sns:Publish", "sns:GetTopicAttributes"}
