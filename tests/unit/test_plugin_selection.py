"""Installed plugins (entry points): an error about a route names the plugin it came from
and the way out, and ``BROKER_ENTRY_POINTS`` selects plugins by name (issue 22, item 6)."""

from __future__ import annotations

from pathlib import Path
from subprocess import CompletedProcess

import pytest

from tests.cli import clean_env, run_cli

BILLING = """
from broker import Router, Task

router = Router()

@router.handler("payment.charge", idempotent=True)
async def charge(task: Task) -> dict:
    return {"charged": True}
"""
INVOICES = """
from broker import Router, Task

router = Router()

@router.handler("invoice")
async def invoice(task: Task) -> dict:
    return {"ok": True}
"""
SHOP = """
from broker import Router, Task

router = Router()

@router.handler("order")
async def order(task: Task) -> dict:
    return {"accepted": 1}
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """Two installed plugins, ``billing`` and ``invoices``, and the README's shop.py."""
    site = tmp_path / "site"
    site.mkdir()
    for name, source in (("billing_plugin", BILLING), ("invoice_plugin", INVOICES)):
        (site / f"{name}.py").write_text(source)
        dist = site / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        entry = "billing" if name == "billing_plugin" else "invoices"
        (dist / "entry_points.txt").write_text(
            f"[callback_broker.handlers]\n{entry} = {name}:router\n"
        )
    (tmp_path / "shop.py").write_text(SHOP)
    return site


def broker(site: Path, *args: str, **env: str) -> CompletedProcess[str]:
    values = clean_env(
        PYTHONPATH=f"{site}:{site.parent}",
        BROKER_HANDLERS='["shop:router"]',
        BROKER_QUEUES='["orders"]',
        AWS_REGION="us-east-1",
        **env,
    )
    return run_cli(*args, env=values, cwd=site.parent)


def test_an_installed_plugins_idempotent_route_names_the_plugin_and_the_way_out(
    site: Path,
) -> None:
    result = broker(site, "run")
    assert result.returncode == 2, result.stderr
    assert (
        "BROKER_IDEMPOTENCY_TABLE: not set, but handler(s) 'payment.charge' (from entry point "
        "'billing' (billing_plugin:router)) are idempotent=True"
    ) in result.stderr
    assert (
        "the installed plugin(s) 'billing' brought them: BROKER_ENTRY_POINTS=false loads no "
        "plugin, a JSON list of entry-point names loads only those"
    ) in result.stderr
    checked = broker(site, "check")
    assert "entry point 'billing'" in checked.stdout


def names(result: CompletedProcess[str]) -> set[str]:
    assert result.returncode == 0, result.stderr
    return {line.split()[0] for line in result.stdout.splitlines()}


@pytest.mark.parametrize(
    ("selection", "loaded"),
    [
        ("true", {"order", "invoice", "payment.charge"}),
        ("false", {"order"}),
        ("[]", {"order"}),
        ('["invoices"]', {"order", "invoice"}),
        ('["invoices", "billing"]', {"order", "invoice", "payment.charge"}),
    ],
)
def test_entry_points_are_selected_by_name(site: Path, selection: str, loaded: set[str]) -> None:
    assert names(broker(site, "handlers", BROKER_ENTRY_POINTS=selection)) == loaded


def test_the_selected_plugins_start_without_the_other(site: Path) -> None:
    # The shop's flow is not stopped by billing once billing is left out: it gets as far
    # as AWS (no endpoint here), past the settings and handler checks.
    result = broker(
        site,
        "check",
        BROKER_ENTRY_POINTS='["invoices"]',
        AWS_ENDPOINT_URL="http://127.0.0.1:9",
        BROKER_STARTUP_TIMEOUT_S="1",
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
    )
    assert "IDEMPOTENCY_TABLE" not in result.stdout + result.stderr
    assert "settings: PROBLEM" not in result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("queue orders: PROBLEM: cannot reach") for line in lines)
    assert lines[-1] == "check: 0 queues ok, 0 activities ok, 2 handler types; 1 problem"


def test_a_name_no_plugin_has_is_refused_with_the_closest(site: Path) -> None:
    result = broker(site, "handlers", BROKER_ENTRY_POINTS='["billnig"]')
    assert result.returncode == 2
    assert (
        "BROKER_ENTRY_POINTS: no installed plugin has the entry point 'billnig' in "
        "'callback_broker.handlers' (did you mean 'billing'? installed: "
    ) in result.stderr
    bad = broker(site, "handlers", BROKER_ENTRY_POINTS="maybe")
    assert bad.returncode == 2
    assert "BROKER_ENTRY_POINTS" in bad.stderr
