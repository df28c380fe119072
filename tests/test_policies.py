"""Pure policies: retry decisions and delays, the poll schedule, the rate budget."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import itertools
import math
import random
import time

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from replipoll import (
    AuthenticationError,
    BadRequestError,
    ConnectError,
    DecodeError,
    NotFoundError,
    PollManager,
    PollPolicy,
    RateBudget,
    RateLimitedError,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
)
from replipoll._schedule import GridTimers, TimerQueue, on_grid

#: Either kind of timer queue (the same interface).
Timers = TimerQueue | GridTimers


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (RateLimitedError("x", status=429), True),
        (ServerError("x", status=500), True),
        (ServerError("x", status=502), True),
        (ServerError("x", status=503), True),
        (ServerError("x", status=504), True),
        (ServerError("x", status=524), True),
        (ServerError("x", status=501), False),
        (BadRequestError("x", status=400), False),
        (AuthenticationError("x", status=401), False),
        (AuthenticationError("x", status=403), False),
        (NotFoundError("x", status=404), False),
        (BadRequestError("x", status=422), False),
        (ConnectError("x"), True),
        (RequestTimeoutError("x"), True),
        (DecodeError("x", transient=True), True),
        (DecodeError("x", field="status"), False),
        (ValueError("x"), False),
    ],
)
def test_what_is_retried(error: Exception, retry: bool) -> None:
    assert RetryPolicy().is_retryable(error) is retry


def _waits(policy: RetryPolicy, error: Exception, *, step: float = 0.0) -> list[float]:
    """Every wait the engine grants ``error`` until it gives up; a clock in steps."""
    retrying = policy.start(0.0, random.Random(0))
    waits: list[float] = []
    now = 0.0
    while (wait := retrying.next_wait(error, now)) is not None:
        waits.append(wait)
        now += wait + step
    return waits


def test_attempts_are_capped() -> None:
    """max_attempts counts the first attempt: 3 attempts are 2 retries."""
    error = ServerError("x", status=500)
    assert len(_waits(RetryPolicy(max_attempts=3), error)) == 2
    assert error.attempts == 3
    assert _waits(RetryPolicy(max_attempts=1), error) == []


def test_an_error_not_worth_retrying_gives_up_at_once() -> None:
    error = NotFoundError("gone", status=404)
    assert _waits(RetryPolicy(), error) == []
    assert error.attempts == 1


def test_retry_after_beyond_the_cap_is_not_retried() -> None:
    policy = RetryPolicy(max_retry_after=60)
    assert policy.is_retryable(RateLimitedError("x", status=429, retry_after=60))
    assert not policy.is_retryable(RateLimitedError("x", status=429, retry_after=3600))


@given(st.integers(1, 60), st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_an_exponential_cap(
    attempts: int, seed: int
) -> None:
    """Wait n is drawn from [0, min(max_delay, base_delay * 2**(n-1))]."""
    policy = RetryPolicy(base_delay=0.5, max_delay=30, max_attempts=attempts + 1)
    retrying = policy.start(0.0, random.Random(seed))
    for n in range(1, attempts + 1):
        wait = retrying.next_wait(ServerError("x", status=500), 0.0)
        assert wait is not None
        assert 0 <= wait <= min(30, 0.5 * 2 ** (n - 1))


@given(st.floats(0, 300), st.integers(1, 5))
def test_retry_after_is_a_floor_on_the_wait(retry_after: float, attempts: int) -> None:
    error = RateLimitedError("x", status=429, retry_after=retry_after)
    retrying = RetryPolicy(max_attempts=10).start(0.0, random.Random(0))
    for _ in range(attempts):
        wait = retrying.next_wait(error, 0.0)
        assert wait is not None
        assert wait >= retry_after


def test_the_timeout_stops_retries_however_many_attempts_remain() -> None:
    """A 10 s timeout: no wait may end at or past it, even with 99 attempts left."""
    policy = RetryPolicy(max_attempts=100, base_delay=1, max_delay=4, timeout=10)
    waits = _waits(policy, ServerError("x", status=503), step=0.5)
    assert 0 < len(waits) < 99
    assert sum(waits) + 0.5 * len(waits) < 10
    # A Retry-After that would end past the timeout is not waited for.
    late = RateLimitedError("x", status=429, retry_after=11)
    assert _waits(policy, late) == []


def test_on_retry_sees_each_attempt_its_error_and_wait() -> None:
    seen: list[tuple[int, BaseException, float]] = []
    policy = RetryPolicy(
        max_attempts=3, on_retry=lambda n, e, w: seen.append((n, e, w))
    )
    error = ServerError("x", status=503)
    waits = _waits(policy, error)
    assert [(n, e) for n, e, _ in seen] == [(1, error), (2, error)]
    assert [w for *_, w in seen] == waits


def test_retry_policy_is_an_immutable_value() -> None:
    policy = RetryPolicy()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_attempts = 2  # type: ignore[misc]
    assert attrs.evolve(policy, max_attempts=2).max_attempts == 2


def test_poll_policy_grows_with_age_up_to_the_cap() -> None:
    policy = PollPolicy(min_interval=0.5, age_factor=0.1, max_interval=3, jitter=0)
    delays = [policy.next_delay(age) for age in (0, 1, 10, 20, 30, 1000)]
    assert delays == [0.5, 0.5, 1.0, 2.0, 3.0, 3.0]
    assert delays == sorted(delays)


def test_default_policy_waits_1_5_s_then_a_tenth_of_the_age_up_to_3_s() -> None:
    policy = PollPolicy(jitter=0)
    delays = [policy.next_delay(age) for age in (0, 10, 15, 20, 25, 30, 1000)]
    assert delays == pytest.approx([1.5, 1.5, 1.5, 2.0, 2.5, 3.0, 3.0])
    assert PollPolicy().jitter == 0.1


def test_poll_policy_jitter_spreads_ids_submitted_together() -> None:
    policy = PollPolicy(min_interval=0.5, jitter=0.2)
    rng = random.Random(1)
    delays = {policy.next_delay(0.0, rng) for _ in range(50)}
    assert len(delays) > 40
    assert all(0.4 <= d <= 0.6 for d in delays)


def test_fixed_policy_matches_the_official_client() -> None:
    assert PollPolicy.fixed(0.5).next_delay(1234) == 0.5


def _simulate(
    policy: PollPolicy, durations: list[float], seed: int = 1, coalesce: float = 0.0
) -> tuple[float, float]:
    """Mean requests and mean detection delay per prediction, on a virtual clock.

    As the PollManager polls: at once on submission, then ``next_delay(age)``
    after each answer that is not terminal, moved onto its ``coalesce`` grid
    (within the policy's jitter); answers are taken as instant.
    """
    rng = random.Random(seed)
    requests = delays = 0.0
    for duration in durations:
        sent, count = 0.0, 1
        phase = rng.uniform(0.0, coalesce)
        while sent < duration:
            answered = sent
            sent += policy.next_delay(sent, rng)
            if coalesce:
                earliest = answered + policy.shortest_delay(answered) + phase
                sent = (
                    on_grid(sent + phase, answered + phase, coalesce, earliest=earliest)
                    - phase
                )
            count += 1
        requests += count
        delays += sent - duration
    return requests / len(durations), delays / len(durations)


def test_default_policy_meets_the_schedule_target() -> None:
    """Issue 6: at most 1/3 of the official client's requests, mean delay <= 1 s.

    On seeded predictions like the benchmark's (lognormal, median 8 s, sigma
    1.2, capped at 30 minutes); bench/bench_schedule.py has the full figures.
    """
    rng = random.Random(0)
    durations = [min(1800.0, rng.lognormvariate(math.log(8), 1.2)) for _ in range(2000)]
    official, _ = _simulate(PollPolicy.fixed(0.5), durations)
    grid = inspect.signature(PollManager).parameters["coalesce"].default
    requests, delay = _simulate(PollPolicy(), durations, coalesce=grid)
    assert requests / official <= 1 / 3
    assert delay <= 1.0
    # The defaults before (0.5 s, x0.15, 2 s) spent half the official requests.
    previous = PollPolicy(min_interval=0.5, age_factor=0.15, max_interval=2.0)
    assert _simulate(previous, durations)[0] / official > 1 / 3


def test_budget_spaces_requests_after_the_burst() -> None:
    budget = RateBudget(rate=10, burst=3)
    assert [budget.try_acquire(now=0.0) for _ in range(4)] == [True] * 3 + [False]
    assert budget.next_free(now=0.0) == pytest.approx(0.1)
    assert budget.try_acquire(now=0.1)
    assert not budget.try_acquire(now=0.1)
    assert budget.next_free(now=0.15) == pytest.approx(0.05)


async def test_the_budget_timer_never_spins_on_sub_millisecond_waits() -> None:
    """One waiter after another at 2,000/s: each wait is under a millisecond,
    which uvloop's timers round to nothing. The timer must not fire again and
    again before the slot is free (the suite runs on uvloop too)."""

    class Counting(RateBudget):
        wakes = 0

        def _wake(self) -> None:
            type(self).wakes += 1
            super()._wake()

    budget = Counting(rate=2000, burst=1)
    for _ in range(200):
        await budget.acquire()
    assert Counting.wakes <= 3 * 200, Counting.wakes


def test_budget_books_nothing_when_it_says_no() -> None:
    # A refusal takes no slot: asking again and again does not push the
    # next free slot further away.
    budget = RateBudget(rate=10, burst=1)
    assert budget.try_acquire(now=0.0)
    for _ in range(5):
        assert not budget.try_acquire(now=0.05)
    assert budget.next_free(now=0.05) == pytest.approx(0.05)
    assert budget.try_acquire(now=0.1)


def test_budget_refills_while_idle() -> None:
    budget = RateBudget(rate=10, burst=2)
    for _ in range(5):
        budget.try_acquire(now=0.0)
    assert budget.try_acquire(now=100.0)
    assert budget.try_acquire(now=100.0)
    assert not budget.try_acquire(now=100.0)
    assert budget.next_free(now=100.0) == pytest.approx(0.1)


def test_pause_holds_back_every_request_until_it_passes() -> None:
    budget = RateBudget(rate=100, burst=5)
    budget.pause_until(10.0)
    assert budget.is_paused(9.99)
    assert not budget.is_paused(10.0)
    assert not budget.try_acquire(now=2.0)
    assert budget.next_free(now=2.0) == pytest.approx(8.0)
    # After the pause the burst is there again, not a backlog.
    assert [budget.try_acquire(now=10.0) for _ in range(6)] == [True] * 5 + [False]


def test_unlimited_budget_still_honours_a_pause() -> None:
    budget = RateBudget()
    assert budget.try_acquire(now=1.0)
    budget.pause_until(3.0)
    assert budget.next_free(now=1.0) == 2.0
    assert not budget.try_acquire(now=1.0)
    budget.pause_until(2.0)  # an earlier pause never shortens a later one
    assert budget.paused_until == 3.0
    assert budget.try_acquire(now=3.0)


@given(
    st.floats(0.5, 1000),
    st.integers(1, 20),
    st.lists(st.floats(0, 0.5), min_size=1, max_size=200),
)
def test_budget_never_exceeds_rate_plus_burst_in_any_window(
    rate: float, burst: int, gaps: list[float]
) -> None:
    # Whatever moments requests ask at (a busy loop, a stall, a stampede),
    # the ones let go conform: slots are taken at the moment of sending.
    budget = RateBudget(rate=rate, burst=burst)
    now = 0.0
    sends = []
    for gap in gaps:
        now += gap
        while not budget.try_acquire(now):
            now += budget.next_free(now)
        sends.append(now)
    # In any window of length w there are at most burst + rate*w sends.
    for i, start in enumerate(sends):
        for j in range(i, len(sends)):
            window = sends[j] - start
            assert j - i + 1 <= burst + rate * window + 1e-6


async def test_acquire_lets_waiters_go_in_arrival_order_at_the_rate() -> None:
    budget = RateBudget(rate=50, burst=1)
    order: list[tuple[int, float]] = []

    async def request(n: int) -> None:
        await budget.acquire()
        order.append((n, time.monotonic()))

    await asyncio.gather(*(request(n) for n in range(6)))
    assert [n for n, _ in order] == list(range(6))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(order)]
    assert min(gaps) >= 0.02 * 0.9
    assert budget.waiting == 0


async def test_a_stalled_event_loop_does_not_release_a_bunch_of_requests() -> None:
    # Waiters whose turn passed while the loop was blocked are let go one
    # slot apart, from the moment the loop runs again, not all at once.
    rate = 20.0
    budget = RateBudget(rate=rate, burst=1)
    sends: list[float] = []

    async def request() -> None:
        await budget.acquire()
        sends.append(time.monotonic())

    tasks = [asyncio.create_task(request()) for _ in range(5)]
    await asyncio.sleep(0.01)  # the first one goes; the others queue
    time.sleep(0.3)  # noqa: ASYNC251 (a stall: every other turn passes)
    await asyncio.gather(*tasks)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert min(gaps[1:]) >= 1 / rate * 0.9, gaps


async def test_a_cancelled_wait_gives_its_turn_up() -> None:
    budget = RateBudget(rate=20, burst=1)
    assert budget.try_acquire(time.monotonic())
    first = asyncio.create_task(budget.acquire())
    second = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    assert budget.waiting == 2
    first.cancel()
    waited = await second
    assert first.cancelled()
    assert 0.03 <= waited < 0.2  # the next slot, not the one after it
    assert budget.waiting == 0


async def test_waiters_queued_before_a_pause_wait_for_it_too() -> None:
    budget = RateBudget(rate=1000, burst=1)
    assert budget.try_acquire(time.monotonic())
    waiter = asyncio.create_task(budget.acquire())
    await asyncio.sleep(0)
    budget.pause_until(time.monotonic() + 0.15)
    waited = await waiter
    assert waited >= 0.15 * 0.95


def test_a_budget_outlives_its_event_loop() -> None:
    # A wait cut short when asyncio.run() ended leaves a timer on a closed
    # loop; the next loop must not wait on it.
    budget = RateBudget(rate=5, burst=1)

    async def abandon() -> None:
        budget.try_acquire(time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await budget.acquire()

    async def use() -> float:
        async with asyncio.timeout(2):
            return await budget.acquire()

    asyncio.run(abandon())
    assert asyncio.run(use()) < 0.5


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        RateBudget(rate=0)
    with pytest.raises(ValueError, match="burst"):
        RateBudget(rate=1, burst=0)


async def test_after_a_pause_the_burst_goes_at_once_then_the_rate() -> None:
    rate, burst = 20.0, 4
    budget = RateBudget(rate=rate, burst=burst)
    budget.pause_until(time.monotonic() + 0.1)
    sends: list[float] = []

    async def request() -> None:
        await budget.acquire()
        sends.append(time.monotonic())

    await asyncio.gather(*(request() for _ in range(7)))
    assert sends[burst - 1] - sends[0] < 0.01  # woken together
    gaps = [b - a for a, b in itertools.pairwise(sends[burst - 1 :])]
    assert min(gaps) >= 1 / rate * 0.9


async def test_a_waiter_woken_before_a_new_pause_waits_for_it() -> None:
    # Two requests let go together after a Retry-After; the first one's
    # answer is another 429. The second has been woken but not yet sent: it
    # must wait out the new pause too.
    budget = RateBudget()
    budget.pause_until(time.monotonic() + 0.05)
    sent: dict[str, float] = {}

    async def first() -> None:
        await budget.acquire()
        sent["first"] = time.monotonic()
        budget.pause_until(time.monotonic() + 0.1)  # its answer: 429

    async def second() -> None:
        await budget.acquire()
        sent["second"] = time.monotonic()

    await asyncio.gather(first(), second())
    assert sent["second"] - sent["first"] >= 0.1 * 0.95


async def test_a_waiter_cancelled_mid_queue_is_skipped() -> None:
    budget = RateBudget()
    budget.pause_until(time.monotonic() + 0.05)
    tasks = [asyncio.create_task(budget.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], asyncio.CancelledError)
    assert all(isinstance(w, float) and w >= 0.05 * 0.95 for w in done[::2])
    assert budget.waiting == 0
    # Nothing left holding a turn (once the ramp after the pause is over).
    assert budget.try_acquire(time.monotonic() + RateBudget.RAMP)


def _admitted(
    budget: RateBudget, start: float, until: float, wanted: int
) -> list[float]:
    """When ``wanted`` requests would leave, asking every millisecond."""
    times: list[float] = []
    now = start
    while len(times) < wanted and now < until:
        while len(times) < wanted and budget.try_acquire(now):
            times.append(now)
        now += 0.001
    return times


def test_after_a_pause_a_budget_without_rate_resumes_spread_out() -> None:
    """96 requests waiting out a 1 s pause once left within 20 ms; now the
    burst goes at once, then a rate that doubles every half second, and the
    budget is unlimited again after RateBudget.RAMP seconds."""
    budget = RateBudget(rate=None, burst=10)
    assert len(_admitted(budget, 0.0, 0.001, 500)) == 500  # no limit at first
    budget.pause_until(1.0)
    assert _admitted(budget, 0.5, 0.99, 10) == []
    times = _admitted(budget, 1.0, 10.0, 96)
    assert len(times) == 96
    assert sum(t < 1.02 for t in times) == 10  # the burst, not the backlog
    assert sum(t < 1.5 for t in times) < 20
    assert times[-1] < 1.0 + RateBudget.RAMP
    later = 1.0 + RateBudget.RAMP
    assert len(_admitted(budget, later, later + 0.001, 500)) == 500


def test_after_a_pause_a_rated_budget_spends_its_burst_then_its_rate() -> None:
    budget = RateBudget(rate=20, burst=5)
    budget.pause_until(2.0)
    times = _admitted(budget, 2.0, 5.0, 25)
    assert sum(t < 2.01 for t in times) == 5
    assert times[-1] == pytest.approx(2.0 + 20 / 20, abs=0.01)


# -- the timer queue -----------------------------------------------------------


@pytest.mark.parametrize("kind", [TimerQueue, GridTimers])
def test_timer_queue_moves_discards_and_pops_in_order(kind: type[Timers]) -> None:
    timers = kind()
    timers.push("a", 5.0)
    timers.push("b", 1.0)
    timers.push("c", 3.0)
    timers.push("a", 2.0)  # moved earlier: its old entry must not fire
    timers.discard("c")
    assert timers.next_due() == 1.0
    assert timers.pop_due(0.5) == []
    assert timers.pop_due(2.0) == ["b", "a"]
    assert timers.pop_due(10.0) == []
    assert len(timers) == 0
    assert timers.next_due() is None


@pytest.mark.parametrize("kind", [TimerQueue, GridTimers])
def test_a_key_pushed_twice_for_the_same_moment_is_due_once(kind: type[Timers]) -> None:
    """Coalescing puts many due times on one grid point, the same id's too."""
    timers = kind()
    timers.push("a", 1.0)
    timers.push("a", 1.0)
    assert timers.pop_due(1.0) == ["a"]
    assert timers.pop_due(1.0) == []


@pytest.mark.parametrize("kind", [TimerQueue, GridTimers])
def test_pop_due_hands_out_at_most_limit_keys_and_keeps_the_rest_due(
    kind: type[Timers],
) -> None:
    """The manager takes a bounded share per turn of the loop."""
    timers = kind()
    for n in range(5):
        timers.push(f"k{n}", float(n))
    assert timers.pop_due(10.0, limit=2) == ["k0", "k1"]
    assert timers.next_due() == 2.0
    assert timers.pop_due(10.0, limit=0) == []
    assert timers.pop_due(10.0) == ["k2", "k3", "k4"]


@pytest.mark.parametrize("kind", [TimerQueue, GridTimers])
def test_a_key_moved_over_and_over_costs_no_memory(kind: type[Timers]) -> None:
    timers = kind()
    for n in range(100_000):
        timers.push("a", float(n))
    assert len(timers._heap) < 300
    assert timers.when("a") == 99_999.0


def test_grid_timers_take_a_bucket_in_push_order_across_calls() -> None:
    """Many keys share a moment; a bounded pop takes them in turn, none twice."""
    timers = GridTimers()
    for n in range(10):
        timers.push(f"k{n}", 1.0)
    timers.push("k3", 2.0)  # moved out: skipped in the first moment
    timers.push("k0", 1.0)  # pushed again to its own moment: due once
    timers.push("early", 0.5)
    assert timers.pop_due(1.0, limit=4) == ["early", "k0", "k1", "k2"]
    assert timers.next_due() == 1.0
    assert timers.pop_due(1.0, limit=3) == ["k4", "k5", "k6"]
    assert timers.pop_due(5.0) == ["k7", "k8", "k9", "k3"]
    assert (len(timers), timers.next_due(), timers._entries) == (0, None, 0)


def test_polling_ids_again_on_the_grid_makes_no_object_for_the_collector() -> None:
    """Ids made due again at moments that already have a bucket cost a slot
    in a list each: nothing new for CPython's garbage collector to track
    (a heap entry per push piled up in its youngest generation)."""
    timers = GridTimers()
    keys = [f"k{n}" for n in range(20_000)]
    for n, key in enumerate(keys):
        timers.push(key, float(n % 10))
    moments = [float(n % 10) for n in range(len(keys))]
    gc.collect()
    gc.disable()
    try:
        before = len(gc.get_objects())
        for _ in range(3):
            for key, when in zip(keys, moments, strict=True):
                timers.push(key, when)
        made = len(gc.get_objects()) - before
    finally:
        gc.enable()
    assert made < 100, made
    assert len(timers) == len(keys)


def test_grid_timers_forget_entries_that_were_moved_or_discarded() -> None:
    """Ids that finish or move leave entries behind: they are swept away."""
    timers = GridTimers()
    for n in range(100_000):
        timers.push(f"k{n % 100}", float(n % 7))
        if n % 3 == 0:
            timers.discard(f"k{n % 50}")
    assert timers._entries <= 2 * len(timers) + 64
    assert sum(map(len, timers._buckets.values())) == timers._entries
    assert len(timers._heap) == len(timers._buckets) <= 7


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["push", "discard", "pop"]),
            st.sampled_from("abcdef"),
            st.floats(0, 100, allow_nan=False),
        ),
        max_size=200,
    )
)
@pytest.mark.parametrize("kind", [TimerQueue, GridTimers])
def test_timer_queue_agrees_with_a_dict_of_due_times(
    kind: type[Timers], operations: list[tuple[str, str, float]]
) -> None:
    """Whatever the order of pushes, moves, discards and pops, the queue pops
    exactly the keys a plain dict says are due, earliest first (among keys
    due at the same moment, a TimerQueue by key, GridTimers as pushed)."""
    timers, model = kind(), {}
    for operation, key, when in operations:
        if operation == "push":
            timers.push(key, when)
            model[key] = when
        elif operation == "discard":
            timers.discard(key)
            model.pop(key, None)
        else:
            due = sorted((t, k) for k, t in model.items() if t <= when)
            popped = timers.pop_due(when)
            assert sorted((model[k], k) for k in popped) == due
            if kind is TimerQueue:
                assert popped == [k for _, k in due]
            else:
                assert [model[k] for k in popped] == [t for t, _ in due]
            for _, k in due:
                del model[k]
        assert len(timers) == len(model)
        assert timers.next_due() == (min(model.values()) if model else None)
