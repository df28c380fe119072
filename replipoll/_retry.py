"""What is worth retrying, and how long to wait first: pure policy.

The same :class:`RetryPolicy` drives two loops: :meth:`replipoll.Client.get`
retries through :func:`backoff.on_exception` with :meth:`RetryPolicy.wait_gen`,
and :class:`replipoll.PollManager` turns a retry into a later slot in its
schedule with :meth:`RetryPolicy.delay`, so a waiting retry holds no worker.
"""

from __future__ import annotations

import random
from collections.abc import Generator, Iterable
from typing import Final

import attrs
import backoff

from ._errors import (
    DecodeError,
    HTTPStatusError,
    RateLimitedError,
    ReplipollError,
    TransportError,
)

__all__ = ["DEFAULT_RETRY_STATUSES", "RetryPolicy"]

#: Statuses retried by default: throttling, server errors, gateway failures
#: and Cloudflare's 524 timeout.
DEFAULT_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504, 524})


def _status_set(statuses: Iterable[int]) -> frozenset[int]:
    return frozenset(statuses)


@attrs.frozen
class RetryPolicy:
    """How replipoll retries a failed request.

    Retried: the statuses in ``retry_statuses``, connection errors, resets,
    per-request timeouts, and answers that were not JSON at all. Never
    retried: 400, 401, 403, 404, 422, and JSON that is not a prediction.

    The wait before retry *n* (1-based) is drawn uniformly from
    ``[0, min(max_delay, base_delay * 2 ** (n - 1))]`` ("full jitter"), and is
    never shorter than a ``Retry-After`` the provider sent. A provider that
    asks for more than ``max_retry_after`` seconds is not retried: the
    :class:`~replipoll.RateLimitedError` is raised with its ``retry_after``.

    Args:
        max_attempts: Attempts in all, the first included (1 = no retries).
        base_delay: Seconds; the scale of the exponential backoff.
        max_delay: Seconds; the cap of the exponential backoff.
        max_retry_after: Seconds; the longest ``Retry-After`` honoured.
        retry_statuses: HTTP statuses worth another try.
    """

    max_attempts: int = attrs.field(default=6, validator=attrs.validators.ge(1))
    base_delay: float = attrs.field(default=0.5, validator=attrs.validators.ge(0))
    max_delay: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    max_retry_after: float = attrs.field(
        default=300.0, validator=attrs.validators.ge(0)
    )
    retry_statuses: frozenset[int] = attrs.field(
        default=DEFAULT_RETRY_STATUSES, converter=_status_set
    )

    def is_retryable(self, error: BaseException) -> bool:
        """Whether ``error`` is worth another attempt (attempts aside)."""
        if isinstance(error, RateLimitedError):
            return 429 in self.retry_statuses and (
                error.retry_after is None or error.retry_after <= self.max_retry_after
            )
        if isinstance(error, HTTPStatusError):
            return error.status in self.retry_statuses
        if isinstance(error, DecodeError):
            return error.transient
        return isinstance(error, TransportError)

    def should_retry(self, error: BaseException, attempts: int) -> bool:
        """Whether to try again after ``attempts`` attempts ended in ``error``."""
        return attempts < self.max_attempts and self.is_retryable(error)

    def delay(
        self, error: BaseException, attempt: int, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, 62))
        jittered: float = (
            rng.uniform(0.0, ceiling)
            if rng is not None
            else backoff.full_jitter(ceiling)
        )
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            return max(error.retry_after, jittered)
        return jittered

    def wait_gen(
        self, first_attempt: int = 1
    ) -> Generator[float, ReplipollError | None, None]:
        """A wait generator for :func:`backoff.on_exception` (use ``jitter=None``).

        ``backoff`` sends each exception in, so the wait can honour its
        ``retry_after``; jitter is applied here, never on top of it.

        Args:
            first_attempt: The number of the first attempt backoff will run
                (2 when the caller made attempt 1 itself).
        """
        attempt = first_attempt - 1
        error = yield 0.0  # primed by backoff with send(None)
        while True:
            attempt += 1
            error = yield self.delay(error or ReplipollError(), attempt)
