"""The ``broker`` command line: its parser, each subcommand's options, and its help (one
line, a description, an example: ``broker COMMAND --help`` prints the last two).

A subcommand is one ``_add_*`` function and one ``HELP`` entry; ``broker.cli`` runs it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeAlias

from broker._version import __version__

__all__ = ["HELP", "Help", "build_parser"]


@dataclass(frozen=True, slots=True)
class Help:
    #: The line in ``broker --help``'s list of commands.
    summary: str
    #: What the command does, in ``broker COMMAND --help``.
    description: str
    #: Shell lines shown under ``example:`` at the end of ``broker COMMAND --help``.
    example: str

    @property
    def epilog(self) -> str:
        lines = "\n".join(f"  {line}" for line in self.example.strip().splitlines())
        return f"example:\n{lines}"


HELP: Final[dict[str, Help]] = {
    "run": Help(
        "consume the queues until SIGINT/SIGTERM",
        "Long-poll the configured queues and activities, run each message's handler and\n"
        "complete its Step Functions task. The first SIGINT/SIGTERM drains (up to\n"
        "BROKER_SHUTDOWN_GRACE_S), a second one stops at once. Exit 0 after the drain,\n"
        "1 on a runtime failure (a queue that does not exist, no credentials, ...), 2 on\n"
        "bad settings or handlers.",
        "export BROKER_QUEUES='[\"orders\"]' BROKER_HANDLERS='[\"handlers.seeds:router\"]'\n"
        "broker run -c broker.toml",
    ),
    "check": Help(
        "validate settings, reach the queues, list the routes",
        "Make every start-up check `run` makes, with its look-ups and retries, and create\n"
        "nothing: each queue, activity, idempotency table and decision topic is listed as\n"
        "ok or PROBLEM, then the handlers, then one summary line. Exit 0 without problems,\n"
        "1 with any, 2 when the settings do not load or the handlers do not register.",
        "broker check -c broker.toml",
    ),
    "handlers": Help(
        "list registered message types and their origin",
        "Load the handlers as `run` would (BROKER_HANDLERS and the installed plugins of\n"
        "the entry-point group callback_broker.handlers) and list each message type, its\n"
        "handler, whether it is typed or idempotent, and where it came from.",
        "BROKER_HANDLERS='[\"handlers.seeds:router\"]' broker handlers",
    ),
    "healthcheck": Help(
        "exit 0 if the running broker is live (--ready: ready), else 1",
        "Ask the broker running on this host (http://127.0.0.1:$BROKER_HTTP_PORT) for\n"
        "/livez, or /readyz with --ready: for a Docker HEALTHCHECK or an ECS health\n"
        "check. Exits only 0 or 1, even on a usage error (Docker reserves 2).",
        "broker healthcheck --ready",
    ),
    "redrive": Help(
        "move dead-lettered messages back to the queue they came from",
        "Move the messages of a dead-letter queue back to the queue each came from, if\n"
        "BROKER_QUEUES names it (or all to --to), and print counts per destination. Exit 1\n"
        "if any send failed or a message names a queue the settings do not.",
        "broker redrive refunds-dlq --max 100",
    ),
    "decisions": Help(
        "decision links (docs/decisions.md)",
        "Tools for decision links (docs/decisions.md).",
        "broker decisions keygen",
    ),
    "decisions keygen": Help(
        "print a new key for BROKER_DECISION_KEYS (put it first to rotate)",
        "Print a new random key for sealing decision links. Put it first in\n"
        "BROKER_DECISION_KEYS to rotate: links sealed with the older keys still open.",
        'export BROKER_DECISION_KEYS="[\\"$(broker decisions keygen)\\"]"',
    ),
    "idempotency": Help(
        "the idempotency table of idempotent=True handlers (docs/fleet.md)",
        "Tools for the DynamoDB table of idempotent=True handlers (docs/fleet.md).",
        "broker idempotency create-table broker-idempotency",
    ),
    "idempotency create-table": Help(
        "create the table (on-demand, TTL on expires_at) unless it exists",
        "Create the idempotency table (on-demand capacity, partition key `id`, TTL on\n"
        "expires_at) unless it exists, then check it as `broker check` would. Exit 1 if\n"
        "the table is not one the broker can use.",
        "broker idempotency create-table broker-idempotency\n"
        "export BROKER_IDEMPOTENCY_TABLE=broker-idempotency",
    ),
    "demo": Help(
        "run the seed workflows end to end on an embedded emulator (no AWS)",
        "Start an embedded moto server (needs the `local` extra), deploy the seed\n"
        "workflows' queues and state machines, start executions of mixed types, run the\n"
        "broker and print a summary. Exit 1 if any execution ended differently from what\n"
        "its handler decided.",
        "broker demo --executions 50",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker",
        description="Complete AWS Step Functions callback tasks from SQS queues.",
        epilog="example:\n  broker check -c broker.toml\n  broker run -c broker.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--config", type=Path, default=None, help=_CONFIG_HELP)
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_run(commands)
    _add_check(commands)
    _add_handlers(commands)
    _add_healthcheck(commands)
    _add_redrive(commands)
    _add_decisions(commands)
    _add_idempotency(commands)
    _add_demo(commands)
    # Imported here: the runtime never loads broker.local at import (tests/unit/test_layout.py).
    from broker.local.commands import add_local_commands  # a parser only: no botocore, no moto

    add_local_commands(commands)
    return parser


_CONFIG_HELP: Final = "config file (TOML or JSON) with the settings"
# Every subcommand takes -c/--config too, so it may come before or after the command.
# SUPPRESS: a subcommand without it leaves the value given before the command alone.
_OPTIONS_ANYWHERE: Final = argparse.ArgumentParser(add_help=False)
_OPTIONS_ANYWHERE.add_argument(
    "-c", "--config", type=Path, default=argparse.SUPPRESS, help=_CONFIG_HELP
)

_Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _command(commands: _Commands, name: str, key: str | None = None) -> argparse.ArgumentParser:
    """A subcommand with its help text (broker/cli_help.py) and the options anywhere."""
    text = HELP[key or name]
    return commands.add_parser(
        name,
        help=text.summary,
        description=text.description,
        epilog=text.epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_OPTIONS_ANYWHERE],
    )


def _add_run(commands: _Commands) -> None:
    _command(commands, "run")


def _add_check(commands: _Commands) -> None:
    _command(commands, "check")


def _add_handlers(commands: _Commands) -> None:
    _command(commands, "handlers")


def _add_healthcheck(commands: _Commands) -> None:
    healthcheck = _command(commands, "healthcheck")
    healthcheck.add_argument("--ready", action="store_true", help="check /readyz, not /livez")


def _add_redrive(commands: _Commands) -> None:
    redrive = _command(commands, "redrive")
    redrive.add_argument("dead_letter_queue", help="the DLQ, by name or URL")
    redrive.add_argument("--to", help="send everything here instead of each message's source")
    redrive.add_argument("--max", type=int, default=None, help="move at most this many")


def _add_decisions(commands: _Commands) -> None:
    decisions = _command(commands, "decisions")
    subcommands = decisions.add_subparsers(
        dest="decisions_command", metavar="COMMAND", required=True
    )
    _command(subcommands, "keygen", "decisions keygen")


def _add_idempotency(commands: _Commands) -> None:
    idempotency = _command(commands, "idempotency")
    subcommands = idempotency.add_subparsers(
        dest="idempotency_command", metavar="COMMAND", required=True
    )
    create = _command(subcommands, "create-table", "idempotency create-table")
    create.add_argument("table", help="the table's name (then set BROKER_IDEMPOTENCY_TABLE)")


def _add_demo(commands: _Commands) -> None:
    demo = _command(commands, "demo")
    demo.add_argument("--executions", type=int, default=300, help="executions to start")
    demo.add_argument("--timeout", type=float, default=180.0, help="seconds before giving up")
