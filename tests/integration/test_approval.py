"""Seed 004 on moto, the broker as a process: the approval links come through SNS (an SQS
subscription), GET leaves the execution running, POST approve makes it succeed with
``"approved": true``, POST reject fails another with ``Approval.Rejected``; a second POST
answers 409, a tampered link 403, an expired one 410."""

from __future__ import annotations

from pathlib import Path

from broker.local.flows import SeedFlows
from broker.local.moto import EmbeddedAws
from tests.approval_flow import run_approval_scenario


def test_approval_through_sns_and_the_decision_endpoint(
    aws: EmbeddedAws, seed_flows: SeedFlows, tmp_path: Path
) -> None:
    run_approval_scenario(aws, seed_flows, tmp_path)
