"""Chaos: every fault and outcome at once, thousands of ids; lose and leak nothing.

One run drives a batch through :class:`~replipoll.testing.FakeReplicate` with
every fault class mixed in (429 with ``Retry-After``, 500, 502 HTML, 503 in
CometAPI's envelope, 504, 524, resets, truncated JSON and bodies, HTML where
JSON was expected, answers slower than the per-request timeout, and answers
slower than "45 s" that the CometAPI timeout allows) and predictions of every
outcome, then checks what the issue asks for: one result per id, successes
kept, exhausted retries saying so, no request inside a ``Retry-After``, no
more requests open than ``max_concurrency``, and after the manager exits no
task, connection, unretrieved exception or warning left behind.

Time is scaled: every real-world duration is divided by :data:`SCALE`, so the
CometAPI preset's 120 s timeout becomes 2.4 s and "an answer slower than 45 s"
becomes one slower than 0.9 s. The batch is a
:class:`~replipoll.testing.chaos.ChaosBatch`; ``bench/soak.py`` runs the same one at
100,000 ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import attrs
import pytest
import replipoll
from replipoll import (
    Client,
    ClientClosedError,
    ConnectError,
    NotFoundError,
    PollManager,
    PollPolicy,
    PollResult,
    PollTimeout,
    Prediction,
    RequestError,
    RetryPolicy,
    Timeouts,
)
from replipoll._providers import PROVIDERS
from replipoll.testing import ANSWER_FAULTS, FakeReplicate, Fault, ServerStats
from replipoll.testing.chaos import ChaosBatch, RequestWatch

#: Real-world seconds per test second.
SCALE = 50
COMET = PROVIDERS["cometapi"].timeouts
#: The CometAPI preset's timeouts, scaled (120 s -> 2.4 s).
TIMEOUTS = Timeouts(
    total=COMET.total / SCALE if COMET.total else None,
    # Not scaled: a loopback connect has nothing to scale, and a 0.2 s limit
    # would time event-loop stalls (a garbage collection), not the network.
    connect=1.0,
    read=COMET.read / SCALE if COMET.read else None,
)
#: CometAPI was seen not to answer within 45 s; scaled.
FORTY_FIVE_SECONDS = 45 / SCALE
#: A 60 s answer: slower than 45 s, well within the 120 s timeout.
SLOW_WITHIN = 60 / SCALE
#: A 150 s answer: slower than the per-request timeout.
SLOW_BEYOND = 150 / SCALE
#: The ``Retry-After`` chaos sends, and the grace for requests already on
#: their way when it goes out. Client and server share one event loop, in
#: debug mode, busy with dozens of requests: from the server producing a 429
#: to the client reading it took up to ~70 ms here, and requests the client
#: had started before that (aiohttp's request-start signal says so, see
#: ``Watch.early_starts``) reached the server's handler up to ~150 ms after
#: the pause began. Under a tracer (coverage: ``nox -s tests``) every step
#: is several times slower, and so is that way.
RETRY_AFTER = 0.5
EARLY_GRACE = 0.25 if sys.gettrace() is None else 1.0

PREFIX = "/replicate/v1"  # CometAPI's layout and error envelope
UNDOCUMENTED = ChaosBatch.UNDOCUMENTED
POLICY = PollPolicy(min_interval=0.15, age_factor=0.1, max_interval=0.4, jitter=0.2)
RETRY = RetryPolicy(max_attempts=6, base_delay=0.05, max_delay=0.4, max_retry_after=5)


def chaos_menu() -> list[Fault]:
    """Every fault class; the cheap ones weighted up, the slow ones down."""
    return [
        *ANSWER_FAULTS * 5,
        Fault.rate_limited(RETRY_AFTER),
        Fault.slow(SLOW_WITHIN),
    ]


@attrs.define
class Watch(RequestWatch):
    """Client-side witnesses: requests (aiohttp's view), and loop errors.

    ``early_starts`` counts requests aiohttp started while the client knew a
    ``Retry-After`` was running (``budget`` paused): the exact client-side
    twin of the server's ``early_requests``, with no grace needed.
    """

    loop_errors: list[dict[str, Any]] = attrs.Factory(list)


def assert_nothing_sent_early(
    watch: Watch, stats: ServerStats, max_concurrency: int
) -> None:
    """No request started during a known Retry-After, exactly; and at the
    server, none arrived in one but for stragglers.

    The server's count can still see a few past its grace when this process
    stalls (a busy machine, a full garbage collection late in the suite: 2 to
    6 were seen): requests the client had started before it read the 429
    (``early_starts`` stays 0) and that were held up on the way. They are
    requests that were open at once, so no more than ``max_concurrency``; a
    client that ignored a pause would send hundreds in it.
    """
    assert watch.early_starts == 0
    assert stats.early_requests <= max_concurrency, stats.early_requests


def other_tasks() -> set[asyncio.Task[Any]]:
    """Tasks alive besides the current one and the fake server's handlers."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not t.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
    }


@contextlib.asynccontextmanager
async def watched() -> AsyncIterator[Watch]:
    """Debug mode on, loop errors recorded; on exit, none may have happened.

    "Task exception was never retrieved", "Unclosed client session",
    "Unclosed connector" and "Task was destroyed but it is pending" all reach
    the loop's exception handler (the last three from ``__del__``, hence the
    ``gc.collect()``).
    """
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 1.0  # the loop is busy on purpose
    watch = Watch()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: watch.loop_errors.append(context))
    try:
        yield watch
        gc.collect()
        await asyncio.sleep(0)  # run whatever __del__ scheduled
    finally:
        loop.set_exception_handler(previous)
    assert watch.loop_errors == []


@contextlib.asynccontextmanager
async def borrowed_session(watch: Watch) -> AsyncIterator[aiohttp.ClientSession]:
    """A session whose connector we can inspect; closed, and checked, on exit."""
    connector = aiohttp.TCPConnector(limit=100)
    async with aiohttp.ClientSession(
        connector=connector, trace_configs=[watch.trace_config()]
    ) as session:
        yield session
        assert_no_connection_held(session.connector)
    assert connector.closed


def assert_no_connection_held(connector: aiohttp.BaseConnector | None) -> None:
    # aiohttp has no public count of connections lent to requests; every
    # request that ended must have given its connection back (or closed it).
    acquired = connector._acquired  # type: ignore[union-attr]
    assert not acquired, f"{len(acquired)} connections still held by requests"


@attrs.define
class ChaosRun:
    """What one chaos run produced."""

    scenario: ChaosBatch
    results: list[PollResult]
    late: list[PollResult]  # the undocumented-status ids, in finishing order
    stats: replipoll.PollStats
    late_stats: replipoll.PollStats
    max_concurrency: int
    elapsed: float
    client_repr: str


async def run_chaos(
    server: FakeReplicate,
    n: int,
    *,
    seed: int,
    watch: Watch,
    api_key: str | None = None,
    max_concurrency: int = 28,
) -> ChaosRun:
    """Poll a chaos scenario of ``n`` ids to the end; return everything seen.

    Two managers share one client (one key, one budget): the main batch with
    a generous deadline, and the ids stuck in an undocumented status with a
    short one (a deadline from submission would otherwise have to outlast
    the whole batch).
    """
    scenario = ChaosBatch.script(
        server, n, seed=seed, slow_beyond=SLOW_BEYOND, faults=chaos_menu()
    )
    async with (
        borrowed_session(watch) as session,
        Client(
            "cometapi",
            base_url=server.base_url(PREFIX),
            api_key=api_key or server.api_key,
            timeouts=TIMEOUTS,
            retry=RETRY,
            session=session,
        ) as client,
    ):
        watch.budget = client.budget
        start = time.monotonic()
        async with (
            PollManager(
                client,
                max_concurrency=max_concurrency,
                timeout=600,
                policy=POLICY,
            ) as main,
            PollManager(client, max_concurrency=4, timeout=1.5, policy=POLICY) as short,
        ):
            late_ids = scenario.undocumented

            async def stuck() -> list[PollResult]:
                return [r async for r in short.as_completed(late_ids)]

            results, late = await asyncio.gather(
                main.poll_many(scenario.batch), stuck()
            )
            stats, late_stats = main.stats, short.stats
        elapsed = time.monotonic() - start
        # The managers are gone: nothing of theirs may be left running.
        assert not other_tasks()
        assert_no_connection_held(session.connector)
        assert watch.open == 0
        assert watch.started == watch.ended
        return ChaosRun(
            scenario,
            results,
            late,
            stats,
            late_stats,
            max_concurrency + 4,
            elapsed,
            repr(client),
        )


def check_results(run: ChaosRun, retry: RetryPolicy = RETRY) -> Counter[str]:
    """Every id has exactly one result, and it is the right one; return outcomes."""
    s = run.scenario
    assert [r.id for r in run.results] == list(s.batch)  # one per id, in order
    assert Counter(r.id for r in run.late) == Counter(s.undocumented)
    outcomes: Counter[str] = Counter()
    exhausted = 0
    for result in run.results:
        pid, error = result.id, result.error
        if pid in s.invalid:
            assert isinstance(error, replipoll.InvalidPredictionIdError)
            outcomes["invalid id"] += 1
        elif pid in s.missing:
            assert isinstance(error, NotFoundError), error
            outcomes["not found"] += 1
        elif pid in s.oversized:
            assert isinstance(error, replipoll.ResponseTooLargeError), repr(error)
            assert error.attempts == 1  # never retried
            outcomes["too large"] += 1
        elif pid in s.echoed:
            assert isinstance(error, replipoll.AuthenticationError), repr(error)
            assert "<redacted>" in error.message
            outcomes["key refused"] += 1
        elif error is None:
            assert pid not in s.permanent
            assert result.prediction is not None
            assert result.prediction.id == pid
            assert result.prediction.status == s.expected[pid]
            outcomes[s.expected[pid]] += 1
        else:
            # Only exhausted retries may stop a prediction from being seen.
            assert isinstance(error, RequestError), repr(error)
            assert retry.is_retryable(error), repr(error)
            assert error.attempts == retry.max_attempts, repr(error)
            assert f"after {retry.max_attempts} attempts" in str(error)
            outcomes["retries exhausted"] += 1
            exhausted += pid not in s.permanent
    assert outcomes["retries exhausted"] - exhausted == sum(
        s.batch.count(pid) for pid in s.permanent
    )
    # At a 20% fault rate, six failures in a row are rare.
    assert exhausted <= max(3, len(s.expected) // 200)
    for result in run.late:
        assert isinstance(result.error, PollTimeout)
        if result.prediction is not None:
            assert result.prediction.status == UNDOCUMENTED
        outcomes[f"{UNDOCUMENTED} (deadline)"] += 1
    return outcomes


@pytest.mark.slow
async def test_chaos_batch_loses_nothing_and_leaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """2,000+ ids, every fault and outcome at once: the issue's invariants hold."""
    # The preset waits out CometAPI's slow answers (> 45 s), and the scaled
    # slow faults fall on either side of its (scaled) timeout.
    assert COMET.total is not None
    assert COMET.total > 45
    assert TIMEOUTS.total is not None
    assert FORTY_FIVE_SECONDS < SLOW_WITHIN < TIMEOUTS.total < SLOW_BEYOND
    caplog.set_level(logging.WARNING, logger="replipoll")
    async with (
        watched() as watch,
        FakeReplicate(
            latency=0.005, early_grace=EARLY_GRACE, seed=7, request_log_size=0
        ) as server,
    ):
        run = await run_chaos(server, 2000, seed=7, watch=watch)
        outcomes = check_results(run)
        stats = server.stats
    assert outcomes["succeeded"] > 1000
    assert {"failed", "canceled", "aborted", "not found"} <= set(outcomes)
    # Every fault class was injected, and none broke the invariants.
    kinds = {f.kind for f in chaos_menu()}
    assert kinds <= set(stats.faults_injected)
    # No request arrived while a Retry-After ran (beyond the in-flight grace).
    assert stats.faults_injected["rate_limited"] > 0
    assert_nothing_sent_early(watch, stats, run.max_concurrency)
    # Never more requests open than workers: aiohttp's view and the manager's.
    assert watch.peak <= run.max_concurrency
    assert run.stats.peak_in_flight <= 28
    assert run.late_stats.peak_in_flight <= 4
    # Answers slower than the timeout were retried; answers slower than "45 s"
    # but within the CometAPI timeout were waited for: the only timeouts are
    # the ones scripted to exceed it, and requests of the short manager's ids
    # cut at their 1.5 s deadline (at most once each: not polled after it).
    slow_within = stats.faults_injected["slow"] - len(run.scenario.beyond)
    assert slow_within > 0
    # (A trickled answer times out while its body is read, after aiohttp has
    # reported the request's end: the watch does not see those.)
    late = set(run.scenario.undocumented)
    slow = run.scenario.beyond
    timed_out = Counter(url.rpartition("/")[2] for url in watch.timeout_urls.elements())
    assert {pid for pid in timed_out if pid not in late} == slow
    assert all(timed_out[pid] == 1 for pid in slow)
    assert all(timed_out[pid] <= 1 for pid in late)
    # Retries are warnings; nothing, client or fake server, logged an error.
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# -- cancellation and shutdown, under chaos -----------------------------------

#: Chaos without answers slower than the timeout: a request the client gave
#: up on stays open on the server until it notices, so only without them does
#: the server's own in-flight count bound the client exactly.
CALM_MENU = [f for f in chaos_menu() if f.kind != "slow"]


@contextlib.asynccontextmanager
async def chaos_client(
    watch: Watch, *, probability: float = 0.2, **server_options: Any
) -> AsyncIterator[tuple[FakeReplicate, Client]]:
    """A chaotic fake server and a client on a session we can inspect."""
    options: dict[str, Any] = {"latency": 0.005, "early_grace": EARLY_GRACE}
    async with (
        FakeReplicate(seed=11, **(options | server_options)) as server,
        borrowed_session(watch) as session,
        Client(
            "cometapi",
            base_url=server.base_url(PREFIX),
            api_key=server.api_key,
            timeouts=TIMEOUTS,
            retry=RETRY,
            session=session,
        ) as client,
    ):
        watch.budget = client.budget
        server.set_chaos(probability, CALM_MENU, seed=11)
        yield server, client


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait, generously, for ``condition`` to hold."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the condition never held")


async def test_a_raising_on_update_ends_only_its_id_under_chaos() -> None:
    """Callbacks raising (or awaiting something cancelled) end their own id only.

    Also: the server never sees more requests than ``max_concurrency``, and
    none inside a ``Retry-After``.
    """
    boom: set[str] = set()
    cancelled: set[str] = set()
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    gone.cancel()

    async def on_update(prediction: Prediction) -> None:
        if prediction.id in boom:
            raise RuntimeError(f"callback broke on {prediction.id}")
        if prediction.id in cancelled:
            await gone  # raises CancelledError: not the worker's own
        await asyncio.sleep(0)

    async with watched() as watch, chaos_client(watch) as (server, client):
        ids = server.add_predictions(
            600, lambda i: {"duration": (i % 7) * 0.1, "queue": (i % 3) * 0.1}
        )
        boom.update(ids[::10])
        cancelled.update(ids[5::10])
        async with PollManager(
            client, max_concurrency=12, policy=POLICY, on_update=on_update
        ) as manager:
            # A worker killed by the callback would strand ids: fail, not hang.
            results = await asyncio.wait_for(manager.poll_many(ids), 120)
            assert manager.stats.peak_in_flight <= 12
        assert not other_tasks()
        stats = server.stats
    assert [r.id for r in results] == ids
    for result in results:
        if isinstance(result.error, RequestError):  # retries truly exhausted
            assert result.error.attempts == RETRY.max_attempts
        elif result.id in boom:
            assert isinstance(result.error, RuntimeError)
            assert result.id in str(result.error)
        elif result.id in cancelled:
            assert isinstance(result.error, asyncio.CancelledError)
        else:
            assert result.succeeded, result
    assert stats.peak_in_flight <= 12
    assert stats.peak_in_flight >= 6  # requests did overlap
    assert watch.peak <= 12
    assert stats.faults_injected["rate_limited"] > 0
    assert_nothing_sent_early(watch, stats, 12)


@pytest.mark.parametrize("sweep", [False, True], ids=["per-id", "sweeping"])
async def test_cancelling_the_awaiting_task_mid_chaos_batch_leaves_nothing(
    sweep: bool,
) -> None:
    """The awaiting task gets CancelledError; no task or connection is left."""
    async with watched() as watch, chaos_client(watch) as (server, client):
        ids = server.add_predictions(800, duration=30)

        async def batch() -> list[PollResult]:
            async with PollManager(
                client, max_concurrency=16, policy=POLICY, sweep=sweep
            ) as m:
                return await m.poll_many(ids)

        task = asyncio.create_task(batch())
        # Well into it: hundreds of polls, or pages of a few sweeps.
        await until(
            lambda: (
                server.stats.total_requests >= 300 or server.stats.list_requests >= 5
            )
        )
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not other_tasks()
        assert_no_connection_held(client_connector(client))
        assert watch.open == 0
        # The client outlives the manager and still works.
        assert (await client.get(ids[0])).status == "processing"


def client_connector(client: Client) -> aiohttp.BaseConnector | None:
    session = client._transport._session  # the client's own: no public handle
    assert session is not None
    return session.connector


async def test_closing_the_client_mid_chaos_batch_ends_every_id_clearly() -> None:
    """Each id ends once: done before the close, or ClientClosedError after."""
    async with watched(), FakeReplicate(latency=0.005, seed=5) as server:
        server.set_chaos(0.2, CALM_MENU, seed=5)
        ids = server.add_predictions(400, lambda i: {"duration": (i % 4) * 0.4})
        client = Client(
            "cometapi",
            base_url=server.base_url(PREFIX),
            api_key=server.api_key,
            timeouts=TIMEOUTS,
            retry=RETRY,
        )  # owns its session: closing the client closes it
        async with PollManager(client, max_concurrency=16, policy=POLICY) as manager:
            batch = asyncio.create_task(manager.poll_many(ids))
            await until(lambda: manager.stats.finished >= 50)
            session = client._transport._session
            await client.close()
            results = await asyncio.wait_for(batch, 30)
        assert session is not None
        assert session.closed
        assert not other_tasks()
    assert [r.id for r in results] == ids
    kinds = Counter(type(r.error).__name__ for r in results)
    assert kinds["NoneType"] >= 50
    assert kinds["ClientClosedError"] > 100
    for result in results:
        if result.error is None:
            assert result.prediction is not None
            assert result.prediction.status == "succeeded"
        else:
            # In flight when the session closed: a connection error, retried
            # (that retry meets the closed client) unless attempts ran out.
            assert isinstance(result.error, ClientClosedError | ConnectError)


async def test_task_timeout_fires_during_a_retry_sleep_under_faults() -> None:
    """Ids stuck retrying end with PollTimeout at their deadline; others finish."""
    async with watched() as watch, chaos_client(watch, probability=0) as (server, _):
        good = server.add_predictions(60)
        stuck = server.add_predictions(40)
        permanent = [
            *ChaosBatch.PERMANENT_FAULTS,
            Fault.reset(),
            Fault.bad_gateway_html(),
        ]
        for i, pid in enumerate(stuck):
            server.add_fault(
                permanent[i % len(permanent)], prediction_id=pid, times=None
            )
        async with (
            borrowed_session(watch) as session,
            Client(
                base_url=server.base_url(),
                api_key=server.api_key,
                # Long backoff: a deadline of 2 s lands in a retry sleep.
                retry=RetryPolicy(max_attempts=50, base_delay=5, max_delay=5),
                session=session,
            ) as client,
        ):
            # (2 s: in asyncio debug mode, under coverage, the first answer
            # to every id took over 1 s on a loaded 2-core machine.)
            async with PollManager(client, timeout=2.0) as manager:
                start = time.monotonic()
                results = await manager.poll_many(good + stuck)
                elapsed = time.monotonic() - start
            assert not other_tasks()
            assert_no_connection_held(session.connector)
    assert all(r.succeeded for r in results[:60]), [r.error for r in results[:60]]
    for result in results[60:]:
        assert isinstance(result.error, PollTimeout)
        assert result.error.timeout == 2.0
        assert result.prediction is None  # no good answer ever came
    assert 2.0 <= elapsed < 4.0


async def test_task_timeout_holds_while_a_retry_after_pauses_everything() -> None:
    """A 3 s Retry-After, a 0.5 s deadline: ids end at 0.5 s, none sent early."""
    async with (
        watched() as watch,
        chaos_client(watch, probability=0) as (server, client),
    ):
        ids = server.add_predictions(60, duration=60)
        server.add_fault(Fault.rate_limited(3.0), prediction_id=ids[0])
        async with PollManager(
            client, max_concurrency=4, timeout=0.5, policy=POLICY
        ) as manager:
            start = time.monotonic()
            results = await manager.poll_many(ids)
            elapsed = time.monotonic() - start
    assert all(isinstance(r.error, PollTimeout) for r in results)
    assert elapsed < 2.0  # not the 3 s of the pause
    assert_nothing_sent_early(watch, server.stats, 4)


async def test_an_id_cancelled_and_resubmitted_mid_request_still_resolves() -> None:
    """Local cancel while its request runs, submit again: the new poll ends."""
    async with (
        watched() as watch,
        chaos_client(watch, probability=0, latency=0.2) as (server, client),
    ):
        pid = server.add_prediction()  # the old request's answer is terminal
        async with PollManager(client, policy=POLICY) as manager:
            first = manager.submit(pid)
            await asyncio.sleep(0.05)  # its first request is on the server
            await manager.cancel(pid)
            second = manager.submit(pid)
            assert second is not first
            prediction = await asyncio.wait_for(second, 5)
            assert manager.stats.tracked == 0
    assert first.cancelled()
    assert prediction.status == "succeeded"


async def test_a_submit_after_an_awaiter_gave_up_gets_a_live_future(
    fake_replicate: FakeReplicate, client: Client
) -> None:
    """asyncio.wait_for cancels the shared future; the next submit is not doomed."""
    pid = fake_replicate.add_prediction(duration=0.4)
    async with PollManager(client, policy=POLICY) as manager:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(manager.submit(pid), 0.05)
        again = manager.submit(pid)
        assert not again.done()
        assert (await again).status == "succeeded"
        (result,) = await manager.poll_many([pid])
    assert result.succeeded


async def test_a_retry_after_leaves_waiting_ids_queued(
    fake_replicate: FakeReplicate, client: Client
) -> None:
    """During a pause the backlog stays put: no burst of work at each 429.

    Workers wait the pause out (deadlines keep their own timer). Cycling
    every queued id through the workers at each 429 instead stalled the
    event loop for ~340 ms per pause with 20,000 ids (found by the soak).
    """
    ids = fake_replicate.add_predictions(3000, duration=60)
    fake_replicate.add_fault(Fault.rate_limited(0.5))  # the very first request
    async with PollManager(client, max_concurrency=4, policy=POLICY) as manager:
        batch = asyncio.create_task(manager.poll_many(ids))
        await until(lambda: client.budget.is_paused(time.monotonic()))
        queue = manager._queue  # no public view of the backlog
        assert queue is not None
        waiting, sent = queue.qsize(), manager.stats.requests
        await asyncio.sleep(0.2)
        assert client.budget.is_paused(time.monotonic())
        # At most one more id per worker (those with a request in flight
        # when the 429 came); the rest wait where they were.
        assert queue.qsize() >= waiting - 4
        assert waiting > 2900
        assert manager.stats.requests == sent
        batch.cancel()


@pytest.mark.parametrize(
    "fault", list({f.kind: f for f in chaos_menu()}.values()), ids=lambda f: f.kind
)
async def test_the_fake_server_stays_quiet_when_a_client_hangs_up_mid_fault(
    fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that gives up before a fault is served causes no server error."""
    async with watched(), FakeReplicate(latency=0.1) as server:
        pid = server.add_prediction()
        server.add_fault(fault, prediction_id=pid)
        async with Client(
            base_url=server.base_url(),
            api_key=server.api_key,
            timeouts=Timeouts(total=0.05),
            retry=RetryPolicy(max_attempts=1),
        ) as client:
            with pytest.raises(replipoll.RequestTimeoutError):
                await client.get(pid)
            await asyncio.sleep(0.15)  # the server gets to its answer
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
