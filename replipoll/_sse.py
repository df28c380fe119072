"""Server-sent events, sans I/O: the parser, the key rule, the reconnect policy.

A prediction of a model that streams has a ``urls.stream``: a URL serving
``text/event-stream`` (the WHATWG EventSource format) with the events
``output``, ``logs``, ``error`` and ``done``. Nothing here reads a socket or a
clock: :class:`SSEParser` turns bytes into :class:`StreamEvent` values as they
are fed in, :func:`stream_gets_key` decides which stream URL may receive the
API key, and :class:`Reconnects` decides whether, and after how long, a broken
stream is opened again. :mod:`replipoll._stream` drives them over
:mod:`replipoll._transport`.
"""

from __future__ import annotations

import codecs
import random
from typing import Final
from urllib.parse import urlsplit

import attrs

from ._errors import HTTPStatusError, NoStreamError, RequestError, TransportError
from ._models import Prediction
from ._retry import DEFAULT_RETRY_STATUSES

__all__ = [
    "MAX_RECONNECT_DELAY",
    "MAX_STREAM_FAILURES",
    "REPLICATE_STREAM_DOMAINS",
    "Reconnects",
    "SSEParser",
    "StreamEvent",
    "stream_gets_key",
    "stream_url_of",
]

#: Connections in a row that may fail without delivering an event: the
#: stream gives up at the last of them (an event resets the count).
MAX_STREAM_FAILURES: Final = 5
#: The longest wait before reconnecting, whatever a server's ``retry:`` says.
MAX_RECONNECT_DELAY: Final = 30.0
#: Where Replicate serves streams from: with the base URL at
#: ``api.replicate.com``, stream URLs on these domains (and their subdomains)
#: receive the key.
REPLICATE_STREAM_DOMAINS: Final = (
    "replicate.com",
    "replicate.delivery",
    "replicate.net",
)

_REPLICATE_API_HOST: Final = "api.replicate.com"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_BOM: Final = "\ufeff"


@attrs.frozen
class StreamEvent:
    """One server-sent event of a prediction's stream.

    Attributes:
        event: Its type: ``"output"`` (a piece of output), ``"logs"`` (log
            lines), ``"error"`` (the prediction failed; ``data`` is the
            error), ``"done"`` (the last one; ``data`` is ``{}`` or says
            why, e.g. ``{"reason": "canceled"}``), or another type a server
            sends (``"message"`` when it names none).
        data: Its data; the lines of a multi-line event joined with ``\\n``.
        id: The last event id the stream set, at or before this event
            (what a reconnect sends as ``Last-Event-ID``); ``None`` if none.

    Example:
        >>> from replipoll import StreamEvent
        >>> StreamEvent("output", "Hello", "1")
        StreamEvent(event='output', data='Hello', id='1')
    """

    event: str
    data: str
    id: str | None = None


class SSEParser:
    """An incremental ``text/event-stream`` parser (WHATWG HTML, 9.2.6).

    Feed it the body's bytes as they arrive, in chunks of any size: a line
    may be split anywhere, a UTF-8 character too. Lines end in ``\\n``,
    ``\\r\\n`` or ``\\r``; one byte-order mark at the start is dropped;
    ``event:``, ``data:`` (several lines joined with ``\\n``), ``id:`` (one
    with a NUL is ignored) and ``retry:`` (digits only) fields are read,
    comments (``:``) and unknown fields ignored; an event with no data is
    not dispatched. Any split of a body gives the same events.

    The last event id and the ``retry:`` delay outlive a connection, as in
    an ``EventSource``: call :meth:`restart` when a new connection begins.

    Example:
        >>> parser = SSEParser()
        >>> parser.feed(b"id: 1\\nevent: output\\ndata: Hel")
        []
        >>> parser.feed(b"lo\\n\\nretry: 2500\\n")
        [StreamEvent(event='output', data='Hello', id='1')]
        >>> parser.last_event_id, parser.retry
        ('1', 2.5)
    """

    __slots__ = (
        "_data",
        "_decoder",
        "_event",
        "_first",
        "_id",
        "_last_id",
        "_line",
        "_pending_cr",
        "_retry",
    )

    def __init__(self, last_event_id: str | None = None) -> None:
        self._last_id = last_event_id or ""
        self._retry: float | None = None
        self.restart()

    def restart(self) -> None:
        """Begin a new connection: forget the partial line and event.

        What a stream cut off in the middle of an event had sent of it is
        discarded, as the spec says, its ``id:`` too; the last event id
        (of the last event dispatched) and ``retry`` stay.
        """
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._line: list[str] = []
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        # The id being read; it becomes the last event id at a blank line.
        self._id = self._last_id

    @property
    def last_event_id(self) -> str | None:
        """The id to send as ``Last-Event-ID`` on reconnecting, if any.

        Set by the ``id:`` of an event only once a blank line ends the
        event: an event cut off before its end leaves it as it was.
        """
        return self._last_id or None

    @property
    def retry(self) -> float | None:
        """Seconds the server asked to wait before reconnecting (``retry:``)."""
        return self._retry

    @property
    def buffered(self) -> int:
        """Characters held for the line and the event not complete yet.

        Grows without bound on a body that never ends a line: the caller
        sets the limit.
        """
        return sum(map(len, self._line)) + sum(map(len, self._data))

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """Parse the next bytes of the body; return the events they complete."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if self._first:
            self._first = False
            if text.startswith(_BOM):
                text = text[1:]
        if self._pending_cr:
            self._pending_cr = False
            if text.startswith("\n"):  # the \n of a \r\n split across chunks
                text = text[1:]
        events: list[StreamEvent] = []
        start = 0
        size = len(text)
        while start < size:
            cr = text.find("\r", start)
            lf = text.find("\n", start)
            if cr < 0 and lf < 0:
                self._line.append(text[start:])
                break
            end = lf if cr < 0 or (0 <= lf < cr) else cr
            self._line.append(text[start:end])
            line = "".join(self._line)
            self._line = []
            if text[end] == "\r":
                if end + 1 == size:
                    self._pending_cr = True  # a \n may begin the next chunk
                elif text[end + 1] == "\n":
                    end += 1
            start = end + 1
            event = self._take(line)
            if event is not None:
                events.append(event)
        return events

    def _take(self, line: str) -> StreamEvent | None:
        """Process one complete line; return the event a blank line dispatches."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (often a keep-alive)
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value) / 1000.0
        return None

    def _dispatch(self) -> StreamEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        self._last_id = self._id  # even without data: a bare "id:" moves it
        if not data:
            return None
        return StreamEvent(event or "message", "\n".join(data), self._last_id or None)


def stream_url_of(prediction: Prediction) -> str:
    """The ``urls.stream`` of ``prediction``, if it is an ``http(s)`` URL.

    Raises:
        NoStreamError: the record has none (its model does not stream, or
            it was created without a stream), or one that is not a URL.
    """
    urls = prediction.urls
    url = None if urls is None else urls.stream
    if not url:
        raise NoStreamError(prediction.id, None)
    scheme, host, _ = _origin(url)
    if scheme not in _DEFAULT_PORTS or not host:
        raise NoStreamError(prediction.id, url)
    return url


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, lower case; ``("", "", None)`` if bad."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a bad port, a broken IPv6 literal
        return "", "", None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    return scheme, host, port if port is not None else _DEFAULT_PORTS.get(scheme)


def stream_gets_key(base_url: str, stream_url: str) -> bool:
    """Whether a request to ``stream_url`` may carry the key of ``base_url``.

    Yes when the stream URL has the base URL's origin (scheme, host, port);
    or, when the base URL is ``https://api.replicate.com``, when it is an
    ``https`` URL on a host under ``replicate.com``, ``replicate.delivery``
    or ``replicate.net``, where Replicate serves its streams. No otherwise:
    a gateway echoes Replicate's record, whose stream URL is not the
    gateway's, and a hostile one could name any host.

    Example:
        >>> base = "https://api.replicate.com/v1"
        >>> stream_gets_key(base, "https://stream.replicate.com/v1/files/abc")
        True
        >>> stream_gets_key(base, "https://replicate.com.evil.example/x")
        False
        >>> stream_gets_key("https://api.cometapi.com/replicate/v1",
        ...                 "https://stream.replicate.com/v1/files/abc")
        False
    """
    base = _origin(base_url)
    target = _origin(stream_url)
    if not target[1] or target[0] not in _DEFAULT_PORTS:
        return False
    if base == target:
        return True
    if base[1] != _REPLICATE_API_HOST or target[0] != "https":
        return False
    host = target[1]
    return any(
        host == domain or host.endswith(f".{domain}")
        for domain in REPLICATE_STREAM_DOMAINS
    )


@attrs.define
class Reconnects:
    """When to open a broken stream again: a pure, clock-free decision.

    Each connection that fails (no answer, a retryable status, cut off
    before its ``done`` event, silent past the idle timeout) is counted; an
    event received resets the count. At ``max_failures`` failures in a row,
    the stream gives up.

    Args:
        max_failures: Failed connections in a row that end the stream.
        base_delay: Seconds; the scale of the exponential backoff (full
            jitter) used when the server sent no ``retry:``.
        max_delay: Seconds; the cap of that backoff, and of a ``retry:``.
        max_retry_after: Seconds; a ``Retry-After`` longer than this ends
            the stream instead.
        retry_statuses: Statuses worth reconnecting after (others are raised).

    Example:
        >>> from replipoll import ConnectError
        >>> reconnects = Reconnects(max_failures=3, base_delay=1.0)
        >>> reconnects.next_wait(ConnectError("cut"), retry=0.5)
        0.5
        >>> reconnects.next_wait(ConnectError("cut"), retry=0.5)
        0.5
        >>> error = ConnectError("cut")
        >>> reconnects.next_wait(error, retry=0.5) is None, error.attempts
        (True, 3)
    """

    max_failures: int = MAX_STREAM_FAILURES
    base_delay: float = 0.5
    max_delay: float = MAX_RECONNECT_DELAY
    max_retry_after: float = 300.0
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    failures: int = 0
    _rng: random.Random = attrs.field(factory=random.Random, repr=False)

    def succeeded(self) -> None:
        """An event arrived: the stream works; forget the failures."""
        self.failures = 0

    def next_wait(self, error: RequestError, *, retry: float | None) -> float | None:
        """Seconds to wait before reconnecting after ``error``, or ``None``: give up.

        Args:
            error: Why the connection failed; its ``attempts`` is set to the
                failures in a row, so the error raised on giving up says it.
            retry: The server's ``retry:`` delay, if it sent one.
        """
        self.failures += 1
        error.attempts = self.failures
        if isinstance(error, HTTPStatusError):
            if error.status not in self.retry_statuses:
                return None  # a refused key, no such stream: the same next time
        elif not isinstance(error, TransportError):
            return None  # an answer that is not an event stream, or too big
        if self.failures >= self.max_failures:
            return None
        if retry is not None:
            wait = min(retry, self.max_delay)
        else:
            ceiling = min(self.max_delay, self.base_delay * 2 ** (self.failures - 1))
            wait = self._rng.uniform(0.0, ceiling)
        after = error.retry_after if isinstance(error, HTTPStatusError) else None
        if after is not None:
            if after > self.max_retry_after:
                return None  # longer than the policy waits: say so now
            wait = max(wait, after)
        return wait
