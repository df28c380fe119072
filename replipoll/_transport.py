"""The one way replipoll reaches the network: a thin aiohttp adapter.

Every request replipoll makes goes through a :class:`Transport`:

* :meth:`Transport.api` sends one API request. Its URL is the base URL the
  transport was made with, joined to an :class:`~replipoll._sansio.ApiRequest`
  path (built only from a validated id); only these requests carry the key.
* :meth:`Transport.download` streams a public output URL into a sink, never
  with the key, over a session that carries no credentials of its own.

It owns the aiohttp session (or borrows one), turns :class:`Timeouts` into
aiohttp's, translates aiohttp's exceptions into replipoll's (one table,
:data:`TRANSLATIONS`) and cuts the key out of whatever a server said before it
reaches an error. Decoding and status mapping are the pure functions of
:mod:`replipoll._sansio`; retries, budgets and schedules live above.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import aiohttp

from ._errors import (
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    RequestError,
    RequestTimeoutError,
    TransportError,
)
from ._models import Prediction
from ._providers import Timeouts
from ._sansio import ApiRequest, Redactor, decode_prediction, error_for_response

__all__ = ["TRANSLATIONS", "Sink", "Transport", "translate"]

#: Bytes asked of the socket at a time when streaming a download.
CHUNK_SIZE: Final = 64 * 1024


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
        return RequestTimeoutError(why, method=method, url=url)
    for kind, error, describe in TRANSLATIONS:
        if isinstance(exc, kind):
            return error(describe(exc), method=method, url=url)
    raise TypeError(f"not a transport failure: {type(exc).__name__}")  # a bug


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
    ) -> None:
        self._base_url = base_url
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
    ) -> Prediction:
        """Send one API request, no retries; decode the answer into a record.

        Args:
            request: What to ask, below the base URL.
            timeouts: The per-request timeouts.
            within: Seconds the request may take at most, if fewer than
                ``timeouts.total`` (a deadline of the caller's is near).

        Raises:
            RequestError: a subclass saying what failed; the key is never in it.
        """
        headers = self._headers
        if headers is None:
            raise TypeError("this transport is for downloads only")  # a bug
        session = self.session()
        url = f"{self._base_url}/{request.path}"
        method = request.method
        timeout, total = self._timeout(timeouts, within)
        failure: BaseException | None = None
        try:
            # Never follow a redirect: it would send the request (the key
            # too, on the same host) to a path nobody configured, and turn a
            # POST .../cancel into a GET. A 3xx is a BadRequestError instead.
            async with session.request(
                method, url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                body = await response.read()
                status = response.status
                answer_headers = response.headers
                reason = response.reason or ""
        except (TimeoutError, aiohttp.ClientError) as exc:
            failure = exc
        if failure is not None:
            raise translate(
                failure, method=method, url=url, timeouts=timeouts, total=total
            )
        redact = self._redact
        if 200 <= status < 300:
            return decode_prediction(
                status, answer_headers, body, method=method, url=url, redact=redact
            )
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

    async def download(
        self,
        url: str,
        open_sink: Callable[[], Sink],
        timeouts: Timeouts,
        *,
        within: float | None = None,
    ) -> int:
        """Stream ``url`` into a sink opened once the answer is 2xx.

        The request carries no key. Redirects are followed (output hosts
        hand files to CDNs). A body shorter than its ``Content-Length`` is a
        :class:`~replipoll.ConnectError` and the sink is discarded.

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
            async with session.get(url, timeout=timeout) as response:
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
                sink = open_sink()  # synchronous: a cancellation cannot strand it
                try:
                    size = 0
                    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                        size += len(chunk)
                        await sink.write(chunk)
                    expected = response.content_length
                    identity = response.headers.get("Content-Encoding", "identity")
                    if identity == "identity" and expected not in (None, size):
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
