"""When to poll next, and how fast requests may go: pure, clock-injected.

:class:`PollPolicy` chooses the delay before an id's next poll from how long
it has been tracked. :class:`RateBudget` is the request budget shared by every
request of a :class:`~replipoll.PollManager`: a token bucket in its GCRA form
(one number, the theoretical arrival time), paused whole by a ``Retry-After``.
Neither reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import math
import random

import attrs

__all__ = ["PollPolicy", "RateBudget"]


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

    min_interval: float = attrs.field(default=1.5, validator=attrs.validators.gt(0))
    age_factor: float = attrs.field(default=0.1, validator=attrs.validators.ge(0))
    max_interval: float = attrs.field(default=3.0, validator=attrs.validators.gt(0))
    jitter: float = attrs.field(
        default=0.1, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )

    def next_delay(self, age: float, rng: random.Random | None = None) -> float:
        """Seconds until the next poll of an id tracked for ``age`` seconds."""
        base = min(self.max_interval, max(self.min_interval, age * self.age_factor))
        if not self.jitter:
            return base
        factor = (rng or _rng).uniform(1.0 - self.jitter, 1.0 + self.jitter)
        return base * factor

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

    :meth:`reserve` books the next free slot and says how long to wait for it.
    :meth:`pause_until` stops the whole budget until a time (a ``Retry-After``):
    no slot is handed out before then, whoever asks.

    Args:
        rate: Requests per second, or ``None`` for no limit (pauses still apply).
        burst: Requests that may go at once after a quiet spell.

    Example:
        >>> budget = RateBudget(rate=10, burst=1)
        >>> [round(budget.reserve(now=0.0), 3) for _ in range(3)]
        [0.0, 0.1, 0.2]
        >>> budget.pause_until(5.0)
        >>> budget.reserve(now=1.0)
        4.0
    """

    rate: float | None = attrs.field(default=None)
    burst: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    _tat: float = attrs.field(default=-math.inf, init=False)
    _paused_until: float = attrs.field(default=-math.inf, init=False)

    @rate.validator
    def _check_rate(
        self, _: attrs.Attribute[float | None], value: float | None
    ) -> None:
        if value is not None and not value > 0:
            raise ValueError("rate must be a positive number of requests per second")

    @property
    def paused_until(self) -> float:
        """The time before which no request may go (``-inf`` if none)."""
        return self._paused_until

    def reserve(self, now: float) -> float:
        """Book a slot for one request; return the seconds to wait for it (>= 0)."""
        start = now if now >= self._paused_until else self._paused_until
        if self.rate is None:
            return start - now
        interval = 1.0 / self.rate
        earliest = self._tat - (self.burst - 1) * interval
        send_at = start if start >= earliest else earliest
        self._tat = (send_at if send_at > self._tat else self._tat) + interval
        return send_at - now

    def pause_until(self, when: float) -> None:
        """Hand out no slot before ``when``; slots already booked must re-check."""
        if when > self._paused_until:
            self._paused_until = when
        if self.rate is not None and when > self._tat:
            # After a pause, spend the burst again rather than the backlog.
            self._tat = when

    def is_paused(self, now: float) -> bool:
        """Whether a pause is still running at ``now``."""
        return now < self._paused_until
