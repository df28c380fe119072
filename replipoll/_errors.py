"""The exceptions replipoll raises: one tree under :class:`ReplipollError`.

::

    ReplipollError
    ├── ConfigurationError (ValueError)       a bad provider, URL or option; .option
    │   ├── MissingAPIKeyError                no key given and its env var is unset
    │   └── BaseURLError (+ DecodeError)      the base URL serves something else
    ├── InvalidPredictionIdError (ValueError) rejected before any request is sent
    ├── ClientClosedError (RuntimeError)      the client was closed; no request sent
    ├── ManagerClosedError                    the PollManager closed first
    ├── BatchStoppedError                     the batch fails for one reason
    ├── RequestError                          a request failed; .attempts, .request_id
    │   ├── HTTPStatusError                   a non-2xx answer; .retry_after
    │   │   ├── BadRequestError               400, 408, 422, other 4xx; 3xx
    │   │   ├── AuthenticationError           401, 403
    │   │   ├── NotFoundError                 404
    │   │   ├── RateLimitedError              429
    │   │   └── ServerError                   5xx, Cloudflare's 52x
    │   ├── DecodeError                       a 2xx body that is not a prediction
    │   │   ├── GatewayError                  ... but the gateway's own error
    │   │   ├── MismatchedIdError             ... but another prediction's record
    │   │   └── BaseURLError                  ... but an HTML page: see above
    │   ├── ResponseTooLargeError             an answer over the size limit; .limit
    │   ├── PredictionMayExistError           a create failed after it may have arrived
    │   └── TransportError                    no usable answer at all
    │       ├── ConnectError                  refused, reset, dropped, cut off
    │       └── RequestTimeoutError           the per-request timeout passed
    ├── NoStreamError                         a prediction has no stream to follow
    ├── PollTimeout                           a prediction's deadline passed
    ├── WebhookVerificationError (ValueError) a webhook delivery refused; .reason
    └── DownloadError                         an output file could not be saved

Every :class:`RequestError` carries the HTTP method, the URL (which never holds
the API key), the status (``None`` when there was no answer), the request id the
provider assigned (from a header or from a CometAPI message), the provider's
own message and how many attempts were made.

Every exception pickles and unpickles with all its attributes (they cross
process boundaries: multiprocessing, result caches), and shows in tracebacks
as ``replipoll.NotFoundError``, not by its private module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._models import Prediction
    from ._results import Diagnosis

__all__ = [
    "AuthenticationError",
    "BadRequestError",
    "BaseURLError",
    "BatchStoppedError",
    "ClientClosedError",
    "ConfigurationError",
    "ConnectError",
    "DecodeError",
    "DownloadError",
    "GatewayError",
    "HTTPStatusError",
    "InvalidPredictionIdError",
    "ManagerClosedError",
    "MismatchedIdError",
    "MissingAPIKeyError",
    "NoStreamError",
    "NotFoundError",
    "PollTimeout",
    "PredictionMayExistError",
    "RateLimitedError",
    "ReplipollError",
    "RequestError",
    "RequestTimeoutError",
    "ResponseTooLargeError",
    "ServerError",
    "TransportError",
    "WebhookVerificationError",
]


class ReplipollError(Exception):
    """Root of every exception replipoll raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # The constructors take keyword-only state and differ by class;
        # rebuilding from args plus __dict__ restores every attribute of
        # every subclass without calling its __init__.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(
    cls: type[ReplipollError], args: tuple[object, ...], state: dict[str, object]
) -> ReplipollError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigurationError(ReplipollError, ValueError):
    """A client, manager or policy was given something unusable.

    Attributes:
        option: The name of the offending option (``"burst"``,
            ``"base_url"``...), or ``None`` when no single option is to blame.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class MissingAPIKeyError(ConfigurationError):
    """No API key was passed and the provider's environment variable is unset.

    Attributes:
        env_var: The environment variable that was consulted.
    """

    def __init__(self, env_var: str) -> None:
        super().__init__(
            f"no API key: pass api_key=... or set the {env_var} environment variable",
            option="api_key",
        )
        self.env_var = env_var


class InvalidPredictionIdError(ReplipollError, ValueError):
    """A prediction id was rejected before any request was sent.

    Attributes:
        prediction_id: The offending id (shortened in the message if huge).
        reason: Why it was rejected.
    """

    def __init__(self, prediction_id: object, reason: str) -> None:
        self.prediction_id = prediction_id
        self.reason = reason
        shown = repr(prediction_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid prediction id {shown}: {reason}")


class ClientClosedError(ReplipollError, RuntimeError):
    """The :class:`~replipoll.Client` was closed; polls still running end with this."""

    def __init__(self) -> None:
        super().__init__("the client is closed")


class RequestError(ReplipollError):
    """A request to the API failed.

    Attributes:
        method: The HTTP method, e.g. ``"GET"``.
        url: The URL requested; it never contains the API key.
        status: The HTTP status, or ``None`` if no answer arrived.
        request_id: The provider's request id, if any was found.
        message: The provider's own message (or a description of the failure).
        attempts: How many attempts were made before this error was raised.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "GET",
        url: str = "",
        status: int | None = None,
        request_id: str | None = None,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.status = status
        self.request_id = request_id
        self.attempts = attempts

    def __str__(self) -> str:
        details = []
        if self.url:
            details.append(f"{self.method} {self.url}")
        if self.status is not None:
            details.append(f"status {self.status}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if self.attempts > 1:
            details.append(f"after {self.attempts} attempts")
        if not details:
            return self.message
        return f"{self.message} ({', '.join(details)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
            f"request_id={self.request_id!r}, attempts={self.attempts!r})"
        )


class HTTPStatusError(RequestError):
    """The API answered with a status that is not a success.

    Attributes:
        retry_after: Seconds the provider asked to wait before trying again
            (a ``Retry-After`` or ``retry-after-ms`` header, or a
            ``retry_after`` in the body), or ``None`` if it asked nothing.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, **kw: object
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class BadRequestError(HTTPStatusError):
    """400, 422 and other 4xx answers: the request itself is wrong; not retried.

    (408, Request Timeout, is retried.)

    Also a 3xx: redirects are never followed (they would take the request,
    and the key, to a path nobody configured), so a gateway that redirects
    usually means the base URL is wrong.
    """


class AuthenticationError(HTTPStatusError):
    """401 or 403: the API key is missing, wrong or lacks access; not retried."""


class NotFoundError(HTTPStatusError):
    """404: no such prediction (or a wrong base URL); not retried."""


class RateLimitedError(HTTPStatusError):
    """429: the key's rate limit was hit; its ``retry_after`` pauses every request."""


class ServerError(HTTPStatusError):
    """5xx (and Cloudflare's 520-527, 529): the provider or a gateway failed.

    A 503 with a ``Retry-After`` pauses every request, like a 429.
    """


class DecodeError(RequestError):
    """A successful answer whose body is not a valid prediction.

    Attributes:
        field: Dotted path of the field that failed (``""`` for the whole body).
        transient: True when the body was not JSON at all (a truncated answer,
            an HTML page from a proxy); such answers are retried.
    """

    def __init__(
        self, message: str, *, field: str = "", transient: bool = False, **kw: object
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.field = field
        self.transient = transient


class GatewayError(DecodeError):
    """A 2xx answer that is a gateway's own error instead of a prediction.

    Some gateways answer ``200 OK`` with ``{"success": false, "message": ...}``
    or ``{"error": {"message": ...}}``; the message and request id are the
    gateway's. Not retried.
    """


class MismatchedIdError(DecodeError):
    """A prediction came back, but not the one asked for.

    A proxy that mixes answers up; the record is not filed under the wrong
    id. Retried.

    Attributes:
        expected: The id that was asked for.
        received: The id of the record that came back.
    """

    def __init__(
        self, message: str, *, expected: str, received: str, **kw: object
    ) -> None:
        super().__init__(message, transient=True, **kw)  # type: ignore[arg-type]
        self.expected = expected
        self.received = received


class BaseURLError(DecodeError, ConfigurationError):
    """The base URL answered ``2xx`` with an HTML page, not the API.

    Usually a base URL missing its ``/v1`` (``/replicate/v1`` on gateways),
    or a proxy's login page. Every request would get the same: not retried,
    and a :class:`~replipoll.PollManager` says it once in its log.
    """

    def __init__(self, message: str, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.option = "base_url"


class ResponseTooLargeError(RequestError):
    """An answer was larger than the client accepts; not retried.

    Counted while the body streams in, after decompression, so a huge or
    endless body, or a small one that unpacks to gigabytes, is cut off at
    the limit.

    Attributes:
        limit: The most bytes accepted (``Client(max_answer_size=...)``, or
            ``save_outputs(max_size=...)`` for output files).
    """

    def __init__(self, message: str, *, limit: int, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.limit = limit


class TransportError(RequestError):
    """No usable answer: the connection failed or the request timed out.

    Attributes:
        sent: ``False`` when the request provably never left: the
            connection was refused or not made within the connect timeout.
            ``True`` when it may have reached the server (a reset, a read
            timeout): what :meth:`Client.create <replipoll.Client.create>`
            must not retry blindly.
    """

    sent: bool = True


class ConnectError(TransportError):
    """The connection was refused, reset or dropped."""


class RequestTimeoutError(TransportError):
    """One request took longer than its per-request timeout."""


class PredictionMayExistError(RequestError):
    """A create failed after the request may have reached the server.

    Creating is not idempotent: the server may have created the prediction
    and lost only its answer (a reset, a timeout while reading, a 5xx or an
    unreadable 2xx). So it is not retried: a retry could start the same
    work twice, and bill it twice. Look for the prediction (its webhook, or
    on Replicate the predictions created since :attr:`sent_at`) before
    creating it again.

    Attributes:
        sent_at: Unix time when the request went out.
        reason: The failure (a :class:`RequestError`), with its status and
            request id, which this error repeats.
    """

    def __init__(
        self, reason: RequestError, *, sent_at: float, attempts: int = 1
    ) -> None:
        super().__init__(
            f"the create failed after the request may have reached the server "
            f"({reason.message}); the prediction may exist: look for it before "
            f"creating it again",
            method=reason.method,
            url=reason.url,
            status=reason.status,
            request_id=reason.request_id,
            attempts=attempts,
        )
        self.reason = reason
        self.sent_at = sent_at


class ManagerClosedError(ReplipollError):
    """The :class:`~replipoll.PollManager` was closed before this id finished.

    What every unfinished id's future ends with when the manager closes
    (its ``async with`` block exits): an error of its own, not a
    cancellation, so code awaiting it knows nothing cancelled it.
    Its :attr:`prediction_id` is its one argument (``args[0]``).
    """

    # A manager closed with a million ids running makes a million of these:
    # the id is the one argument and the message is written when asked for,
    # so each costs an exception and a 1-tuple (no __dict__, no message).

    def __init__(self, prediction_id: str) -> None:
        super().__init__(prediction_id)

    @property
    def prediction_id(self) -> str:
        """The id that was still being polled (also ``args[0]``)."""
        pid: str = self.args[0]
        return pid

    def __str__(self) -> str:
        return f"the PollManager closed before prediction {self.args[0]} finished"


class BatchStoppedError(ReplipollError):
    """A :class:`~replipoll.PollManager` stopped a batch failing for one reason.

    With ``PollManager(stop_on_systemic=True)``, when the first answers of a
    batch show that every request fails the same way (a refused key, a wrong
    base URL, an unreachable host), the ids not finished end with this: most
    were never sent, so polling them again after the fix costs nothing.

    Attributes:
        prediction_id: The id that was not finished.
        diagnosis: The :class:`~replipoll.Diagnosis`: the cause and the fix.
    """

    def __init__(self, prediction_id: str, diagnosis: Diagnosis) -> None:
        super().__init__(f"not polled: {diagnosis.message}")
        self.prediction_id = prediction_id
        self.diagnosis = diagnosis


class NoStreamError(ReplipollError):
    """A prediction has no stream to follow; no stream was opened.

    Its record has no usable ``urls.stream``: its model does not stream
    output, or the prediction was created without asking for a stream
    (``"stream": true`` at create, where the API takes it). Create it with
    stream support, or poll it instead (:meth:`Client.wait
    <replipoll.Client.wait>`).

    Attributes:
        prediction_id: The prediction.
        url: The unusable ``urls.stream`` value, or ``None`` if it had none.
    """

    def __init__(self, prediction_id: str, url: str | None) -> None:
        self.prediction_id = prediction_id
        self.url = url
        if url is None:
            why = "has no stream URL (urls.stream)"
        else:
            shown = url if len(url) <= 80 else url[:77] + "..."
            why = f"has a stream URL that is not an http(s) URL: {shown!r}"
        super().__init__(
            f"prediction {prediction_id} {why}: its model does not stream "
            f"output, or it was created without stream support; create it "
            f"with stream support, or poll it instead (Client.wait)"
        )


class PollTimeout(ReplipollError):
    """A prediction did not reach a terminal status before its deadline.

    Attributes:
        prediction_id: The prediction that timed out.
        timeout: The deadline, in seconds from when polling started.
        last: The last record seen for it, or ``None`` if none arrived (or
            the :class:`~replipoll.PollManager` kept none: ``keep_last``).
        status: The last status seen, as a string (``"never seen"`` if
            none), whether or not the record was kept.
    """

    def __init__(
        self,
        prediction_id: str,
        timeout: float,
        last: Prediction | None,
        *,
        status: str | None = None,
    ) -> None:
        self.prediction_id = prediction_id
        self.timeout = timeout
        self.last = last
        if last is not None:
            status = str(last.status)
        self.status = status if status is not None else "never seen"
        super().__init__(
            f"prediction {prediction_id} not terminal after {timeout:g}s "
            f"(last status: {self.status})"
        )


class DownloadError(ReplipollError):
    """An output file could not be downloaded or saved.

    Attributes:
        url: The output URL.
        status: The HTTP status, if an answer arrived.
        reason: What went wrong.
    """

    def __init__(self, url: str, reason: str, *, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.reason = reason
        at = f" ({status})" if status is not None else ""
        super().__init__(f"could not download {url}{at}: {reason}")


class WebhookVerificationError(ReplipollError, ValueError):
    """A webhook delivery was refused: not signed with your secret, too old...

    Raised by :func:`~replipoll.verify_webhook`; the message says what was
    wrong, never the secret. A web app answers ``401`` (``400`` for
    ``"bad-body"``), except for ``"replay"``: see :doc:`/howto/webhooks`.

    Attributes:
        reason: ``"missing-header"``, ``"bad-header"``, ``"stale"``,
            ``"future"``, ``"bad-signature"``, ``"replay"`` or
            ``"bad-body"``.
        webhook_id: The delivery's ``webhook-id``, or ``None`` if it had
            none (or it was refused before its id was read).
    """

    def __init__(
        self, detail: str, *, reason: str, webhook_id: str | None = None
    ) -> None:
        super().__init__(f"webhook refused: {detail} ({reason})")
        self.reason = reason
        self.webhook_id = webhook_id
