"""The pure core: build requests, decipher answers, map statuses to errors.

Nothing here does I/O or reads a clock; :mod:`replipoll._transport` is the
thin aiohttp layer around it. Every function takes plain values (status,
headers as a mapping, body bytes) so it can be tested, and reused, without a
network.

An API request is an :class:`ApiRequest`: a method and a path *relative to
the base URL*, built only from a validated prediction id. The transport joins
it to the one base URL it was configured with, the only place the API key is
sent; nothing here can name another host.
"""

from __future__ import annotations

import json
import json.scanner
import math
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Final, NamedTuple
from urllib.parse import quote, unquote, urlsplit

import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from . import _speedups
from ._decode import FieldError, decode_error
from ._errors import (
    AuthenticationError,
    BadRequestError,
    BaseURLError,
    ConfigurationError,
    DecodeError,
    GatewayError,
    HTTPStatusError,
    InvalidPredictionIdError,
    MismatchedIdError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from ._models import Prediction, prediction_hook

__all__ = [
    "MAX_ID_LENGTH",
    "NOT_JSON",
    "ApiRequest",
    "Redactor",
    "Said",
    "decode_prediction",
    "error_for_response",
    "header",
    "normalize_base_url",
    "parse_json",
    "parse_json_yielding",
    "parse_retry_after",
    "prediction_url",
    "provider_message",
    "request_id_from",
    "retry_after_from",
    "validate_prediction_id",
]

#: Replicate ids are 26 characters; gateways use UUIDs and other forms.
MAX_ID_LENGTH: Final = 256

#: Headers that carry a request id, most specific first. CometAPI is built on
#: one-api, which answers with X-Oneapi-Request-Id.
REQUEST_ID_HEADERS: Final = (
    "X-Request-Id",
    "X-Oneapi-Request-Id",
    "Request-Id",
    "X-Replicate-Request-Id",
    "X-Amzn-Requestid",
    "X-Amz-Cf-Id",
    "Cf-Ray",
)

_MESSAGE_REQUEST_ID: Final = re.compile(r"\(request id: ?([^)\s]+)\)", re.IGNORECASE)
_RESETS_IN: Final = re.compile(r"resets in ~?\s*(\d+(?:\.\d+)?)\s*s", re.IGNORECASE)
_HTML_TITLE: Final = re.compile(
    rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL
)
_MAX_MESSAGE: Final = 300


def validate_prediction_id(prediction_id: object) -> str:
    """Return ``prediction_id`` if it is safe to put in a URL path, else raise.

    Rejected: non-strings, empty or over-long ids, ids with whitespace, control
    or other unprintable characters, ``/``, ``\\``, ``?``, ``#``, and ``.`` or
    ``..``. Whatever passes is still percent-escaped when the URL is built.

    Raises:
        InvalidPredictionIdError: nothing was sent.
    """
    if not isinstance(prediction_id, str):
        raise InvalidPredictionIdError(
            prediction_id, f"expected a string, got {type(prediction_id).__name__}"
        )
    if not prediction_id:
        raise InvalidPredictionIdError(prediction_id, "empty")
    if len(prediction_id) > MAX_ID_LENGTH:
        raise InvalidPredictionIdError(
            prediction_id, f"longer than {MAX_ID_LENGTH} characters"
        )
    if prediction_id in {".", ".."}:
        raise InvalidPredictionIdError(prediction_id, "a path segment, not an id")
    if (
        prediction_id.isascii()
        and prediction_id.replace("-", "").replace("_", "").isalnum()
    ):
        return prediction_id  # the common case, checked cheaply
    for char in prediction_id:
        if char in "/\\?#":
            raise InvalidPredictionIdError(prediction_id, f"contains {char!r}")
        if char.isspace():
            raise InvalidPredictionIdError(prediction_id, "contains whitespace")
        if unicodedata.category(char)[0] in "CZ":
            raise InvalidPredictionIdError(
                prediction_id, f"contains the unprintable character {char!r}"
            )
    return prediction_id


def normalize_base_url(base_url: str) -> str:
    """Check a base URL and strip its trailing slash.

    Raises:
        ConfigurationError: not an absolute ``http(s)`` URL with a host, or it
            carries a query, a fragment (even an empty ``?`` or ``#``, which
            would swallow the path appended to it), credentials, whitespace,
            control characters, backslashes or ``.``/``..`` path segments
            (which would move requests to another path).
    """
    if not isinstance(base_url, str) or not base_url.strip():
        raise ConfigurationError(
            "base_url must be a non-empty string", option="base_url"
        )
    text = base_url.strip()
    for char in text:
        if char.isspace() or unicodedata.category(char)[0] == "C":
            # urlsplit drops tabs and newlines silently; aiohttp may not.
            raise ConfigurationError(
                "base_url must not contain whitespace or control characters",
                option="base_url",
            )
    if "?" in text or "#" in text:
        raise ConfigurationError(
            "base_url must not have a query string or fragment", option="base_url"
        )
    if "\\" in text:
        raise ConfigurationError(
            "base_url must not contain backslashes", option="base_url"
        )
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigurationError(
            f"base_url is not a valid URL: {exc}", option="base_url"
        ) from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ConfigurationError(
            "base_url must be an absolute http:// or https:// URL, "
            "e.g. https://api.replicate.com/v1",
            option="base_url",
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            "base_url must not contain credentials; pass the key as api_key",
            option="base_url",
        )
    if {".", ".."} & set(unquote(parts.path).split("/")):
        raise ConfigurationError(
            "base_url must not contain '.' or '..' path segments", option="base_url"
        )
    return text.rstrip("/")


def prediction_url(base_url: str, prediction_id: str, action: str = "") -> str:
    """Build ``{base}/predictions/{id}[/{action}]`` with the id path-escaped."""
    url = f"{base_url}/predictions/{quote(prediction_id, safe='')}"
    return f"{url}/{action}" if action else url


#: What may follow ``predictions/{id}/``: the documented actions only.
_ACTIONS: Final = frozenset({"", "cancel"})


class ApiRequest(NamedTuple):
    """One API request: a method and a path below the base URL.

    Build it with :meth:`for_prediction`, which validates the id; the
    transport joins ``path`` to its base URL and adds the key.
    """

    method: str
    #: Relative to the base URL, without a leading slash.
    path: str
    #: The prediction asked about: the answer must be its record (``""``
    #: for a request that names none: a create, a page of the list).
    prediction_id: str
    #: The JSON body of a POST that carries one (a create), else ``None``.
    body: bytes | None = None
    #: Headers of this request only (``Content-Type``, ``Prefer``...).
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def for_prediction(
        cls, method: str, prediction_id: object, action: str = ""
    ) -> ApiRequest:
        """``GET predictions/{id}``, ``POST predictions/{id}/cancel``...

        Raises:
            InvalidPredictionIdError: the id is unusable; nothing is built.
        """
        if action not in _ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        pid = validate_prediction_id(prediction_id)
        if pid.isascii() and pid.replace("-", "").replace("_", "").isalnum():
            path = f"predictions/{pid}"  # nothing to escape (the usual id)
        else:
            path = f"predictions/{quote(pid, safe='')}"
        return cls(method, f"{path}/{action}" if action else path, pid)


class Redactor:
    """Cuts one secret out of text that came from a server.

    Applied to every string taken from an answer *before* it is shortened,
    so a cut can never leave a fragment of the secret behind. A secret too
    short to be a real key (under 8 characters) is left alone: replacing it
    would mangle ordinary words instead.

    Example:
        >>> redact = Redactor("r8_secret-key")
        >>> redact("bad key r8_secret-key!")
        'bad key <redacted>!'
    """

    __slots__ = ("_secret", "_secret_bytes")

    def __init__(self, secret: str | None) -> None:
        self._secret = secret if secret is not None and len(secret) >= 8 else None
        self._secret_bytes = self._secret.encode() if self._secret else None

    def __repr__(self) -> str:
        return "Redactor(<hidden>)"

    def __call__(self, text: str) -> str:
        secret = self._secret
        if secret is None or secret not in text:
            return text
        return text.replace(secret, "<redacted>")

    def scrub(self, body: bytes) -> bytes:
        """``body`` with the secret cut out, before anything reads it.

        A server has no business sending an API key back; cutting it out
        of the raw answer keeps it out of the records decoded from it too
        (their reprs, ``to_json()``, a results file). One fast scan when
        the key is not there.
        """
        secret = self._secret_bytes
        if secret is None or secret not in body:
            return body
        return body.replace(secret, b"<redacted>")


_NO_REDACTION: Final = Redactor(None)


_DELTA_SECONDS: Final = re.compile(r"\d+(?:\.\d*)?")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` if unusable.

    Accepts delta-seconds (fractions too, as some gateways send them) and an
    HTTP-date in any of RFC 9110's three forms (IMF-fixdate, RFC 850,
    asctime; a date without a zone is GMT, as HTTP dates are). A date in the
    past means "now" (``0.0``); anything else (a negative number, words,
    ``NaN``) gives ``None``; a number too large for a float gives ``inf``, so
    that it exceeds any ``max_retry_after``. Never raises.

    Args:
        value: The header value.
        now: The current wall-clock time as a Unix timestamp.

    Example:
        >>> parse_retry_after("120", now=0.0), parse_retry_after("soon", now=0.0)
        (120.0, None)
        >>> parse_retry_after("Thu, 01 Jan 1970 00:02:00 GMT", now=60.0)
        60.0
        >>> parse_retry_after("Thu Jan  1 00:02:00 1970", now=60.0)
        60.0
    """
    if value is None:
        return None
    text = value.strip()
    if not text or len(text) > 1000:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        return float(text)  # "9" * 400 is inf: more than anyone waits
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        return max(0.0, when.timestamp() - now)
    except (OverflowError, OSError, ValueError):  # pragma: no cover - year 9999
        return None


def retry_after_from(
    headers: Mapping[str, str], data: Any, message: str, now: float
) -> float | None:
    """Seconds an error answer asks to wait, from wherever it says so.

    In order: ``Retry-After`` (seconds or an HTTP-date), ``retry-after-ms``
    (milliseconds, sent by some stacks), a ``retry_after`` number in a JSON
    body, and Replicate's "resets in ~30s" in the message. ``None`` if none
    is usable. Never raises.
    """
    seconds = parse_retry_after(header(headers, "Retry-After"), now)
    if seconds is not None:
        return seconds
    millis = parse_retry_after(header(headers, "Retry-After-Ms"), now)
    if millis is not None:
        return millis / 1000.0
    if isinstance(data, dict):
        value = data.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # a 400-digit integer
                return math.inf
            if number >= 0:  # (NaN is not)
                return number
    match = _RESETS_IN.search(message)
    return float(match.group(1)) if match else None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, in whatever case either side spelled it.

    aiohttp's headers ignore case already; a plain ``dict`` (a test's, or
    another HTTP library's) does not.
    """
    value = headers.get(name)
    if value is not None or isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return value
    wanted = name.lower()
    for key, found in headers.items():
        if key.lower() == wanted:
            return found
    return None


def request_id_from(
    headers: Mapping[str, str],
    message: str = "",
    redact: Redactor = _NO_REDACTION,
) -> str | None:
    """Find the provider's request id in the headers, else in a message.

    ``message`` should be redacted already; a header's value is redacted
    here, before it is cut to 200 characters.
    """
    for name in REQUEST_ID_HEADERS:
        value = header(headers, name)
        if value:
            return redact(value)[:200]
    match = _MESSAGE_REQUEST_ID.search(message)
    return match.group(1) if match else None


#: What :func:`parse_json` returns for a body that is not JSON.
NOT_JSON: Final = object()
#: A body not parsed yet.
_UNPARSED: Final = object()
#: Error bodies are read for their message up to this size (a real error
#: body is a few hundred bytes; a bigger one is shown as text).
_MAX_ERROR_JSON: Final = 64 * 1024


def parse_json(body: bytes) -> Any:
    """``json.loads``, with :data:`NOT_JSON` for anything that is not JSON.

    With the ``speed`` extra, msgspec parses it, to the same result (see
    :mod:`replipoll._speedups`).
    """
    try:
        return _speedups.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON


class _Stopped(Exception):
    """:func:`parse_json_yielding` was asked to stop."""


def parse_json_yielding(body: bytes, stop: Callable[[], bool]) -> Any:
    """:func:`parse_json` for big bodies, run in a worker thread (stdlib only).

    ``json.loads`` holds the GIL for the whole body: a 16 MiB array of
    numbers takes half a second, during which the event loop is frozen,
    from whatever thread it runs. This parser is json's pure-Python scanner
    (its C string scanner still reads each string): slower, but it runs
    Python code between tokens, so the interpreter hands the event loop its
    turn every few milliseconds. It checks ``stop()`` at each string and
    number and gives up (:data:`NOT_JSON` is *not* returned then: it raises
    ``RuntimeError``) when asked, e.g. once its request's deadline passed.
    """

    def checked(parse: Callable[..., Any]) -> Callable[..., Any]:
        def parse_checked(*args: Any) -> Any:
            if stop():
                raise _Stopped
            return parse(*args)

        return parse_checked

    decoder = json.JSONDecoder()
    decoder.parse_string = checked(decoder.parse_string)  # type: ignore[attr-defined]
    decoder.parse_int = checked(decoder.parse_int)
    decoder.parse_float = checked(decoder.parse_float)
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    try:
        text = body.decode("utf-8")
        return decoder.decode(text)
    except _Stopped:
        raise RuntimeError("stopped") from None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return NOT_JSON


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _is_html(body: bytes) -> bool:
    head = body[:2048].lstrip().lower()
    return head.startswith((b"<!doctype", b"<html")) or b"<body" in head


@attrs.frozen
class Said:
    """What an answer's body says: the provider's message, its JSON, its request id.

    ``message`` is redacted, then shortened; ``request_id`` is what a
    CometAPI-style ``(request id: ...)`` in the whole message names.
    """

    message: str
    data: Any
    request_id: str | None


def provider_message(
    status: int,
    body: bytes,
    reason: str = "",
    redact: Redactor = _NO_REDACTION,
    data: Any = NOT_JSON,
) -> Said:
    """The provider's own message from an error body, and the parsed JSON.

    Understands Replicate's problem+json (``detail``, then ``title``),
    CometAPI's OpenAI-style ``{"error": {"message": ...}}``, gateways'
    ``{"success": false, "message": ...}``, plain strings and HTML pages
    (their ``<title>``). The text is redacted before it is shortened, so no
    part of the key survives the cut.

    Args:
        data: The body parsed already, if it was.
    """

    def said(text: str, parsed: Any) -> Said:
        clean = redact(text)
        match = _MESSAGE_REQUEST_ID.search(clean)
        return Said(_shorten(clean), parsed, match.group(1) if match else None)

    if data is NOT_JSON and body and len(body) <= _MAX_ERROR_JSON:
        data = parse_json(body)
    parsed = None if data is NOT_JSON else data
    if isinstance(data, dict):
        text = _message_in(data)
        if text is not None:
            return said(text, data)
    elif isinstance(data, str) and data:
        return said(data, data)
    if _is_html(body):
        title = _HTML_TITLE.search(body[:8192])
        text = title.group(1).decode("utf-8", "replace").strip() if title else ""
        return said(f"HTML page: {text}" if text else "HTML error page", parsed)
    if body.strip():
        # A secret may straddle any cut: redact a span longer than any key
        # could reach past the message's end, then shorten.
        return said(body[: _MAX_MESSAGE * 4].decode("utf-8", "replace"), parsed)
    return said((reason or f"HTTP {status}") + " (empty body)", parsed)


def _message_in(data: dict[str, Any]) -> str | None:
    error = data.get("error")
    if isinstance(error, dict):
        for key in ("message", "detail", "msg"):
            text = error.get(key)
            if isinstance(text, str) and text:
                return text
    for key in ("detail", "title", "message", "msg", "error"):
        text = data.get(key)
        if isinstance(text, str) and text:
            return text
    return None


def _gateway_error(data: dict[str, Any]) -> str | None:
    """The message of a gateway's error sent with a 2xx status, else ``None``."""
    if "id" in data and "status" in data:
        return None  # a prediction, perhaps a failed one: not an envelope
    failed = data.get("success") is False or data.get("ok") is False
    if failed or "error" in data or "detail" in data:
        message = _message_in(data)
        if message is not None:
            return message
        if failed or isinstance(data.get("error"), dict):
            return json.dumps(data, ensure_ascii=False)[: _MAX_MESSAGE * 4]
    return None


_STATUS_ERRORS: Final[Mapping[int, type[HTTPStatusError]]] = {
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    429: RateLimitedError,
}


def error_for_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float,
    method: str = "GET",
    url: str = "",
    reason: str = "",
    redact: Redactor = _NO_REDACTION,
) -> HTTPStatusError:
    """Map a non-2xx answer to the matching :class:`HTTPStatusError`.

    Every such error carries the ``retry_after`` the answer asked for, if
    any (see :func:`retry_after_from`); what honours it is the retry policy's
    business.

    Args:
        now: The current wall-clock Unix time, to read HTTP-date ``Retry-After``.
        redact: Cuts the API key out of the server's words before they are
            shortened into the error.
    """
    said = provider_message(status, body, reason, redact)
    message = said.message
    request_id = request_id_from(headers, redact=redact) or said.request_id
    cls = _STATUS_ERRORS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequestError
    if 300 <= status < 400:
        # Redirects are not followed (see the transport); say where it pointed.
        location = _shorten(redact(header(headers, "Location") or "")) or "nowhere"
        message = f"{message}; redirect to {location} not followed, check base_url"
    return cls(
        message,
        method=method,
        url=url,
        status=status,
        request_id=request_id,
        retry_after=retry_after_from(headers, said.data, message, now),
    )


def decode_prediction(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    data: Any = _UNPARSED,
    expected_id: str | None = None,
    method: str = "GET",
    url: str = "",
    redact: Redactor = _NO_REDACTION,
) -> Prediction:
    """Decode a 2xx answer's body into a :class:`Prediction`.

    Args:
        data: The body parsed already (by :func:`parse_json_yielding`, say);
            parsed here if not.
        expected_id: The id asked for; a record of another id is an error.

    Raises:
        DecodeError: ``transient`` is True when the body was not JSON at all
            (a truncated answer): worth another try.
        BaseURLError: the body is an HTML page; not retried.
        GatewayError: the body is a gateway's error, not a prediction.
        MismatchedIdError: the record is another prediction's; retried.
    """
    if data is _UNPARSED:
        data = parse_json(body)
    if data is NOT_JSON or (
        type(data) is dict
        and not ("id" in data and "status" in data)  # a record: no envelope
        and _gateway_error(data)
    ):
        # Raised outside any handler: json's error would stay attached as
        # __context__, holding the whole body (which may echo the request).
        raise _not_a_prediction(status, headers, body, data, method, url, redact)
    try:
        record = prediction_hook(data, None)
    except FieldError as exc:
        failure = exc
    else:
        if expected_id is None or record.id == expected_id:
            return record
        raise MismatchedIdError(
            f"the answer is another prediction's: "
            f"{_shorten(redact(repr(record.id)))}, not {expected_id!r}",
            expected=expected_id,
            received=_shorten(redact(record.id)),
            status=status,
            request_id=request_id_from(headers, redact=redact),
            method=method,
            url=url,
        )
    # Raised outside the handler: the FieldError's text may quote the body.
    # (The request id is looked up only when it is needed.)
    raise decode_error(
        failure,
        status=status,
        request_id=request_id_from(headers, redact=redact),
        url=url,
        method=method,
        redact=redact,
    )


def _not_a_prediction(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    data: Any,
    method: str,
    url: str,
    redact: Redactor,
) -> DecodeError:
    """The error for a 2xx body that is an HTML page, garbage or an envelope."""
    said = provider_message(status, body, redact=redact, data=data)
    common: dict[str, Any] = {
        "status": status,
        "request_id": request_id_from(headers, redact=redact) or said.request_id,
        "method": method,
        "url": url,
    }
    if data is not NOT_JSON:
        return GatewayError(
            f"the gateway answered with an error: {said.message}", **common
        )
    if _is_html(body):
        return BaseURLError(
            f"the answer is an HTML page, not the API ({said.message}): is "
            f"base_url right? It usually ends in /v1 (/replicate/v1 on gateways)",
            **common,
        )
    return DecodeError(f"answer is not JSON: {said.message}", transient=True, **common)
