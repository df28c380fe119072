"""Faults the fake server can inject, and which request gets which.

A :class:`Fault` is a frozen value describing a misbehaviour; a
:class:`FaultPlan` decides which request it hits.  Nothing here does I/O: the
HTTP layer (``_http``) turns a fault into what the client sees.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from typing import Final

import attrs

_HTML: Final = "text/html; charset=utf-8"
_JSON: Final = "application/json"
_PROBLEM: Final = "application/problem+json"
_BAD_GATEWAY_PAGE: Final = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
_LOGIN_PAGE: Final = (
    b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>"
    b"<h1>Please sign in</h1><form action=/login method=post>"
    b"<input name=key><button>Continue</button></form></body></html>"
)


def _number(value: float) -> int | float:
    """Drop a useless ``.0`` so that ``1.0`` is sent as ``1`` and ``0.2`` stays."""
    return int(value) if value == int(value) else value


@attrs.frozen
class Fault:
    """A scripted misbehaviour; build one with the classmethods, not directly.

    Attributes:
        kind: Name of the fault (``"rate_limited"``, ``"reset"``, ...); the key
            of :attr:`ServerStats.faults_injected`.
        code: HTTP status of a canned answer (0 when the answer is not canned).
        body: Canned body; ``{request_id}`` in it is replaced by the request id.
        content_type: ``Content-Type`` of the canned body, if any.
        headers: Extra response headers.
        retry_after: For rate limits: seconds of the pause the server counts
            ``early_requests`` against (whether or not the client is told).
        delay: For :meth:`slow`: seconds to wait before answering normally.
    """

    kind: str
    code: int = 0
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None
    delay: float = 0.0

    @classmethod
    def status(
        cls,
        code: int,
        body: bytes | str = b"",
        *,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Fault:
        """Answer *code* with *body*; ``{request_id}`` in it is filled in.

        Args:
            code: HTTP status code.
            body: Response body; ``str`` is encoded as UTF-8.
            content_type: ``Content-Type`` header, or none at all.
            headers: Extra headers.
        """
        return cls._canned("status", code, body, content_type, headers)

    @classmethod
    def _canned(
        cls,
        kind: str,
        code: int,
        body: bytes | str = b"",
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        raw = body.encode() if isinstance(body, str) else body
        extra = tuple((headers or {}).items())
        return cls(kind, code, raw, content_type, extra, retry_after)

    @classmethod
    def rate_limited(
        cls, retry_after: float = 1.0, *, header: bool = True, in_body: bool = False
    ) -> Fault:
        """429 ``{"detail": "Request was throttled. ..."}`` as Replicate sends it.

        Args:
            retry_after: Seconds until the (per key) limit resets; fractions
                are allowed and sent as such (``Retry-After: 0.2``).
            header: Send the ``Retry-After`` header.
            in_body: Also put ``"retry_after": N`` in the body.
        """
        detail = (
            "Request was throttled. Your rate limit resets in "
            f"~{max(1, math.ceil(retry_after))}s."
        )
        payload: dict[str, object] = {"detail": detail}
        if in_body:
            payload["retry_after"] = _number(retry_after)
        return cls._canned(
            "rate_limited",
            429,
            json.dumps(payload),
            _PROBLEM,
            {"Retry-After": str(_number(retry_after))} if header else None,
            retry_after,
        )

    @classmethod
    def server_error(cls) -> Fault:
        """500 ``application/problem+json`` as Replicate sends it."""
        body = {
            "title": "Internal Server Error",
            "detail": "An unexpected error occurred. Please try again.",
            "status": 500,
        }
        return cls._canned("server_error", 500, json.dumps(body), _PROBLEM)

    @classmethod
    def bad_gateway_html(cls) -> Fault:
        """502 with an nginx HTML page (a proxy in front of the API)."""
        return cls._canned("bad_gateway_html", 502, _BAD_GATEWAY_PAGE, _HTML)

    @classmethod
    def unavailable_comet(cls) -> Fault:
        """503 in CometAPI's OpenAI-style envelope, request id in the message."""
        message = "The upstream service is unavailable, please try again later"
        body = {
            "error": {
                "message": f"{message} (request id: {{request_id}})",
                "type": "comet_api_error",
                "param": "",
                "code": "",
            }
        }
        return cls._canned("unavailable_comet", 503, json.dumps(body), _JSON)

    @classmethod
    def gateway_timeout_empty(cls) -> Fault:
        """504 with an empty body."""
        return cls._canned("gateway_timeout_empty", 504)

    @classmethod
    def cloudflare_timeout(cls) -> Fault:
        """524, Cloudflare's "a timeout occurred", with a short HTML body."""
        body = "<html><body><h1>524</h1><p>A timeout occurred</p></body></html>"
        return cls._canned("cloudflare_timeout", 524, body, _HTML)

    @classmethod
    def html_200(cls) -> Fault:
        """200 ``text/html``: a login page where JSON was expected."""
        return cls._canned("html_200", 200, _LOGIN_PAGE, _HTML)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection without answering.

        The client sees ``aiohttp.ServerDisconnectedError`` (or another
        ``aiohttp.ClientConnectionError``).  Recent aiohttp clients resend an
        idempotent request once after a disconnect: use ``times=2`` for the
        error to reach the code that called aiohttp.
        """
        return cls("reset")

    @classmethod
    def truncated_json(cls) -> Fault:
        """The normal answer cut in half: invalid JSON, consistent length."""
        return cls("truncated_json")

    @classmethod
    def truncated_body(cls) -> Fault:
        """Promise the whole body in ``Content-Length``, send half, then close.

        The client sees ``aiohttp.ClientPayloadError`` while reading the body.
        """
        return cls("truncated_body")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait *seconds* (real time, other requests go on), then answer normally."""
        return cls("slow", delay=seconds)


#: Every fault that spoils one answer without pausing or delaying anything:
#: the building blocks of a chaos mix.
ANSWER_FAULTS: Final = (
    Fault.server_error(),
    Fault.bad_gateway_html(),
    Fault.unavailable_comet(),
    Fault.gateway_timeout_empty(),
    Fault.cloudflare_timeout(),
    Fault.html_200(),
    Fault.reset(),
    Fault.truncated_json(),
    Fault.truncated_body(),
)

#: What :meth:`FakeReplicate.set_chaos` draws from by default: every kind,
#: with pauses short enough for tests.
CHAOS_FAULTS: Final = (Fault.rate_limited(0.05), *ANSWER_FAULTS, Fault.slow(0.05))


@attrs.define
class _Armed:
    """A fault waiting for its matching requests."""

    fault: Fault
    prediction_id: str | None
    files: bool
    remaining: int | None


@attrs.define
class FaultPlan:
    """Which request gets which fault: queued faults first, then chaos."""

    _armed: list[_Armed] = attrs.Factory(list)
    _chaos: float = 0.0
    _menu: tuple[Fault, ...] = CHAOS_FAULTS
    _rng: random.Random = attrs.Factory(random.Random)

    @property
    def active(self) -> bool:
        """Whether any request may get a fault (checked before :meth:`pick`)."""
        return bool(self._armed or self._chaos)

    def add(
        self, fault: Fault, prediction_id: str | None, times: int | None, files: bool
    ) -> None:
        """Queue *fault*; see :meth:`FakeReplicate.add_fault`."""
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        self._armed.append(_Armed(fault, prediction_id, files, times))

    def clear(self) -> None:
        """Drop queued faults and turn chaos off."""
        self._armed.clear()
        self._chaos = 0.0

    def set_chaos(
        self, probability: float, kinds: Iterable[Fault | str] | None, seed: int
    ) -> None:
        """Draw faults at random; see :meth:`FakeReplicate.set_chaos`."""
        if not 0 <= probability <= 1:
            raise ValueError("probability must be between 0 and 1")
        named = {fault.kind: fault for fault in CHAOS_FAULTS}
        menu = []
        for kind in CHAOS_FAULTS if kinds is None else kinds:
            if isinstance(kind, str) and kind not in named:
                raise ValueError(f"unknown fault kind {kind!r}; known: {sorted(named)}")
            menu.append(named[kind] if isinstance(kind, str) else kind)
        if probability and not menu:
            raise ValueError("chaos needs at least one fault kind")
        self._chaos, self._menu = probability, tuple(menu)
        self._rng = random.Random(seed)

    def pick(self, api: bool, files: bool, prediction_id: str | None) -> Fault | None:
        """Return the fault for the next request, if any.

        Args:
            api: It is an API request.
            files: It is a file download.
            prediction_id: The prediction in its path, if any.
        """
        if not (api or files):
            return None
        for i, armed in enumerate(self._armed):
            if armed.files is files and armed.prediction_id in (None, prediction_id):
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if not armed.remaining:
                        del self._armed[i]
                return armed.fault
        # Chaos only hits GET and cancel (paths with an id): not creates, whose
        # retries would duplicate predictions, nor downloads.
        chaos = self._chaos
        if api and prediction_id is not None and chaos and self._rng.random() < chaos:
            return self._rng.choice(self._menu)
        return None
