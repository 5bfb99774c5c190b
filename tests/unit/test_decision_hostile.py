"""Hostile clients of the public decision endpoint (issue 21, items 13-15), on the fakes.

Invariant 7: no client of the endpoint can deny it to others or spend the account's
SendTask* quota.  Bounded: a few hundred loopback connections for a few seconds.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import statistics
import time
from datetime import UTC, datetime
from typing import cast

import aiohttp
import anyio
import pytest

from broker.core.completer import Confirmation
from broker.decisions.decide import UNOPENED_LOG_BURST
from broker.decisions.endpoint import DECISION_LIMITS, SECURITY_HEADERS
from broker.decisions.links import Action, DecisionLink
from broker.decisions.memory import Settled
from broker.observability.connections import Connection, Lane
from broker.testing import FakeSfn, client_error
from tests.hostile import start_slow_bodies

from .test_decision_endpoint import Running, assert_security_headers, sfn, started

pytestmark = pytest.mark.timeout(120)
__all__ = ["sfn"]  # the fixture, shared with test_decision_endpoint

STORM = 64


def completions(sfn: FakeSfn) -> int:
    return sfn.calls["send_task_success"] + sfn.calls["send_task_failure"]


async def storm(running: Running, url: str, clients: int = STORM) -> list[int]:
    """``clients`` POSTs of ``url`` at once; their statuses."""
    statuses: list[int] = []

    async def one() -> None:
        status, _, headers = await running.call("POST", url)
        assert_security_headers(headers)
        statuses.append(status)

    async with anyio.create_task_group() as tasks:
        for _ in range(clients):
            tasks.start_soon(one)
    return statuses


# -- 14: replays are answered from memory, concurrent POSTs make one call


async def test_replaying_a_decided_link_makes_no_call(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        assert (await running.call("POST", links.approve_url))[0] == 200
        assert completions(sfn) == 1
        statuses = await storm(running, links.approve_url)
        statuses += await storm(running, links.reject_url)
        print(f"{2 * STORM} replays of a decided task: {completions(sfn) - 1} SendTask* calls")
        assert statuses == [409] * (2 * STORM)
        assert completions(sfn) == 1  # the decision itself, and nothing for the replays
        assert sfn.outcomes[token].status == "success"


async def test_replays_answered_from_memory_do_not_flood_the_log(
    sfn: FakeSfn, caplog: pytest.LogCaptureFixture
) -> None:
    async with started(sfn) as running:
        _, links = await running.task()
        assert (await running.call("POST", links.approve_url))[0] == 200
        caplog.set_level(logging.INFO, logger="broker.decision")
        caplog.clear()
        await storm(running, links.approve_url)
        events = [r for r in caplog.records if getattr(r, "event", None) == "decision"]
        assert len(events) == UNOPENED_LOG_BURST  # the rest counted, summed up later
        assert {r.__dict__["reason"] for r in events} == {"task_closed, known"}
        metrics = running.tb.broker.health.metrics().decode()
        counted = 'broker_decisions_total{action="approve",status="already_decided"}'
        assert f"{counted} {float(STORM)}" in metrics


async def test_a_task_closed_elsewhere_costs_one_call_per_replica(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        sfn.close(token)  # the state timed out, or another replica decided it
        sfn.latency_s = 0.2  # the first call is still in flight when the others arrive
        statuses = await storm(running, links.approve_url)
        statuses += await storm(running, links.reject_url)
        assert statuses == [409] * (2 * STORM)
        assert completions(sfn) == 1
        assert sfn.max_in_flight["send_task_success"] == 1


async def test_concurrent_presses_of_one_link_make_one_call_and_share_its_answer(
    sfn: FakeSfn,
) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        sfn.latency_s = 0.3
        statuses = await storm(running, links.reject_url, clients=32)
        assert sorted(statuses) == [200] * 32  # pressed together: each sees "Rejected"
        assert completions(sfn) == 1
        assert sfn.outcomes[token].error == "Approval.Rejected"
        assert (await running.call("POST", links.approve_url))[0] == 409
        assert completions(sfn) == 1


async def test_an_unconfirmed_decision_is_not_remembered(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        sfn.fail_next("send_task_success", client_error("ServiceUnavailable", status=503), times=2)
        assert (await running.call("POST", links.approve_url))[0] == 503
        assert (await running.call("POST", links.approve_url))[0] == 200  # pressed again
        assert sfn.outcomes[token].status == "success"


# -- 15: the origin of a deciding POST, headers on every answer, header sizes


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Sec-Fetch-Site": "cross-site", "Origin": "https://approve.example.com"},
        {"Origin": "https://attacker.example"},
        {"Origin": "null"},
    ],
)
async def test_a_cross_site_post_decides_nothing(sfn: FakeSfn, headers: dict[str, str]) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        status, page, reply_headers = await running.call("POST", links.approve_url, headers=headers)
        assert status == 403
        assert_security_headers(reply_headers)
        assert "another site" in page
        assert "press the button there" in page
        assert completions(sfn) == 0
        assert token not in sfn.outcomes


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin", "Origin": "https://approve.example.com"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "https://approve.example.com"},
        {"Origin": "https://APPROVE.example.com:443"},
        {},  # curl, or a browser that sends neither
    ],
)
async def test_a_same_origin_post_or_one_without_the_headers_decides(
    sfn: FakeSfn, headers: dict[str, str]
) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        status, page, _ = await running.call("POST", links.approve_url, headers=headers)
        assert (status, "Approved" in page) == (200, True)
        assert sfn.outcomes[token].status == "success"


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str]]:
    """Send ``request`` as is; the status and headers of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head = reply.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split(" ")[1]), headers


def assert_headers(headers: dict[str, str]) -> None:
    for name, value in {"Server": "broker", "Connection": "close", **SECURITY_HEADERS}.items():
        assert headers.get(name) == value, (name, headers)


@pytest.mark.parametrize(
    ("request_bytes", "statuses"),
    [
        (b"GARBAGE\r\n\r\n", {400}),
        (b"GET /decisions/x HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n", {400}),
        (b"GET /decisions/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n", {400}),
        (b"CONNECT approve.example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n", {400, 404}),
        # One header over the field limit, and more headers than allowed.
        (b"GET /decisions/x HTTP/1.1\r\nCookie: " + b"c" * 9000 + b"\r\n\r\n", {400, 431}),
        (
            b"GET /decisions/x HTTP/1.1\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(40))
            + b"\r\n",
            {400, 431},
        ),
    ],
    ids=["garbage", "bad-header", "bad-length", "connect", "long-field", "many"],
)
async def test_aiohttp_s_own_refusals_carry_the_security_headers(
    sfn: FakeSfn, request_bytes: bytes, statuses: set[int]
) -> None:
    async with started(sfn) as running:
        status, headers = await raw(running.port, request_bytes)
        assert status in statuses
        assert_headers(headers)


async def test_a_megabyte_of_headers_is_refused(sfn: FakeSfn) -> None:
    """60 headers of 16 KiB each (they were all read, and the link answered)."""
    head = (
        b"GET /decisions/not-a-link HTTP/1.1\r\nHost: a\r\n"
        + b"".join(b"X-Big-%d: %s\r\n" % (i, b"a" * 16_000) for i in range(60))
        + b"\r\n"
    )
    async with started(sfn) as running:
        try:
            status, headers = await raw(running.port, head)
        except ConnectionResetError:
            return  # refused while the rest was on its way: the answer was reset with it
        assert status in (400, 431)
        assert_headers(headers)


async def test_browser_sized_headers_are_accepted(sfn: FakeSfn) -> None:
    async with started(sfn) as running:
        _, links = await running.task()
        headers = {"Cookie": "c=" + "x" * 4000, **{f"X-Extra-{i}": "1" * 100 for i in range(15)}}
        assert (await running.call("GET", links.approve_url, headers=headers))[0] == 200


# -- 13: slow bodies can't hold the listener


async def answered_gets(
    running: Running, url: str, seconds: float
) -> tuple[list[int | None], list[float]]:
    """Legitimate GETs of ``url``, one after another for ``seconds``: their statuses and
    latencies (s)."""
    statuses: list[int | None] = []
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=5)
    while time.monotonic() < deadline:
        began = time.monotonic()
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(running.local(url)) as reply,
            ):
                await reply.read()
                statuses.append(reply.status)
        except (aiohttp.ClientError, TimeoutError):
            statuses.append(None)
        latencies.append(time.monotonic() - began)
        await anyio.sleep(0.25)
    return statuses, latencies


@pytest.mark.parametrize("link", ["forged", "valid"])
async def test_slow_bodies_at_the_cap_leave_the_endpoint_answering(sfn: FakeSfn, link: str) -> None:
    async with started(sfn) as running:
        token, links = await running.task()
        path = (
            "/decisions/" + links.approve_url.rsplit("/", 1)[1]
            if link == "valid"
            else "/decisions/not-a-link-at-all"
        )
        clients = DECISION_LIMITS.max_connections + 44  # 300: past the cap
        attack_s = 12.0  # four body deadlines (BODY_DEADLINE_S)
        slow = start_slow_bodies(running.port, clients, attack_s, path)
        try:
            await anyio.sleep(1.5)  # the connections are in
            statuses, latencies = await answered_gets(running, links.approve_url, attack_s - 3)
            opened, errors = await anyio.to_thread.run_sync(slow.communicate, None, 60)
        finally:
            if slow.poll() is None:
                slow.kill()
        print(
            f"slow bodies ({clients} clients, {link} link, {opened.strip()} connections "
            f"opened): {statuses.count(200)} of {len(statuses)} legitimate GETs answered, "
            f"in {statistics.median(latencies):.2f} s median, {max(latencies):.2f} s at most"
        )
        assert slow.returncode == 0, errors
        assert len(statuses) >= 4  # one after another, each within its 5 s timeout
        assert statuses == [200] * len(statuses)
        assert completions(sfn) == 0  # nothing decided
        assert token not in sfn.outcomes
        # They were served (and sent away) rather than left at the door.
        assert int(opened) > clients


def test_the_memory_is_bounded_by_the_links_expiry_and_its_size() -> None:
    now = [1_000_000.0]
    settled = Settled(max_entries=100, clock=lambda: now[0])

    def link(i: int, ttl_s: float, action: Action = "approve") -> DecisionLink:
        expires = datetime.fromtimestamp(now[0] + ttl_s, UTC)
        return DecisionLink(f"token-{i}", action, expires, output={})

    short = [link(i, 10) for i in range(50)]
    for one in short:
        settled.learn(one, Confirmation.CONFIRMED)
    assert settled.recall(link(0, 10, "reject")) is Confirmation.TASK_CLOSED  # the sibling
    settled.learn(link(50, 10), Confirmation.UNCONFIRMED)  # not final: not remembered
    assert settled.recall(link(50, 10)) is None
    refused = link(51, 10)
    settled.learn(refused, Confirmation.INVALID_OUTPUT)  # this link only
    assert settled.recall(refused) is Confirmation.INVALID_OUTPUT
    assert settled.recall(link(51, 10, "reject")) is None
    now[0] += 11  # the short links expired: dropped as new ones come
    for i in range(1000, 1300):
        settled.learn(link(i, 3600), Confirmation.TASK_CLOSED)
        assert len(settled) <= 100
    assert settled.recall(short[0]) is None
    assert settled.recall(link(1299, 3600)) is Confirmation.TASK_CLOSED
    assert settled.recall(link(1000, 3600)) is None  # the oldest went first
    assert "token-" not in repr(vars(settled))  # digests, not tokens


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_at_the_cap_a_connection_waiting_for_its_body_is_evicted_the_oldest_first() -> None:
    """A busy connection is kept, unless its handler waits for the client's body."""
    lane = Lane(2)
    now = time.monotonic()
    pairs = [socket.socketpair() for _ in range(2)]
    try:
        old, older = (
            Connection(pair[0], lane, opened=now - age, idle_since=now - age, busy=1)
            for pair, age in zip(pairs, (1.0, 2.0), strict=True)
        )
        transports = {old: _Transport(), older: _Transport()}
        for connection in (older, old):  # the lane's order: idle the longest first
            connection.transport = cast(asyncio.Transport, transports[connection])
            lane.open[connection] = None
        assert not lane.make_room(now)  # both handling a request: the newcomer goes
        old.waiting = older.waiting = 1  # both reading a body that does not come
        assert lane.make_room(now)
        assert transports[older].aborted
        assert not transports[old].aborted
        assert list(lane.open) == [old]
    finally:
        for pair in pairs:
            for sock in pair:
                sock.close()
