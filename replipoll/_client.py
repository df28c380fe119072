"""The aiohttp layer: one session, one request at a time, retries around it.

Everything that can be decided without I/O is in :mod:`replipoll._sansio`
(URLs, error mapping, decoding) and :mod:`replipoll._retry` (what to retry).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp
import backoff

from ._errors import (
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    DecodeError,
    MissingAPIKeyError,
    RateLimitedError,
    RequestError,
    RequestTimeoutError,
    TransportError,
)
from ._providers import Provider, Timeouts, get_provider
from ._retry import RetryPolicy
from ._sansio import (
    decode_prediction,
    error_for_response,
    normalize_base_url,
    prediction_url,
    validate_prediction_id,
)
from ._schedule import RateBudget

if TYPE_CHECKING:
    from ._models import Prediction
    from ._schedule import PollPolicy

__all__ = ["Client"]

logger: Final = logging.getLogger("replipoll")

USER_AGENT: Final = "replipoll/0.1.0"


class Client:
    """An async client for one Replicate-compatible API and one API key.

    Args:
        provider: ``"replicate"``, ``"deerapi"``, ``"cometapi"`` or a
            :class:`Provider`; sets the base URL, the environment variable
            the key is read from, and the default timeouts.
        api_key: The key; if ``None``, read from the provider's environment
            variable (``REPLICATE_API_TOKEN``, ``DEERAPI_KEY``, ``COMETAPI_KEY``).
        base_url: Any compatible base URL (``.../v1``, a gateway's
            ``.../replicate/v1``); overrides the provider's.
        session: An :class:`aiohttp.ClientSession` to borrow; it is never
            closed by the client. By default the client owns one.
        timeouts: Per-request timeouts; the provider's by default
            (CometAPI's allow a single answer to take two minutes).
        retry: What to retry and how long to wait; :class:`RetryPolicy` by default.
        rate_limit: Requests per second for this key, or ``None``. A 429's
            ``Retry-After`` pauses every request of this client regardless.
        burst: Requests that may go at once under ``rate_limit``.
        max_connections: Size of the owned session's connection pool.

    Raises:
        MissingAPIKeyError: no key given and the environment variable is unset.
        ConfigurationError: unknown provider, bad base URL or an unusable key.

    Example:
        >>> import asyncio, replipoll
        >>> from replipoll.testing import FakeReplicate
        >>> async def main():
        ...     async with FakeReplicate() as server:
        ...         pid = server.add_prediction(output="hello")
        ...         async with replipoll.Client(
        ...             base_url=server.base_url(), api_key=server.api_key
        ...         ) as client:
        ...             return (await client.get(pid)).output
        >>> asyncio.run(main())
        'hello'
    """

    __slots__ = (
        "_closed",
        "_headers",
        "_owns_session",
        "_redact",
        "_retry_attempts",
        "_session",
        "_timeout",
        "base_url",
        "budget",
        "max_connections",
        "provider",
        "retry",
        "timeouts",
    )

    def __init__(
        self,
        provider: str | Provider = "replicate",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeouts: Timeouts | None = None,
        retry: RetryPolicy | None = None,
        rate_limit: float | None = None,
        burst: int = 10,
        max_connections: int = 100,
    ) -> None:
        preset = get_provider(provider)
        self.provider: str = preset.name
        #: The resolved base URL, without a trailing slash.
        self.base_url: str = normalize_base_url(
            base_url if base_url is not None else preset.base_url
        )
        key = api_key if api_key is not None else os.environ.get(preset.env_var, "")
        if not key.strip():
            raise MissingAPIKeyError(preset.env_var)
        if any(ch in key for ch in "\r\n\0") or not key.isprintable():
            raise ConfigurationError("the API key contains unprintable characters")
        # A gateway's error page may quote the request back; errors carry
        # the provider's message, so the key is cut out of it (a key too
        # short to be a real one would mangle messages instead).
        self._redact = key.strip() if len(key.strip()) >= 8 else None
        self._headers: Mapping[str, str] = {
            "Authorization": f"Bearer {key.strip()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        self.timeouts: Timeouts = timeouts if timeouts is not None else preset.timeouts
        self._timeout = aiohttp.ClientTimeout(
            total=self.timeouts.total,
            sock_connect=self.timeouts.connect,
            sock_read=self.timeouts.read,
        )
        self.retry: RetryPolicy = retry if retry is not None else RetryPolicy()
        #: Shared by every request of this client; paused by ``Retry-After``.
        self.budget: RateBudget = RateBudget(rate=rate_limit, burst=burst)
        self.max_connections = max_connections
        self._session = session
        self._owns_session = session is None
        self._closed = False
        # Attempts 2..max_attempts run under backoff; the first goes straight
        # out (see _call), so a request that succeeds pays nothing for them.
        self._retry_attempts = backoff.on_exception(
            self.retry.wait_gen,
            RequestError,
            max_tries=self.retry.max_attempts - 1,
            giveup=lambda exc: not self.retry.is_retryable(exc),
            jitter=None,
            on_backoff=_log_retry,
            on_giveup=_record_attempts,
            raise_on_giveup=True,
            logger=None,  # replipoll logs its own retries, without noise
            first_attempt=2,
        )(self.request_once)

    def __repr__(self) -> str:
        # The key is never shown, not even a prefix of it.
        return (
            f"Client(provider={self.provider!r}, base_url={self.base_url!r}, "
            f"api_key=<hidden>)"
        )

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the owned session (a borrowed one is left open). Idempotent.

        Requests made after this raise :class:`ClientClosedError`.
        """
        self._closed = True
        session, self._session = self._session, None
        if session is not None and self._owns_session and not session.closed:
            await session.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _ensure_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            if self._closed:
                raise ClientClosedError
            if not self._owns_session:
                raise ConfigurationError("the borrowed aiohttp session is closed")
            session = self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.max_connections, ttl_dns_cache=300
                ),
            )
        return session

    async def get(self, prediction_id: str) -> Prediction:
        """Fetch a prediction: ``GET {base_url}/predictions/{id}``, with retries.

        Raises:
            InvalidPredictionIdError: the id is not usable; nothing was sent.
            RequestError: a subclass saying what failed, after retries where
                the failure was worth retrying (``attempts`` says how many).
        """
        url = prediction_url(self.base_url, validate_prediction_id(prediction_id))
        return await self._call("GET", url)

    async def cancel(self, prediction_id: str) -> Prediction:
        """Cancel a prediction: ``POST {base_url}/predictions/{id}/cancel``.

        Replicate answers with the prediction; the gateways do not document
        this endpoint and may answer 404 (:class:`NotFoundError`).
        """
        pid = validate_prediction_id(prediction_id)
        url = prediction_url(self.base_url, pid, "cancel")
        return await self._call("POST", url)

    async def wait(
        self,
        prediction_id: str,
        *,
        timeout: float | None = 1800.0,
        policy: PollPolicy | None = None,
    ) -> Prediction:
        """Poll one prediction until it is terminal and return the record.

        Built on the same scheduler as :class:`PollManager`.

        Raises:
            PollTimeout: not terminal within ``timeout`` seconds; carries the
                last record seen.
            RequestError: polling failed for good (not found, bad key, retries
                exhausted).
        """
        from ._manager import PollManager

        async with PollManager(
            self, max_concurrency=1, task_timeout=timeout, policy=policy
        ) as manager:
            return await manager.submit(prediction_id)

    async def _call(self, method: str, url: str) -> Prediction:
        try:
            return await self.request_once(method, url)
        except RequestError as error:
            if not self.retry.should_retry(error, 1):
                raise
            wait = self.retry.delay(error, 1)
            _log_retry({"exception": error, "tries": 0, "wait": wait})
        await asyncio.sleep(wait)
        return await self._retry_attempts(method, url)

    async def request_once(
        self, method: str, url: str, budget: RateBudget | None = None
    ) -> Prediction:
        """Send one request, no retries, and decode the answer into a record.

        This is the building block under :meth:`get` and the
        :class:`PollManager`; most code wants those instead.

        Args:
            method: ``"GET"`` or ``"POST"``.
            url: The full URL, built from :attr:`base_url`.
            budget: The request budget to spend; this client's by default.

        Raises:
            RequestError: a subclass saying what failed; ``attempts`` is 1.
        """
        budget = self.budget if budget is None else budget
        if not budget.try_acquire(time.monotonic()):  # no await when a slot is free
            await budget.acquire()
        return await self.send(method, url, budget)

    async def send(self, method: str, url: str, budget: RateBudget) -> Prediction:
        """Send one request now, without waiting on a budget; see :meth:`request_once`.

        A 429 with a ``Retry-After`` pauses ``budget`` and this client's own.
        """
        session = self._ensure_session()
        failure: RequestError | None = None
        try:
            # Never follow a redirect: it would send the request (the key
            # too, on the same host) to a path nobody configured, and turn a
            # POST .../cancel into a GET. A 3xx is a BadRequestError instead.
            async with session.request(
                method,
                url,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                body = await response.read()
                status = response.status
                headers = response.headers
                reason = response.reason or ""
        except TimeoutError:
            failure = RequestTimeoutError(
                f"no answer within {self.timeouts.total}s", method=method, url=url
            )
        except aiohttp.ClientPayloadError as exc:
            failure = ConnectError(
                f"answer cut off: {type(exc).__name__}", method=method, url=url
            )
        except aiohttp.ClientConnectionError as exc:
            failure = ConnectError(
                f"connection failed: {_describe(exc)}", method=method, url=url
            )
        except aiohttp.ClientError as exc:
            failure = TransportError(
                f"request failed: {_describe(exc)}", method=method, url=url
            )
        if failure is not None:
            # Raised here, not in the handler: "from None" would still keep
            # aiohttp's exception as __context__, and some of them (every
            # ClientResponseError) hold the request's headers, API key included.
            raise self._redacted(failure)
        if 200 <= status < 300:
            try:
                return decode_prediction(status, headers, body, method=method, url=url)
            except DecodeError as exc:
                raise self._redacted(exc) from None
        error = error_for_response(
            status,
            headers,
            body,
            now=time.time(),
            method=method,
            url=url,
            reason=reason,
        )
        if isinstance(error, RateLimitedError) and error.retry_after is not None:
            until = time.monotonic() + min(
                error.retry_after, self.retry.max_retry_after
            )
            budget.pause_until(until)
            if budget is not self.budget:
                self.budget.pause_until(until)  # the limit is per key
        raise self._redacted(error)

    def _redacted(self, error: RequestError) -> RequestError:
        """Cut this client's key out of the provider's words in ``error``."""
        key = self._redact
        if key is None:
            return error
        if key in error.message:
            error.message = error.message.replace(key, "<redacted>")
            error.args = (error.message,)
        if error.request_id is not None and key in error.request_id:
            error.request_id = error.request_id.replace(key, "<redacted>")
        return error


def _describe(exc: BaseException) -> str:
    # aiohttp's messages name host and port only; never headers.
    text = str(exc) or type(exc).__name__
    return text if len(text) < 200 else text[:199] + "…"


# backoff counts the attempts it ran; the first attempt ran before it.
def _log_retry(details: Any) -> None:
    logger.warning(
        "retrying in %.2fs after attempt %d failed: %s",
        details["wait"],
        details["tries"] + 1,
        details["exception"],
    )


def _record_attempts(details: Any) -> None:
    error = details["exception"]
    if isinstance(error, RequestError):
        error.attempts = details["tries"] + 1
