"""Retries: what is worth another attempt, when, and for how long. One engine.

:class:`RetryPolicy` is an immutable value. :meth:`RetryPolicy.start` opens a
:class:`Retrying`, the state of one logical call (attempts made, its overall
deadline, its backoff sequence), which decides after each failure whether to
try again and after how long: backoff's exponential sequence with full jitter,
never shorter than a ``Retry-After``, never past the deadline. It also writes
the one log line and calls the ``on_retry`` hook, so every retry in replipoll
reads and counts the same.

Two drivers run that engine. :func:`call_with_retries` awaits the wait, for
single calls (:meth:`Client.get <replipoll.Client.get>`, downloads); the
:class:`~replipoll.PollManager` turns the same wait into a later slot in its
timer queue, so a waiting retry holds no worker. The engine is pure: it takes
``now`` and an optional random generator, and never sleeps.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Generator, Iterable
from typing import Any, Final, TypeVar

import attrs
import backoff

from ._errors import (
    ConfigurationError,
    DecodeError,
    HTTPStatusError,
    RequestError,
    RequestTimeoutError,
    TransportError,
)
from ._options import at_least, check_callable, non_negative, positive

__all__ = [
    "DEFAULT_RETRY_STATUSES",
    "RetryHook",
    "RetryPolicy",
    "Retrying",
    "call_with_retries",
]

logger: Final = logging.getLogger("replipoll")

#: Seconds before a retry policy's deadline from which a timeout is its doing.
CUT_SLACK: Final = 0.01

#: Statuses retried by default: a request timeout, throttling, server errors,
#: gateway failures and Cloudflare's own (520-527 and 529: the origin failed,
#: refused, was unreachable or timed out, or its TLS failed).
DEFAULT_RETRY_STATUSES: Final = frozenset(
    {408, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 525, 526, 527, 529}
)

#: Called before each retry with (attempt that failed, its error, seconds to wait).
RetryHook = Callable[[int, BaseException, float], None]

T = TypeVar("T")


def _status_set(statuses: Iterable[int]) -> frozenset[int]:
    return frozenset(statuses)


def _check_statuses(
    instance: object, attribute: attrs.Attribute[Any], value: frozenset[int]
) -> None:
    for status in value:
        if not (isinstance(status, int) and 100 <= status <= 599):
            raise ConfigurationError(
                f"RetryPolicy: {attribute.name} must hold HTTP statuses "
                f"(100-599), got {status!r}",
                option=attribute.name,
            )


def _check_hook(
    instance: object, attribute: attrs.Attribute[Any], value: object
) -> None:
    check_callable(type(instance).__name__, attribute.name, value)


@attrs.frozen
class RetryPolicy:
    """How replipoll retries a failed request; an immutable value.

    Retried: the statuses in ``retry_statuses`` (408, 429, 500, 502, 503,
    504 and Cloudflare's 520-527 and 529 by default), connection errors,
    resets, per-request timeouts, truncated answers, and a record of another
    prediction than the one asked for. Never retried: 400, 401, 403, 404,
    422, an HTML page where JSON was expected, a gateway's error, an answer
    over the size limit, and JSON that is not a prediction.

    The wait before retry *n* (1-based) is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]`` ("full jitter", over
    :func:`backoff.expo`), and is never shorter than a ``Retry-After`` the
    provider sent (with any status). A provider that asks for more than
    ``max_retry_after`` seconds is not retried: the error is raised with its
    ``retry_after``.

    To change a policy, pass a new one (``attrs.evolve(policy, ...)`` makes
    a changed copy); a client or manager reads it at every call.

    Args:
        max_attempts: Attempts in all, the first included (1 = no retries).
        base_delay: Seconds; the scale of the exponential backoff.
        max_delay: Seconds; the cap of the exponential backoff.
        max_retry_after: Seconds; the longest ``Retry-After`` honoured.
        timeout: Seconds one logical call may take, every attempt and wait
            included; ``None`` for no limit. No retry starts that would end
            after it, and an attempt still running then is cut short.
        retry_statuses: HTTP statuses worth another try.
        on_retry: Called before each retry with the number of the attempt
            that failed, its error and the seconds about to be waited, e.g.
            to count retries in your metrics. Keep it quick; what it raises
            ends the call.

    Example:
        >>> from replipoll import RetryPolicy, ServerError
        >>> policy = RetryPolicy(max_attempts=3, base_delay=1, max_delay=1)
        >>> retrying = policy.start(now=0.0)
        >>> error = ServerError("down", status=503)
        >>> 0 <= retrying.next_wait(error, now=0.0) <= 1
        True
        >>> 0 <= retrying.next_wait(error, now=1.0) <= 1
        True
        >>> retrying.next_wait(error, now=2.0) is None, error.attempts
        (True, 3)
    """

    max_attempts: int = attrs.field(default=6, validator=at_least(1))
    base_delay: float = attrs.field(default=0.5, validator=non_negative)
    max_delay: float = attrs.field(default=30.0, validator=non_negative)
    max_retry_after: float = attrs.field(default=300.0, validator=non_negative)
    timeout: float | None = attrs.field(default=None, validator=positive(none=True))
    retry_statuses: frozenset[int] = attrs.field(
        default=DEFAULT_RETRY_STATUSES, converter=_status_set, validator=_check_statuses
    )
    on_retry: Callable[[int, BaseException, float], None] | None = attrs.field(
        default=None, validator=_check_hook, eq=False, repr=False
    )

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt (attempts and time aside)."""
        if isinstance(error, HTTPStatusError):
            return error.status in self.retry_statuses and (
                error.retry_after is None or error.retry_after <= self.max_retry_after
            )
        if isinstance(error, DecodeError):
            return error.transient
        return isinstance(error, TransportError)

    def start(self, now: float, rng: random.Random | None = None) -> Retrying:
        """Open the retry state of one logical call that began at ``now``.

        Args:
            now: Monotonic seconds when the call's first attempt began.
            rng: Draws the jitter; the ``random`` module's by default.
        """
        return Retrying(self, now, rng)


class Retrying:
    """The retry state of one logical call: see :meth:`RetryPolicy.start`."""

    __slots__ = ("_ceilings", "_rng", "attempts", "deadline", "last", "policy")

    def __init__(
        self, policy: RetryPolicy, started: float, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        #: Attempts that failed so far.
        self.attempts = 0
        #: How the latest attempt failed (``None`` before the first).
        self.last: BaseException | None = None
        #: When the call must be over (monotonic seconds), or ``None``.
        self.deadline = None if policy.timeout is None else started + policy.timeout
        self._rng = rng
        self._ceilings: Generator[float, Any, None] = backoff.expo(
            base=2, factor=policy.base_delay, max_value=policy.max_delay
        )
        next(self._ceilings)  # backoff's generators yield 0 first, to prime

    def cut_short(self, error: BaseException, now: float) -> bool:
        """Whether ``error`` is a retry's timeout that the deadline caused.

        A retry begun just before the policy's ``timeout`` is given only
        what is left of it, and times out at the deadline: the failure that
        asked for the retry, not that timeout, is then the call's answer. A
        timeout within 10 ms (``CUT_SLACK``) of the deadline counts (a timer
        may fire a hair early, and the clock is read after it).
        """
        return (
            self.last is not None
            and self.deadline is not None
            and isinstance(error, RequestTimeoutError)
            and now >= self.deadline - CUT_SLACK
        )

    def next_wait(
        self, error: BaseException, now: float, *, what: str = ""
    ) -> float | None:
        """Count one failed attempt; the seconds to wait before the next one.

        Returns ``None`` to give up: ``error`` is not worth a retry, the
        attempts are used up, or the wait would pass the deadline; a
        :class:`~replipoll.RequestError`'s ``attempts`` then says how many
        attempts were made.
        Before a retry, logs one warning on the ``replipoll`` logger and
        calls the policy's ``on_retry``.

        Args:
            error: How the attempt failed.
            now: Monotonic seconds, now.
            what: Names the call in the log line (an id, a URL).
        """
        self.attempts += 1
        self.last = error
        policy = self.policy
        wait = None
        if self.attempts < policy.max_attempts and policy.is_retryable(error):
            ceiling = next(self._ceilings)
            wait = (
                self._rng.uniform(0.0, ceiling)
                if self._rng
                else backoff.full_jitter(ceiling)
            )
            if isinstance(error, HTTPStatusError) and error.retry_after is not None:
                wait = max(wait, error.retry_after)
            if self.deadline is not None and now + wait >= self.deadline:
                wait = None
        if wait is None:
            if isinstance(error, RequestError):
                error.attempts = self.attempts
            return None
        logger.warning(
            "retrying %sin %.2fs after attempt %d failed: %s",
            f"{what} " if what else "",
            wait,
            self.attempts,
            error,
        )
        if policy.on_retry is not None:
            policy.on_retry(self.attempts, error, wait)
        return wait


async def call_with_retries(
    attempt: Callable[[float | None], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str = "",
    failed: RequestError | None = None,
) -> T:
    """Await ``attempt(within)`` until it succeeds or ``policy`` gives up.

    ``within`` is how many seconds the attempt may take before the policy's
    ``timeout`` passes (``None`` without one); the attempt must not outlast
    it (the transport cuts a request short there). Only
    :class:`~replipoll.RequestError` is retried; the first attempt runs
    before any retry state exists, so a call that succeeds pays nothing for
    the machinery. A caller that made the first attempt itself (without a
    timeout) passes its error as ``failed``: the loop goes on from there.

    Raises:
        RequestError: the last attempt's error, its ``attempts`` set.
    """
    timeout = policy.timeout
    if timeout is None:  # the common case: no clock needed to start
        started, deadline = 0.0, None
    else:
        started = time.monotonic()
        deadline = started + timeout
    retrying: Retrying | None = None
    error = failed
    last: RequestError | None = None
    while True:
        if error is None:
            try:
                within = None if deadline is None else deadline - time.monotonic()
                return await attempt(within)
            except RequestError as exc:
                error = exc
            if (
                last is not None
                and retrying is not None
                and retrying.cut_short(error, time.monotonic())
            ):
                last.attempts = retrying.attempts + 1
                raise last
        # Decided and raised outside the handler: nothing keeps a chain of
        # every failed attempt (or what aiohttp attached to it) alive.
        if retrying is None:
            retrying = policy.start(started)  # (0.0 without a timeout: unused)
        wait = retrying.next_wait(error, time.monotonic(), what=what)
        if wait is None:
            raise error
        last, error = error, None
        await asyncio.sleep(wait)
        if deadline is not None and time.monotonic() >= deadline:
            # A loop too busy to wake on time took the retry past the
            # timeout: the failure that asked for it is the answer.
            last.attempts = retrying.attempts
            raise last
