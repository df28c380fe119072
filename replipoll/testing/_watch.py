"""A client-side witness of requests, through aiohttp's tracing signals."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING

import aiohttp
import attrs

if TYPE_CHECKING:
    from replipoll import RateBudget

__all__ = ["RequestWatch"]


@attrs.define
class RequestWatch:
    """Counts what an :class:`aiohttp.ClientSession`'s requests did, client-side.

    The server's counters (:class:`~replipoll.testing.ServerStats`) see
    requests when they arrive; this sees them when aiohttp starts and ends
    them, which is what a test of a client wants to assert on: how many were
    open at once, whether every started request ended, how many timed out
    (and which), and whether any started while a ``Retry-After`` was known to
    run. Give the session a client borrows
    ``trace_configs=[watch.trace_config()]``.

    Set :attr:`budget` (usually ``client.budget``) to count
    :attr:`early_starts`: requests started while that budget was paused.
    Unlike the server's ``early_requests``, it needs no grace for requests
    already on their way.

    Example:
        >>> import asyncio, aiohttp, replipoll
        >>> from replipoll.testing import FakeReplicate
        >>> from replipoll.testing.chaos import RequestWatch
        >>> async def main():
        ...     watch = RequestWatch()
        ...     async with FakeReplicate() as server:
        ...         ids = server.add_predictions(20, duration=0.1)
        ...         async with aiohttp.ClientSession(
        ...             trace_configs=[watch.trace_config()]
        ...         ) as session, replipoll.Client(
        ...             base_url=server.base_url(),
        ...             api_key=server.api_key,
        ...             session=session,
        ...         ) as client:
        ...             watch.budget = client.budget
        ...             async with replipoll.PollManager(
        ...                 client, max_concurrency=4
        ...             ) as manager:
        ...                 await manager.poll_many(ids)
        ...     return watch.peak <= 4, watch.open, watch.started == watch.ended
        >>> asyncio.run(main())
        (True, 0, True)
    """

    #: Requests started and not yet ended.
    open: int = 0
    #: The most requests open at once.
    peak: int = 0
    #: Requests started.
    started: int = 0
    #: Requests ended, with an answer or an exception.
    ended: int = 0
    #: Requests ended by an exception (a timeout, a reset, ...).
    failed: int = 0
    #: Requests ended by a timeout.
    timeouts: int = 0
    #: The timeouts by exception class name.
    timeout_kinds: Counter[str] = attrs.Factory(Counter)
    #: The timeouts by the URL of the request that timed out.
    timeout_urls: Counter[str] = attrs.Factory(Counter)
    #: Requests started while :attr:`budget` was paused.
    early_starts: int = 0
    #: The budget whose pauses :attr:`early_starts` checks; ``None``: none.
    budget: RateBudget | None = None

    def trace_config(self) -> aiohttp.TraceConfig:
        """A new trace config feeding this watch; pass it to a session."""
        config = aiohttp.TraceConfig()
        config.on_request_start.append(self._started)
        config.on_request_end.append(self._ended)
        config.on_request_exception.append(self._failed)
        return config

    async def _started(self, *_: object) -> None:
        if self.budget is not None and self.budget.is_paused(time.monotonic()):
            self.early_starts += 1
        self.started += 1
        self.open += 1
        self.peak = max(self.peak, self.open)

    async def _ended(self, *_: object) -> None:
        self.ended += 1
        self.open -= 1

    async def _failed(
        self, _: object, __: object, params: aiohttp.TraceRequestExceptionParams
    ) -> None:
        self.failed += 1
        if isinstance(params.exception, TimeoutError):
            self.timeouts += 1
            self.timeout_kinds[type(params.exception).__name__] += 1
            self.timeout_urls[str(params.url)] += 1
        await self._ended()
