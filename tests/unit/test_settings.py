from __future__ import annotations

from pathlib import Path

import pytest

from broker import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith(("BROKER_", "AWS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_queues_from_env_accept_names_urls_and_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "BROKER_QUEUES",
        '["plain", "https://sqs.eu-west-1.amazonaws.com/1/q", '
        '{"name": "custom", "concurrency": 4, "type_field": "input.kind", "default_handler": "x"}]',
    )
    settings = load_settings()
    assert [q.name for q in settings.queues] == [
        "plain",
        "https://sqs.eu-west-1.amazonaws.com/1/q",
        "custom",
    ]
    custom = settings.queues[2]
    assert custom.concurrency == 4
    assert custom.envelope_spec().type_field == "input.kind"
    assert custom.envelope_spec().default_type == "x"


def test_aws_conventions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    settings = load_settings()
    assert settings.aws_region == "eu-central-1"
    assert settings.aws_endpoint_url == "http://127.0.0.1:4566"
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    assert load_settings().aws_region == "us-west-2"


@pytest.mark.parametrize(
    ("name", "value", "named"),
    [
        ("BROKER_CONCURRENCY", "lots", "BROKER_CONCURRENCY"),
        ("BROKER_CONCURRENCY", "0", "BROKER_CONCURRENCY"),
        ("BROKER_QUEUES", '[{"name": "q", "concurency": 3}]', "BROKER_QUEUES"),
        ("BROKER_QUEUES", '[{"name": "q", "wait_time_s": 21}]', "BROKER_QUEUES"),
        ("BROKER_QUEUES", '["a", "a"]', "BROKER_QUEUES"),
        ("BROKER_QUEUES", "not-json", "BROKER_QUEUES: cannot parse"),
        ("BROKER_HANDLERS", '["no_colon"]', "BROKER_HANDLERS"),
        ("BROKER_LOG_LEVEL", "chatty", "BROKER_LOG_LEVEL"),
        ("BROKER_COMPLETION_RATE_PER_S", "-1", "BROKER_COMPLETION_RATE_PER_S"),
    ],
)
def test_bad_setting_fails_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, named: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=named):
        load_settings()


def test_queue_concurrency_above_total_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_CONCURRENCY", "4")
    monkeypatch.setenv("BROKER_QUEUES", '[{"name": "q", "concurrency": 8}]')
    with pytest.raises(ConfigError, match="exceeds the total concurrency 4"):
        load_settings()


def test_toml_config_file_with_broker_table_and_env_precedence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nqueues = ["from-file"]\nconcurrency = 7\nmax_attempts = 2\n')
    settings = load_settings(config)
    assert (settings.queues[0].name, settings.concurrency, settings.max_attempts) == (
        "from-file",
        7,
        2,
    )
    monkeypatch.setenv("BROKER_CONCURRENCY", "9")
    assert load_settings(config).concurrency == 9


def test_json_config_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.json"
    config.write_text('{"queues": [{"name": "j", "dead_letter_queue": "j-dlq"}]}')
    assert load_settings(config).queues[0].dead_letter_queue == "j-dlq"


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('BROKER_QUEUES=["dotenv-q"]\nBROKER_MAX_ATTEMPTS=3\n')
    settings = load_settings()
    assert settings.queues[0].name == "dotenv-q"
    assert settings.max_attempts == 3


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("queues = [", ".toml", "not valid TOML"),
        ("{", ".json", "not valid JSON"),
        ("[1]", ".json", "table/object"),
        ("unknown_setting = 1", ".toml", "unknown_setting"),
    ],
)
def test_bad_config_file(tmp_path: Path, content: str, suffix: str, message: str) -> None:
    config = tmp_path / f"c{suffix}"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


@pytest.mark.parametrize("word", ["null", "None", "off", ""])
def test_words_for_off_switch_optional_numbers_off(
    monkeypatch: pytest.MonkeyPatch, word: str
) -> None:
    monkeypatch.setenv("BROKER_HTTP_PORT", word)
    monkeypatch.setenv("BROKER_HANDLER_TIMEOUT_S", word)
    settings = load_settings(None)
    assert (settings.http_port, settings.handler_timeout_s) == (None, None)


def test_log_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_LOG_FORMAT", "json")
    monkeypatch.setenv("BROKER_LOG_LEVELS", '{"broker.processing": "debug"}')
    settings = load_settings(None)
    assert (settings.log_format, settings.log_levels) == (
        "json",
        {"broker.processing": "DEBUG"},
    )
    monkeypatch.setenv("BROKER_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError, match="BROKER_LOG_FORMAT"):
        load_settings(None)


def test_foreign_keys_in_dotenv_are_ignored_as_in_the_environment(tmp_path: Path) -> None:
    # A .env shared with other programs: their keys are not the broker's business.
    (tmp_path / ".env").write_text(
        'DATABASE_URL=postgres://x\nexport OTHER_APP_DEBUG=1\nBROKER_QUEUES=["shared"]\n'
    )
    settings = load_settings()
    assert settings.queues[0].name == "shared"


def test_broker_keys_in_dotenv_are_still_validated(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DATABASE_URL=x\nBROKER_MAX_ATTEMPTS=many\n")
    with pytest.raises(ConfigError, match="BROKER_MAX_ATTEMPTS"):
        load_settings()


@pytest.mark.parametrize(
    ("name", "closest"),
    [
        ("BROKER_CONCURENCY", "BROKER_CONCURRENCY"),
        ("BROKER_QUEUE", "BROKER_QUEUES"),
        ("broker_log_levl", "BROKER_LOG_LEVEL"),
        ("BROKER_SHUTDOWN_GRACE", "BROKER_SHUTDOWN_GRACE_S"),
    ],
)
def test_a_misspelled_broker_variable_stops_the_start_naming_the_closest(
    monkeypatch: pytest.MonkeyPatch, name: str, closest: str
) -> None:
    monkeypatch.setenv(name, "8")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert f"{name.upper()}: unknown setting (did you mean {closest}?)" in str(raised.value)


def test_a_misspelled_broker_key_in_dotenv_stops_the_start_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("BROKER_CONCURENCY=8\n")
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "BROKER_CONCURENCY (in .env): unknown setting (did you mean BROKER_CONCURRENCY?)" in (
        str(raised.value)
    )


def test_an_unknown_broker_variable_with_no_close_setting_points_to_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BROKER_XYZZY_PLUGH", "1")
    with pytest.raises(ConfigError, match=r"BROKER_XYZZY_PLUGH: unknown setting \(see docs"):
        load_settings()


def test_every_setting_variable_and_alias_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_AWS_REGION", "eu-west-3")
    monkeypatch.setenv("BROKER_AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    monkeypatch.setenv("BROKER_CONCURRENCY", "7")
    settings = load_settings()
    assert (settings.aws_region, settings.concurrency) == ("eu-west-3", 7)


def test_kubernetes_service_links_of_a_service_named_broker_are_let_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What Kubernetes puts in every pod of the namespace for a Service named "broker".
    links = {
        "BROKER_SERVICE_HOST": "10.0.0.7",
        "BROKER_SERVICE_PORT": "8080",
        "BROKER_SERVICE_PORT_HTTP": "8080",
        "BROKER_PORT": "tcp://10.0.0.7:8080",
        "BROKER_PORT_8080_TCP": "tcp://10.0.0.7:8080",
        "BROKER_PORT_8080_TCP_PROTO": "tcp",
        "BROKER_PORT_8080_TCP_PORT": "8080",
        "BROKER_PORT_8080_TCP_ADDR": "10.0.0.7",
    }
    for name, value in links.items():
        monkeypatch.setenv(name, value)
    assert load_settings().http_port == 8080
    # Written by hand, BROKER_PORT is a misspelled setting.
    monkeypatch.setenv("BROKER_PORT", "9090")
    with pytest.raises(ConfigError, match=r"BROKER_PORT: .*did you mean BROKER_HTTP_PORT\?"):
        load_settings()


def test_the_broker_command_exits_2_naming_the_misspelled_variable(tmp_path: Path) -> None:
    from tests.cli import clean_env, run_cli

    env = clean_env(BROKER_QUEUES='["q"]', BROKER_CONCURENCY="8")
    result = run_cli("check", env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "BROKER_CONCURENCY: unknown setting (did you mean BROKER_CONCURRENCY?)" in result.stderr


@pytest.mark.parametrize("value", ["true", "false"])
def test_the_retired_fast_completions_variable_is_refused_naming_its_replacement(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # Either value meant something once: neither may be silently ignored now.
    monkeypatch.setenv("BROKER_FAST_COMPLETIONS", value)
    with pytest.raises(ConfigError, match=r"BROKER_FAST_COMPLETIONS: removed.*BROKER_AWS_CLIENT"):
        load_settings()


def test_the_retired_fast_completions_key_is_refused_in_a_config_file(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("fast_completions = true\n")
    with pytest.raises(ConfigError, match=r"BROKER_FAST_COMPLETIONS: removed.*BROKER_AWS_CLIENT"):
        load_settings(config)
