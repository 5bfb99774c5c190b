"""The dead-letter contract: what a copy says about itself, written and read in one module."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from broker import sqs
from broker.sqs.deadletter import (
    REDRIVEN_ATTRIBUTE,
    dead_letter_copy,
    is_redriven,
    redriven_by,
    sent_back_attributes,
    source_queue,
)
from broker.sqs.message import ReceivedMessage


def received(attributes: dict[str, Any] | None = None, body: str = '{"a": 1}') -> ReceivedMessage:
    raw: dict[str, Any] = {
        "MessageId": "m-1",
        "ReceiptHandle": "r-1",
        "Body": body,
        "MessageAttributes": attributes or {},
        "Attributes": {"ApproximateReceiveCount": "3"},
    }
    return ReceivedMessage.from_sqs(raw)


def test_a_copy_names_why_and_where_and_the_redrive_reads_it_back() -> None:
    original = {"trace": {"DataType": "String", "StringValue": "t-1"}}
    copy = dead_letter_copy(received(original), "orders", "InvalidJson", "not JSON")
    assert copy.fits
    strings = {name: value["StringValue"] for name, value in copy.attributes.items()}
    assert strings == {
        "broker.reason": "InvalidJson",
        "broker.source_queue": "orders",
        "broker.receive_count": "3",
        "broker.detail": "not JSON",
        "trace": "t-1",
    }
    assert source_queue(copy.attributes) == "orders"
    assert redriven_by(copy.attributes) is None
    back = sent_back_attributes(copy.attributes, "run-1")
    assert set(back) == {"trace", REDRIVEN_ATTRIBUTE}
    assert redriven_by(back) == "run-1"


def test_a_redriven_message_keeps_its_mark_on_a_new_copy() -> None:
    mark = {"DataType": "String", "StringValue": "run-1"}
    # Nine attributes of its own plus the mark: the mark must not be the one dropped.
    own = {f"a{i}": {"DataType": "String", "StringValue": str(i)} for i in range(9)}
    message = received({**own, REDRIVEN_ATTRIBUTE: mark})
    assert is_redriven(message)
    copy = dead_letter_copy(message, "orders", "UnknownMessageType", "no handler")
    assert len(copy.attributes) == 10
    assert redriven_by(copy.attributes) == "run-1"


def test_a_fifo_copy_keeps_the_group_and_deduplicates_on_the_message_id() -> None:
    copy = dead_letter_copy(received(), "orders.fifo", "InvalidJson", "x")
    params = copy.send_params("https://sqs.example/1/dlq.fifo", received())
    assert params["MessageGroupId"] == "broker-dead-letters"
    assert params["MessageDeduplicationId"] == "m-1"
    assert "MessageGroupId" not in copy.send_params("https://sqs.example/1/dlq", received())


def test_no_sqs_module_imports_the_composition_root() -> None:
    # ``broker redrive`` reads the contract and looks queues up without the service.
    for path in Path(sqs.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for alias in node.names
        }
        assert "broker.service" not in imported, path.name
