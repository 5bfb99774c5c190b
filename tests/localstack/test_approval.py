"""Seed 004 on LocalStack, the broker as a process: the same answers as on moto
(tests/integration/test_approval.py), through LocalStack's SNS → SQS delivery."""

from __future__ import annotations

from pathlib import Path

from broker.local.flows import SeedFlows
from broker.local.localstack import LocalStackAws
from tests.approval_flow import run_approval_scenario


def test_approval_through_sns_and_the_decision_endpoint(
    localstack: LocalStackAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    run_approval_scenario(localstack, seed_flows, tmp_path)
