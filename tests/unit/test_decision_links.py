"""The decision-link codec: sealed, rotating keys, bounded, refusing any change."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from broker import ConfigError
from broker.decisions.links import (
    MAX_BLOB_CHARS,
    DecisionKeys,
    DecisionLink,
    LinkCodec,
    LinkMaker,
    LinkRefused,
    new_key,
)

BASE = "https://approve.example.com/broker/"
TOKEN = "AQCEAAAAKgAAAAMAAAAAAAAAAf" + "x" * 600  # AWS tokens are several hundred characters
NOW = 1_800_000_000.0


def codec(*keys: str, now: float = NOW) -> LinkCodec:
    return LinkCodec(DecisionKeys.parse(list(keys)), BASE, clock=lambda: now)


def link(action: str = "approve", **fields: object) -> DecisionLink:
    values: dict[str, object] = {
        "token": TOKEN,
        "action": action,
        "expires_at": datetime.fromtimestamp(NOW + 3600, UTC),
        "subject": "Refund #42",
        "details": "<b>100 EUR</b> to Ms. O'Neil",
    }
    if action == "approve":
        values["output"] = {"approved": True, "by": "link"}
    else:
        values |= {"error": "Approval.Rejected", "cause": "no"}
    values.update(fields)
    return DecisionLink(**values)  # type: ignore[arg-type]


def blob(url: str) -> str:
    assert url.startswith("https://approve.example.com/broker/decisions/")
    return url.rsplit("/", 1)[1]


def raw(b: str) -> bytearray:
    return bytearray(base64.urlsafe_b64decode(b + "=" * (-len(b) % 4)))


def encode(data: bytes | bytearray) -> str:
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode()


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_round_trip_without_the_token_in_the_clear(action: str) -> None:
    key = new_key()
    made = link(action)
    url = codec(key).make(made)
    assert TOKEN not in url
    assert TOKEN[:40] not in url
    assert "Refund" not in url  # the page texts are sealed too
    assert codec(key).open(blob(url)) == made
    assert codec(key).blob_of(url) == blob(url)


def test_a_link_made_with_the_old_key_opens_after_a_new_one_is_prepended() -> None:
    old, new = new_key(), new_key()
    before = codec(old).make(link())
    rotated = codec(new, old)
    assert rotated.open(blob(before)) == link()
    after = rotated.make(link())
    # New links are sealed by the new first key: the old key alone refuses them.
    with pytest.raises(LinkRefused) as refused:
        codec(old).open(blob(after))
    assert refused.value.reason == "unknown_key"
    assert codec(new).open(blob(after)) == link()


def test_a_link_of_a_key_no_longer_listed_is_refused_as_unknown_key() -> None:
    url = codec(new_key()).make(link())
    with pytest.raises(LinkRefused) as refused:
        codec(new_key()).open(blob(url))
    assert refused.value.reason == "unknown_key"


def test_one_flipped_bit_anywhere_is_refused() -> None:
    key = new_key()
    original = raw(blob(codec(key).make(link())))
    reasons = set()
    for index in range(len(original)):
        changed = bytearray(original)
        changed[index] ^= 0x01
        with pytest.raises(LinkRefused) as refused:
            codec(key).open(encode(changed))
        # The version byte and the key id say "not ours"; nonce, ciphertext and tag fail
        # the authentication.
        expected = "malformed" if index == 0 else "unknown_key" if index < 5 else "tampered"
        assert refused.value.reason == expected, index
        reasons.add(refused.value.reason)
    assert reasons == {"malformed", "unknown_key", "tampered"}


@pytest.mark.parametrize(
    "bad", ["", "!!!", "a", "x" * (MAX_BLOB_CHARS + 1), "é" * 40, encode(b"\x01" * 20)]
)
def test_garbage_is_refused_as_malformed(bad: str) -> None:
    with pytest.raises(LinkRefused) as refused:
        codec(new_key()).open(bad)
    assert refused.value.reason == "malformed"


def test_truncated_or_extended_blobs_are_refused() -> None:
    key = new_key()
    good = blob(codec(key).make(link()))
    for bad in (good[:-1], good[:-4], good + "A", good + "AAAA"):
        with pytest.raises(LinkRefused):
            codec(key).open(bad)


def test_expiry_is_read_by_the_codec_clock() -> None:
    key = new_key()
    made = codec(key).make(link(expires_at=datetime.fromtimestamp(NOW + 10, UTC)))
    opened = codec(key).open(blob(made))
    assert not codec(key, now=NOW + 9).expired(opened)
    assert codec(key, now=NOW + 10).expired(opened)


def test_keys_are_checked_and_never_quoted() -> None:
    secret = base64.urlsafe_b64encode(b"k" * 31).decode()
    with pytest.raises(ConfigError) as error:
        DecisionKeys.parse([new_key(), secret])
    assert "BROKER_DECISION_KEYS: key 1 is not 32 bytes" in str(error.value)
    assert secret not in str(error.value)
    with pytest.raises(ConfigError, match="no key"):
        DecisionKeys.parse([])
    same = new_key()
    with pytest.raises(ConfigError, match="twice"):
        DecisionKeys.parse([same, same])
    assert len(base64.urlsafe_b64decode(new_key())) == 32


def test_link_maker_makes_both_links_with_the_default_ttl() -> None:
    key = new_key()
    maker = LinkMaker(codec(key), 86_400, clock=lambda: NOW)
    links = maker.links(TOKEN, subject="Refund #42", details="d", reject=("Nope", "why"))
    assert links.expires_at == datetime.fromtimestamp(NOW + 86_400, UTC)
    approve = codec(key).open(blob(links.approve_url))
    reject = codec(key).open(blob(links.reject_url))
    assert (approve.action, approve.output, approve.token) == ("approve", {"approved": True}, TOKEN)
    assert (reject.action, reject.error, reject.cause) == ("reject", "Nope", "why")
    assert approve.expires_at == reject.expires_at == links.expires_at
    assert maker.links(TOKEN, ttl_s=60).expires_at == datetime.fromtimestamp(NOW + 60, UTC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject": "s" * 201}, "subject has 201 characters, at most 200"),
        ({"details": "d" * 2001}, "details has 2001 characters, at most 2000"),
        ({"approve": {"blob": "o" * 2048}}, "approve encodes to 2059 bytes, at most 2048"),
        ({"approve": {"when": object()}}, "approve is not JSON"),
        ({"approve": ["not", "an", "object"]}, "approve must be a JSON object"),
        ({"reject": ("E" * 257, "")}, "reject error has 257 characters, at most 256"),
        ({"reject": ("", "cause")}, "reject error must not be empty"),
        ({"reject": ("E", "c" * 1025)}, "reject cause has 1025 characters"),
        ({"ttl_s": 0}, "ttl_s must be > 0"),
    ],
)
def test_what_does_not_fit_in_a_link_is_refused_when_it_is_made(
    kwargs: dict[str, object], message: str
) -> None:
    maker = LinkMaker(codec(new_key()), 86_400)
    with pytest.raises((ValueError, TypeError), match="decision_links: " + message):
        maker.links(TOKEN, **kwargs)  # type: ignore[arg-type]


def test_the_largest_link_stays_under_9000_characters() -> None:
    # A 2048-character token (Step Functions' limit) and every text at its bound.
    maker = LinkMaker(codec(new_key()), 86_400)
    links = maker.links(
        "t" * 2048,
        subject="s" * 200,
        details="d" * 2000,
        approve={"o": "x" * 2000},
        reject=("E" * 256, "c" * 1024),
    )
    assert len(links.approve_url) < 9000
    assert len(links.reject_url) < 9000
    assert len(blob(links.reject_url)) <= MAX_BLOB_CHARS
    # Non-ASCII text takes more bytes: past the overall bound, a clear refusal.
    with pytest.raises(ValueError, match="a decision link carries at most"):
        maker.links("t" * 2048, subject="é" * 200, details="€" * 2000)
