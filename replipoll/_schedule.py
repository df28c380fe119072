"""When to poll next, and how fast requests may go: pure, clock-injected.

:class:`PollPolicy` chooses the delay before an id's next poll from how long
it has been tracked. :class:`RateBudget` is the request budget shared by every
request of a :class:`~replipoll.PollManager`: a token bucket in its GCRA form
(one number, the theoretical arrival time), paused whole by a ``Retry-After``.
:class:`TimerQueue` holds due times by key (the manager's deadlines, and its
due polls without coalescing); :class:`GridTimers` does the same for due
times that many keys share (polls on the coalescing grid). None of them
reads a clock (callers pass ``now``), except
:meth:`RateBudget.acquire`, the one place that waits.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import random
import time
from collections import deque
from typing import ClassVar

import attrs

from ._options import at_least, fraction, non_negative, positive

__all__ = ["GridTimers", "PollPolicy", "RateBudget", "TimerQueue", "on_grid"]


def on_grid(
    due: float, now: float, grid: float, *, earliest: float | None = None
) -> float:
    """Move a poll due at ``due`` (decided at ``now``) onto the coalescing grid.

    Polls on the same point of the grid (the multiples of ``grid``) go out
    together, so the event loop wakes up once for many of them. A poll goes
    to the *nearest* point, at most half a step earlier or later, where
    that point is not before ``earliest``; otherwise to the next point up.
    ``earliest`` defaults to ``due``: never early. A wait shorter than four
    steps uses a finer grid (``grid`` halved until it fits), so a poll never
    moves by more than a quarter of its wait; the finer points include the
    coarser ones, so polls still meet.

    Example:
        >>> round(on_grid(1.43, 0.0, 0.2), 3)  # never early: the next point up
        1.6
        >>> [round(on_grid(due, 0.0, 0.2, earliest=1.35), 3) for due in (1.43, 1.53)]
        [1.4, 1.6]
        >>> round(on_grid(0.13, 0.0, 0.2), 3)  # a short wait: a finer grid
        0.15
    """
    wait = due - now
    if not grid or wait <= 0:
        return due
    while grid * 4 > wait:
        grid /= 2
    point = round(due / grid) * grid
    if point < due and point < (due if earliest is None else earliest):
        point = math.ceil(due / grid) * grid
    return point


@attrs.frozen
class PollPolicy:
    """The adaptive poll schedule.

    An id is polled at once when submitted (it may be finished already), then
    after ``interval(age) = clamp(min_interval, age * age_factor,
    max_interval)`` seconds, where ``age`` is how long it has been tracked.
    The defaults poll every 1.5 s for the first 15 s, then every 10% of the
    age, up to every 3 s from 30 s on: on a workload of predictions with a
    median of 8 s, that is about 0.3 times the official client's requests (it
    polls every 0.5 s) for under a second of mean delay between a
    prediction's end and its detection (see :doc:`/benchmarks`). A
    ten-minute prediction costs about two hundred requests, not 1,200. Each
    delay is multiplied by a random factor in ``[1 - jitter, 1 + jitter]``
    so ids submitted together spread out.

    Args:
        min_interval: Seconds between the first polls.
        age_factor: How fast the interval grows with age.
        max_interval: Seconds; the longest interval between two polls.
        jitter: Relative jitter, 0 to 1.

    Example:
        >>> from replipoll import PollPolicy
        >>> policy = PollPolicy(jitter=0)
        >>> [policy.next_delay(age) for age in (0, 10, 20, 30, 600)]
        [1.5, 1.5, 2.0, 3.0, 3.0]
    """

    min_interval: float = attrs.field(default=1.5, validator=positive())
    age_factor: float = attrs.field(default=0.1, validator=non_negative)
    max_interval: float = attrs.field(default=3.0, validator=positive())
    jitter: float = attrs.field(default=0.1, validator=fraction)

    def _interval(self, age: float) -> float:
        """``interval(age)``, before jitter."""
        return min(self.max_interval, max(self.min_interval, age * self.age_factor))

    def next_delay(self, age: float, rng: random.Random | None = None) -> float:
        """Seconds until the next poll of an id tracked for ``age`` seconds."""
        base = self._interval(age)
        if not self.jitter:
            return base
        factor = (rng or _rng).uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return base * factor

    def shortest_delay(self, age: float) -> float:
        """The least :meth:`next_delay` can be at ``age``, jitter included.

        The :class:`~replipoll.PollManager` may move a poll earlier, onto
        its coalescing grid, but never below this.
        """
        return self._interval(age) * (1.0 - self.jitter)

    @classmethod
    def fixed(cls, interval: float) -> PollPolicy:
        """A policy that polls every ``interval`` seconds, like the official client."""
        return cls(
            min_interval=interval, age_factor=0.0, max_interval=interval, jitter=0
        )


_rng = random.Random()


@attrs.define
class RateBudget:
    """A shared request budget: ``rate`` requests per second, bursts of ``burst``.

    A slot is taken when a request goes, never booked ahead: whatever delays
    a request before it is sent (an event loop busy elsewhere), the requests
    that actually leave conform to the limit. :meth:`acquire`
    waits for a slot, first come first served; :meth:`try_acquire` takes one
    only if it is free now and nobody is waiting. :meth:`pause_until` stops
    the whole budget until a time (a ``Retry-After``): no slot is handed out
    before then, whoever asks.

    Args:
        rate: Requests per second, or ``None`` for no limit (pauses still apply).
        burst: Requests that may go at once after a quiet spell.

    Example:
        >>> budget = RateBudget(rate=10, burst=2)
        >>> [budget.try_acquire(now=0.0) for _ in range(3)]
        [True, True, False]
        >>> round(budget.next_free(now=0.0), 3)
        0.1
        >>> budget.pause_until(5.0)
        >>> budget.next_free(now=1.0)
        4.0
    """

    #: Seconds a budget without a rate takes to speed up after a pause.
    RAMP: ClassVar[float] = 3.0

    rate: float | None = attrs.field(default=None, validator=positive(none=True))
    burst: int = attrs.field(default=1, validator=at_least(1))
    _tat: float = attrs.field(default=-math.inf, init=False)
    _paused_until: float = attrs.field(default=-math.inf, init=False)
    _waiters: deque[asyncio.Future[None]] = attrs.field(
        factory=deque, init=False, repr=False, eq=False
    )
    _timer: asyncio.TimerHandle | None = attrs.field(
        default=None, init=False, repr=False, eq=False
    )
    # Waiters woken for a slot that have yet to run and take it.
    _woken: int = attrs.field(default=0, init=False, repr=False, eq=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(
        default=None, init=False, repr=False, eq=False
    )

    @property
    def paused_until(self) -> float:
        """The time before which no request may go (``-inf`` if none)."""
        return self._paused_until

    @property
    def waiting(self) -> int:
        """Requests waiting in :meth:`acquire` for their turn."""
        return sum(not waiter.done() for waiter in self._waiters)

    def _rate_at(self, now: float) -> float | None:
        """The rate in force at ``now``: ``rate``, or the ramp after a pause."""
        if self.rate is not None:
            return self.rate
        since = now - self._paused_until
        if since >= self.RAMP:
            return None
        # Doubling every half second from `burst` per second; a pause still
        # running counts as its very start.
        return float(self.burst * 2.0 ** (max(since, 0.0) / 0.5))

    def next_free(self, now: float) -> float:
        """Seconds from ``now`` until a slot is free (0.0: one is free now).

        Requests already waiting in :meth:`acquire` are not counted.
        """
        wait = self._paused_until - now
        rate = self._rate_at(now)
        if rate is not None:
            # GCRA: a request conforms once now >= TAT - (burst - 1) * T.
            earliest = self._tat - (self.burst - 1) / rate
            wait = max(wait, earliest - now)
        # (Sums of 1/rate drift by ulps: a nanosecond is as good as now.)
        return wait if wait > 1e-9 else 0.0

    def try_acquire(self, now: float) -> bool:
        """Take a slot for a request sent at ``now``, if one is free and nobody waits.

        Returns False, and takes nothing, otherwise: then :meth:`acquire`.
        """
        if self._waiters or self._woken:
            return False
        if self.rate is None and now - self._paused_until >= self.RAMP:
            return True  # no limit, no pause, no ramp: nothing to take
        if self.next_free(now):
            return False
        self._take(now)
        return True

    async def acquire(self, *, urgent: bool = False) -> float:
        """Wait for a slot, in arrival order; return the seconds waited.

        An ``urgent`` request waits at the head of the line instead (a page
        of a sweep, which reports a hundred ids, before a single poll).

        Reads ``time.monotonic()``, the clock of asyncio's event loops. One
        timer serves all waiters. When it fires, it wakes as many waiters at
        the head as may go at that moment (one, or a burst); each takes its
        slot when it runs, that is when its request leaves, and the next
        turn is timed only once all of them have. Requests held up by a busy
        event loop are so spread out again rather than sent together.
        Cancelling the wait gives its turn up. A budget serves one event loop
        at a time.
        """
        start = time.monotonic()
        if self.try_acquire(start):
            return 0.0
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Whatever waited on another event loop (one that has ended) is
            # gone; its timer would never fire here.
            self._forget(loop)
        waiter: asyncio.Future[None] = loop.create_future()
        if urgent:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        if self._timer is None and not self._woken:
            self._arm(self.next_free(start))
        try:
            await waiter
            while True:
                now = time.monotonic()
                wait = self.next_free(now)
                if not wait:
                    self._take(now)
                    return now - start
                # A pause began since this waiter was woken: it keeps its turn.
                await asyncio.sleep(wait)
        finally:
            if waiter.done() and not waiter.cancelled():  # it was woken
                self._woken -= 1
                if not self._woken:
                    self._wake()

    def pause_until(self, when: float) -> None:
        """Hand out no slot before ``when``; waiters already queued wait too."""
        if when > self._paused_until:
            self._paused_until = when
        if when > self._tat:
            # After a pause, spend the burst again rather than the backlog.
            self._tat = when

    def heed(self, remaining: int, reset: float, now: float) -> None:
        """Slow down to a server's word: ``remaining`` requests in ``reset`` seconds.

        Never speeds up. With nothing left, nothing is handed out until the
        reset (a pause). Otherwise, where the server's allowance is tighter
        than ``rate``, the next slot comes no sooner than ``reset /
        remaining`` seconds from ``now`` (each answer says it again, so the
        requests go at the server's pace until it loosens). A budget
        without a rate heeds only the pause.

        Example:
            >>> budget = RateBudget(rate=50, burst=1)
            >>> budget.heed(remaining=10, reset=1.0, now=0.0)
            >>> round(budget.next_free(now=0.0), 3)  # 10 in a second, not 50
            0.1
            >>> budget.heed(remaining=0, reset=5.0, now=0.0); budget.next_free(0.0)
            5.0
        """
        if reset <= 0:
            return
        if remaining <= 0:
            self.pause_until(now + reset)
            return
        rate = self._rate_at(now)
        spacing = reset / remaining
        if rate is None or spacing <= 1.0 / rate:
            return
        # The next request conforms once now >= TAT - (burst - 1) / rate.
        tat = now + spacing + (self.burst - 1) / rate
        if tat > self._tat:
            self._tat = tat
            if self._timer is not None and self._loop is not None:
                self._timer.cancel()  # re-timed for the later slot
                self._timer = None
                self._arm(self.next_free(time.monotonic()))

    def is_paused(self, now: float) -> bool:
        """Whether a pause is still running at ``now``."""
        return now < self._paused_until

    def _take(self, now: float) -> None:
        rate = self._rate_at(now)
        if rate is not None:
            self._tat = (now if now > self._tat else self._tat) + 1.0 / rate

    def _arm(self, delay: float) -> None:
        # (Only ever called with no timer set: the one timer is _wake's.)
        assert self._loop is not None
        # At least a millisecond: uvloop's timers count whole milliseconds,
        # and one due in less fires at once, before the slot is free, again
        # and again. A slot taken up to 1 ms late is still within the limit.
        self._timer = self._loop.call_later(max(delay, 0.001), self._wake)

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._woken = 0
        self._waiters.clear()
        self._loop = loop

    def _free_slots(self, now: float, wanted: int) -> int:
        """How many requests, up to ``wanted``, may leave together at ``now``."""
        if now < self._paused_until:
            return 0
        rate = self._rate_at(now)
        if rate is None:
            return wanted
        interval = 1.0 / rate
        tat, count = self._tat, 0
        while count < wanted and tat - (self.burst - 1) * interval - now <= 1e-9:
            tat = (now if now > tat else tat) + interval
            count += 1
        return count

    def _wake(self) -> None:
        """Wake the waiters that may go now, or time the head's turn.

        Called by the timer, and by the last woken waiter once it has taken
        its slot: no turn is timed while a woken waiter has yet to run.
        """
        self._timer = None  # it is this call, or there was none
        waiters = self._waiters
        while waiters and waiters[0].done():  # its wait was cancelled
            waiters.popleft()
        if not waiters:
            return
        now = time.monotonic()
        free = self._free_slots(now, len(waiters))
        if not free:
            self._arm(self.next_free(now))
            return
        while free and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._woken += 1
                free -= 1


class TimerQueue:
    """Keys with due times: push, pop what is due, peek the next, discard.

    One key has at most one due time: pushing it again moves it, and
    :meth:`discard` forgets it. Both are O(1) amortised: the old heap entry
    is left behind and skipped when it surfaces (and the heap is rebuilt
    once such entries outnumber live ones, so a key moved over and over
    costs no memory). Pure: the caller passes ``now``.

    Example:
        >>> timers = TimerQueue()
        >>> timers.push("a", 2.0); timers.push("b", 1.0); timers.push("a", 3.0)
        >>> timers.next_due(), timers.pop_due(2.5), len(timers)
        (1.0, ['b'], 1)
        >>> timers.discard("a"); timers.next_due() is None
        True
    """

    __slots__ = ("_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def when(self, key: str) -> float | None:
        """The due time of ``key``, or ``None`` if it has none."""
        return self._due.get(key)

    def push(self, key: str, when: float) -> None:
        """Make ``key`` due at ``when`` (replacing any earlier due time)."""
        self._due[key] = when
        heap = self._heap
        heapq.heappush(heap, (when, key))
        if len(heap) > 2 * len(self._due) + 64:
            self._heap = [(due, name) for name, due in self._due.items()]
            heapq.heapify(self._heap)

    def discard(self, key: str) -> None:
        """Forget ``key``'s due time, if it has one."""
        self._due.pop(key, None)

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is due at all."""
        heap, due = self._heap, self._due
        while heap:
            when, key = heap[0]
            if due.get(key) == when:
                return when
            heapq.heappop(heap)  # moved or discarded since it was pushed
        return None

    def pop_due(self, now: float, limit: int | None = None) -> list[str]:
        """Remove and return the keys due at or before ``now``, earliest first.

        At most ``limit`` keys, if given: the rest stay due for the next call.
        """
        heap, due = self._heap, self._due
        keys: list[str] = []
        if limit is None:
            limit = len(due)
        while heap and heap[0][0] <= now and len(keys) < limit:
            when, key = heapq.heappop(heap)
            if due.get(key) == when:
                del due[key]
                keys.append(key)
        return keys


class _Bucket(list[str]):
    """The keys due at one moment, in the order they were pushed."""

    __slots__ = ("when",)

    def __init__(self, when: float) -> None:
        super().__init__()
        self.when = when


class GridTimers:
    """A :class:`TimerQueue` for due times that many keys share.

    Keys due at the same moment share one bucket: a push appends the key to
    its moment's list, and the heap orders the moments, not the keys. Where
    the polls of a :class:`~replipoll.PollManager` sit on the coalescing grid
    (thousands of ids per point at a million ids), a key costs a slot in a
    list and an entry of a dict. No object is made per push, so the garbage
    collector has nothing new to walk as ids are polled round after round.
    For due times that all differ, :class:`TimerQueue` costs less.

    The same interface and guarantees as :class:`TimerQueue`: one due time
    per key (pushing it again moves it), earliest first (in push order within
    a moment), a moved or discarded key's old entry skipped when its moment
    comes, and the buckets rebuilt once such entries outnumber live ones.

    Example:
        >>> timers = GridTimers()
        >>> for key in "abc": timers.push(key, 1.0)
        >>> timers.push("b", 2.0); timers.discard("c")
        >>> timers.next_due(), timers.pop_due(1.5), timers.when("b")
        (1.0, ['a'], 2.0)
    """

    __slots__ = ("_buckets", "_due", "_entries", "_heap")

    def __init__(self) -> None:
        #: Each key's bucket (its due time is the bucket's ``when``).
        self._due: dict[str, _Bucket] = {}
        self._buckets: dict[float, _Bucket] = {}
        self._heap: list[float] = []  # the buckets' due times
        self._entries = 0  # keys in all buckets, stale ones included

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def when(self, key: str) -> float | None:
        """The due time of ``key``, or ``None`` if it has none."""
        bucket = self._due.get(key)
        return None if bucket is None else bucket.when

    def push(self, key: str, when: float) -> None:
        """Make ``key`` due at ``when`` (replacing any earlier due time)."""
        bucket = self._buckets.get(when)
        if bucket is None:
            bucket = self._buckets[when] = _Bucket(when)
            heapq.heappush(self._heap, when)
        bucket.append(key)
        self._due[key] = bucket
        self._entries += 1
        if self._entries > 2 * len(self._due) + 64:
            self._rebuild()

    def discard(self, key: str) -> None:
        """Forget ``key``'s due time, if it has one."""
        self._due.pop(key, None)

    def next_due(self) -> float | None:
        """The earliest due time, or ``None`` when nothing is due at all."""
        heap, due = self._heap, self._due
        while heap:
            bucket = self._buckets[heap[0]]
            live = next(
                (n for n, key in enumerate(bucket) if due.get(key) is bucket), None
            )
            if live is not None:
                del bucket[:live]  # what was moved or discarded since
                self._entries -= live
                return bucket.when
            self._drop_first()
        return None

    def pop_due(self, now: float, limit: int | None = None) -> list[str]:
        """Remove and return the keys due at or before ``now``, earliest first.

        At most ``limit`` keys, if given: the rest stay due for the next call.
        """
        heap, due = self._heap, self._due
        keys: list[str] = []
        if limit is None:
            limit = len(due)
        while heap and heap[0] <= now and len(keys) < limit:
            bucket = self._buckets[heap[0]]
            taken = 0
            for key in bucket:
                if len(keys) >= limit:
                    break
                taken += 1
                if due.get(key) is bucket:
                    del due[key]
                    keys.append(key)
            if taken == len(bucket):
                self._drop_first()
            else:
                del bucket[:taken]
                self._entries -= taken
        return keys

    def _drop_first(self) -> None:
        """Forget the earliest bucket and every entry left in it."""
        bucket = self._buckets.pop(heapq.heappop(self._heap))
        self._entries -= len(bucket)

    def _rebuild(self) -> None:
        """Buckets of live entries only."""
        buckets: dict[float, _Bucket] = {}
        due = self._due
        for key, old in due.items():
            bucket = buckets.get(old.when)
            if bucket is None:
                bucket = buckets[old.when] = _Bucket(old.when)
            bucket.append(key)
            due[key] = bucket
        self._buckets = buckets
        self._heap = sorted(buckets)
        self._entries = len(due)
