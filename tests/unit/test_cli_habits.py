"""The ``broker`` command's habits: options before or after the subcommand, ``--version``,
a description and an example in every subcommand's ``--help``, usage errors exit 2
(``healthcheck`` 1), and ``check`` always ends with its summary line."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from subprocess import CompletedProcess

import pytest

import broker as broker_package
from broker.cli import main
from broker.cli_parser import build_parser
from tests.cli import clean_env, run_cli

NO_AWS = {
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def broker(*args: str, cwd: Path, **env: str) -> CompletedProcess[str]:
    return run_cli(*args, env=clean_env(**NO_AWS, **env), cwd=cwd)


def seeds_config(tmp_path: Path) -> Path:
    config = tmp_path / "broker.toml"
    config.write_text('handlers = ["handlers.seeds:router"]\n')
    return config


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_config_option_goes_before_or_after_the_subcommand(tmp_path: Path, where: str) -> None:
    config = str(seeds_config(tmp_path))
    args = ("-c", config, "handlers") if where == "before" else ("handlers", "-c", config)
    result = broker(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "verify" in result.stdout


def test_check_reads_a_config_given_after_it(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('queues = ["orders"]\n')
    result = broker("check", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    # The queue came from the file: what is missing now is the region, not a queue.
    assert lines[0].startswith("aws: PROBLEM: AWS_REGION: no AWS region set"), lines
    assert lines[-1] == "check: 0 queues ok, 0 activities ok, 0 handler types; 1 problem"


def test_a_subcommand_without_the_option_keeps_the_one_given_before_it() -> None:
    parser = build_parser()
    assert parser.parse_args(["-c", "a.toml", "check"]).config == Path("a.toml")
    assert parser.parse_args(["check"]).config is None
    assert parser.parse_args(["-c", "a.toml", "check", "-c", "b.toml"]).config == Path("b.toml")
    nested = parser.parse_args(["-c", "a.toml", "idempotency", "create-table", "t"])
    assert nested.config == Path("a.toml")
    assert parser.parse_args(["decisions", "keygen", "-c", "b.toml"]).config == Path("b.toml")


def test_version(tmp_path: Path) -> None:
    result = broker("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"broker {broker_package.__version__}\n"


def _subcommands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _subcommands(sub, (*path, name))


SUBCOMMANDS = [path for path, _ in _subcommands(build_parser())]


def test_every_documented_subcommand_is_there() -> None:
    assert {" ".join(path) for path in SUBCOMMANDS} >= {
        "run",
        "check",
        "handlers",
        "healthcheck",
        "redrive",
        "decisions",
        "decisions keygen",
        "idempotency",
        "idempotency create-table",
        "demo",
    }


@pytest.mark.parametrize("path", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_help_has_a_description_and_an_example(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    parser = dict(_subcommands(build_parser()))[path]
    assert parser.description, path
    with pytest.raises(SystemExit) as exited:
        main([*path, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert parser.description.splitlines()[0] in shown
    lines = shown.splitlines()
    example = lines.index("example:")
    assert (
        lines[example + 1].lstrip().startswith(("broker ", "export ", "BROKER_", 'eval "$(broker '))
    ), shown
    assert any(f"broker {' '.join(path)}" in line for line in lines[example + 1 :]), shown


@pytest.mark.parametrize(
    "args",
    [("nosuch",), ("check", "--bogus"), ("run", "extra"), ("redrive",), ("-c",), ("check", "-c")],
    ids=["unknown-command", "unknown-option", "extra-argument", "missing-argument", "c-1", "c-2"],
)
def test_bad_usage_exits_2(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = broker(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "usage: broker" in result.stderr


@pytest.mark.parametrize("args", [("--bogus",), ("-c",), ("extra",)])
def test_healthcheck_bad_usage_exits_1(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = broker("healthcheck", *args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr


def test_check_sums_up_when_the_settings_do_not_load(tmp_path: Path) -> None:
    result = broker("check", cwd=tmp_path, BROKER_CONCURRENCY="many")
    assert result.returncode == 2
    assert "BROKER_CONCURRENCY" in result.stderr
    assert result.stdout.splitlines()[-1] == (
        "check: the settings or the handlers did not load; 1 problem"
    )


def test_check_sums_up_when_the_handlers_do_not_register(tmp_path: Path) -> None:
    result = broker("check", cwd=tmp_path, BROKER_HANDLERS='["nowhere_module:router"]')
    assert result.returncode == 2
    assert "nowhere_module" in result.stderr
    assert result.stdout.splitlines()[-1].endswith("; 1 problem")
