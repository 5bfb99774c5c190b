"""``broker local``'s pure parts: the loopback rule, AWS's naming rule, the rows it merges,
the export lines (the commands themselves run in tests/integration/test_local_loop.py)."""

from __future__ import annotations

import botocore.session
import pytest

from broker.local.deploy import NameRefused, check_name, merge_rows
from broker.local.shapes import SHAPES
from broker.local.target import LocalEndpointError, loopback_endpoint, shell_lines


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5055",
        "http://127.0.0.2:4566/",
        "http://localhost:4566",
        "http://[::1]:5055",
        "https://127.0.0.1",
    ],
)
def test_loopback_endpoints_are_taken(url: str) -> None:
    assert loopback_endpoint(url) == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "https://sqs.eu-west-1.amazonaws.com",
        "http://10.0.0.1:4566",
        "http://localhost.example.com:4566",
        "http://127.0.0.1.nip.io:4566",
        "ftp://127.0.0.1",
        "127.0.0.1:5055",
        "",
    ],
)
def test_other_endpoints_are_refused(url: str) -> None:
    with pytest.raises(LocalEndpointError):
        loopback_endpoint(url)


@pytest.mark.parametrize("name", ["orders", "a", "A_b-9", "q" * 76])
def test_queue_names_by_aws_rule(name: str) -> None:
    check_name(name, "queue", suffix="-dlq")


@pytest.mark.parametrize("name", ["", "has space", "dots.in", "q" * 77, "é", "x.fifo"])
def test_queue_names_aws_refuses_are_refused(name: str) -> None:
    with pytest.raises(NameRefused):
        check_name(name, "queue", suffix="-dlq")


def test_a_deployed_row_joins_the_rows_in_the_environment() -> None:
    row = {"name": "orders", "dead_letter_queue": "orders-dlq"}
    current = '["refunds", {"name": "orders"}, {"name": "audit", "concurrency": 2}]'
    assert merge_rows(current, [row]) == ["refunds", {"name": "audit", "concurrency": 2}, row]
    assert merge_rows(None, [row]) == merge_rows("not json", [row]) == [row]
    assert merge_rows('{"name": "x"}', [row]) == [row]


def test_the_seed_shapes_read_as_the_seed_queues_do() -> None:
    row = SHAPES["seed-000"].queue_row("q", "q-dlq", "callback")
    assert row["token_fields"] == ["MyTaskToken"]
    assert row["default_handler"] == "callback"
    # The broker's own shape carries the type as an attribute: no default handler.
    assert SHAPES["broker"].queue_row("q", "q-dlq", "order") == {
        "name": "q",
        "dead_letter_queue": "q-dlq",
    }


def test_export_lines_unset_what_would_win_and_quote_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NO_PROXY", "corp.example,127.0.0.1,localhost")
    lines = shell_lines({"AWS_ENDPOINT_URL": "http://127.0.0.1:5055", "X": "a b"})
    assert lines[0].startswith("unset AWS_PROFILE ")
    assert "AWS_SESSION_TOKEN" in lines[0]
    assert "AWS_ENDPOINT_URL " not in lines[0] + " "
    assert "export X='a b'" in lines
    # Loopback already there: evaluated twice, NO_PROXY does not grow.
    assert "export NO_PROXY=corp.example,127.0.0.1,localhost" in lines


@pytest.mark.parametrize("service", ["sqs", "stepfunctions", "sns", "dynamodb"])
def test_after_the_export_lines_every_service_the_broker_calls_goes_to_the_endpoint(
    monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    # A user's shell with one endpoint variable per service the broker calls.
    for variable in ("SQS", "SFN", "SNS", "DYNAMODB"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{variable}", "http://elsewhere.example:1")
    local = "http://127.0.0.1:5055"
    for line in shell_lines({"AWS_ENDPOINT_URL": local}):
        command, _, rest = line.partition(" ")
        if command == "unset":
            for name in rest.split():
                monkeypatch.delenv(name, raising=False)
        else:
            name, _, value = rest.partition("=")
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    client = botocore.session.get_session().create_client(service, region_name="us-east-1")
    assert client.meta.endpoint_url == local
