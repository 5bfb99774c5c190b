"""docker-compose.yml cannot run here (no Docker): check that it parses and only sets
settings that exist, with values the settings model accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from broker import BrokerSettings, load_settings

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
fields = BrokerSettings.model_fields


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_the_broker_service_sets_only_real_settings_with_valid_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    environment = _compose()["services"]["broker"]["environment"]
    broker_vars = {k: v for k, v in environment.items() if k.startswith("BROKER_")}
    assert {"BROKER_QUEUES", "BROKER_ACTIVITIES"} <= broker_vars.keys()
    # The environment source ignores unknown BROKER_* names: check them by name.
    unknown = [n for n in broker_vars if n.removeprefix("BROKER_").lower() not in fields]
    assert unknown == []
    for name, value in environment.items():
        monkeypatch.setenv(name, str(value))
    settings = load_settings()  # raises ConfigError naming any unknown or invalid one
    assert settings.aws_endpoint_url == "http://localstack:4566"
    assert [a.name for a in settings.activities] == ["verify-activity"]
    assert settings.activities[0].create_if_missing


def test_localstack_runs_the_services_make_localstack_runs() -> None:
    environment = _compose()["services"]["localstack"]["environment"]
    script = (ROOT / "scripts" / "localstack.sh").read_text()
    assert f'SERVICES="{environment["SERVICES"]}"' in script
    assert environment["DISABLE_EVENTS"] == "1"
    assert "DISABLE_EVENTS=1" in script
