"""PollManager against the fake server: bounds, budget, deadlines, dedup, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable

import pytest
import replipoll
from replipoll import (
    BaseURLError,
    BatchStoppedError,
    Client,
    ConfigurationError,
    ManagerClosedError,
    NotFoundError,
    PollManager,
    PollPolicy,
    PollTimeout,
    Prediction,
    RateLimitedError,
    RequestError,
    RetryPolicy,
    ServerError,
)
from replipoll._sansio import ApiRequest
from replipoll._schedule import on_grid
from replipoll.testing import FakeReplicate, Fault

QUICK = PollPolicy(min_interval=0.05, age_factor=0.1, max_interval=0.2, jitter=0.1)


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Wait, generously, until ``condition()`` holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")


def other_tasks() -> set[asyncio.Task[object]]:
    """Tasks still alive besides this test's and the in-process server's."""
    return {
        t
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not t.get_coro().__qualname__.startswith("RequestHandler.")  # type: ignore[union-attr]
    }


async def test_poll_many_returns_one_result_per_id_in_input_order(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = [
        fake_replicate.add_prediction(duration=d, outcome=o)
        for d, o in [
            (0.3, "succeeded"),
            (0.0, "failed"),
            (0.1, "canceled"),
            (0.2, "aborted"),
        ]
    ]
    async with PollManager(client, policy=QUICK) as manager:
        results = await manager.poll_many([*ids, ids[0], "missing", "bad/id"])
    assert [r.id for r in results] == [*ids, ids[0], "missing", "bad/id"]
    assert [r.prediction.status for r in results[:5] if r.prediction] == [
        "succeeded",
        "failed",
        "canceled",
        "aborted",
        "succeeded",
    ]
    assert all(r.is_terminal for r in results[:5])
    assert results[0].succeeded
    assert not results[1].succeeded
    assert isinstance(results[5].error, NotFoundError)
    assert isinstance(results[6].error, replipoll.InvalidPredictionIdError)
    assert not other_tasks()


async def test_submitting_an_id_twice_shares_one_poll_stream(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=0.3)
    async with PollManager(client, policy=PollPolicy.fixed(0.1)) as manager:
        first = manager.submit(pid)
        second = manager.submit(pid)
        assert first is second
        a, b = await asyncio.gather(first, second)
    assert a is b
    # One stream: about 0.3 s / 0.1 s polls, not twice that.
    assert fake_replicate.stats.requests_per_id[pid] <= 6


async def test_in_flight_requests_never_exceed_max_concurrency(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    fake_replicate.add_fault(Fault.slow(0.02), times=None)
    ids = fake_replicate.add_predictions(300, duration=0.2)
    async with PollManager(client, max_concurrency=8, policy=QUICK) as manager:
        results = await manager.poll_many(ids)
        assert manager.stats.peak_in_flight == 8
    assert all(r.succeeded for r in results)
    assert fake_replicate.stats.peak_in_flight == 8


async def test_request_rate_stays_within_the_budget(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = fake_replicate.add_predictions(60, duration=0.0)
    rate, burst = 100.0, 5
    async with PollManager(client, rate_limit=rate, burst=burst) as manager:
        start = time.monotonic()
        await manager.poll_many(ids)
        elapsed = time.monotonic() - start
    assert elapsed >= (60 - burst) / rate * 0.95
    times = sorted(r.time for r in fake_replicate.stats.request_log)
    for i, t in enumerate(times):
        window = [u for u in times[i:] if u - t <= 0.1]
        assert len(window) <= burst + rate * 0.1 + 2  # +2: loopback scheduling slack


async def test_retry_after_pauses_every_id_and_no_request_comes_early() -> None:
    # Requests already on the wire when a 429 goes out cannot be recalled;
    # the grace excuses those, anything later counts as early.
    async with FakeReplicate(early_grace=0.05) as server:
        ids = server.add_predictions(200, duration=0.1)
        for pid in ids[::20]:
            server.add_fault(Fault.rate_limited(0.3), prediction_id=pid)
        async with (
            Client(base_url=server.base_url(), api_key=server.api_key) as client,
            PollManager(client, max_concurrency=16, policy=QUICK) as manager,
        ):
            start = time.monotonic()
            results = await manager.poll_many(ids)
            elapsed = time.monotonic() - start
            stats = manager.stats
    assert all(r.succeeded for r in results)
    assert stats.throttled == 10
    assert server.stats.early_requests == 0
    assert elapsed >= 0.3


async def test_transient_faults_are_retried_through_the_schedule(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = fake_replicate.add_predictions(50, duration=0.05)
    faults = [
        Fault.server_error(),
        Fault.bad_gateway_html(),
        Fault.unavailable_comet(),
        Fault.gateway_timeout_empty(),
        Fault.cloudflare_timeout(),
        Fault.reset(),
        Fault.truncated_json(),
    ]
    for i, pid in enumerate(ids):
        fake_replicate.add_fault(faults[i % len(faults)], prediction_id=pid)
    async with PollManager(client, policy=QUICK) as manager:
        results = await manager.poll_many(ids)
        assert manager.stats.retries >= 40
    assert all(r.succeeded for r in results)


async def test_an_html_page_with_200_is_a_base_url_error_said_once(
    client: Client, fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    """A login page where JSON belongs: every id would get it, so none is
    retried, and the log says it once, not once per id."""
    ids = fake_replicate.add_predictions(20)
    fake_replicate.add_fault(Fault.html_200(), times=None)
    async with PollManager(client, policy=QUICK) as manager:
        results = await manager.poll_many(ids)
    assert fake_replicate.stats.total_requests == 20
    assert all(isinstance(r.error, BaseURLError) for r in results)
    error = results[0].error
    assert isinstance(error, ConfigurationError)
    assert error.option == "base_url"
    assert "is base_url right?" in str(error)
    assert "Sign in" in str(error)  # the page's title
    said = [r for r in caplog.records if "base_url right" in r.getMessage()]
    assert len(said) == 1


async def test_retries_exhausted_end_that_id_only_with_the_attempt_count(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    good, bad = fake_replicate.add_predictions(2)
    fake_replicate.add_fault(Fault.server_error(), prediction_id=bad, times=None)
    async with PollManager(client, policy=QUICK) as manager:
        ok, failed = await manager.poll_many([good, bad])
    assert ok.succeeded
    assert isinstance(failed.error, replipoll.ServerError)
    assert failed.error.attempts == client.retry.max_attempts


async def test_deadline_ends_an_id_with_poll_timeout_and_the_last_record(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    slow, quick = (
        fake_replicate.add_prediction(duration=60),
        fake_replicate.add_prediction(),
    )
    async with PollManager(client, timeout=0.4, policy=QUICK) as manager:
        start = time.monotonic()
        late, done = await manager.poll_many([slow, quick])
        assert time.monotonic() - start < 1.5
    assert isinstance(late.error, PollTimeout)
    assert late.prediction is not None
    assert late.prediction.status == "processing"
    assert late.error.last is late.prediction
    assert done.succeeded


async def test_deadline_fires_during_a_retry_wait(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.rate_limited(5.0), prediction_id=pid)
    async with (
        Client(
            base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
        ) as client,
        PollManager(client, timeout=0.3) as manager,
    ):
        start = time.monotonic()
        (result,) = await manager.poll_many([pid])
        assert time.monotonic() - start < 1.0
    assert isinstance(result.error, PollTimeout)
    assert result.prediction is None


async def test_deadline_cuts_a_hanging_request_short(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.slow(5.0), prediction_id=pid)
    async with (
        Client(
            base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
        ) as client,
        PollManager(client, timeout=0.3) as manager,
    ):
        start = time.monotonic()
        (result,) = await manager.poll_many([pid])
        assert time.monotonic() - start < 1.5
    assert isinstance(result.error, PollTimeout)


async def test_cancel_on_timeout_cancels_remotely(
    client: Client, fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    """The id ends at its deadline with its last record; the cancel goes out
    beside it, and its outcome is logged."""
    pid = fake_replicate.add_prediction(duration=60)
    caplog.set_level(logging.INFO, logger="replipoll")
    async with PollManager(
        client, timeout=0.2, cancel_on_timeout=True, policy=QUICK
    ) as manager:
        (result,) = await manager.poll_many([pid])
        await until(
            lambda: fake_replicate.prediction_state(pid)["status"] == "canceled"
        )
        await until(lambda: f"canceled {pid} after its deadline" in caplog.text)
    assert isinstance(result.error, PollTimeout)
    assert result.prediction is not None
    assert result.prediction.status == "processing"  # the last record seen


@pytest.mark.parametrize(
    "fault",
    [Fault.server_error(), Fault.slow(30.0), Fault.rate_limited(2.0)],
    ids=["cancel fails", "cancel never answers", "a 429 before the deadline"],
)
async def test_cancel_on_timeout_never_delays_the_end_past_the_deadline(
    fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture, fault: Fault
) -> None:
    """A 0.5 s deadline ends at 0.5 s, whatever the cancel endpoint does; a
    cancel still running when the manager closes is stopped and said so."""
    pid = fake_replicate.add_prediction(duration=60)
    cancel_retry = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.05)
    poll_retry = RetryPolicy(max_attempts=100, base_delay=0.05, max_delay=0.05)
    async with Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        retry=cancel_retry,
    ) as client:
        manager = PollManager(
            client, timeout=0.5, cancel_on_timeout=True, policy=QUICK, retry=poll_retry
        )
        async with manager:
            future = manager.submit(pid)
            await asyncio.sleep(0.1)  # polled once: the faults hit what follows
            fake_replicate.add_fault(fault, prediction_id=pid, times=None)
            start = time.monotonic()
            with pytest.raises(PollTimeout):
                await future
            ended = time.monotonic() - start
            assert ended < 0.8
            closing = time.monotonic()
        assert time.monotonic() - closing < 1.0
    assert not other_tasks()
    assert f"cancel {pid} after its deadline" in caplog.text


async def test_undocumented_status_keeps_polling_and_is_logged_once(
    client: Client, fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    ids = fake_replicate.add_predictions(3, outcome="paused_by_gateway")
    with caplog.at_level(logging.WARNING, logger="replipoll"):
        async with PollManager(client, timeout=0.4, policy=QUICK) as manager:
            results = await manager.poll_many(ids)
    assert all(isinstance(r.error, PollTimeout) for r in results)
    assert all(
        r.prediction and r.prediction.status == "paused_by_gateway" for r in results
    )
    assert all(fake_replicate.stats.requests_per_id[i] > 2 for i in ids)
    undocumented = [
        r for r in caplog.records if "undocumented status" in r.getMessage()
    ]
    assert len(undocumented) == 1


async def test_local_cancel_stops_polling_that_id(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    async with PollManager(client, policy=QUICK) as manager:
        future = manager.submit(pid)
        await asyncio.sleep(0.1)
        assert await manager.cancel(pid) is None
        assert future.cancelled()
        seen = fake_replicate.stats.requests_per_id[pid]
        await asyncio.sleep(0.3)
        # A request already on the wire may still land; none is sent after.
        assert fake_replicate.stats.requests_per_id[pid] <= seen + 1
        assert manager.stats.tracked == 0


async def test_remote_cancel_resolves_the_id_as_canceled(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    async with PollManager(client, policy=QUICK) as manager:
        future = manager.submit(pid)
        answer = await manager.cancel(pid, remote=True)
        assert answer is not None
        assert answer.status == "canceled"
        assert (await future).status == "canceled"


async def test_on_update_sees_each_status_change_once(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(queue=0.15, duration=0.15)
    seen: list[str] = []

    async def record(p: Prediction) -> None:
        seen.append(str(p.status))

    async with PollManager(client, policy=QUICK, on_update=record) as manager:
        await manager.submit(pid)
    assert seen == ["starting", "processing", "succeeded"]


async def test_a_raising_on_update_fails_that_id_only(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    boom, fine = fake_replicate.add_predictions(2)

    def callback(p: Prediction) -> None:
        if p.id == boom:
            raise RuntimeError("callback broke")

    async with PollManager(client, on_update=callback) as manager:
        bad, good = await manager.poll_many([boom, fine])
    assert isinstance(bad.error, RuntimeError)
    assert good.succeeded


async def test_as_completed_yields_in_finishing_order(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    slow = fake_replicate.add_prediction(duration=0.5)
    fast = fake_replicate.add_prediction(duration=0.0)
    async with PollManager(client, policy=QUICK) as manager:
        order = [r.id async for r in manager.as_completed([slow, fast, "missing"])]
    assert order.index(fast) < order.index(slow)
    assert sorted(order) == sorted([slow, fast, "missing"])


async def test_stats_count_requests_statuses_and_throttling(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = fake_replicate.add_predictions(5)
    failed = fake_replicate.add_prediction(outcome="failed")
    fake_replicate.add_fault(Fault.rate_limited(0.05), prediction_id=ids[0])
    async with PollManager(client, policy=QUICK) as manager:
        await manager.poll_many([*ids, failed, "missing"])
        stats = manager.stats
    assert stats.by_status == {"succeeded": 5, "failed": 1, "unknown": 1}
    assert stats.finished == 7
    assert stats.errors == 1
    assert stats.throttled == 1
    assert stats.retries == 1
    assert stats.requests == fake_replicate.stats.total_requests
    assert stats.tracked == 0
    assert stats.in_flight == 0


async def test_exit_ends_unfinished_ids_with_an_error_and_leaves_no_task(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """Closing the manager is no cancellation of the code awaiting an id: it
    gets ManagerClosedError, which ``except Exception`` catches."""
    pid = fake_replicate.add_prediction(duration=60)
    async with PollManager(client, policy=QUICK) as manager:
        future = manager.submit(pid)
        waiter = asyncio.create_task(manager.wait(pid))
        batch = asyncio.create_task(manager.poll_many([pid]))
        await asyncio.sleep(0.1)
    assert not future.cancelled()
    assert isinstance(future.exception(), ManagerClosedError)
    with pytest.raises(ManagerClosedError, match=pid):
        await waiter
    (result,) = await batch
    assert isinstance(result.error, ManagerClosedError)
    assert result.prediction is not None  # the last record seen
    assert result.prediction.status == "processing"
    assert not other_tasks()
    with pytest.raises(RuntimeError, match="closed"):
        manager.submit(pid)


async def test_cancelling_the_awaiting_task_mid_batch_cleans_up(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = fake_replicate.add_predictions(200, duration=10)
    fake_replicate.add_fault(Fault.slow(0.05), times=None)

    async def batch() -> None:
        async with PollManager(client, max_concurrency=8, policy=QUICK) as manager:
            await manager.poll_many(ids)

    task = asyncio.create_task(batch())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not other_tasks()
    # The client is still usable afterwards.
    assert (await client.get(ids[0])).status == "processing"


async def test_closing_the_client_mid_batch_ends_each_id_with_a_clear_error(
    fake_replicate: FakeReplicate,
) -> None:
    ids = fake_replicate.add_predictions(50, duration=10)
    client = Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        retry=RetryPolicy(max_attempts=2, base_delay=0.01),
    )
    async with PollManager(client, policy=QUICK) as manager:
        batch = asyncio.create_task(manager.poll_many(ids))
        await asyncio.sleep(0.2)
        await client.close()
        results = await asyncio.wait_for(batch, 5)
    assert len(results) == 50
    assert all(r.error is not None for r in results)
    kinds = Counter(type(r.error).__name__ for r in results)
    assert set(kinds) <= {"ClientClosedError", "ConnectError"}
    assert not other_tasks()


async def test_five_thousand_ids_finish_with_exactly_one_result_each(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = fake_replicate.add_predictions(
        5000,
        lambda i: {
            "duration": (i % 5) * 0.1,
            "outcome": ["succeeded", "failed", "canceled", "aborted"][i % 4],
        },
    )
    missing = [f"missing{i}" for i in range(20)]
    async with PollManager(client, max_concurrency=32, policy=QUICK) as manager:
        results = await manager.poll_many(ids + missing)
        stats = manager.stats
    assert [r.id for r in results] == ids + missing
    assert all(r.is_terminal for r in results[:5000])
    assert all(isinstance(r.error, NotFoundError) for r in results[5000:])
    assert stats.finished == 5020
    assert stats.tracked == 0
    assert fake_replicate.stats.peak_in_flight <= 32


async def test_wait_and_manager_reject_nonsense_options(client: Client) -> None:
    with pytest.raises(ValueError, match="max_concurrency"):
        PollManager(client, max_concurrency=0)
    with pytest.raises(ConfigurationError, match="timeout"):
        PollManager(client, timeout=0)
    with pytest.raises(ValueError, match="coalesce"):
        PollManager(client, coalesce=-0.1)


async def test_wait_survives_one_waiter_giving_up(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=0.4)
    async with PollManager(client, policy=QUICK) as manager:
        impatient = asyncio.create_task(manager.wait(pid))
        patient = asyncio.create_task(manager.wait(pid))
        await asyncio.sleep(0.1)
        impatient.cancel()
        assert (await patient).status == "succeeded"
    with pytest.raises(asyncio.CancelledError):
        await impatient


async def test_local_cancel_removes_the_id_from_the_status_counts(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    async with PollManager(client, policy=QUICK) as manager:
        manager.submit(pid)
        await asyncio.sleep(0.1)
        assert manager.stats.by_status == {"processing": 1}
        await manager.cancel(pid)
        assert manager.stats.by_status == {}


async def second_polls(server: FakeReplicate, coalesce: float) -> list[float]:
    """Submit ten ids 15 ms apart; return when each one's second poll arrived."""
    ids = server.add_predictions(10, duration=5.0)
    policy = PollPolicy.fixed(1.0)  # (a wait of four grid steps or more)
    async with (
        Client(base_url=server.base_url(), api_key=server.api_key) as client,
        PollManager(client, policy=policy, coalesce=coalesce) as manager,
    ):
        for pid in ids:
            manager.submit(pid)
            await asyncio.sleep(0.015)
        await asyncio.sleep(1.45)
    polls: dict[str, list[float]] = {}
    for record in server.stats.request_log:
        polls.setdefault(record.path.rsplit("/", 1)[-1], []).append(record.time)
    # Never earlier than the policy says, coalescing or not.
    assert all(b - a >= 1.0 * 0.95 for a, b in (polls[pid][:2] for pid in ids))
    return sorted(polls[pid][1] for pid in ids)


def bunches(times: list[float], within: float = 0.01) -> int:
    """How many groups of moments no more than ``within`` apart."""
    return 1 + sum(b - a > within for a, b in itertools.pairwise(times))


async def test_polls_due_in_one_window_go_out_together() -> None:
    async with FakeReplicate() as server:
        # Ten polls due over 150 ms: on a 200 ms grid, one or two wake-ups.
        assert bunches(await second_polls(server, coalesce=0.2)) <= 2
    async with FakeReplicate() as server:
        assert bunches(await second_polls(server, coalesce=0)) >= 8


async def test_a_short_wait_gets_a_finer_grid() -> None:
    """Polls every 0.1 s on a 0.2 s grid: the grid shrinks to a quarter of
    the wait, so the intervals stay near 0.1 s instead of doubling."""
    async with FakeReplicate() as server:
        pid = server.add_prediction(duration=5.0)
        async with (
            Client(base_url=server.base_url(), api_key=server.api_key) as client,
            PollManager(client, policy=PollPolicy.fixed(0.1), coalesce=0.2) as manager,
        ):
            manager.submit(pid)
            await asyncio.sleep(1.05)
        times = [r.time for r in server.stats.request_log]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.1 * 0.95, gaps  # never early: the policy is fixed
    assert 7 <= len(times) <= 11, gaps


def test_coalescing_moves_polls_within_the_policy_jitter_only() -> None:
    """Nearest grid point when the jitter allows it, the next one up when
    not; a fixed policy (no jitter) is never moved earlier."""
    jittery = PollPolicy(min_interval=2.0, max_interval=2.0, jitter=0.1)
    now = 100.0
    for due in (101.83, 101.95, 102.07, 102.19):
        earliest = now + jittery.shortest_delay(0)
        point = on_grid(due, now, 0.2, earliest=earliest)
        assert abs(point - due) <= 0.2
        assert point >= earliest
    assert on_grid(101.83, now, 0.2, earliest=now + 1.8) == pytest.approx(101.8)
    assert on_grid(101.85, now, 0.2, earliest=now + 1.81) == pytest.approx(102.0)
    fixed = PollPolicy.fixed(2.0)
    assert fixed.shortest_delay(50) == 2.0
    assert on_grid(101.83, now, 0.2, earliest=now + 2.0) == pytest.approx(102.0)
    assert on_grid(101.83, now, 0.2) == pytest.approx(102.0)  # a retry: never early
    assert on_grid(101.83, now, 0) == 101.83


async def test_coalescing_never_pushes_a_poll_past_its_deadline(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=10.0)
    async with PollManager(
        client, policy=PollPolicy.fixed(0.1), coalesce=5.0, timeout=0.4
    ) as manager:
        start = time.monotonic()
        with pytest.raises(PollTimeout):
            await manager.submit(pid)
    assert time.monotonic() - start < 1.0


async def test_a_poll_due_after_the_deadline_is_not_queued_and_the_id_ends_on_time(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """Nothing waits in the poll queue for a poll that would never be sent:
    the deadline comes first, and ends the id with its last record."""
    pid = fake_replicate.add_prediction(duration=10.0)
    seen = asyncio.Event()
    async with PollManager(
        client,
        policy=PollPolicy.fixed(60.0),
        timeout=0.4,
        on_update=lambda _: seen.set(),
    ) as manager:
        start = time.monotonic()
        future = manager.submit(pid)
        await seen.wait()
        assert pid not in manager._polls
        assert pid in manager._deadlines
        with pytest.raises(PollTimeout) as timed_out:
            await future
    assert 0.35 < time.monotonic() - start < 1.0
    assert timed_out.value.last is not None
    assert timed_out.value.last.status in ("starting", "processing")
    assert fake_replicate.stats.requests_per_id[pid] == 1


async def test_a_stalled_loop_does_not_bunch_budgeted_requests(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    # Every worker is waiting for the budget when the loop stalls; after it,
    # requests go out one slot apart, not all of them at once.
    ids = fake_replicate.add_predictions(12, duration=0.0)
    rate = 40.0
    async with PollManager(
        client, rate_limit=rate, burst=1, max_concurrency=12
    ) as manager:
        batch = asyncio.ensure_future(manager.poll_many(ids))
        await asyncio.sleep(0.03)
        time.sleep(0.2)  # noqa: ASYNC251 (the stall under test)
        results = await batch
    assert all(r.is_terminal for r in results)
    times = sorted(r.time for r in fake_replicate.stats.request_log)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert sorted(gaps)[1] >= 1 / rate * 0.8, gaps  # (loopback jitter: one gap)


async def test_a_failed_cancel_after_the_deadline_still_ends_the_id(
    fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    # Every request for it fails: the polls (retried) and the cancel.
    fake_replicate.add_fault(Fault.server_error(), prediction_id=pid, times=None)
    retry = RetryPolicy(max_attempts=50, base_delay=0.05, max_delay=0.05)
    async with (
        Client(
            base_url=fake_replicate.base_url(),
            api_key=fake_replicate.api_key,
            retry=retry,
        ) as client,
        PollManager(
            client, timeout=0.2, cancel_on_timeout=True, policy=QUICK
        ) as manager,
    ):
        (result,) = await manager.poll_many([pid])
        await until(lambda: f"could not cancel {pid} after its deadline" in caplog.text)
    assert isinstance(result.error, PollTimeout)


async def test_an_id_cancelled_while_queued_is_never_requested(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    ids = fake_replicate.add_predictions(5, duration=0.0)
    async with PollManager(client, max_concurrency=1) as manager:
        futures = [manager.submit(pid) for pid in ids]
        futures[-1].cancel()  # an awaiter gave up before its first poll
        await asyncio.wait(futures[:-1])
        await asyncio.sleep(0.05)  # the worker has reached the last id
        assert manager.stats.tracked == 0
    assert fake_replicate.stats.requests_per_id[ids[-1]] == 0


async def test_an_id_cancelled_while_waiting_for_the_budget_is_never_requested(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    first, second = fake_replicate.add_predictions(2, duration=0.0)
    async with PollManager(client, rate_limit=5, burst=1) as manager:
        done = manager.submit(first)
        waiting = manager.submit(second)
        await asyncio.sleep(0.05)  # the second waits 0.2 s for its slot
        assert manager.budget.waiting == 1
        await manager.cancel(second)
        await done
        await asyncio.sleep(0.3)
    assert waiting.cancelled()
    assert fake_replicate.stats.requests_per_id[second] == 0


async def test_after_a_pause_requests_resume_spread_out_without_a_rate_limit() -> None:
    """A 0.5 s Retry-After with 100 ids waiting and no rate limit: the first
    50 ms after it ends see the burst, not all 100 at once."""
    async with FakeReplicate() as server:
        ids = server.add_predictions(100, duration=0.0)
        server.add_fault(Fault.rate_limited(0.5), prediction_id=ids[0])
        async with (
            Client(base_url=server.base_url(), api_key=server.api_key) as client,
            PollManager(client, max_concurrency=100, policy=QUICK) as manager,
        ):
            manager.submit(ids[0])
            await until(lambda: manager.stats.throttled == 1)
            results = await manager.poll_many(ids)
        log = list(server.stats.request_log)
    assert all(r.succeeded for r in results)
    throttled_at = next(r.time for r in log if r.status == 429)
    resumed = [r.time for r in log if r.time > throttled_at]
    first = min(resumed)
    assert first >= throttled_at + 0.5 - 0.05
    assert sum(t < first + 0.05 for t in resumed) <= 12  # the burst (10)


async def test_a_refused_retry_after_fails_its_id_and_stalls_no_other(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """A Retry-After of an hour (over max_retry_after): that id fails with it,
    at once; the budget is not paused, so the others finish quickly."""
    ids = fake_replicate.add_predictions(20, duration=0.0)
    fake_replicate.add_fault(Fault.rate_limited(3600), prediction_id=ids[0])
    start = time.monotonic()
    async with PollManager(client, policy=QUICK) as manager:
        results = await manager.poll_many(ids)
    assert time.monotonic() - start < 2.0
    assert isinstance(results[0].error, RateLimitedError)
    assert results[0].error.retry_after == 3600
    assert all(r.succeeded for r in results[1:])
    assert not client.budget.is_paused(time.monotonic())


async def test_on_update_hears_of_a_remote_cancel(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    seen: list[str] = []
    pid = fake_replicate.add_prediction(duration=30)
    async with PollManager(
        client, policy=QUICK, on_update=lambda p: seen.append(str(p.status))
    ) as manager:
        future = manager.submit(pid)
        await until(lambda: seen == ["processing"])
        await manager.cancel(pid, remote=True)
        assert (await future).status == "canceled"
    assert seen == ["processing", "canceled"]


async def test_a_cancelled_id_is_no_longer_polled_nor_counted_twice(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """An awaiter cancelling the shared future stops the poll at once; the id
    submitted again is counted once in by_status."""
    pid = fake_replicate.add_prediction(duration=30)
    async with PollManager(client, policy=QUICK) as manager:
        first = manager.submit(pid)
        await until(lambda: manager.stats.by_status.get("processing") == 1)
        first.cancel()
        await asyncio.sleep(0)
        assert manager.stats.tracked == 0
        assert manager.stats.by_status == {}
        polled = fake_replicate.stats.requests_per_id[pid]
        await asyncio.sleep(0.3)
        assert fake_replicate.stats.requests_per_id[pid] == polled
        second = manager.submit(pid)
        assert second is not first
        await until(lambda: manager.stats.by_status.get("processing") == 1)
        assert sum(manager.stats.by_status.values()) == 1


async def test_a_new_status_on_every_poll_costs_bounded_bookkeeping(
    client: Client, fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    """A gateway inventing a status per poll: at most 16 names and warnings."""
    pid = fake_replicate.add_prediction(duration=30)
    for n in range(25):
        body = json.dumps({"id": pid, "status": f"weird-{n}" + "x" * 500})
        fake_replicate.add_fault(Fault.status(200, body), prediction_id=pid)
    fast = PollPolicy.fixed(0.02)
    async with PollManager(client, policy=fast, timeout=30) as manager:
        manager.submit(pid)
        await until(lambda: fake_replicate.stats.requests_per_id[pid] >= 25)
        names = list(manager.stats.by_status)
    assert len(manager._tally._named) == 16
    assert "undocumented (other)" in names
    assert all(len(name) <= 64 for name in names)
    warnings = [r for r in caplog.records if "undocumented" in r.getMessage()]
    assert len(warnings) == 17  # 16 names, then one "any other" note


async def test_a_poll_that_fails_for_good_keeps_the_last_record_seen(
    fake_replicate: FakeReplicate,
) -> None:
    """Seen processing, then every request fails: the PollResult holds the
    exhausted error and the processing record, not None."""
    pid = fake_replicate.add_prediction(duration=30)
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01)
    async with (
        Client(
            base_url=fake_replicate.base_url(),
            api_key=fake_replicate.api_key,
            retry=retry,
        ) as client,
        PollManager(client, policy=QUICK) as manager,
    ):
        batch = asyncio.create_task(manager.poll_many([pid]))
        await until(lambda: manager.stats.by_status.get("processing") == 1)
        fake_replicate.add_fault(Fault.server_error(), prediction_id=pid, times=None)
        (result,) = await batch
    assert isinstance(result.error, RequestError)
    assert result.error.attempts == 2
    assert result.prediction is not None
    assert result.prediction.status == "processing"


async def test_keep_last_false_keeps_no_record_but_still_names_the_status(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """For very many ids: no record kept per running id; a timeout still says
    where the id was, and finished ids still get their records."""
    slow, quick = (
        fake_replicate.add_prediction(duration=60),
        fake_replicate.add_prediction(),
    )
    async with PollManager(
        client, timeout=0.4, policy=QUICK, keep_last=False
    ) as manager:
        assert manager.keep_last is False
        late, done = await manager.poll_many([slow, quick])
    assert isinstance(late.error, PollTimeout)
    assert late.prediction is None
    assert late.error.last is None
    assert late.error.status == "processing"
    assert "last status: processing" in str(late.error)
    assert done.succeeded
    assert done.prediction is not None


async def test_poll_timeout_names_the_status_of_the_record_it_keeps(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    async with PollManager(client, timeout=0.3, policy=QUICK) as manager:
        (late,) = await manager.poll_many([pid])
    assert isinstance(late.error, PollTimeout)
    assert late.error.status == "processing"
    never = PollTimeout("abc", 1.0, None)
    assert never.status == "never seen"
    assert "last status: never seen" in str(never)


async def test_a_big_batch_goes_in_without_holding_the_loop(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """poll_many and as_completed submit in chunks: other tasks run between
    them (a million ids would otherwise stall the loop for seconds)."""
    ids = [f"{n:08d}neverseenanywhere" for n in range(10_000)]
    for method in ("poll_many", "as_completed"):
        async with PollManager(
            client, policy=PollPolicy.fixed(3600), timeout=None
        ) as manager:
            seen: list[int] = []

            async def peek(
                manager: PollManager = manager, seen: list[int] = seen
            ) -> None:
                await asyncio.sleep(0)
                seen.append(manager.stats.tracked)

            peeker = asyncio.create_task(peek())
            if method == "poll_many":
                batch: asyncio.Task[object] = asyncio.create_task(
                    manager.poll_many(ids)
                )
            else:

                async def drain(manager: PollManager = manager) -> None:
                    async for _ in manager.as_completed(ids):
                        pass

                batch = asyncio.create_task(drain())
            await peeker
            # Every id went in (some may have ended already: 404s).
            await until(
                lambda m=manager: m.stats.tracked + m.stats.finished == len(ids)
            )
            assert seen, method
            assert 0 < seen[0] < len(ids), (method, seen)
            batch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batch


async def test_many_polls_due_at_once_all_go_out(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """More ids due in one instant than the timer hands out per turn."""
    ids = fake_replicate.add_predictions(5_000, duration=3)
    # A coarse grid: the second polls of all 5,000 ids fall due together.
    async with PollManager(
        client, policy=PollPolicy.fixed(1.0), coalesce=4.0, max_concurrency=64
    ) as manager:
        results = await manager.poll_many(ids)
    assert all(r.succeeded for r in results)
    assert manager.stats.requests > len(ids)


# -- a batch that fails for one reason -----------------------------------------


async def test_a_refused_key_is_judged_from_three_ids_and_stops_the_batch(
    fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    """400 ids and a wrong key: a few requests, one line saying what to check,
    and every other id ends unsent with BatchStoppedError."""
    ids = fake_replicate.add_predictions(400)
    async with (
        Client(
            base_url=fake_replicate.base_url(), api_key="r8_wrong-key-12345"
        ) as client,
        PollManager(client, max_concurrency=4, stop_on_systemic=True) as manager,
    ):
        results = await manager.poll_many(ids)
        diagnosis = manager.diagnosis
        late = manager.submit(fake_replicate.add_prediction())
    assert diagnosis is not None
    assert diagnosis.kind == "key"
    assert "check api_key" in diagnosis.message  # the key came as an argument
    assert fake_replicate.stats.total_requests < 10
    stopped = [r for r in results if isinstance(r.error, BatchStoppedError)]
    assert len(stopped) > 390
    assert stopped[0].error.diagnosis is diagnosis
    assert isinstance(late.exception(), BatchStoppedError)
    said = [r for r in caplog.records if "key was refused" in r.getMessage()]
    assert len(said) == 1


@pytest.mark.parametrize(
    ("kind", "make"),
    [
        ("not_found", lambda base: base),  # ids that do not exist
        ("base_url", lambda base: base),  # an HTML page where the API should be
        ("unreachable", lambda base: "http://127.0.0.1:9/v1"),  # nothing listens
    ],
)
async def test_each_systemic_failure_is_named_with_its_fix(
    fake_replicate: FakeReplicate, kind: str, make: Callable[[str], str]
) -> None:
    if kind == "base_url":
        fake_replicate.add_fault(Fault.html_200(), times=None)
    ids = [f"missing{n:04d}" for n in range(50)]
    retry = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01)
    async with (
        Client(
            base_url=make(fake_replicate.base_url()),
            api_key=fake_replicate.api_key,
            retry=retry,
        ) as client,
        PollManager(client, max_concurrency=4, stop_on_systemic=True) as manager,
    ):
        results = await manager.poll_many(ids)
    assert manager.diagnosis is not None
    assert manager.diagnosis.kind == kind
    message = manager.diagnosis.message
    expected = {
        "not_found": "is the base URL right?",
        "base_url": "is base_url right?",
        "unreachable": "could not connect to 127.0.0.1:9: Connection refused",
    }
    assert expected[kind] in message
    assert sum(isinstance(r.error, BatchStoppedError) for r in results) >= 35


async def test_one_prediction_that_comes_back_proves_the_batch_works(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """A batch whose first id exists and the rest do not: 404s for those ids
    only, no judgement, nothing stopped."""
    good = fake_replicate.add_prediction()
    ids = [good, *(f"missing{n:04d}" for n in range(30))]
    async with PollManager(client, max_concurrency=1, stop_on_systemic=True) as manager:
        results = await manager.poll_many(ids)
    assert manager.diagnosis is None
    assert results[0].succeeded
    assert all(isinstance(r.error, NotFoundError) for r in results[1:])


async def test_without_stop_the_judgement_is_only_said(
    fake_replicate: FakeReplicate,
) -> None:
    ids = fake_replicate.add_predictions(20)
    async with (
        Client(
            base_url=fake_replicate.base_url(), api_key="r8_wrong-key-12345"
        ) as client,
        PollManager(client) as manager,
    ):
        results = await manager.poll_many(ids)
    assert manager.diagnosis is not None
    assert all(isinstance(r.error, replipoll.AuthenticationError) for r in results)


async def test_a_retry_due_after_the_retry_timeout_ends_with_its_error() -> None:
    """One worker, busy for 0.6 s with a slow answer when the retry of a 500
    falls due: it goes out after the policy's 0.3 s timeout. The id ends
    with the 500 that asked for it, not with a request given no time."""
    policy = RetryPolicy(max_attempts=100, base_delay=0.05, max_delay=0.05, timeout=0.3)
    async with FakeReplicate(latency=0.02) as server:  # no answer within 1 ms
        failing, slow = server.add_prediction(), server.add_prediction(duration=0)
        server.add_fault(Fault.server_error(), prediction_id=failing, times=None)
        server.add_fault(Fault.slow(0.6), prediction_id=slow)
        async with (
            Client(base_url=server.base_url(), api_key=server.api_key) as client,
            PollManager(
                client, retry=policy, max_concurrency=1, coalesce=0, sweep=False
            ) as manager,
        ):
            results = await manager.poll_many([failing, slow])
    failed = results[0].error
    assert isinstance(failed, ServerError), failed
    assert failed.attempts == server.stats.requests_per_id[failing]
    assert results[1].error is None


# -- an unchanged answer is not decoded again --------------------------------


async def test_an_unchanged_answer_returns_the_record_it_was_decoded_into(
    client: replipoll.Client, fake_replicate: FakeReplicate
) -> None:
    """The transport under the manager: the same body, the same record object;
    another body (new logs), a new record; the hash alone never stands in
    for a body it does not match."""
    pid = fake_replicate.add_prediction(duration=600)
    request = ApiRequest.for_prediction("GET", pid)
    transport, timeouts = client._transport, client._timeouts
    first, digest = await transport.api_since(request, timeouts, None)
    again, same = await transport.api_since(request, timeouts, (digest, first))
    assert again is first
    assert same == digest
    body = json.dumps({"id": pid, "status": "processing", "logs": "step 1/5"})
    fake_replicate.add_fault(Fault.status(200, body), prediction_id=pid)
    changed, other = await transport.api_since(request, timeouts, (digest, first))
    assert changed is not first
    assert other != digest
    assert changed.logs == "step 1/5"
    assert changed.status == "processing"
    fresh, _ = await transport.api_since(request, timeouts, (digest + 1, first))
    assert fresh is not first
    assert fresh == first


async def test_the_manager_keeps_an_unchanged_record_and_sees_every_change(
    client: replipoll.Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=600)
    polls = fake_replicate.stats.requests_per_id
    async with PollManager(client, policy=QUICK, sweep=False) as manager:
        future = manager.submit(pid)
        await until(lambda: polls[pid] >= 2)
        first = manager.latest(pid)
        assert first is not None
        assert first.status == "processing"
        seen = polls[pid]
        await until(lambda: polls[pid] >= seen + 3)
        assert manager.latest(pid) is first  # three answers, none decoded
        body = json.dumps({"id": pid, "status": "processing", "logs": "step 1/5"})
        fake_replicate.add_fault(Fault.status(200, body), prediction_id=pid, times=3)
        await until(lambda: (manager.latest(pid) or first).logs == "step 1/5")
        changed = manager.latest(pid)
        done = json.dumps({"id": pid, "status": "succeeded", "output": "ok"})
        fake_replicate.add_fault(Fault.status(200, done), prediction_id=pid)
        record = await asyncio.wait_for(future, 15)
    assert changed is not None
    assert changed is not first
    assert record.status == "succeeded"
    assert record.output == "ok"
