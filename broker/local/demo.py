"""``broker demo``: the seed workflows end to end on an embedded moto server, no AWS account.

It starts moto in this process, deploys the three seed flows with a dead-letter queue for
each of their queues and the decision topic with its inbox queue (``local.flows``), and
runs the real `Broker` with the seed handlers and the approval handler, loaded by
reference as ``BROKER_HANDLERS='["handlers.seeds:router", "handlers.approval:router"]'``
would, its decision listener on loopback. A worker thread starts a mix of executions
(``demo_plan``) while the broker already consumes, so the broker works under a growing
backlog (``demo_run``); another one plays the person who gets the approval links through
SNS and uses them (``demo_person``). At the end every execution is checked against what
its handler (or the person) decided, and a summary goes to stdout (``demo_report``);
progress and logs go to stderr.

Exit codes: 0 every execution ended as its handler decided (or waits, as planned), 1 some
did not or a decision link answered wrongly (each one is named), 2 bad arguments or moto
not installed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Final

import anyio

from broker.core.loop import event_loop_options
from broker.core.plugins import build_router
from broker.local.demo_person import Person
from broker.local.demo_plan import plan_executions
from broker.local.demo_report import Starts, exit_code, report
from broker.local.demo_run import (
    Launcher,
    demo_settings,
    exercise,
    hidden_emulator_errors,
    judge_all,
    messages_left,
)
from broker.local.env import AWS_OVERRIDES, loopback_without_proxy, patched_environ
from broker.local.flows import SEED_ROUTERS, deploy_seed_flows
from broker.local.moto import EmbeddedAws, EmulatorUnavailable
from broker.service import Broker

__all__ = ["run_demo"]

_PREFIX: Final = "demo"


def run_demo(args: argparse.Namespace) -> int:
    """`broker demo`: see the module docstring."""
    executions: int = args.executions
    timeout_s: float = args.timeout
    if executions < 1 or not timeout_s > 0:
        print(
            "broker demo: --executions must be at least 1 and --timeout positive", file=sys.stderr
        )
        return 2
    _configure_logging()
    try:
        # The user's own AWS setup must not leak in: moto reads the profile on import, and
        # a proxy from the environment must not see loopback traffic. The broker then
        # finds the emulator's dummy credentials the way it finds real ones in production.
        with (
            patched_environ(loopback_without_proxy(), remove=AWS_OVERRIDES),
            EmbeddedAws() as aws,
            patched_environ(aws.env()),
        ):
            return _demo(aws, executions, timeout_s)
    except EmulatorUnavailable as exc:
        print(f"broker demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nbroker demo: interrupted", file=sys.stderr)
        return 130


def _demo(aws: EmbeddedAws, executions: int, timeout_s: float) -> int:
    flows = deploy_seed_flows(aws, prefix=_PREFIX, dead_letter_queues=True)
    settings = demo_settings(aws, flows)
    broker = Broker(settings, build_router(settings))
    plan = plan_executions(executions)
    launcher = Launcher(aws, flows, plan)
    person = Person(aws, flows.inbox_url, plan)
    print(
        f"broker demo: {executions} executions of the seed flows on moto at {aws.endpoint_url}, "
        f"handlers from {', '.join(SEED_ROUTERS)}",
        file=sys.stderr,
    )
    with hidden_emulator_errors() as errors:
        anyio.run(
            exercise,
            aws,
            flows,
            broker,
            launcher,
            person,
            timeout_s,
            backend_options=event_loop_options(),
        )
        print(f"checking {len(launcher.arns)} executions …", file=sys.stderr)
        judgements = judge_all(aws, plan, launcher.arns)
        left = messages_left(aws, flows)
    starts = Starts(len(launcher.arns), launcher.seconds)
    lines = report(judgements, starts, broker, left, len(plan), errors.seen, person.report)
    print("\n".join(lines))
    return exit_code(judgements, len(plan), person.report)


def _configure_logging() -> None:
    # Only warnings and errors: the broker's INFO lines would bury the progress line.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
