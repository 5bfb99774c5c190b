"""Each settings error names where the value came from (the config file and its key, or
the variable), the closest valid name, and a JSON error's position (issue 22, item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker import ConfigError, load_settings


def error_of(config: Path | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    return str(raised.value)


@pytest.fixture(autouse=True)
def clean_shell(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("BROKER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_a_typo_in_the_file_names_the_file_and_the_closest_setting(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('queues = ["q"]\nconcurency = 64\n')
    assert f"{config}: concurency: unknown setting (did you mean concurrency?)" in error_of(config)


def test_a_wrong_type_in_the_file_is_the_files_not_a_variables(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('queues = ["q"]\nconcurrency = "lots"\n')
    message = error_of(config)
    assert f"{config}: concurrency: Input should be a valid integer" in message
    assert "(got 'lots')" in message
    assert "BROKER_CONCURRENCY" not in message


def test_a_typo_in_a_queue_row_of_the_file_counts_from_1_and_names_the_queue(
    tmp_path: Path,
) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        '[[queues]]\nname = "a"\n[[queues]]\nname = "b"\n'
        '[[queues]]\nname = "orders"\ndefault_hander = "order"\n'
    )
    message = error_of(config)
    assert (
        f"{config}: queues, entry 3 ('orders'), key default_hander: unknown key "
        "(did you mean default_handler?)"
    ) in message
    assert "BROKER_QUEUES" not in message


def test_the_same_in_a_variable_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_QUEUES", '["a", "b", {"name": "orders", "default_hander": "order"}]')
    assert (
        "BROKER_QUEUES, entry 3 ('orders'), key default_hander: unknown key "
        "(did you mean default_handler?)"
    ) in error_of()


def test_a_value_from_dotenv_says_so(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('BROKER_QUEUES=["q"]\nBROKER_CONCURRENCY=lots\n')
    assert "BROKER_CONCURRENCY (in .env): Input should be a valid integer" in error_of()


@pytest.mark.parametrize(
    ("value", "position"),
    [('["a", "b",]', "line 1 column 11 (char 10)"), ('[{"name": "a"', "line 1 column 14")],
)
def test_bad_json_in_a_variable_keeps_its_position(
    monkeypatch: pytest.MonkeyPatch, value: str, position: str
) -> None:
    monkeypatch.setenv("BROKER_QUEUES", value)
    message = error_of()
    assert "BROKER_QUEUES: cannot parse the value (lists and objects are JSON): " in message
    assert position in message


def test_bad_json_in_dotenv_keeps_its_position_and_says_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('BROKER_QUEUES=["a",]\n')
    message = error_of()
    assert "BROKER_QUEUES (in .env): cannot parse the value" in message
    assert "line 1 column 6 (char 5)" in message
