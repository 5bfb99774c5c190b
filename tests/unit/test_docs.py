from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

from broker import ErrorName
from broker.local.settings_doc import render

ROOT = Path(__file__).resolve().parents[2]


def test_settings_reference_is_generated_from_the_model() -> None:
    on_disk = (ROOT / "docs" / "settings.md").read_text()
    assert on_disk == render(), "run: python -m broker.local.settings_doc > docs/settings.md"


def test_only_settings_without_a_default_are_listed_as_required() -> None:
    from broker import BrokerSettings

    rows = {
        line.split("|")[2].strip(" `"): line.split("|")[3].strip()
        for line in render().splitlines()
        if line.startswith(("| `BROKER_", "| `AWS_"))
    }
    for name, info in BrokerSettings.model_fields.items():
        assert (rows[name] == "required") == info.is_required(), name
    assert rows["log_levels"] == "`{}`"


def test_every_broker_error_name_is_documented() -> None:
    errors_doc = (ROOT / "docs" / "errors.md").read_text()
    names = [v for k, v in vars(ErrorName).items() if k.isupper()]
    assert names
    for name in names:
        assert f"`{name}`" in errors_doc


def test_readme_gives_the_two_commands_first() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"^make (\w+)", readme, flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]


async def test_readme_handler_and_test_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    # In this process; tests/unit/test_testing_doc.py runs them in a fresh package too.
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert len(blocks) >= 2
    # The test imports the handler from billing/handlers.py, the file the README puts it in.
    handlers = types.ModuleType("billing.handlers")
    monkeypatch.setitem(sys.modules, "billing", types.ModuleType("billing"))
    monkeypatch.setitem(sys.modules, "billing.handlers", handlers)
    exec(compile(blocks[0], "README.md", "exec"), handlers.__dict__)
    namespace: dict[str, object] = {"__name__": "readme_example"}
    exec(compile(blocks[1], "README.md", "exec"), namespace)
    await namespace["test_purchase"]()  # type: ignore[operator]
