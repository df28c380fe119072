"""The client: one API key, one base URL, one transport; single calls and waits.

Requests go out through :class:`~replipoll._transport.Transport` (the one
aiohttp layer); retries through :func:`~replipoll._retry.call_with_retries`
(the one retry engine); the budget is a :class:`RateBudget`. The
:class:`~replipoll.PollManager` shares the client's transport through one
narrow private method, :meth:`Client._exchange`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

import aiohttp
import attrs

from ._create import create_limit, create_request
from ._errors import (
    BaseURLError,
    ConfigurationError,
    DecodeError,
    GatewayError,
    HTTPStatusError,
    MissingAPIKeyError,
    PollTimeout,
    PredictionMayExistError,
    RateLimitedError,
    RequestError,
    RequestTimeoutError,
    ResponseTooLargeError,
    ServerError,
    TransportError,
)
from ._hints import ServerHints
from ._models import Prediction
from ._options import check_at_least, check_positive
from ._pages import PredictionPage, list_request
from ._providers import Provider, Timeouts, get_provider
from ._retry import RetryPolicy, call_with_retries
from ._sansio import ApiRequest, Redactor, normalize_base_url
from ._schedule import PollPolicy, RateBudget
from ._share import Budget
from ._sse import Reconnects, StreamEvent
from ._stream import follow_stream
from ._transport import DEFAULT_MAX_ANSWER_SIZE, Transport
from ._version import VERSION

__all__ = ["BASE_URL_ENV", "DEFAULT_TIMEOUT", "Client"]

logger: Final = logging.getLogger("replipoll")

#: Seconds one prediction may take to become terminal, by default, in
#: :meth:`Client.wait` and :class:`~replipoll.PollManager` alike: Replicate
#: stops a prediction after 30 minutes of running, and it may queue first.
DEFAULT_TIMEOUT: Final = 3600.0
#: The environment variable a Client reads its base URL from when given none
#: (the command line's --base-url reads it too).
BASE_URL_ENV: Final = "REPLIPOLL_BASE_URL"
#: Statuses whose Retry-After pauses every request of the key: a 429 says the
#: key's limit is spent, a 503 that the service is down for that long.
_PAUSING: Final = frozenset({429, 503})


def _require(owner: str, option: str, value: object, kind: type) -> None:
    if not isinstance(value, kind):
        raise ConfigurationError(
            f"{owner}: {option} must be a {kind.__name__}, got {type(value).__name__}",
            option=option,
        )


class Client:
    """An async client for one Replicate-compatible API and one API key.

    Args:
        provider: ``"replicate"``, ``"deerapi"``, ``"cometapi"`` or a
            :class:`Provider`; sets the base URL, the environment variable
            the key is read from, and the default timeouts.
        api_key: The key; if ``None``, read from the provider's environment
            variable (``REPLICATE_API_TOKEN``, ``DEERAPI_KEY``, ``COMETAPI_KEY``).
        base_url: Any compatible base URL (``.../v1``, a gateway's
            ``.../replicate/v1``); if ``None``, the ``REPLIPOLL_BASE_URL``
            environment variable, else the provider's. The key is sent to
            this URL's host only.
        session: An :class:`aiohttp.ClientSession` to borrow; it is never
            closed by the client. By default the client owns one.
        timeouts: Per-request timeouts; the provider's by default
            (CometAPI's allow a single answer to take two minutes).
        retry: What to retry and how long to wait; :class:`RetryPolicy` by default.
        rate_limit: Requests per second for this key, or ``None``. A 429's
            ``Retry-After`` pauses every request of this client regardless.
        burst: Requests that may go at once under ``rate_limit``.
        create_rate_limit: Creates per second for this key, or ``None``: a
            budget of their own (Replicate limits creates apart from other
            requests: 600 a minute, far fewer for accounts low on credit).
            A 429 on a create pauses creates only; one whose message states
            a reduced limit ("6 requests per minute with a burst of 1")
            slows this budget down to it.
        create_burst: Creates that may go at once under ``create_rate_limit``.
        budget: The request budget to spend instead of one made from
            ``rate_limit`` and ``burst``: any :class:`Budget`, such as a
            :class:`~replipoll.redis.RedisBudget` that the processes using
            one key share (see :doc:`/howto/redis`).
        create_budget: The same for creates, instead of ``create_rate_limit``
            and ``create_burst``.
        max_connections: Size of the owned session's connection pool.
        max_answer_size: The largest answer accepted, in bytes, counted as
            it arrives and after decompression (16 MiB by default; a
            prediction whose output is inline data may need more). A bigger
            one is a :class:`ResponseTooLargeError`, not retried.

    The options are read-only afterwards: to change one, make another
    client (they may share a borrowed session).

    Raises:
        MissingAPIKeyError: no key given and the environment variable is unset.
        ConfigurationError: an unknown provider, a bad base URL, an unusable
            key or a bad option; ``option`` names it.

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
        "_budget",
        "_create_budget",
        "_hints",
        "_key_env",
        "_provider",
        "_retry",
        "_timeouts",
        "_transport",
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
        create_rate_limit: float | None = None,
        create_burst: int = 1,
        budget: Budget | None = None,
        create_budget: Budget | None = None,
        max_connections: int = 100,
        max_answer_size: int = DEFAULT_MAX_ANSWER_SIZE,
    ) -> None:
        preset = get_provider(provider)
        from_env = None if base_url is not None else os.environ.get(BASE_URL_ENV)
        try:
            if base_url is not None:  # given, even empty: it must be good
                base = normalize_base_url(base_url)
            else:  # an empty variable counts as unset
                base = normalize_base_url(from_env or preset.base_url)
        except ConfigurationError as exc:
            if not from_env:
                raise
            failure = ConfigurationError(
                f"{exc} (from the {BASE_URL_ENV} environment variable)",
                option="base_url",
            )
            raise failure from None
        if session is not None:
            _require("Client", "session", session, aiohttp.ClientSession)
        if timeouts is not None:
            _require("Client", "timeouts", timeouts, Timeouts)
        if retry is not None:
            _require("Client", "retry", retry, RetryPolicy)
        check_positive("Client", "rate_limit", rate_limit, none=True)
        check_at_least("Client", "burst", burst, 1)
        check_positive("Client", "create_rate_limit", create_rate_limit, none=True)
        check_at_least("Client", "create_burst", create_burst, 1)
        for option, given, rate_option, rate in (
            ("budget", budget, "rate_limit", rate_limit),
            ("create_budget", create_budget, "create_rate_limit", create_rate_limit),
        ):
            if given is None:
                continue
            if not isinstance(given, Budget):
                raise ConfigurationError(
                    f"Client: {option} must be a replipoll.Budget "
                    f"(a RateBudget, a RedisBudget), got {type(given).__name__}",
                    option=option,
                )
            if rate is not None:
                raise ConfigurationError(
                    f"Client: pass either {option} or {rate_option}, not both "
                    "(give the budget its rate)",
                    option=option,
                )
        check_at_least("Client", "max_connections", max_connections, 1)
        check_at_least("Client", "max_answer_size", max_answer_size, 1024)
        key = api_key if api_key is not None else os.environ.get(preset.env_var, "")
        if not isinstance(key, str) or not key.strip():
            raise MissingAPIKeyError(preset.env_var)
        key = key.strip()
        if any(ch in key for ch in "\r\n\0") or not key.isprintable():
            raise ConfigurationError(
                "the API key contains unprintable characters", option="api_key"
            )
        self._provider = preset.name
        # Where the key came from, for messages that say what to check.
        self._key_env = "api_key" if api_key is not None else preset.env_var
        self._timeouts = timeouts if timeouts is not None else preset.timeouts
        self._retry = retry if retry is not None else RetryPolicy()
        self._budget: Budget = (
            budget if budget is not None else RateBudget(rate=rate_limit, burst=burst)
        )
        self._create_budget: Budget = (
            create_budget
            if create_budget is not None
            else RateBudget(rate=create_rate_limit, burst=create_burst)
        )
        # The pace hints of the latest answer (read as each request returns).
        self._hints = ServerHints()
        self._transport = Transport.for_api(
            base,
            key,
            user_agent=f"replipoll/{VERSION}",
            session=session,
            max_connections=max_connections,
            max_answer_size=max_answer_size,
        )

    def __repr__(self) -> str:
        # The key is never shown, not even a prefix of it.
        return (
            f"Client(provider={self._provider!r}, base_url={self.base_url!r}, "
            f"api_key=<hidden>)"
        )

    async def __aenter__(self) -> Self:
        self._transport.session()
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
        await self._transport.close()

    # -- read-only options ---------------------------------------------------

    @property
    def provider(self) -> str:
        """The preset's name (``"replicate"``, ``"cometapi"``...)."""
        return self._provider

    @property
    def base_url(self) -> str:
        """The resolved base URL, without a trailing slash."""
        return self._transport.base_url

    @property
    def timeouts(self) -> Timeouts:
        """The per-request timeouts."""
        return self._timeouts

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of :meth:`get`, :meth:`cancel` and :meth:`wait`."""
        return self._retry

    @property
    def budget(self) -> Budget:
        """The request budget of this key; paused by ``Retry-After``."""
        return self._budget

    @property
    def create_budget(self) -> Budget:
        """The budget creates spend (``create_rate_limit``), apart from polling's."""
        return self._create_budget

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._transport.closed

    # -- calls -----------------------------------------------------------------

    async def get(self, prediction_id: str) -> Prediction:
        """Fetch a prediction: ``GET {base_url}/predictions/{id}``, with retries.

        Raises:
            InvalidPredictionIdError: the id is not usable; nothing was sent.
            RequestError: a subclass saying what failed, after retries where
                the failure was worth retrying (``attempts`` says how many).
        """
        request = ApiRequest.for_prediction("GET", prediction_id)
        retry = self._retry
        if retry.timeout is not None:
            attempt = functools.partial(self._attempt, request)
            return await call_with_retries(attempt, retry, what=prediction_id)
        # The first attempt straight away: a call that succeeds pays for no
        # retry machinery (this is the hot path of a single GET).
        try:
            return await self._attempt(request, None)
        except RequestError as exc:
            failed = exc
        return await call_with_retries(
            functools.partial(self._attempt, request),
            retry,
            what=prediction_id,
            failed=failed,
        )

    async def list_predictions(
        self,
        *,
        created_after: datetime | None = None,
        created_before: datetime | None = None,
    ) -> AsyncIterator[Prediction]:
        """Yield the account's predictions, newest first (``GET predictions``).

        Replicate serves the whole account's predictions (API and web), 100
        a page; this follows the pages to the end, each page retried like a
        :meth:`get`. Items are slimmer than a :meth:`get` (``logs`` and
        ``version`` may be missing). The gateways do not document this
        endpoint: expect a :class:`NotFoundError` there.

        Args:
            created_after: Only predictions created at or after this time.
            created_before: Only predictions created before this time.

        Raises:
            RequestError: a subclass saying what failed, after retries.
        """
        next_query: str | None = None
        while True:
            request = list_request(
                created_after=created_after,
                created_before=created_before,
                next_query=next_query,
            )
            page = await call_with_retries(
                functools.partial(self._attempt_page, request),
                self._retry,
                what="the list of predictions",
            )
            for record in page.results:
                yield record
            next_query = page.next_query
            if next_query is None or not page.results:
                return

    async def create(
        self,
        model: str | None = None,
        *,
        version: str | None = None,
        deployment: str | None = None,
        input: Mapping[str, Any],
        webhook: str | None = None,
        webhook_events_filter: Iterable[str] | None = None,
        cancel_after: float | str | None = None,
        wait: bool | float | None = None,
    ) -> Prediction:
        """Start a prediction and return its record as the server answered.

        ``model="owner/name"`` runs the model's latest version
        (``POST models/{owner}/{name}/predictions``; the gateways serve this
        one); ``version=`` (or ``model="owner/name:<version>"``) one version
        (``POST predictions``); ``deployment="owner/name"`` a deployment
        (``POST deployments/{owner}/{name}/predictions``). Give exactly one.

        Creating is not idempotent, so it is retried only where the request
        provably never reached the server: the connection was refused or
        not made, or a 429 (throttled: nothing was created) within the
        retry policy, after its ``Retry-After``. Any other failure after the
        request went out is a :class:`PredictionMayExistError`: the
        prediction may exist, and is never created twice by replipoll.

        Args:
            input: The model's inputs (JSON: files as URLs or ``data:`` URIs).
            webhook: A URL the provider sends the record to as it changes
                (see :func:`verify_webhook`).
            webhook_events_filter: Which changes: some of ``"start"``,
                ``"output"``, ``"logs"``, ``"completed"`` (the provider's
                default: all).
            cancel_after: A deadline kept by the server (``Cancel-After``):
                seconds, or a duration like ``"5m"``. A prediction that has
                not started by then ends ``aborted``, one running ``canceled``.
            wait: Sync mode (``Prefer: wait=N``): the server holds the answer
                up to this many seconds (1-60; ``True`` = 60) until the
                prediction is done. The record may still be running: check
                :attr:`Prediction.is_terminal`. The request's timeouts grow
                by that much.

        Raises:
            ConfigurationError: a bad argument (``option`` names it); nothing
                was sent.
            PredictionMayExistError: the request may have created the
                prediction, but its answer was lost; not retried.
            RequestError: refused by the server (401, 404, 422: nothing was
                created), or throttled or unreachable after the retries.

        Example:
            >>> import asyncio, replipoll
            >>> from replipoll.testing import FakeReplicate
            >>> async def main():
            ...     async with FakeReplicate() as server, replipoll.Client(
            ...         base_url=server.base_url(), api_key=server.api_key
            ...     ) as client:
            ...         made = await client.create(
            ...             "acme/echo", input={"prompt": "hi", "replipoll_duration": 0}
            ...         )
            ...         done = await client.wait(made.id)
            ...     return made.model, str(done.status)
            >>> asyncio.run(main())
            ('acme/echo', 'succeeded')
        """
        request = create_request(
            model,
            version=version,
            deployment=deployment,
            input=input,
            webhook=webhook,
            webhook_events_filter=webhook_events_filter,
            cancel_after=cancel_after,
            wait=wait,
        )
        timeouts = self._timeouts
        prefer = dict(request.headers).get("Prefer")
        if prefer is not None:  # the server holds the answer that long
            held = float(prefer.partition("=")[2]) + 30.0
            timeouts = attrs.evolve(
                timeouts,
                total=None if timeouts.total is None else timeouts.total + held,
                read=None if timeouts.read is None else max(timeouts.read, held),
            )
        return await call_with_retries(
            functools.partial(self._attempt_create, request, timeouts),
            self._retry,
            what=f"the create ({request.path})",
        )

    async def cancel(self, prediction_id: str) -> Prediction:
        """Cancel a prediction: ``POST {base_url}/predictions/{id}/cancel``.

        Replicate answers with the prediction; the gateways do not document
        this endpoint and may answer 404 (:class:`NotFoundError`).
        """
        request = ApiRequest.for_prediction("POST", prediction_id, "cancel")
        return await call_with_retries(
            functools.partial(self._attempt, request), self._retry, what=prediction_id
        )

    async def wait(
        self,
        prediction_id: str,
        *,
        timeout: float | None = DEFAULT_TIMEOUT,
        policy: PollPolicy | None = None,
    ) -> Prediction:
        """Poll one prediction until it is terminal and return the record.

        Polls on ``policy``'s schedule (the same as :class:`PollManager`'s),
        each poll retried like :meth:`get`. To wait for many predictions,
        use a :class:`PollManager`: one shared budget, few requests in flight.

        Args:
            timeout: Seconds the prediction may take to become terminal;
                ``None`` waits for ever.
            policy: The poll schedule; :class:`PollPolicy` by default.

        Raises:
            PollTimeout: not terminal within ``timeout`` seconds; carries the
                last record seen.
            RequestError: polling failed for good (not found, bad key,
                retries exhausted).
        """
        check_positive("Client.wait", "timeout", timeout, none=True)
        request = ApiRequest.for_prediction("GET", prediction_id)
        schedule = policy if policy is not None else PollPolicy()
        attempt = functools.partial(self._attempt, request)
        started = time.monotonic()
        last: Prediction | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    last = await call_with_retries(
                        attempt, self._retry, what=prediction_id
                    )
                    if last.is_terminal:
                        return last
                    await asyncio.sleep(schedule.next_delay(time.monotonic() - started))
        except TimeoutError:
            # Only asyncio.timeout raises a bare TimeoutError here: the
            # transport turns its own timeouts into RequestTimeoutError.
            assert timeout is not None
            failure = PollTimeout(prediction_id, timeout, last)
        raise failure

    def stream(
        self, prediction: Prediction | str, *, last_event_id: str | None = None
    ) -> AsyncGenerator[StreamEvent]:
        """Yield a prediction's server-sent events as it runs, until ``done``.

        Given an id, the prediction is fetched first (like :meth:`get`) to
        learn its ``urls.stream``; given a record, that record's is used.
        Events are ``output`` (a piece of output), ``logs``, ``error`` (the
        prediction failed: yielded, not raised) and ``done`` (the last;
        its data is ``{}`` or says why, e.g. ``{"reason": "canceled"}``).

        A stream that breaks off (Replicate cuts them after 25-35 s; a
        dropped connection, a 5xx, silence past the idle timeout) is opened
        again with the ``Last-Event-ID`` of the last event, after the
        server's ``retry:`` delay or a backoff: no event is lost or
        repeated. At five failed connections in a row without an event,
        the last error is raised. The idle timeout is the client's
        ``timeouts.read``, else ``timeouts.total``; there is no total one.

        The API key goes only to a stream URL of the base URL's origin, or,
        when the base URL is Replicate's, to an ``https`` host under
        ``replicate.com``, ``replicate.delivery`` or ``replicate.net``: any
        other host is asked without it.

        Leaving the ``async for`` early, or cancelling the task, closes the
        connection; wrap the iterator in :func:`contextlib.aclosing` to
        close it at once rather than when the iterator is collected.

        Args:
            prediction: A :class:`Prediction` (no request made for it), or
                an id.
            last_event_id: Resume after this event (the ``id`` of the last
                :class:`StreamEvent` you handled).

        Raises:
            NoStreamError: the prediction has no stream URL (its model does
                not stream, or it was created without stream support).
            RequestError: a subclass: the prediction could not be fetched,
                the stream answered 401, 404 or another status not worth
                retrying, or it failed five times in a row.

        Example:
            >>> import asyncio, replipoll
            >>> from replipoll.testing import FakeReplicate
            >>> async def main():
            ...     async with FakeReplicate() as server:
            ...         pid = server.add_prediction(duration=0.2, output=["He", "llo"])
            ...         async with replipoll.Client(
            ...             base_url=server.base_url(), api_key=server.api_key
            ...         ) as client:
            ...             return [(e.event, e.data) async for e in client.stream(pid)]
            >>> asyncio.run(main())
            [('output', 'He'), ('output', 'llo'), ('done', '{}')]
        """
        retry = self._retry
        return follow_stream(
            prediction,
            fetch=self.get,
            transport=self._transport,
            timeouts=self._timeouts,
            reconnects=Reconnects(
                base_delay=retry.base_delay,
                max_delay=retry.max_delay,
                max_retry_after=retry.max_retry_after,
                retry_statuses=retry.retry_statuses,
            ),
            budget=self._budget,
            pause=functools.partial(self._pause, budget=self._budget, retry=retry),
            last_event_id=last_event_id,
        )

    # -- the way out -----------------------------------------------------------

    async def _attempt(self, request: ApiRequest, within: float | None) -> Prediction:
        """One attempt of :meth:`get`: this client's budget, then the request."""
        budget = self._budget
        if not budget.try_acquire(time.monotonic()):  # no await when a slot is free
            within = await self._wait_for_slot(request, within)
        # (What _exchange does, without one more coroutine on every call.)
        hints = self._hints
        try:
            record = await self._transport.api(
                request, self._timeouts, within=within, hints=hints
            )
        except HTTPStatusError as error:
            self._pause(error, budget, self._retry)
            raise
        if hints.reset is not None:
            self._heed(hints, budget, self._retry)
        return record

    async def _attempt_create(
        self, request: ApiRequest, timeouts: Timeouts, within: float | None
    ) -> Prediction:
        """One attempt of :meth:`create`; what may have arrived is never retried.

        Raises:
            PredictionMayExistError: the request went out and failed after.
            RequestError: the request provably did not create anything
                (retried where the policy says so: refused, 429).
        """
        budget = self._create_budget
        if not budget.try_acquire(time.monotonic()):
            within = await self._wait_for_slot(request, within, budget)
        sent_at = time.time()
        try:
            return await self._transport.api(request, timeouts, within=within)
        except RateLimitedError as error:
            self._throttled_create(error)
            raise
        except (TransportError, ServerError, DecodeError, ResponseTooLargeError) as exc:
            if (isinstance(exc, TransportError) and not exc.sent) or isinstance(
                exc, GatewayError | BaseURLError
            ):
                raise  # never sent; or the gateway's own refusal, a wrong base URL
            failure = PredictionMayExistError(exc, sent_at=sent_at)
        raise failure

    def _throttled_create(self, error: RateLimitedError) -> None:
        """Pause creates for a 429's ``Retry-After``; heed a reduced limit it states."""
        budget = self._create_budget
        after = error.retry_after
        if after is not None and after <= self._retry.max_retry_after:
            budget.pause_until(time.monotonic() + after)
        limit = create_limit(error.message)
        if limit is not None and (budget.rate is None or limit[0] < budget.rate):
            budget.rate, budget.burst = limit
            logger.warning(
                "the provider limits this key to %.3g creates a second (burst %d); "
                "creates are paced to that",
                *limit,
            )

    async def _wait_for_slot(
        self,
        request: ApiRequest,
        within: float | None,
        budget: Budget | None = None,
    ) -> float | None:
        """Wait for a slot of this client's budget; return what is left of ``within``.

        Raises:
            RequestTimeoutError: ``within`` passed first.
        """
        if budget is None:
            budget = self._budget
        if within is None:
            await budget.acquire()
            return None
        started = time.monotonic()
        try:
            async with asyncio.timeout(within):
                await budget.acquire()
        except TimeoutError:
            failure = RequestTimeoutError(
                "the retry policy's timeout passed while waiting for the rate budget",
                method=request.method,
                url=f"{self.base_url}/{request.path}",
            )
            raise failure from None
        return within - (time.monotonic() - started)

    async def _attempt_page(
        self, request: ApiRequest, within: float | None
    ) -> PredictionPage:
        """One attempt of a list page: this client's budget, then the request."""
        if not self._budget.try_acquire(time.monotonic()):
            within = await self._wait_for_slot(request, within)
        return await self._exchange_page(request, self._budget, within, self._retry)

    async def _exchange(
        self,
        request: ApiRequest,
        budget: Budget,
        within: float | None,
        retry: RetryPolicy,
        hints: ServerHints | None = None,
        seen: tuple[int, Prediction] | None = None,
    ) -> tuple[Prediction, int]:
        """Send one request now (the caller took its budget slot); no retries.

        The interface the :class:`~replipoll.PollManager` polls through. It
        returns the record and its body's hash; an answer whose hash is the
        one in ``seen`` returns ``seen``'s record, not decoded again (see
        :meth:`Transport.api_since <replipoll._transport.Transport.api_since>`). A
        ``Retry-After`` on a 429 or a 503 that ``retry`` honours pauses
        ``budget`` and this client's own (the limit is per key); one it
        refuses pauses nothing (that request fails, the others go on). The
        rate-limit headers of a success slow both budgets down to what the
        server says is left (see :meth:`RateBudget.heed`); ``hints`` (the
        caller's, else this client's) holds them, and a suggested poll
        interval, when this returns.

        Raises:
            RequestError: a subclass saying what failed; ``attempts`` is 1.
        """
        if hints is None:
            hints = self._hints
        try:
            answer = await self._transport.api_since(
                request, self._timeouts, seen, within=within, hints=hints
            )
        except HTTPStatusError as error:
            self._pause(error, budget, retry)
            raise
        if hints.reset is not None:
            self._heed(hints, budget, retry)
        return answer

    async def _exchange_page(
        self,
        request: ApiRequest,
        budget: Budget,
        within: float | None,
        retry: RetryPolicy,
        hints: ServerHints | None = None,
    ) -> PredictionPage:
        """:meth:`_exchange` for a page of ``GET predictions``.

        Raises:
            RequestError: a subclass saying what failed; ``attempts`` is 1.
        """
        if hints is None:
            hints = self._hints
        try:
            page = await self._transport.api_page(
                request, self._timeouts, within=within, hints=hints
            )
        except HTTPStatusError as error:
            self._pause(error, budget, retry)
            raise
        if hints.reset is not None:
            self._heed(hints, budget, retry)
        return page

    def _heed(self, hints: ServerHints, budget: Budget, retry: RetryPolicy) -> None:
        """Slow ``budget`` and this client's to the server's rate-limit headers."""
        remaining, reset = hints.remaining, hints.reset
        if remaining is None or reset is None:
            return
        if remaining <= 0 and reset > retry.max_retry_after:
            return  # a pause longer than the policy accepts: the 429s will say
        now = time.monotonic()
        budget.heed(remaining, reset, now)
        if budget is not self._budget:
            self._budget.heed(remaining, reset, now)

    def _pause(
        self, error: HTTPStatusError, budget: Budget, retry: RetryPolicy
    ) -> None:
        """Pause ``budget`` and this client's for a ``Retry-After`` worth it."""
        after = error.retry_after
        if (
            after is not None
            and error.status in _PAUSING
            and after <= retry.max_retry_after
        ):
            until = time.monotonic() + after
            budget.pause_until(until)
            if budget is not self._budget:
                self._budget.pause_until(until)

    @property
    def _redact(self) -> Redactor:
        """Cuts this client's key out of server text (for the manager's logs)."""
        return self._transport.redact
