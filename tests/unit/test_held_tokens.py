"""The held tokens (observability/held.py): what every redaction looks for by content.

The spellings-by-ways-out table is tests/integration/test_token_spellings.py; here, the
registry's bounds and the emulators' short UUID tokens.
"""

from __future__ import annotations

import base64
import uuid

from broker.observability import held
from broker.observability.redact import redact, redact_token, token_ref


def test_a_held_uuid_token_is_found_by_content_without_its_message() -> None:
    token = str(uuid.uuid4())  # what moto and LocalStack hand out
    line = f"GET /callbacks/{token}/done, state {base64.b64encode(token.encode()).decode()}"
    assert redact(line) == line  # not held: no rule of its own catches it here
    held.hold(token)
    try:
        hidden = redact(line)
        assert token not in hidden
        assert hidden == f"GET /callbacks/{token_ref(token)}/done, state {token_ref(token)}"
        assert redact_token(line, None) == hidden
    finally:
        held.release(token)


def test_a_token_stays_held_until_its_last_holder_releases_it_then_a_while_more() -> None:
    token = str(uuid.uuid4())
    index = held.index_of()
    held.hold(token)
    held.hold(token)  # an in-process duplicate of the same task
    held.release(token)
    assert token in index.tokens
    held.release(token)
    assert token in index.tokens  # released: still matched, for late lines
    assert redact(f"late: {token}") == f"late: {token_ref(token)}"
    for _ in range(held.RECENT):
        other = str(uuid.uuid4())
        held.hold(other)
        held.release(other)
    assert token not in index.tokens  # bounded: the oldest released go first
    assert redact(f"later: {token}") == f"later: {token}"


def test_tokens_too_short_to_match_by_content_are_not_indexed() -> None:
    short = "t-" + "x" * (held.MIN_RUN - 3)
    held.hold(short)
    try:
        assert short not in held.index_of().tokens
        assert redact(f"about {short}") == f"about {short}"
        assert redact(f"about {short}", short) == f"about {token_ref(short)}"  # by spelling
    finally:
        held.release(short)


def test_a_run_without_capitals_is_found_in_a_chunk_without_capitals() -> None:
    # Chunks without a capital letter (ids, paths) are searched as written only: a token's
    # run without capitals must still be found there, wherever the run starts.
    run = "abcdefghijklmnopqrstuvwxyz0123456789"
    token = f"QUJD{run}XYZ+/W" * 3
    held.hold(token)
    try:
        for cut in range(held.STEP + 1):
            piece = run[cut : cut + held.MIN_RUN]
            line = f"open /srv/{piece}/x.py"
            assert piece not in redact(line), cut
            assert redact(line) == f"open /srv/{token_ref(token)}/x.py"
    finally:
        held.release(token)


def test_a_token_in_a_structured_extra_field_is_hidden() -> None:
    import logging

    from tests.observing import json_logs

    token = base64.b64encode(uuid.uuid4().bytes * 8).decode()
    held.hold(token)
    try:
        with json_logs("INFO") as logs:
            logging.getLogger("handler").warning(
                "sent", extra={"request": {"callback": [f"/cb?t={token}"]}, "n": 3}
            )
    finally:
        held.release(token)
    line = logs.getvalue()
    assert token[:20] not in line
    assert token_ref(token) in line
    assert '"n":3' in line
