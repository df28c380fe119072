"""The fake server's event streams: ``GET /stream/{id}``, server-sent events.

:func:`stream_schedule` is pure: every event a scripted prediction's stream
carries, and when each is due, from its script alone (so ids never change:
a cancel only cuts the list short). :func:`serve_stream` sends them as they
fall due, resumes after a ``Last-Event-ID``, and may drop the connection
after a while, as Replicate does after 25-35 seconds.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from aiohttp import web

from ._records import DEFAULT_ERROR, MISSING, Prediction, file_name
from ._stats import ServerStats

#: Where streams are served (outside the API prefixes, on the same host).
STREAM_PREFIX: Final = "/stream/"
#: Real seconds between two looks at the clock while a stream waits.
_TICK: Final = 0.02
#: Output text is sent a token at a time: a word with the spaces before it.
_TOKENS: Final = re.compile(r"\s*\S+|\s+")


class Due(NamedTuple):
    """One event of a stream and when it is due (seconds of the server's clock)."""

    at: float
    event: str
    data: str


def output_pieces(p: Prediction, origin: str) -> list[str]:
    """The pieces of *p*'s output, one an ``output`` event, as a success has it.

    A string: its tokens (a word with the spaces before it); a list: one
    piece per item (a string as it is, anything else as JSON); no output
    given: the URLs of the files it serves; ``None``: nothing; anything else:
    its JSON in one piece.
    """
    output = p.output
    if output is MISSING:
        return [f"{origin}/files/{p.id}/{file_name(i)}" for i in range(p.n_files)]
    if output is None:
        return []
    if isinstance(output, str):
        return _TOKENS.findall(output)
    if isinstance(output, list):
        return [item if isinstance(item, str) else _dumps(item) for item in output]
    return [_dumps(output)]


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _spread(items: list[str], start: float, duration: float) -> list[float]:
    """When each of *items* is due: evenly over the run, the first at its start."""
    count = len(items)
    return [start + duration * i / count for i in range(count)]


def stream_schedule(p: Prediction, origin: str) -> list[Due]:
    """Every event of *p*'s stream, in order; event ``i`` has the id ``i + 1``.

    While it runs: its ``logs`` lines and its output pieces
    (:func:`output_pieces`; only for a prediction scripted to succeed),
    each spread evenly over the run.  At the end: ``done`` with ``{}``
    after a success; an ``error`` event (the prediction's error) then
    ``done`` with ``{"reason": "error"}`` after a failure; ``done`` with
    ``{"reason": "canceled"}`` (or the final status, for others) otherwise.
    A cancel drops what was not due before it.  With no *duration*, all
    come at once.
    """
    status, started, completed = p.timeline(math.inf)
    assert completed is not None  # every script ends
    events: list[tuple[float, int, str, str]] = []
    if started is not None:
        lines = p.logs.splitlines()
        for at, line in zip(_spread(lines, started, p.duration), lines, strict=True):
            events.append((at, 0, "logs", line))
        if p.outcome == "succeeded":
            pieces = output_pieces(p, origin)
            for at, piece in zip(
                _spread(pieces, started, p.duration), pieces, strict=True
            ):
                events.append((at, 1, "output", piece))
    # Stable: logs before output at the same moment, each kind in its order.
    events.sort(key=lambda event: (event[0], event[1]))
    # A cancel drops what was not due before it.
    end = completed if status == "canceled" else math.inf
    due = [Due(at, kind, data) for at, _, kind, data in events if at < end]
    if status == "succeeded":
        due.append(Due(completed, "done", "{}"))
    elif status == "failed":
        error = DEFAULT_ERROR if p.error is None else p.error
        due.append(Due(completed, "error", error))
        due.append(Due(completed, "done", _dumps({"reason": "error"})))
    else:
        due.append(Due(completed, "done", _dumps({"reason": status})))
    return due


def frame(event_id: int, due: Due) -> bytes:
    """The bytes of one event: ``id``, ``event``, its ``data`` lines, a blank line."""
    data = due.data.replace("\r\n", "\n").replace("\r", "\n")
    lines = "".join(f"data: {line}\n" for line in data.split("\n"))
    return f"id: {event_id}\nevent: {due.event}\n{lines}\n".encode()


def _resume_after(request: web.Request) -> int:
    """The ``Last-Event-ID`` of *request* as an event number; 0: from the start."""
    value = request.headers.get("Last-Event-ID", "").strip()
    return int(value) if value.isascii() and value.isdigit() else 0


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def serve_stream(
    request: web.Request,
    p: Prediction,
    *,
    clock: Callable[[], float],
    stats: ServerStats,
    request_id: str,
    cut_after: float | None,
) -> web.StreamResponse:
    """Send *p*'s events as they fall due, until ``done`` or the client leaves.

    Resumes after the request's ``Last-Event-ID``.  With *cut_after*, the
    connection is dropped after that many real seconds, in the middle of an
    event (the first half of the next one is sent, ``id:`` line included):
    a client must discard it and get it whole on reconnecting.
    """
    origin = f"{request.scheme}://{request.host}"
    sent = _resume_after(request)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Request-Id": request_id,  # sent before the middleware sees it
        }
    )
    loop = asyncio.get_running_loop()
    began = loop.time()
    stats.streams_open += 1
    try:
        await response.prepare(request)
        while not _gone(request):
            events = stream_schedule(p, origin)
            now = clock()
            ready = []
            while sent < len(events) and events[sent].at <= now:
                ready.append(frame(sent + 1, events[sent]))
                sent += 1
            if cut_after is not None and loop.time() - began >= cut_after:
                # Cut in the middle of an event: the last one ready, else
                # the next one (which no client can read: it is not whole).
                if not ready and sent < len(events):
                    ready.append(frame(sent + 1, events[sent]))
                if ready:
                    last = ready.pop()
                    ready.append(last[: len(last) // 2])
                    await response.write(b"".join(ready))
                _drop(request)
                return response
            if ready:
                await response.write(b"".join(ready))
            if sent >= len(events):
                await response.write_eof()
                return response
            await asyncio.sleep(_TICK)
    except ConnectionError:
        pass  # the client left: nobody to tell
    finally:
        stats.streams_open -= 1
    _drop(request)
    return response


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
