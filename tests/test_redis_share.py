"""RedisShare against a real Redis: leases, shared records, take-over, outages.

Every test talks to a real Redis (the ``redis_url`` fixture, keys under the
test's own ``redis_prefix``) and to real aiohttp servers on loopback
(:class:`~replipoll.testing.FakeReplicate`). "Processes" are managers with
clients and shares of their own on separate connections; one test kills a
real subprocess with SIGKILL, another kills and restarts a redis-server of
its own. To tell the processes' requests apart on one fake server, one
client polls under ``/v1`` and the other under ``/replicate/v1``.
Waits are for events with generous bounds; the timings asserted are upper
bounds a loaded 2-core machine meets.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis.asyncio as aioredis
import replipoll
from aiohttp import web
from aiohttp.test_utils import TestServer
from replipoll import ConfigurationError, PollManager, PollPolicy, Prediction
from replipoll.redis import RedisShare
from replipoll.testing import FakeClock, FakeReplicate

from tests.stalls import StallWatch

#: Leases in these tests last a second: take-overs happen within about that.
TTL = 1.0
FAST = PollPolicy.fixed(0.1)
#: How long a wait may take before it counts as hung (generous: a shared
#: machine may stand still for seconds, and a lease of 1 s lapses then).
PATIENCE = 30.0
GATEWAY = "/replicate/v1"


async def until(condition: Callable[[], bool], patience: float = PATIENCE) -> None:
    """Wait until ``condition()`` holds; fail after ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {patience} s")
        await asyncio.sleep(0.01)


def share_tasks() -> list[asyncio.Task[Any]]:
    return [
        t for t in asyncio.all_tasks() if t.get_name().startswith("replipoll-redis")
    ]


def polls_by_prefix(server: FakeReplicate, pid: str) -> Counter[str]:
    """Requests for ``pid`` per client: ``/v1`` or the gateway's prefix."""
    counts: Counter[str] = Counter()
    for record in server.stats.request_log:
        if record.path.endswith(f"/predictions/{pid}"):
            counts[GATEWAY if record.path.startswith(GATEWAY) else "/v1"] += 1
    return counts


@pytest_asyncio.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A connection of the test's own, to look at the keys."""
    connection = aioredis.Redis.from_url(redis_url)
    yield connection
    await connection.aclose()


@pytest.fixture
def make_share(redis_url: str, redis_prefix: str) -> Callable[..., RedisShare]:
    def make(**options: Any) -> RedisShare:
        options = {"prefix": redis_prefix, "lease_ttl": TTL, **options}
        return RedisShare.from_url(redis_url, **options)

    return make


def client_of(server: FakeReplicate, prefix: str = "/v1") -> replipoll.Client:
    return replipoll.Client(base_url=server.base_url(prefix), api_key=server.api_key)


async def leases(raw: aioredis.Redis, prefix: str, ids: list[str]) -> list[Any]:
    return list(await raw.mget([f"{prefix}lease:{pid}" for pid in ids]))


# -- the protocol and the options ------------------------------------------------


async def test_a_redis_share_is_a_share(redis_url: str) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    share = RedisShare(connection)
    assert isinstance(share, replipoll.Share)
    assert (share.prefix, share.lease_ttl, share.result_ttl) == (
        "replipoll:",
        10.0,
        3600.0,
    )
    assert (share.timeout, share.on_unavailable) == (1.0, "local")
    await share.aclose()
    await connection.aclose()


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"lease_ttl": 0}, "lease_ttl"),
        ({"lease_ttl": 0.01}, "lease_ttl"),
        ({"lease_ttl": float("inf")}, "lease_ttl"),
        ({"result_ttl": -1}, "result_ttl"),
        ({"result_ttl": "1h"}, "result_ttl"),
        ({"timeout": 0}, "timeout"),
        ({"prefix": b"x:"}, "prefix"),
        ({"on_unavailable": "fail"}, "on_unavailable"),
    ],
)
async def test_unusable_options_are_refused_by_name(
    redis_url: str, options: dict[str, Any], option: str
) -> None:
    connection = aioredis.Redis.from_url(redis_url)
    with pytest.raises(ConfigurationError) as caught:
        RedisShare(connection, **options)
    assert caught.value.option == option
    await connection.aclose()


def test_a_sync_redis_client_is_refused() -> None:
    import redis

    with pytest.raises(ConfigurationError, match=r"redis\.asyncio\.Redis") as caught:
        RedisShare(redis.Redis())  # type: ignore[arg-type]
    assert caught.value.option == "redis"


async def test_one_share_serves_one_manager_at_a_time(
    fake_replicate: FakeReplicate, make_share: Callable[..., RedisShare]
) -> None:
    pid = fake_replicate.add_prediction(duration=0)
    async with client_of(fake_replicate) as client, make_share() as share:
        async with PollManager(client, share=share, sweep=False) as first:
            second = PollManager(client, share=share, sweep=False)
            with pytest.raises(ConfigurationError, match="its own") as caught:
                await second.__aenter__()
            assert caught.value.option == "share"
            workers = [t for t in asyncio.all_tasks() if "worker" in t.get_name()]
            assert len(workers) == first.max_concurrency  # none left by the second
            assert (await first.wait(pid)).status == "succeeded"
        # Free again once the first closed.
        async with PollManager(client, share=share, sweep=False) as third:
            assert (await third.wait(pid)).status == "succeeded"
    assert not share_tasks()


# -- sharing -----------------------------------------------------------------------


async def test_two_processes_poll_each_id_from_one_of_them_and_both_resolve(
    fake_replicate: FakeReplicate, make_share: Callable[..., RedisShare]
) -> None:
    """50 ids tracked by two managers cost what one manager alone makes:
    each id's requests all come from one of them."""
    server = fake_replicate
    alone = server.add_predictions(50, duration=0.6)
    shared = server.add_predictions(50, duration=0.6)
    options: dict[str, Any] = {"policy": FAST, "sweep": False}
    async with (
        client_of(server) as client_a,
        client_of(server, GATEWAY) as client_b,
        client_of(server) as client_c,
        make_share() as share_a,
        make_share() as share_b,
        PollManager(client_a, share=share_a, **options) as a,
        PollManager(client_b, share=share_b, **options) as b,
        PollManager(client_c, **options) as baseline,
    ):
        # Each manager takes half of the ids first, then follows all of them.
        first_a = [a.submit(pid) for pid in shared[:25]]
        first_b = [b.submit(pid) for pid in shared[25:]]
        lone = [baseline.submit(pid) for pid in alone]
        await asyncio.sleep(0.1)
        rest = [a.submit(pid) for pid in shared[25:]]
        rest += [b.submit(pid) for pid in shared[:25]]
        results = await asyncio.wait_for(
            asyncio.gather(*first_a, *first_b, *rest, *lone), PATIENCE
        )
    assert len(results) == 150
    assert all(p.status == "succeeded" for p in results)
    per_id = server.stats.requests_per_id
    one, two = sum(per_id[pid] for pid in alone), sum(per_id[pid] for pid in shared)
    print(f"requests for 50 ids: {one} by one manager alone, {two} by two sharing")
    assert two <= one * 1.15 + 5, (one, two)
    for pid in shared:
        assert len(polls_by_prefix(server, pid)) == 1, polls_by_prefix(server, pid)
    assert {next(iter(polls_by_prefix(server, pid))) for pid in shared} == {
        "/v1",
        GATEWAY,
    }
    assert a.stats.requests + b.stats.requests == two


async def test_a_webhook_landing_on_one_process_resolves_the_wait_in_another(
    fake_replicate: FakeReplicate,
    make_share: Callable[..., RedisShare],
    stalls: StallWatch,
) -> None:
    """B does not track the id; the webhook it receives ends A's wait,
    long before A's next poll (30 s away)."""
    server = fake_replicate
    async with (
        client_of(server) as client_a,
        client_of(server, GATEWAY) as client_b,
        make_share() as share_a,
        make_share() as share_b,
        PollManager(client_a, share=share_a, policy=PollPolicy.fixed(30)) as a,
        PollManager(client_b, share=share_b) as b,
    ):
        app = web.Application()
        app.router.add_post(
            "/hook", replipoll.webhook_handler(b, server.webhook_secret)
        )
        async with TestServer(app, host="127.0.0.1") as receiver:
            pid = server.add_prediction(
                duration=0.3,
                webhook=str(receiver.make_url("/hook")),
                webhook_events_filter=["completed"],
            )
            started = time.monotonic()
            done = await asyncio.wait_for(a.wait(pid), PATIENCE)
            took = stalls.ran(started, time.monotonic())
    assert done.status == "succeeded"
    assert done.to_json() == server.prediction_state(pid)
    assert took < 5
    assert server.stats.requests_per_id[pid] == 1  # A's first poll, nothing else
    assert (b.stats.pushed, b.stats.requests) == (0, 0)  # not tracked in B


async def test_a_running_record_pushed_elsewhere_updates_the_latest_here(
    fake_replicate: FakeReplicate, make_share: Callable[..., RedisShare]
) -> None:
    pid = fake_replicate.add_prediction(duration=30)
    updates: list[str] = []
    async with (
        client_of(fake_replicate) as client,
        make_share() as share_a,
        make_share() as share_b,
        PollManager(
            client,
            share=share_a,
            policy=PollPolicy.fixed(30),
            on_update=lambda p: updates.append(str(p.status)),
        ) as a,
        PollManager(client, share=share_b) as b,
    ):
        future = a.submit(pid)
        await until(lambda: updates == ["processing"])
        record = (await client.get(pid)).to_json()
        logs = Prediction.from_json({**record, "logs": "half way"})
        b.push(logs)
        await until(lambda: a.latest(pid) == logs)
        b.push(Prediction.from_json({**record, "status": "failed", "error": "boom"}))
        failed = await asyncio.wait_for(future, PATIENCE)
    assert (failed.status, failed.error) == ("failed", "boom")
    assert updates == ["processing", "failed"]


async def test_a_late_process_finds_a_stored_result_without_a_request(
    fake_replicate: FakeReplicate,
    make_share: Callable[..., RedisShare],
    raw: aioredis.Redis,
    redis_prefix: str,
) -> None:
    ids = fake_replicate.add_predictions(5, duration=0)
    async with (
        client_of(fake_replicate) as client,
        make_share(result_ttl=60) as share,
        PollManager(client, share=share, sweep=False) as first,
    ):
        await asyncio.gather(*map(first.wait, ids))
    polled = sum(fake_replicate.stats.requests_per_id[pid] for pid in ids)
    assert polled == 5
    for pid in ids:
        assert 0 < await raw.pttl(f"{redis_prefix}result:{pid}") <= 60_000
    async with (
        client_of(fake_replicate) as client,
        make_share() as share,
        PollManager(client, share=share, sweep=False) as late,
    ):
        records = await asyncio.wait_for(asyncio.gather(*map(late.wait, ids)), 5)
    assert [p.id for p in records] == ids
    assert [p.to_json() for p in records] == [
        fake_replicate.prediction_state(pid) for pid in ids
    ]
    assert late.stats.requests == 0
    assert sum(fake_replicate.stats.requests_per_id[pid] for pid in ids) == polled
    assert await leases(raw, redis_prefix, ids) == [None] * 5  # given back


# -- leases ------------------------------------------------------------------------

_PROCESS = """
import asyncio, sys
import replipoll
from replipoll.redis import RedisShare

async def main():
    base, key, url, prefix, *ids = sys.argv[1:]
    async with (
        replipoll.Client(base_url=base, api_key=key) as client,
        RedisShare.from_url(url, prefix=prefix, lease_ttl=1.0) as share,
        replipoll.PollManager(
            client, share=share, sweep=False, policy=replipoll.PollPolicy.fixed(0.2)
        ) as manager,
    ):
        await asyncio.gather(*map(manager.wait, ids))

asyncio.run(main())
"""


async def test_a_killed_process_ids_are_taken_over_within_about_the_lease_ttl(
    make_share: Callable[..., RedisShare],
    raw: aioredis.Redis,
    redis_url: str,
    redis_prefix: str,
    tmp_path: Path,
    stalls: StallWatch,
) -> None:
    """A subprocess holds the leases and polls; kill -9; this process polls
    and resolves the ids once the leases expired: within lease_ttl plus one
    retry (lease_ttl / 4), and not before the leases could have expired."""
    clock = FakeClock()
    async with FakeReplicate(clock=clock) as server:
        ids = server.add_predictions(10, duration=100)
        errors = (tmp_path / "stderr.txt").open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _PROCESS,
            server.base_url(GATEWAY),
            server.api_key,
            redis_url,
            redis_prefix,
            *ids,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        try:
            for _ in range(int(PATIENCE / 0.05)):
                if None not in await leases(raw, redis_prefix, ids):
                    break
                assert process.returncode is None, (tmp_path / "stderr.txt").read_text()
                await asyncio.sleep(0.05)
            else:
                pytest.fail("the subprocess never took the leases")
            held_by = set(await leases(raw, redis_prefix, ids))
            resolved: dict[str, float] = {}
            async with (
                client_of(server) as client,
                make_share() as share,
                PollManager(client, share=share, sweep=False, policy=FAST) as survivor,
            ):
                futures = [survivor.submit(pid) for pid in ids]
                for future in futures:
                    future.add_done_callback(
                        lambda done: resolved.setdefault(
                            done.result().id, time.monotonic()
                        )
                    )
                await asyncio.sleep(0.5)
                assert survivor.stats.requests == 0  # the leases are the other's
                assert all(polls_by_prefix(server, pid)[GATEWAY] for pid in ids)
                process.kill()
                await process.wait()
                killed = time.monotonic()
                clock.advance(200)  # all finished: the first poll resolves each
                records = await asyncio.wait_for(asyncio.gather(*futures), PATIENCE)
            given_back = await leases(raw, redis_prefix, ids)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            errors.close()
    assert all(p.status == "succeeded" for p in records)
    takeover = [resolved[pid] - killed for pid in ids]
    print(f"take-over after kill -9: {min(takeover):.2f} to {max(takeover):.2f} s")
    # The last renewal was at most TTL / 3 before the kill (unless the
    # machine stood still then: the renewal came later than planned).
    if not stalls.stalled(killed - TTL, killed):
        assert min(takeover) > TTL * 2 / 3 - 0.2, takeover
    # (An upper bound leaves out the time the machine stood still.)
    ran = [stalls.ran(killed, resolved[pid]) for pid in ids]
    assert max(ran) < TTL * 1.25 + 1.0, ran
    assert all(polls_by_prefix(server, pid)["/v1"] >= 1 for pid in ids)
    assert given_back == [None] * len(ids)
    assert len(held_by) == 1


async def test_an_exchange_turns_a_resync_asked_meanwhile_into_claims(
    fake_replicate: FakeReplicate, make_share: Callable[..., RedisShare]
) -> None:
    """The listener subscribed again while a round trip ran: the worker's
    ``while pending()`` must end. An exchange that left the resync pending
    would send empty round trips forever, and never renew a lease again."""
    pid = fake_replicate.add_prediction(duration=100)
    async with (
        client_of(fake_replicate) as client,
        make_share() as share,
        PollManager(client, share=share, policy=PollPolicy.fixed(30)) as manager,
    ):
        manager.submit(pid)
        session = share._session
        assert session is not None
        await until(lambda: pid in session.held)
        worker = session.tasks[0]  # (stopped: this test drives the exchanges)
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        session.held.discard(pid)  # a lease lost during an outage
        session.resync = True  # what the listener sets on subscribing again
        await share._exchange(session)
        assert not session.pending()
        assert pid in session.held  # claimed again, still free to take


async def test_cancelling_an_awaiter_gives_the_lease_back(
    fake_replicate: FakeReplicate,
    make_share: Callable[..., RedisShare],
    raw: aioredis.Redis,
    redis_prefix: str,
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    key = f"{redis_prefix}lease:{pid}"
    async with (
        client_of(fake_replicate) as client,
        make_share(lease_ttl=30) as share,
        PollManager(client, share=share, sweep=False) as manager,
    ):
        future = manager.submit(pid)
        for _ in range(500):
            if await raw.get(key):
                break
            await asyncio.sleep(0.01)
        assert await raw.pttl(key) > 25_000
        future.cancel()
        for _ in range(500):
            if not await raw.exists(key):
                break
            await asyncio.sleep(0.01)
        assert not await raw.exists(key)  # long before its 30 s were up


async def test_a_lease_taken_by_someone_else_stops_the_polls_here(
    fake_replicate: FakeReplicate,
    make_share: Callable[..., RedisShare],
    raw: aioredis.Redis,
    redis_prefix: str,
) -> None:
    """The renewal finds the lease lost: polls stop; once it is free again,
    this process takes it back (within a retry) and polls again."""
    pid = fake_replicate.add_prediction(duration=60)
    key = f"{redis_prefix}lease:{pid}"
    polls = fake_replicate.stats.requests_per_id
    async with (
        client_of(fake_replicate) as client,
        make_share() as share,
        PollManager(client, share=share, sweep=False, policy=FAST) as manager,
    ):
        manager.submit(pid)
        await until(lambda: polls[pid] >= 3)
        await raw.set(key, "another-process", px=60_000)
        await until(lambda: not share.may_poll(pid), patience=3 * TTL)
        await asyncio.sleep(0.2)  # a poll scheduled before may still be in flight
        stopped = polls[pid]
        await asyncio.sleep(0.6)
        assert polls[pid] == stopped
        await raw.delete(key)
        await until(lambda: polls[pid] > stopped, patience=3 * TTL)
        assert await raw.get(key) not in (None, b"another-process")


# -- failures ----------------------------------------------------------------------


async def test_a_record_that_does_not_decode_is_logged_and_the_listener_goes_on(
    fake_replicate: FakeReplicate,
    make_share: Callable[..., RedisShare],
    raw: aioredis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    async with (
        client_of(fake_replicate) as client,
        make_share() as share,
        PollManager(client, share=share, policy=PollPolicy.fixed(30)) as manager,
    ):
        future = manager.submit(pid)
        await until(lambda: manager.latest(pid) is not None)
        channel = f"{redis_prefix}records"
        for junk in (b"{not json", b"[]", replipoll_json({"id": pid, "record": []})):
            await raw.publish(channel, junk)
        record = {**(await client.get(pid)).to_json(), "status": "canceled"}
        await raw.publish(channel, replipoll_json({"id": pid, "record": record}))
        done = await asyncio.wait_for(future, PATIENCE)
    assert done.status == "canceled"
    said = [r for r in caplog.records if r.name == "replipoll.redis"]
    assert len([r for r in said if "does not decode" in r.getMessage()]) == 3
    assert all(r.levelno == logging.WARNING for r in said)


def replipoll_json(data: object) -> bytes:
    import json

    return json.dumps(data).encode()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, to kill and start again."""

    def __init__(self, folder: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("no redis-server binary")
        self.binary, self.folder, self.port = binary, folder, _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(self.folder)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        probe = aioredis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            for _ in range(400):
                with contextlib.suppress(OSError, aioredis.RedisError):
                    if await probe.ping():
                        return
                await asyncio.sleep(0.025)
            pytest.fail("the private redis-server did not start")
        finally:
            await probe.aclose()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@pytest_asyncio.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


async def test_with_redis_down_each_process_polls_alone_and_shares_again_after(
    private_redis: PrivateRedis,
    caplog: pytest.LogCaptureFixture,
    stalls: StallWatch,
) -> None:
    """Redis dies: an ERROR, once; each process polls what it tracks (the
    ids a peer held too), and ids resolve. Redis returns: a WARNING, the
    leases are taken again, each id is polled from one process again."""
    clock = FakeClock()
    prefix = "outage:"
    soon, later = "soon", "later"

    def share() -> RedisShare:
        return RedisShare.from_url(private_redis.url, prefix=prefix, lease_ttl=TTL)

    async with FakeReplicate(clock=clock) as server:
        early = [server.add_prediction(f"{soon}{n}", duration=1) for n in range(5)]
        late = [server.add_prediction(f"{later}{n}", duration=100) for n in range(5)]
        ids = early + late
        async with (
            client_of(server) as client_a,
            client_of(server, GATEWAY) as client_b,
            share() as share_a,
            share() as share_b,
            PollManager(client_a, share=share_a, sweep=False, policy=FAST) as a,
            PollManager(client_b, share=share_b, sweep=False, policy=FAST) as b,
        ):
            waits_a = [a.submit(pid) for pid in ids]  # A holds every lease
            await asyncio.sleep(0.3)
            waits_b = [b.submit(pid) for pid in ids]
            await asyncio.sleep(0.3)
            assert b.stats.requests == 0
            await private_redis.kill()
            await until(lambda: share_a.degraded and share_b.degraded)
            # B polls the ids A held, and both resolve the early ones alone.
            clock.advance(2)
            await asyncio.wait_for(asyncio.gather(*waits_a[:5], *waits_b[:5]), PATIENCE)
            assert all(polls_by_prefix(server, pid)[GATEWAY] for pid in early)
            await until(
                lambda: all(polls_by_prefix(server, pid)[GATEWAY] for pid in late)
            )
            await private_redis.start()
            await until(lambda: not share_a.degraded and not share_b.degraded)
            check = aioredis.Redis.from_url(private_redis.url)
            try:
                await until_async(
                    lambda: check.exists(*(f"{prefix}lease:{pid}" for pid in late)),
                    len(late),
                )
            finally:
                await check.aclose()
            await asyncio.sleep(0.3)  # polls sent before the leases settled
            # One process polls each id again. (A lease lapses when its
            # holder stands still for a TTL: then both may poll for a moment,
            # as they should; such a window is looked at again.)
            for _ in range(5):
                start = time.monotonic()
                before = {pid: polls_by_prefix(server, pid) for pid in late}
                await asyncio.sleep(0.8)
                grown = {
                    pid: polls_by_prefix(server, pid) - before[pid] for pid in late
                }
                if not stalls.stalled(start - TTL, time.monotonic()):
                    break
            else:
                pytest.fail("the machine stood still in every window")
            for pid in late:
                assert len(grown[pid]) == 1, (pid, grown[pid])
            clock.advance(200)
            await asyncio.wait_for(asyncio.gather(*waits_a, *waits_b), PATIENCE)
    said = [r for r in caplog.records if r.name == "replipoll.redis"]
    errors = [r for r in said if r.levelno == logging.ERROR]
    warnings = [r for r in said if r.levelno == logging.WARNING]
    assert len(errors) == 2, [r.getMessage() for r in errors]  # once per share
    assert len(warnings) == 2, [r.getMessage() for r in warnings]
    assert all("unavailable" in r.getMessage() for r in errors)
    assert all("answers again" in r.getMessage() for r in warnings)


async def test_waiting_out_an_outage_polls_only_what_was_held(
    private_redis: PrivateRedis,
) -> None:
    """on_unavailable="wait": with Redis away from the start nothing is
    held, so nothing is polled; once Redis answers, the leases are taken
    and each id polled (once: it finished meanwhile)."""
    clock = FakeClock()
    async with FakeReplicate(clock=clock) as server:
        ids = server.add_predictions(3, duration=1)
        await private_redis.kill()
        async with (
            client_of(server) as client,
            RedisShare.from_url(
                private_redis.url, prefix="wait:", lease_ttl=TTL, on_unavailable="wait"
            ) as share,
            PollManager(client, share=share, sweep=False, policy=FAST) as manager,
        ):
            futures = [manager.submit(pid) for pid in ids]
            await asyncio.sleep(0.5)
            during = (share.degraded, manager.stats.requests)
            clock.advance(2)
            await private_redis.start()
            records = await asyncio.wait_for(asyncio.gather(*futures), PATIENCE)
            after = share.degraded
    assert during == (True, 0)
    assert after is False
    assert all(p.status == "succeeded" for p in records)
    assert manager.stats.requests == 3


async def until_async(read: Callable[[], Any], wanted: Any) -> None:
    deadline = time.monotonic() + PATIENCE
    while await read() != wanted:
        if time.monotonic() > deadline:
            pytest.fail(f"never read {wanted!r}")
        await asyncio.sleep(0.02)


async def test_an_unreachable_redis_is_logged_once_without_its_password(
    fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    ids = fake_replicate.add_predictions(3, duration=0.2)
    url = f"redis://:pa55-w0rd-7c1e@127.0.0.1:{_free_port()}/0"
    async with (
        client_of(fake_replicate) as client,
        RedisShare.from_url(url, lease_ttl=TTL) as share,
        PollManager(client, share=share, sweep=False, policy=FAST) as manager,
    ):
        records = await asyncio.wait_for(asyncio.gather(*map(manager.wait, ids)), 10)
        assert share.degraded
    assert all(p.status == "succeeded" for p in records)
    said = [r for r in caplog.records if r.name == "replipoll.redis"]
    assert [r.levelno for r in said if r.levelno >= logging.WARNING] == [logging.ERROR]
    assert "127.0.0.1" in said[0].getMessage()
    assert "pa55-w0rd-7c1e" not in caplog.text


# -- shutting down -----------------------------------------------------------------


async def test_closing_leaves_no_task_and_no_lease_behind(
    fake_replicate: FakeReplicate,
    make_share: Callable[..., RedisShare],
    raw: aioredis.Redis,
    redis_url: str,
    redis_prefix: str,
) -> None:
    ids = fake_replicate.add_predictions(5, duration=60)
    async with (
        client_of(fake_replicate) as client,
        make_share(lease_ttl=30) as share,
        PollManager(client, share=share, sweep=False) as manager,
    ):
        for pid in ids:
            manager.submit(pid)
        await until(lambda: len(share_tasks()) == 2)
        for _ in range(500):
            if None not in await leases(raw, redis_prefix, ids):
                break
            await asyncio.sleep(0.01)
    assert not share_tasks()
    assert await leases(raw, redis_prefix, ids) == [None] * 5
    # A share never entered: the manager's close stops its tasks all the same.
    connection = aioredis.Redis.from_url(redis_url)
    share = RedisShare(connection, prefix=redis_prefix)
    async with client_of(fake_replicate) as client, PollManager(client, share=share):
        assert len(share_tasks()) == 2
    await until(lambda: not share_tasks(), patience=5)
    await share.aclose()
    await connection.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        share.attach(object())  # type: ignore[arg-type]
