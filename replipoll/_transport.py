"""The one way replipoll reaches the network: a thin aiohttp adapter.

Every request replipoll makes goes through a :class:`Transport`:

* :meth:`Transport.api` sends one API request. Its URL is the base URL the
  transport was made with, joined to an :class:`~replipoll._sansio.ApiRequest`
  path (built only from a validated id); only these requests carry the key.
* :meth:`Transport.download` streams a public output URL into a sink, never
  with the key, over a session that carries no credentials of its own.
* :meth:`Transport.event_stream` reads a prediction's server-sent events; the
  key goes along only where :func:`~replipoll._sse.stream_gets_key` allows.

It owns the aiohttp session (or borrows one), turns :class:`Timeouts` into
aiohttp's, translates aiohttp's exceptions into replipoll's (one table,
:data:`TRANSLATIONS`) and cuts the key out of whatever a server said before it
reaches an error. Decoding and status mapping are the pure functions of
:mod:`replipoll._sansio`; retries, budgets and schedules live above.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, Final, Protocol

import aiohttp

from ._errors import (
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    DecodeError,
    RequestError,
    RequestTimeoutError,
    ResponseTooLargeError,
    TransportError,
)
from ._hints import ServerHints
from ._models import Prediction
from ._pages import PredictionPage, decode_page
from ._providers import Timeouts
from ._sansio import (
    ApiRequest,
    Redactor,
    decode_prediction,
    error_for_response,
    parse_json,
    parse_json_yielding,
    request_id_from,
)
from ._sse import stream_gets_key

__all__ = [
    "DEFAULT_MAX_ANSWER_SIZE",
    "TRANSLATIONS",
    "Sink",
    "Transport",
    "translate",
]

logger: Final = logging.getLogger("replipoll")

#: Bytes asked of the socket at a time when streaming a download.
CHUNK_SIZE: Final = 64 * 1024
#: The largest API answer accepted by default, counted after decompression.
DEFAULT_MAX_ANSWER_SIZE: Final = 16 * 1024 * 1024
#: Answers up to this size are parsed at once: about 30 ms for the densest
#: JSON (a megabyte of numbers), a few for real predictions. Bigger ones are
#: parsed in a worker thread that lets the event loop run meanwhile.
_INLINE_JSON: Final = 1024 * 1024
#: Bytes of an event stream's error answer read for its message.
_ERROR_HEAD: Final = 64 * 1024
#: Fields whose misfit was logged already (once per process each).
_REPORTED: Final[set[str]] = set()
#: What :meth:`Transport._send` returns as the JSON of a body its caller saw.
_SAME: Final = object()


async def _read_capped(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _connector_message(exc: BaseException) -> str:
    # aiohttp's own text says "ssl:default" even for http:// URLs.
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, socket.gaierror):  # the host name did not resolve
            reason = error.strerror or str(error)
        elif error.errno and error.errno > 0:
            # asyncio's strerror says "Connect call failed ('127.0.0.1', 9)";
            # the errno's own text says why.
            reason = os.strerror(error.errno)
        else:
            reason = str(error)
        return f"could not connect to {exc.host}:{exc.port}: {reason or 'failed'}"
    return f"could not connect: {_describe(exc)}"


def _describe(exc: BaseException) -> str:
    # aiohttp's messages name host and port only; never headers.
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:199] + "…"


#: aiohttp's exceptions and what each becomes, most specific first. A
#: TimeoutError (any of aiohttp's timeouts) is a RequestTimeoutError; see
#: :func:`translate`.
TRANSLATIONS: Final[
    tuple[
        tuple[type[BaseException], type[RequestError], Callable[[BaseException], str]],
        ...,
    ]
] = (
    (aiohttp.InvalidURL, RequestError, lambda exc: "not a valid URL"),
    (
        aiohttp.ClientPayloadError,
        ConnectError,
        lambda exc: f"answer cut off: {type(exc).__name__}",
    ),
    (aiohttp.ClientConnectorError, ConnectError, _connector_message),
    (
        aiohttp.ClientConnectionError,
        ConnectError,
        lambda exc: f"connection failed: {_describe(exc)}",
    ),
    (
        aiohttp.ClientError,
        TransportError,
        lambda exc: f"request failed: {_describe(exc)}",
    ),
)


def translate(
    exc: BaseException,
    *,
    method: str,
    url: str,
    timeouts: Timeouts,
    total: float | None,
) -> RequestError:
    """The replipoll exception for one of aiohttp's (or a timeout).

    ``timeouts`` are the request's, ``total`` the limit its whole answer
    had (``timeouts.total``, or less near a deadline): they go into the
    message of a timeout.

    Raise the result outside the ``except`` block that caught ``exc``: some
    of aiohttp's exceptions hold the request's headers, API key included,
    and would stay attached as ``__context__``.
    """
    if isinstance(exc, TimeoutError):
        if isinstance(exc, aiohttp.SocketTimeoutError) and timeouts.read is not None:
            why = f"timed out: nothing received for {timeouts.read:g}s"
        elif (
            isinstance(exc, aiohttp.ConnectionTimeoutError)
            and timeouts.connect is not None
        ):
            why = f"timed out: no connection within {timeouts.connect:g}s"
        elif total is not None:
            why = f"timed out: no answer within {total:g}s"
        else:
            why = "timed out"
        timed_out = RequestTimeoutError(why, method=method, url=url)
        # No connection within the connect timeout: nothing was sent.
        timed_out.sent = not isinstance(exc, aiohttp.ConnectionTimeoutError)
        return timed_out
    for kind, error, describe in TRANSLATIONS:
        if isinstance(exc, kind):
            translated = error(describe(exc), method=method, url=url)
            if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(
                translated, TransportError
            ):
                # Refused, unresolvable, or the TLS handshake failed: the
                # request never left (what a create may safely retry).
                translated.sent = False
            return translated
    raise TypeError(f"not a transport failure: {type(exc).__name__}")  # a bug


async def _parse_big(body: bytes, left: float | None, *, method: str, url: str) -> Any:
    """Parse a big body in a worker thread, within ``left`` seconds.

    The event loop goes on meanwhile (see
    :func:`~replipoll._sansio.parse_json_yielding`); past the request's
    deadline the parse is stopped and the request timed out.
    """
    stop = threading.Event()
    try:
        async with asyncio.timeout(left):
            return await asyncio.to_thread(parse_json_yielding, body, stop.is_set)
    except TimeoutError:
        failure = RequestTimeoutError(
            f"timed out: a {len(body)}-byte answer took longer to parse than "
            f"the request had left",
            method=method,
            url=url,
        )
    finally:
        stop.set()  # a parse still running ends at its next token
    raise failure


class Sink(Protocol):
    """Where :meth:`Transport.download` puts a body; opened once it is 2xx."""

    async def write(self, chunk: bytes) -> None:
        """Take the next chunk of the body."""

    async def finish(self) -> None:
        """The body is complete: make it durable and put it in place."""

    def discard(self) -> None:
        """The download failed or was cancelled: remove what was written."""


def _has_credentials(session: aiohttp.ClientSession) -> bool:
    return "Authorization" in session.headers or session.auth is not None


class Transport:
    """One aiohttp session, used for API requests or for downloads.

    Made by :meth:`for_api` (a base URL and a key) or :meth:`for_downloads`
    (neither). Not part of the public API.
    """

    __slots__ = (
        "_base_url",
        "_closed",
        "_headers",
        "_last_timeout",
        "_max_answer_size",
        "_max_connections",
        "_owns_session",
        "_redact",
        "_session",
    )

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession | None,
        max_connections: int,
        base_url: str = "",
        headers: Mapping[str, str] | None = None,
        redact: Redactor | None = None,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
    ) -> None:
        self._base_url = base_url
        self._max_answer_size = max_answer_size
        self._headers = headers
        self._redact = redact if redact is not None else Redactor(None)
        self._session = session
        self._owns_session = session is None
        self._max_connections = max_connections
        self._closed = False
        self._last_timeout: tuple[Timeouts, aiohttp.ClientTimeout] | None = None

    @classmethod
    def for_api(
        cls,
        base_url: str,
        api_key: str,
        *,
        user_agent: str,
        session: aiohttp.ClientSession | None = None,
        max_connections: int = 100,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
    ) -> Transport:
        """A transport whose :meth:`api` requests go to ``base_url`` with the key."""
        headers = {
            "Authorization": f"Bearer {api_key}",
            "Accept": "application/json",
            "User-Agent": user_agent,
        }
        return cls(
            session=session,
            max_connections=max_connections,
            base_url=base_url,
            headers=headers,
            redact=Redactor(api_key),
            max_answer_size=max_answer_size,
        )

    @classmethod
    def for_downloads(
        cls, session: aiohttp.ClientSession | None = None, max_connections: int = 100
    ) -> Transport:
        """A transport for public URLs; it has no key to send.

        Raises:
            ConfigurationError: the borrowed ``session`` sends credentials of
                its own (an ``Authorization`` header or ``auth=``), which
                would reach the hosts serving the outputs.
        """
        if session is not None and _has_credentials(session):
            raise ConfigurationError(
                "the session sends credentials (an Authorization header or "
                "auth=); output URLs are public and no key may leave for "
                "another host: pass a session without them, or none",
                option="session",
            )
        return cls(session=session, max_connections=max_connections)

    def __repr__(self) -> str:
        return f"Transport(base_url={self._base_url!r}, closed={self._closed})"

    @property
    def base_url(self) -> str:
        """The base URL API requests go to (``""`` for a download transport)."""
        return self._base_url

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def redact(self) -> Redactor:
        """Cuts this transport's key out of text (a no-op without a key)."""
        return self._redact

    @property
    def max_answer_size(self) -> int:
        """The largest answer accepted, in bytes."""
        return self._max_answer_size

    def session(self) -> aiohttp.ClientSession:
        """The session, made on first use when none was borrowed.

        Raises:
            ClientClosedError: :meth:`close` was called.
            ConfigurationError: the borrowed session was closed by its owner.
        """
        session = self._session
        if session is None or session.closed:
            if self._closed:
                raise ClientClosedError
            if not self._owns_session:
                raise ConfigurationError(
                    "the borrowed aiohttp session is closed", option="session"
                )
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, ttl_dns_cache=300
                ),
            )
        return session

    async def close(self) -> None:
        """Close the owned session (a borrowed one is left open). Idempotent."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    def _timeout(
        self, timeouts: Timeouts, within: float | None
    ) -> tuple[aiohttp.ClientTimeout, float | None]:
        """The aiohttp timeout for ``timeouts``, cut to ``within`` seconds."""
        total = timeouts.total
        if within is not None:
            remaining = max(within, 0.001)
            if total is None or remaining < total:
                total = remaining
                return (
                    aiohttp.ClientTimeout(
                        total=total,
                        sock_connect=timeouts.connect,
                        sock_read=timeouts.read,
                    ),
                    total,
                )
        cached = self._last_timeout
        if cached is None or cached[0] is not timeouts:
            cached = self._last_timeout = (
                timeouts,
                aiohttp.ClientTimeout(
                    total=timeouts.total,
                    sock_connect=timeouts.connect,
                    sock_read=timeouts.read,
                ),
            )
        return cached[1], total

    async def api(
        self,
        request: ApiRequest,
        timeouts: Timeouts,
        *,
        within: float | None = None,
        hints: ServerHints | None = None,
    ) -> Prediction:
        """Send one API request, no retries; decode the answer into a record.

        Args:
            request: What to ask, below the base URL.
            timeouts: The per-request timeouts.
            within: Seconds the request may take at most, if fewer than
                ``timeouts.total`` (a deadline of the caller's is near).
            hints: Filled in with the pace hints of a successful answer
                (read last: the caller finds them there when this returns).

        Raises:
            RequestError: a subclass saying what failed; the key is never in it.
        """
        status, headers, body, data, url = await self._send(request, timeouts, within)
        record = self._decode(request, status, headers, body, data, url)
        if hints is not None:
            hints.read(headers, time.time())
        return record

    async def api_since(
        self,
        request: ApiRequest,
        timeouts: Timeouts,
        seen: tuple[int, Prediction] | None,
        *,
        within: float | None = None,
        hints: ServerHints | None = None,
    ) -> tuple[Prediction, int]:
        """:meth:`api` for a record polled before: an unchanged answer is not decoded.

        A running prediction often answers, poll after poll, byte for byte
        what it answered last time (queued, or running without new logs).
        Such a body is neither parsed nor decoded again: the record decoded
        from it before is returned, the very object.

        Args:
            seen: The hash of the body last answered to this request, and
                the record decoded from it; None if there is none.

        Returns:
            The record (``seen``'s own if the body is the same), and the hash
            of the body, to pass as ``seen`` next time.

        Raises:
            RequestError: as :meth:`api`.
        """
        status, headers, body, data, url = await self._send(
            request, timeouts, within, None if seen is None else seen[0]
        )
        if data is _SAME and seen is not None:
            record = seen[1]
        else:
            record = self._decode(request, status, headers, body, data, url)
        if hints is not None:
            hints.read(headers, time.time())
        return record, hash(body)

    def _decode(
        self,
        request: ApiRequest,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        data: Any,
        url: str,
    ) -> Prediction:
        """Decode a 2xx answer to ``request`` into its record (see :meth:`api`)."""
        record = decode_prediction(
            status,
            headers,
            body,
            data=data,
            expected_id=request.prediction_id or None,
            method=request.method,
            url=url,
            redact=self._redact,
        )
        if record.invalid:
            self._report_misfits(record)
        return record

    async def api_page(
        self,
        request: ApiRequest,
        timeouts: Timeouts,
        *,
        within: float | None = None,
        hints: ServerHints | None = None,
    ) -> PredictionPage:
        """Send one list request, no retries; decode the page of records.

        Raises:
            RequestError: a subclass saying what failed; a body that is not
                a page is a :class:`~replipoll.DecodeError`.
        """
        status, headers, body, data, url = await self._send(request, timeouts, within)
        page = decode_page(
            status, headers, body, data=data, url=url, redact=self._redact
        )
        if hints is not None:
            hints.read(headers, time.time())
        return page

    async def _send(
        self,
        request: ApiRequest,
        timeouts: Timeouts,
        within: float | None,
        same: int | None = None,
    ) -> tuple[int, Mapping[str, str], bytes, Any, str]:
        """Send ``request``; return a 2xx answer's status, headers, body, JSON, URL.

        The JSON is :data:`_SAME`, not parsed, if the body's hash is ``same``.

        Raises:
            RequestError: no answer, an answer too large, or one not 2xx.
        """
        headers = self._headers
        if headers is None:
            raise TypeError("this transport is for downloads only")  # a bug
        session = self._session
        if session is None or session.closed:
            session = self.session()
        url = f"{self._base_url}/{request.path}"
        method = request.method
        if request.headers:
            headers = {**headers, **dict(request.headers)}
        started = time.monotonic()
        cached = self._last_timeout
        if within is None and cached is not None and cached[0] is timeouts:
            timeout, total = cached[1], timeouts.total  # the common case
        else:
            timeout, total = self._timeout(timeouts, within)
        limit = self._max_answer_size
        failure: BaseException | None = None
        try:
            # Never follow a redirect: it would send the request (the key
            # too, on the same host) to a path nobody configured, and turn a
            # POST .../cancel into a GET. A 3xx is a BadRequestError instead.
            async with session.request(
                method,
                url,
                headers=headers,
                data=request.body,
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                status = response.status
                answer_headers = response.headers
                reason = response.reason or ""
                length = response.content_length
                if length is not None and "Content-Encoding" not in answer_headers:
                    # The size is known before a byte is read.
                    body = await response.read() if length <= limit else None
                else:  # chunked, or compressed: counted as it unpacks
                    body = await _read_capped(response.content, limit)
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = exc
        if failure is not None:
            raise translate(
                failure, method=method, url=url, timeouts=timeouts, total=total
            )
        redact = self._redact
        if body is not None:
            body = redact.scrub(body)
        if body is None:
            raise ResponseTooLargeError(
                f"the answer is larger than {limit} bytes (the client's "
                f"max_answer_size); not read further",
                limit=limit,
                method=method,
                url=url,
                status=status,
                request_id=request_id_from(answer_headers, redact=redact),
            )
        if not 200 <= status < 300:
            raise error_for_response(
                status,
                answer_headers,
                body,
                now=time.time(),
                method=method,
                url=url,
                reason=reason,
                redact=redact,
            )
        if same is not None and hash(body) == same:
            data = _SAME  # the caller has its record already
        elif len(body) <= _INLINE_JSON:
            data = parse_json(body)
        else:
            left = None if total is None else total - (time.monotonic() - started)
            data = await _parse_big(body, left, method=method, url=url)
        return status, answer_headers, body, data, url

    def _report_misfits(self, record: Prediction) -> None:
        """Log, once per field, a value that did not fit (kept in ``invalid``)."""
        for name, value in record.invalid.items():
            if name in _REPORTED or len(_REPORTED) > 256:
                continue
            _REPORTED.add(name)
            shown = self._redact(repr(value))
            if len(shown) > 80:
                shown = shown[:79] + "…"
            logger.warning(
                "prediction %s: field %r does not fit its type (%s); kept as "
                "sent in .invalid (said once per field)",
                record.id,
                name,
                shown,
            )

    async def download(
        self,
        url: str,
        open_sink: Callable[[], Sink],
        timeouts: Timeouts,
        *,
        max_size: int | None = None,
        within: float | None = None,
    ) -> int:
        """Stream ``url`` into a sink opened once the answer is 2xx.

        The request carries no key. Redirects are followed (output hosts
        hand files to CDNs). The body is stored as served: a
        ``Content-Encoding`` is not undone (a gzip bomb stays the small file
        it was on the wire). A body shorter than its ``Content-Length`` is a
        :class:`~replipoll.ConnectError`, one longer than ``max_size`` a
        :class:`~replipoll.ResponseTooLargeError` (refused before a byte is
        written when the length is announced); either way the sink is
        discarded.

        Returns:
            The size of the body, in bytes.

        Raises:
            RequestError: a subclass saying what failed.
            OSError: the sink could not be written.
        """
        session = self.session()
        timeout, total = self._timeout(timeouts, within)
        failure: BaseException | None = None
        try:
            async with session.get(
                url, timeout=timeout, auto_decompress=False
            ) as response:
                if response.status >= 300:
                    head = await response.content.read(4096)
                    raise error_for_response(
                        response.status,
                        response.headers,
                        head,
                        now=time.time(),
                        url=url,
                        reason=response.reason or "",
                    )
                expected = response.content_length
                if (
                    max_size is not None
                    and expected is not None
                    and expected > max_size
                ):
                    raise _too_large(url, max_size, response.status)
                sink = open_sink()  # synchronous: a cancellation cannot strand it
                try:
                    size = 0
                    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                        size += len(chunk)
                        if max_size is not None and size > max_size:
                            raise _too_large(url, max_size, response.status)
                        await sink.write(chunk)
                    if expected not in (None, size):
                        raise ConnectError(
                            f"answer cut off after {size} of {expected} bytes",
                            url=url,
                            status=response.status,
                        )
                    await sink.finish()
                except BaseException:
                    sink.discard()  # synchronous: must run even when cancelled
                    raise
                return size
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = exc
        raise translate(failure, method="GET", url=url, timeouts=timeouts, total=total)

    async def event_stream(
        self, url: str, timeouts: Timeouts, *, last_event_id: str | None = None
    ) -> AsyncGenerator[bytes]:
        """Open the ``text/event-stream`` at ``url``; yield its body as it comes.

        Sends ``Accept: text/event-stream``, ``Cache-Control: no-store``, the
        ``Last-Event-ID`` if given, and the key only if
        :func:`~replipoll._sse.stream_gets_key` says ``url`` may have it.
        Redirects are not followed. ``timeouts.total`` is ignored (a stream
        lasts as long as it lasts): ``connect`` bounds the connection,
        ``read`` the silence between two chunks. Close the generator
        (``aclose()``) to close the connection; it is never reused.

        Raises:
            HTTPStatusError: a non-2xx answer, mapped as for API requests.
            DecodeError: a 2xx answer that is not ``text/event-stream``.
            TransportError: no answer, a timeout, or the body broke off or
                ended (an event stream ends only when its reader closes
                it); ``status`` and ``request_id`` are the answer's, if one
                had begun.
        """
        base = self._headers
        if base is None:
            raise TypeError("this transport is for downloads only")  # a bug
        headers = {
            name: value
            for name, value in base.items()
            if name != "Authorization" or stream_gets_key(self._base_url, url)
        }
        headers["Accept"] = "text/event-stream"
        headers["Cache-Control"] = "no-store"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        session = self.session()
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        redact = self._redact
        answered: tuple[int, str | None] | None = None
        failure: BaseException | None = None
        try:
            async with session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                request_id = request_id_from(response.headers, redact=redact)
                answered = (status, request_id)
                if not 200 <= status < 300:
                    head = redact.scrub(await response.content.read(_ERROR_HEAD))
                    raise error_for_response(
                        status,
                        response.headers,
                        head,
                        now=time.time(),
                        url=url,
                        reason=response.reason or "",
                        redact=redact,
                    )
                if response.content_type != "text/event-stream":
                    raise DecodeError(
                        f"the stream URL answered {response.content_type!r}, "
                        f"not text/event-stream",
                        url=url,
                        status=status,
                        request_id=request_id,
                    )
                try:
                    async for chunk in response.content.iter_any():
                        yield chunk
                finally:
                    # Never reused half read, however the reading ended.
                    response.close()
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = exc
        if failure is None:
            error: RequestError = ConnectError(
                "the event stream ended before its done event", url=url
            )
        else:
            error = translate(
                failure, method="GET", url=url, timeouts=timeouts, total=None
            )
        if answered is not None:
            error.status, error.request_id = answered
        raise error


def _too_large(url: str, limit: int, status: int) -> ResponseTooLargeError:
    return ResponseTooLargeError(
        f"the file is larger than {limit} bytes (max_size); not saved",
        limit=limit,
        url=url,
        status=status,
    )
