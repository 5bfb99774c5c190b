"""The lean SQS client: ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibility(Batch).

These four are the SQS calls of the hot path; ``LeanTransport`` sends them (SQS's JSON
protocol, the one botocore, moto, LocalStack and the stub speak).  Every other SQS call
(GetQueueUrl, GetQueueAttributes, SendMessage for dead-lettering, …) goes to the
botocore client, ``fallback``.

A received message is checked before the broker sees it, as the AWS SDKs for Java and
JavaScript check it (botocore checks nothing): ``MD5OfBody`` against the body's UTF-8
bytes, ``MD5OfMessageAttributes`` against the attributes SQS returned (AWS's encoding:
sorted by name; each name, data type and value length-prefixed, a transport byte 1 for
String/Number, 2 for Binary).  A message that fails either check is left out of the
answer and logged: it was damaged on the way, so it stays invisible and comes back when
its visibility timeout lapses (and the queue's redrive policy moves it if it never
arrives whole).  ``BinaryValue``s arrive base64-encoded in JSON and are handed on as
bytes, as botocore's parser does, so a dead-letter copy sends them back unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import struct
from collections.abc import Mapping
from typing import Any

from broker.aws.lean import LeanTransport

__all__ = ["LeanSqs", "attributes_md5"]

log = logging.getLogger("broker.aws.sqs")

_LENGTH = struct.Struct(">I")


def attributes_md5(attributes: Mapping[str, Mapping[str, Any]]) -> str:
    """SQS's ``MD5OfMessageAttributes`` of these attributes (values as botocore gives
    them: ``StringValue`` str, ``BinaryValue`` bytes)."""
    digest = hashlib.md5()  # noqa: S324 - SQS's checksum, not a security measure
    for name in sorted(attributes):
        attribute = attributes[name]
        data_type = str(attribute.get("DataType", ""))
        digest.update(_field(name.encode()))
        digest.update(_field(data_type.encode()))
        if data_type.startswith("Binary"):
            digest.update(b"\x02")
            digest.update(_field(bytes(attribute.get("BinaryValue", b""))))
        else:
            digest.update(b"\x01")
            digest.update(_field(str(attribute.get("StringValue", "")).encode()))
    return digest.hexdigest()


def _field(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


def _body_md5(body: str) -> str:
    return hashlib.md5(body.encode("utf-8", "surrogatepass")).hexdigest()  # noqa: S324


class LeanSqs:
    """``SqsApi`` with the four hot calls lean; the rest on ``fallback`` (botocore)."""

    def __init__(self, transport: LeanTransport, fallback: object) -> None:
        self._transport = transport
        self._fallback = fallback
        #: Messages left out of a receive because a checksum did not match.
        self.damaged = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)

    async def receive_message(self, **params: Any) -> Mapping[str, Any]:
        response = await self._transport.call("ReceiveMessage", params)
        messages = response.get("Messages")
        if messages:
            response["Messages"] = [m for m in messages if self._intact(m)]
        return response

    async def delete_message_batch(self, **params: Any) -> Mapping[str, Any]:
        return await self._transport.call("DeleteMessageBatch", params)

    async def change_message_visibility(self, **params: Any) -> Mapping[str, Any]:
        return await self._transport.call("ChangeMessageVisibility", params)

    async def change_message_visibility_batch(self, **params: Any) -> Mapping[str, Any]:
        return await self._transport.call("ChangeMessageVisibilityBatch", params)

    def _intact(self, message: dict[str, Any]) -> bool:
        """Check the checksums (and decode binary attributes in place)."""
        expected = message.get("MD5OfBody")
        if expected is not None and _body_md5(message.get("Body", "")) != expected:
            return self._damaged(message, "MD5OfBody")
        attributes = message.get("MessageAttributes")
        if attributes:
            for attribute in attributes.values():
                value = attribute.get("BinaryValue")
                if isinstance(value, str):
                    attribute["BinaryValue"] = base64.b64decode(value)
            expected = message.get("MD5OfMessageAttributes")
            if expected is not None and attributes_md5(attributes) != expected:
                return self._damaged(message, "MD5OfMessageAttributes")
        return True

    def _damaged(self, message: Mapping[str, Any], checksum: str) -> bool:
        self.damaged += 1
        log.error(
            "message %s received with a %s that does not match its content (damaged on "
            "the way): left out; it comes back after its visibility timeout",
            message.get("MessageId", "?"),
            checksum,
        )
        return False
