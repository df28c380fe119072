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
import re
import unicodedata
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

import attrs

from ._errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    DecodeError,
    HTTPStatusError,
    InvalidPredictionIdError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from ._models import Prediction, structure_prediction

__all__ = [
    "MAX_ID_LENGTH",
    "ApiRequest",
    "Redactor",
    "decode_prediction",
    "error_for_response",
    "normalize_base_url",
    "parse_retry_after",
    "prediction_url",
    "request_id_from",
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
_NOT_JSON: Final = object()


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


@attrs.frozen
class ApiRequest:
    """One API request: a method and a path below the base URL.

    Build it with :meth:`for_prediction`, which validates the id; the
    transport joins ``path`` to its base URL and adds the key.
    """

    method: str
    #: Relative to the base URL, without a leading slash.
    path: str

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
        path = f"predictions/{quote(pid, safe='')}"
        return cls(method, f"{path}/{action}" if action else path)


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

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret if secret is not None and len(secret) >= 8 else None

    def __repr__(self) -> str:
        return "Redactor(<hidden>)"

    def __call__(self, text: str) -> str:
        secret = self._secret
        if secret is None or secret not in text:
            return text
        return text.replace(secret, "<redacted>")


_NO_REDACTION: Final = Redactor(None)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value, or ``None`` if unusable.

    Accepts delta-seconds (fractions too, as some gateways send them) and
    HTTP-dates. Negative values and dates in the past mean "now" (``0.0``);
    garbage, NaN and the words ``inf``/``infinity`` give ``None``; a number
    too large for a float gives ``inf``.

    Args:
        value: The header value.
        now: The current wall-clock time as a Unix timestamp.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - now)
    if seconds != seconds or seconds == float("-inf"):
        return None
    if seconds == float("inf"):
        # "inf" is no number of seconds; 400 digits are, just a huge one: it
        # must exceed max_retry_after (not be ignored and retried at once).
        return seconds if text[0].isdigit() else None
    return max(0.0, seconds)


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
        value = headers.get(name)
        if value:
            return redact(value)[:200]
    match = _MESSAGE_REQUEST_ID.search(message)
    return match.group(1) if match else None


def _load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def provider_message(
    status: int,
    body: bytes,
    reason: str = "",
    redact: Redactor = _NO_REDACTION,
) -> tuple[str, Any]:
    """The provider's own message from an error body, and the parsed JSON.

    Understands Replicate's problem+json (``detail``, then ``title``),
    CometAPI's OpenAI-style ``{"error": {"message": ...}}``, plain strings and
    HTML pages (their ``<title>``). The text is redacted, then shortened.
    """

    def clean(text: str) -> str:
        return _shorten(redact(text))

    data = _load_json(body) if body else None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return clean(error["message"]), data
        for key in ("detail", "title", "message", "error"):
            if isinstance(data.get(key), str) and data[key]:
                return clean(data[key]), data
    elif isinstance(data, str) and data:
        return clean(data), data
    head = body[:2048].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html")) or b"<body" in head:
        title = _HTML_TITLE.search(body[:8192])
        text = title.group(1).decode("utf-8", "replace").strip() if title else ""
        return clean(f"HTML page: {text}" if text else "HTML error page"), None
    if body.strip():
        # A secret may straddle any cut: redact a span longer than any key
        # could reach past the message's end, then shorten.
        text = body[: _MAX_MESSAGE * 4].decode("utf-8", "replace")
        return clean(text), None
    return redact(reason or f"HTTP {status}") + " (empty body)", None


def _body_retry_after(data: Any, message: str) -> float | None:
    if isinstance(data, dict):
        value = data.get("retry_after")
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and 0 <= value < float("inf")
        ):
            return float(value)
    match = _RESETS_IN.search(message)
    return float(match.group(1)) if match else None


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

    Args:
        now: The current wall-clock Unix time, to read HTTP-date ``Retry-After``.
        redact: Cuts the API key out of the server's words before they are
            shortened into the error.
    """
    message, data = provider_message(status, body, reason, redact)
    request_id = request_id_from(headers, message, redact)
    common: dict[str, Any] = {
        "method": method,
        "url": url,
        "status": status,
        "request_id": request_id,
    }
    cls = _STATUS_ERRORS.get(status)
    if cls is RateLimitedError:
        retry_after = parse_retry_after(headers.get("Retry-After"), now)
        if retry_after is None:
            retry_after = _body_retry_after(data, message)
        return RateLimitedError(message, retry_after=retry_after, **common)
    if cls is None:
        cls = ServerError if status >= 500 else BadRequestError
    if 300 <= status < 400:
        # Redirects are not followed (see the transport); say where it pointed.
        location = _shorten(redact(headers.get("Location", ""))) or "nowhere"
        message = f"{message}; redirect to {location} not followed, check base_url"
    return cls(message, **common)


def decode_prediction(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str = "GET",
    url: str = "",
    redact: Redactor = _NO_REDACTION,
) -> Prediction:
    """Decode a 2xx answer's body into a :class:`Prediction`.

    Raises:
        DecodeError: ``transient`` is True when the body was not JSON at all
            (a truncated answer, an HTML page): worth another try.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        data = _NOT_JSON
    if data is _NOT_JSON:
        # Raised outside the handler: json's error would stay attached as
        # __context__, holding the whole body (which may echo the request).
        message, _ = provider_message(status, body, redact=redact)
        raise DecodeError(
            f"answer is not JSON: {message}",
            transient=True,
            status=status,
            request_id=request_id_from(headers, message, redact),
            method=method,
            url=url,
        )
    return structure_prediction(
        data,
        status=status,
        request_id=request_id_from(headers, redact=redact),
        url=url,
        method=method,
        redact=redact,
    )
