"""RedisBudget: one key's rate budget shared by processes, against a real Redis.

Each "process" is a RedisBudget on a connection of its own; they share a
key under the test's ``redis_prefix``. Timing is checked with generous
bounds: the limit is what must hold, the achieved rate only roughly.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
import replipoll
from redis.asyncio import Redis
from replipoll import Client, ConfigurationError, PollManager, PollPolicy, RetryPolicy
from replipoll.redis import RedisBudget, RedisUnavailableError
from replipoll.testing import FakeReplicate, Fault

from tests.stalls import StallWatch

QUICK = PollPolicy(min_interval=0.1, age_factor=0.0, max_interval=0.1, jitter=0.0)


@pytest_asyncio.fixture
async def connect(redis_url: str) -> AsyncIterator[Callable[[], Redis]]:
    """New connections to the test Redis, each a "process"; closed afterwards."""
    made: list[Redis] = []

    def new() -> Redis:
        made.append(Redis.from_url(redis_url))
        return made[-1]

    yield new
    for connection in made:
        await connection.aclose()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait, generously, until ``condition()`` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition never held")
        await asyncio.sleep(0.01)


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of ``times`` (sorted) within any ``window`` seconds."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def other_tasks() -> set[asyncio.Task[object]]:
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not t.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
    }


def local(budget: RedisBudget) -> bool:
    """Whether the budget is on its local fallback (a call: mypy narrows none)."""
    return budget.fallback is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- sharing the rate ----------------------------------------------------------


async def test_two_budgets_together_keep_to_rate_plus_burst_and_reach_the_rate(
    connect: Callable[[], Redis], redis_prefix: str, stalls: StallWatch
) -> None:
    """Two "processes", four eager requesters each: no 1-s window holds more
    than rate + burst slots, and together they get close to the rate."""
    key, rate, burst = f"{redis_prefix}budget", 20.0, 2
    granted: list[float] = []
    async with (
        RedisBudget(connect(), key, rate=rate, burst=burst) as a,
        RedisBudget(connect(), key, rate=rate, burst=burst) as b,
    ):
        assert isinstance(a, replipoll.Budget)
        stop = time.monotonic() + 3.0

        async def spend(budget: RedisBudget) -> None:
            while time.monotonic() < stop:
                await budget.acquire()
                granted.append(time.monotonic())

        await asyncio.gather(*(spend(x) for x in (a, b) for _ in range(4)))
    assert max_in_window(granted) <= rate + burst
    steady = [t for t in granted if stop - 2.0 <= t < stop]
    # (Time the machine stood still hands out no slot: not counted.)
    ran = stalls.ran(stop - 2.0, stop)
    assert len(steady) >= 0.85 * rate * ran, (len(steady), ran)


async def test_a_slot_taken_in_one_process_is_gone_for_the_other(
    connect: Callable[[], Redis], redis_prefix: str, stalls: StallWatch
) -> None:
    """At rate 2/s, burst 1: after A's slot, B waits about half a second."""
    key = f"{redis_prefix}b"
    async with (
        RedisBudget(connect(), key, rate=2, burst=1) as a,
        RedisBudget(connect(), key, rate=2, burst=1) as b,
    ):
        await a.acquire()
        start = time.monotonic()
        waited = await b.acquire()
    assert waited >= 0.4
    assert stalls.ran(start, start + waited) < 1.0


async def test_the_key_expires_once_the_budget_is_idle(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    key = f"{redis_prefix}idle"
    redis = connect()
    async with RedisBudget(redis, key, rate=10, expire_after=5) as budget:
        await budget.acquire()
    ttl = await redis.pttl(key)
    assert 4_000 < ttl <= 5_200
    assert set(await redis.hgetall(key)) == {b"tat", b"paused"}


# -- pauses and server words ---------------------------------------------------


async def test_a_pause_from_one_process_holds_the_other(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    """A's Retry-After reaches Redis in the background; B's next slot waits for
    it, and B then reports the pause as its own paused_until."""
    key = f"{redis_prefix}pause"
    async with (
        RedisBudget(connect(), key, rate=50, burst=5) as a,
        RedisBudget(connect(), key, rate=50, burst=5) as b,
    ):
        await b.acquire()
        assert b.paused_until == -float("inf")
        when = time.monotonic() + 0.6
        a.pause_until(when)
        assert a.paused_until == when  # at once, before Redis knows
        assert a.is_paused(time.monotonic())
        await until(lambda: a._writer is None)  # written
        start = time.monotonic()
        await b.acquire()
        assert time.monotonic() >= when - 0.01
        assert time.monotonic() - start >= 0.4
        assert b.paused_until == pytest.approx(when, abs=0.05)
        assert not b.is_paused(time.monotonic())
        # A shorter pause never shortens a longer one.
        a.pause_until(time.monotonic() + 0.5)
        a.pause_until(time.monotonic() + 0.1)
        await until(lambda: a._writer is None)
        assert await b.acquire() >= 0.35


async def test_a_pause_given_outside_an_event_loop_is_written_by_the_next_acquire(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    key = f"{redis_prefix}sync"
    async with (
        RedisBudget(connect(), key, rate=None) as a,
        RedisBudget(connect(), key, rate=None) as b,
    ):
        await asyncio.to_thread(a.pause_until, time.monotonic() + 0.4)
        assert a._writer is None  # no loop in that thread
        waiting = asyncio.create_task(a.acquire())
        await asyncio.sleep(0)
        await until(lambda: a._writer is None)
        assert await b.acquire() >= 0.25
        assert b.paused_until > -float("inf")
        assert await waiting >= 0.3


async def test_heed_pushes_the_shared_next_slot_later_never_earlier(
    connect: Callable[[], Redis], redis_prefix: str, stalls: StallWatch
) -> None:
    """2 requests left in 1 s, at rate 50: the next slot, in any process, comes
    0.5 s later; a looser word changes nothing."""
    key = f"{redis_prefix}heed"
    async with (
        RedisBudget(connect(), key, rate=50, burst=1) as a,
        RedisBudget(connect(), key, rate=50, burst=1) as b,
    ):
        await a.acquire()
        a.heed(remaining=100, reset=1.0, now=time.monotonic())  # looser: ignored
        assert a._writer is None
        a.heed(remaining=2, reset=1.0, now=time.monotonic())
        await until(lambda: a._writer is None)
        start = time.monotonic()
        waited = await b.acquire()
        assert waited >= 0.35
        assert stalls.ran(start, start + waited) < 0.8
        a.heed(remaining=0, reset=0.3, now=time.monotonic())  # none left: a pause
        assert a.is_paused(time.monotonic())
        await until(lambda: a._writer is None)
        assert await b.acquire() >= 0.2


async def test_without_a_rate_only_pauses_hold_requests(
    connect: Callable[[], Redis], redis_prefix: str, stalls: StallWatch
) -> None:
    """rate=None: a hundred slots at once, but a pause from elsewhere holds."""
    key = f"{redis_prefix}none"
    async with (
        RedisBudget(connect(), key, rate=None, burst=4) as a,
        RedisBudget(connect(), key, rate=None, burst=4) as b,
    ):
        start = time.monotonic()
        await asyncio.gather(*(b.acquire() for _ in range(100)))
        assert stalls.ran(start, time.monotonic()) < 1.0
        a.pause_until(time.monotonic() + 0.4)
        await until(lambda: a._writer is None)
        assert await b.acquire() >= 0.3
        # After a pause, a budget without a rate ramps up (from burst/s).
        start = time.monotonic()
        for _ in range(6):
            await b.acquire()
        assert time.monotonic() - start >= 0.2


async def test_a_rate_lowered_at_run_time_applies_to_the_next_slots(
    connect: Callable[[], Redis], redis_prefix: str, stalls: StallWatch
) -> None:
    """A client lowers rate and burst after a 429 stating a reduced limit."""
    budget = RedisBudget(connect(), f"{redis_prefix}lower", rate=100, burst=3)
    async with budget:
        start = time.monotonic()
        for _ in range(10):
            await budget.acquire()
        assert stalls.ran(start, time.monotonic()) < 0.3
        budget.rate, budget.burst = 5.0, 1
        start = time.monotonic()
        for _ in range(3):
            await budget.acquire()
        assert time.monotonic() - start >= 0.35  # 0.2 s apart from the first
        with pytest.raises(ConfigurationError) as info:
            budget.rate = 0
        assert info.value.option == "rate"
        with pytest.raises(ConfigurationError):
            budget.burst = 0
        assert (budget.rate, budget.burst) == (5.0, 1)


# -- the line in one process -----------------------------------------------------


async def test_waiters_go_in_order_and_urgent_ones_first(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    """First come first served; an urgent request goes right after the one
    already asking Redis. One script call is in flight at a time."""
    budget = RedisBudget(connect(), f"{redis_prefix}order", rate=20, burst=1)
    order: list[str] = []
    calls, most = 0, 0
    script = budget._script

    async def counted(**kw: object) -> object:
        nonlocal calls, most
        calls += 1
        most = max(most, calls)
        try:
            return await script(**kw)
        finally:
            calls -= 1

    budget._script = counted
    async with budget:
        await budget.acquire()

        async def take(name: str, urgent: bool = False) -> None:
            await budget.acquire(urgent=urgent)
            order.append(name)

        tasks = [asyncio.create_task(take(f"n{i}")) for i in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(take("urgent", urgent=True)))
        await asyncio.sleep(0.01)
        assert budget.waiting == 4  # n0 has the turn, the rest wait in line
        await asyncio.gather(*tasks)
    assert order == ["n0", "urgent", "n1", "n2", "n3"]
    assert most == 1


async def test_cancelled_waiters_give_their_turn_up_and_leave_no_task(
    connect: Callable[[], Redis], redis_prefix: str, stalls: StallWatch
) -> None:
    budget = RedisBudget(connect(), f"{redis_prefix}cancel", rate=4, burst=1)
    async with budget:
        await budget.acquire()
        head = asyncio.create_task(budget.acquire())  # will sleep for its slot
        queued = [asyncio.create_task(budget.acquire()) for _ in range(3)]
        await asyncio.sleep(0.05)
        head.cancel()
        queued[0].cancel()
        start = time.monotonic()
        await asyncio.gather(queued[1])  # the turn passed on at once
        assert stalls.ran(start, time.monotonic()) < 0.4
        await asyncio.wait_for(queued[2], 10.0)
        for task in (head, queued[0]):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert budget.waiting == 0
        assert not budget._busy
        # A request timed out while waiting (asyncio.timeout) leaves no trace.
        # (It waits only if the next slot is still ahead: a stall of the
        # machine after the last slot was taken lets it through; try again.)
        for _ in range(5):
            start = time.monotonic()
            await budget.acquire()
            try:
                async with asyncio.timeout(0.05):
                    await budget.acquire()
            except TimeoutError:
                break
            assert stalls.stalled(start, time.monotonic()) > 0, "no wait, no stall"
        else:
            pytest.fail("the machine stalled at every try")
        assert budget.waiting == 0
        start = time.monotonic()
        waited = await budget.acquire()
        assert waited >= 0.0
        assert stalls.ran(start, start + waited) < 0.4
    assert not other_tasks()


async def test_burst_slots_taken_at_once_go_to_the_waiters_in_line(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    """Eight waiters held by a pause, burst 8: one script call serves them all."""
    budget = RedisBudget(connect(), f"{redis_prefix}many", rate=10, burst=8)
    script, takes = budget._script, 0

    async def counted(**kw: object) -> object:
        nonlocal takes
        takes += kw["args"][0] == "take"  # type: ignore[index]
        return await script(**kw)

    budget._script = counted
    async with budget:
        await budget.acquire()
        budget.pause_until(time.monotonic() + 0.2)
        takes = 0
        await asyncio.gather(*(budget.acquire() for _ in range(8)))
    assert takes == 1


# -- options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"rate": 0}, "rate"),
        ({"rate": 10, "burst": 0}, "burst"),
        ({"rate": 10, "on_unavailable": "ignore"}, "on_unavailable"),
        ({"rate": 10, "fallback_fraction": 0}, "fallback_fraction"),
        ({"rate": 10, "fallback_fraction": 1.5}, "fallback_fraction"),
        ({"rate": 10, "timeout": 0}, "timeout"),
        ({"rate": 10, "retry_interval": -1}, "retry_interval"),
        ({"rate": 10, "expire_after": 0}, "expire_after"),
    ],
)
def test_unusable_options_are_refused_by_name(
    options: dict[str, object], option: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        RedisBudget(Redis(), "k", **options)  # type: ignore[arg-type]
    assert info.value.option == option
    assert "RedisBudget" in str(info.value)


def test_a_sync_redis_or_an_empty_key_is_refused() -> None:
    import redis

    with pytest.raises(ConfigurationError) as info:
        RedisBudget(redis.Redis(), "k", rate=1)  # type: ignore[arg-type]
    assert info.value.option == "redis"
    assert "redis.asyncio.Redis" in str(info.value)
    with pytest.raises(ConfigurationError) as info:
        RedisBudget(Redis(), "", rate=1)
    assert info.value.option == "key"


# -- Redis unavailable -------------------------------------------------------------


async def test_unreachable_redis_fails_loudly_with_a_typed_error(
    redis_prefix: str, caplog: pytest.LogCaptureFixture, stalls: StallWatch
) -> None:
    """A closed port: every acquire raises RedisUnavailableError at once; the
    log says so once, at ERROR, with the address and never the password."""
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    caplog.set_level(logging.WARNING, logger="replipoll.redis")
    async with RedisBudget.from_url(url, f"{redis_prefix}down", rate=10) as budget:
        start = time.monotonic()
        for _ in range(3):
            with pytest.raises(RedisUnavailableError) as info:
                await budget.acquire()
        assert stalls.ran(start, time.monotonic()) < 3 * budget.timeout
        budget.pause_until(time.monotonic() + 0.05)  # written in vain, quietly
        await until(lambda: budget._writer is None)
    error = info.value
    assert error.url == f"redis://127.0.0.1:{port}/0"
    assert f"127.0.0.1:{port}" in str(error)
    assert "on_unavailable='local'" in str(error)
    assert "hunter2" not in str(error) + caplog.text
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].name == "replipoll.redis"
    assert "unavailable" in errors[0].getMessage()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start (and restart) a redis-server of this test's own on a fixed port."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("needs the redis-server binary")
    port = free_port()
    started: list[subprocess.Popen[bytes]] = []

    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]

    def start() -> subprocess.Popen[bytes]:
        server = subprocess.Popen(
            [binary, "--port", str(port), *options, "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(server)
        for _ in range(200):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return server
            time.sleep(0.025)
        raise AssertionError("redis-server did not start")

    start.port = port  # type: ignore[attr-defined]
    yield start
    for server in started:
        server.terminate()
        server.wait(10)


async def test_local_fallback_at_a_fraction_of_the_rate_then_back_to_redis(
    own_redis: Callable[[], subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis goes away: ERROR once, then a local budget at half the rate (so
    never over it), retried every 0.2 s; Redis returns: WARNING, shared again."""
    server = own_redis()
    url = f"redis://127.0.0.1:{own_redis.port}/0"  # type: ignore[attr-defined]
    caplog.set_level(logging.WARNING, logger="replipoll.redis")
    budget = RedisBudget.from_url(
        url, "fallback", rate=20, burst=1, on_unavailable="local", retry_interval=0.2
    )
    async with budget:
        await budget.acquire()
        assert not local(budget)
        server.terminate()
        server.wait(10)
        granted = []
        for _ in range(6):
            await budget.acquire()
            granted.append(time.monotonic())
        assert budget.fallback is not None
        assert budget.fallback.rate == 10.0
        # 10/s locally: 0.1 s apart (the first may be at once).
        assert granted[-1] - granted[0] >= 0.45
        assert budget.try_acquire(time.monotonic() + 1.0)  # the local budget's
        budget.rate = 8  # the fallback follows the rate
        assert budget.fallback.rate == 4.0
        budget.pause_until(time.monotonic() + 0.3)  # handed to Redis once back
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "local budget" in errors[0].getMessage()
        own_redis()
        await until(lambda: not local(budget), timeout=5)
        assert not budget.try_acquire(time.monotonic())
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "answers again" in warnings[0].getMessage()
        await until(lambda: budget._writer is None)
        await budget.acquire()
        check = Redis.from_url(url)
        try:
            assert await check.exists("fallback")
        finally:
            await check.aclose()
    assert not other_tasks()


async def test_a_redis_that_never_answers_times_out(
    redis_prefix: str, stalls: StallWatch
) -> None:
    """A listener that accepts but never answers: the call gives up on time,
    and the requests waiting in line behind it fail with it."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        budget = RedisBudget(
            Redis.from_url(f"redis://127.0.0.1:{port}/0"), "k", rate=5, timeout=0.3
        )
        start = time.monotonic()
        outcomes = await asyncio.gather(
            *(budget.acquire() for _ in range(5)), return_exceptions=True
        )
        assert stalls.ran(start, time.monotonic()) < 1.0
        assert all(isinstance(o, RedisUnavailableError) for o in outcomes)
        assert "0.3 s" in str(outcomes[-1])
        await budget.aclose()
        await budget._redis.aclose()
    finally:
        listener.close()


# -- with a client and managers ------------------------------------------------------


async def test_a_client_spends_a_redis_budget_and_a_429_pauses_another_client(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    key = f"{redis_prefix}client"
    async with FakeReplicate(early_grace=0.02) as server:
        a_id, b_id = server.add_prediction(), server.add_prediction()
        server.add_fault(Fault.rate_limited(0.5), prediction_id=a_id)
        async with (
            RedisBudget(connect(), key, rate=50, burst=2) as budget_a,
            RedisBudget(connect(), key, rate=50, burst=2) as budget_b,
            Client(
                base_url=server.base_url(), api_key=server.api_key, budget=budget_a
            ) as a,
            Client(
                base_url=server.base_url(), api_key=server.api_key, budget=budget_b
            ) as b,
        ):
            start = time.monotonic()
            first = asyncio.create_task(a.get(a_id))
            await until(lambda: server.stats.responses_by_status[429] == 1)
            await until(lambda: budget_a._writer is None)
            assert (await b.get(b_id)).status == "succeeded"
            assert time.monotonic() - start >= 0.45
            assert (await first).status == "succeeded"
    assert server.stats.early_requests == 0


async def test_a_429_seen_by_one_manager_pauses_another_managers_requests(
    connect: Callable[[], Redis], redis_prefix: str
) -> None:
    """Two managers, each with its own client and RedisBudget on one key: a
    Retry-After answered to either holds both (none arrives during the pause
    but those already on the wire); together they keep to the rate."""
    key, rate, burst = f"{redis_prefix}managers", 40.0, 4
    async with FakeReplicate(early_grace=0.02) as server:
        ids = server.add_predictions(40, duration=2.5)

        async def run(half: list[str]) -> list[replipoll.PollResult]:
            async with (
                RedisBudget(connect(), key, rate=rate, burst=burst) as budget,
                Client(
                    base_url=server.base_url(),
                    api_key=server.api_key,
                    budget=budget,
                    retry=RetryPolicy(max_attempts=3, base_delay=0.01),
                ) as client,
                PollManager(client, max_concurrency=8, policy=QUICK) as manager,
            ):
                return await manager.poll_many(half)

        async def throttle() -> None:
            await asyncio.sleep(0.8)
            server.add_fault(Fault.rate_limited(1.0))

        start = time.monotonic()
        results, _ = await asyncio.gather(
            asyncio.gather(run(ids[:20]), run(ids[20:])), throttle()
        )
        log = list(server.stats.request_log)
    assert all(r.succeeded for half in results for r in half)
    assert server.stats.responses_by_status[429] == 1
    assert server.stats.early_requests == 0
    (throttled,) = [r.time for r in log if r.status == 429]
    during = [r for r in log if throttled + 0.02 < r.time < throttled + 1.0]
    assert during == []
    assert max_in_window([r.time for r in log]) <= rate + burst
    assert time.monotonic() - start >= 2.5
