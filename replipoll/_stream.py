"""Follow a prediction's server-sent events, reconnecting where they broke off.

Replicate cuts streams after 25-35 seconds, and a connection may drop at any
time: :func:`follow_stream` opens the stream again with the ``Last-Event-ID``
of the last event it yielded, after the server's ``retry:`` delay (else a
backoff), so no event is lost or repeated, and stops at the ``done`` event.
The decisions are the pure :class:`~replipoll._sse.SSEParser` and
:class:`~replipoll._sse.Reconnects`; the connection is
:meth:`~replipoll._transport.Transport.event_stream`, the one aiohttp layer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Final

from ._errors import HTTPStatusError, ResponseTooLargeError, TransportError
from ._models import Prediction
from ._providers import Timeouts
from ._share import Budget
from ._sse import Reconnects, SSEParser, StreamEvent, stream_url_of
from ._transport import Transport

__all__ = ["follow_stream", "stream_timeouts"]

logger: Final = logging.getLogger("replipoll")


def stream_timeouts(timeouts: Timeouts) -> Timeouts:
    """The timeouts of a stream, from a client's per-request ones.

    No total (a stream lasts as long as the prediction); the connect
    timeout as given; as the idle timeout (the longest silence between two
    chunks before the connection counts as dead and is opened again), the
    read timeout, else the total one (no single answer takes longer either).
    """
    idle = timeouts.read if timeouts.read is not None else timeouts.total
    return Timeouts(total=None, connect=timeouts.connect, read=idle)


async def follow_stream(
    prediction: Prediction | str,
    *,
    fetch: Callable[[str], Awaitable[Prediction]],
    transport: Transport,
    timeouts: Timeouts,
    reconnects: Reconnects,
    budget: Budget,
    pause: Callable[[HTTPStatusError], None],
    last_event_id: str | None = None,
) -> AsyncGenerator[StreamEvent]:
    """Yield the events of ``prediction``'s stream until its ``done`` event.

    Args:
        prediction: The record, or an id to ``fetch`` it by.
        fetch: Gets a record by id (the client's ``get``, with its retries).
        transport: Opens the connections.
        timeouts: The client's per-request timeouts (see :func:`stream_timeouts`).
        reconnects: Decides on reconnecting; counts the failures.
        budget: Each connection takes a slot of it.
        pause: Told of each error answer (a 429 pauses the key's budget).
        last_event_id: Resume after this event.

    Raises:
        NoStreamError: the record has no stream URL.
        RequestError: the stream failed for good (see :class:`Reconnects`).
    """
    if isinstance(prediction, Prediction):
        record = prediction
    else:
        record = await fetch(prediction)
    url = stream_url_of(record)
    parser = SSEParser(last_event_id)
    timeouts = stream_timeouts(timeouts)
    limit = transport.max_answer_size
    while True:
        if not budget.try_acquire(time.monotonic()):
            await budget.acquire()
        parser.restart()
        resume = parser.last_event_id
        failure: TransportError | HTTPStatusError
        try:
            chunks = transport.event_stream(url, timeouts, last_event_id=resume)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    for event in parser.feed(chunk):
                        reconnects.succeeded()
                        yield event
                        if event.event == "done":
                            return
                    if parser.buffered > limit:
                        raise ResponseTooLargeError(
                            f"an event of the stream is larger than {limit} "
                            f"bytes (the client's max_answer_size)",
                            limit=limit,
                            url=url,
                        )
            raise AssertionError("an event stream ended without an error")  # a bug
        except (TransportError, HTTPStatusError) as exc:
            failure = exc
        if isinstance(failure, HTTPStatusError):
            pause(failure)
        wait = reconnects.next_wait(failure, retry=parser.retry)
        if wait is None:
            raise failure
        logger.info(
            "stream of prediction %s: %s; reconnecting in %.2fs (Last-Event-ID %s)",
            record.id,
            failure,
            wait,
            parser.last_event_id,
        )
        await asyncio.sleep(wait)
