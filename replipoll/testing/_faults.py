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
        code: HTTP status of a canned answer or of :meth:`echoed_key` (0 when
            the answer is not canned).
        body: Canned body; ``{request_id}`` in it is replaced by the request id.
        content_type: ``Content-Type`` of the canned body, if any.
        headers: Extra response headers.
        retry_after: For rate limits: seconds of the pause the server counts
            ``early_requests`` against (whether or not the client is told).
        delay: For :meth:`slow`: seconds to wait before answering normally;
            for :meth:`trickle`: seconds between two pieces of the body.
        size: For :meth:`huge_body`: bytes of the body; for
            :meth:`gzip_bomb`: bytes of the body once unpacked.
        chunk: For :meth:`trickle`: bytes sent at a time.
        other: For :meth:`mismatched_id`: the prediction whose record is
            answered instead (``None``: a made-up one).
        offset: For :meth:`echoed_key`: filler characters before the key.
        where: For :meth:`echoed_key`: where the key is echoed.
        after: Strike once the server has handled the request; see
            :meth:`after_handling`.

    When a fault strikes -- which matters for a create: is there a
    prediction?  By default :meth:`reset` and the canned answers
    (:meth:`status`, :meth:`rate_limited`, :meth:`server_error`,
    :meth:`bad_gateway_html`, :meth:`unavailable_comet`,
    :meth:`gateway_timeout_empty`, :meth:`cloudflare_timeout`,
    :meth:`html_200`, :meth:`echoed_key` but ``where="status"``) strike
    *before* the request is handled: the request "never reached" the API, a
    create made no prediction, a cancel cancelled nothing.  The others
    (:meth:`slow`, :meth:`truncated_json`, :meth:`truncated_body` and the
    hostile faults) spoil the normal answer, so the request *was* handled:
    a create made its prediction.  :meth:`after_handling` makes any fault
    strike after handling (:data:`LOST_ANSWER_FAULTS`: the usual ways an
    answer is lost).

    Hostile faults (:data:`HOSTILE_FAULTS`) that rework the normal answer
    (:meth:`huge_body`, :meth:`gzip_bomb`, :meth:`endless_body`,
    :meth:`mismatched_id`, and :meth:`echoed_key` with ``where="status"``)
    send it unchanged when it is not a 2xx JSON object (a 401 for a wrong
    key, a 404 for an unknown id; for downloads: when it is not a 200), the
    fault still counted in :attr:`ServerStats.faults_injected`.  Their
    padding is the byte ``x`` repeated.
    """

    kind: str
    code: int = 0
    body: bytes = b""
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    retry_after: float | None = None
    delay: float = 0.0
    size: int = 0
    chunk: int = 0
    other: str | None = None
    offset: int = 0
    where: str = ""
    after: bool = False

    def after_handling(self) -> Fault:
        """Return this fault, striking after the server has handled the request.

        The request is handled as usual (a create makes its prediction, a
        cancel cancels), its answer thrown away, then the fault strikes:
        :meth:`reset` closes the connection, a canned answer is sent
        instead, :meth:`slow` holds the answer back for its delay (the
        prediction exists meanwhile).  Faults that spoil the normal answer
        already strike after handling; for them this changes nothing.

        Example:
            >>> fault = Fault.reset().after_handling()
            >>> fault.kind, fault.after
            ('reset', True)
        """
        return attrs.evolve(self, after=True)

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
        """200 ``text/html``: a login page where JSON was expected.

        It is what a wrong base URL serves (a web site, not the API): a
        configuration error rather than a transient fault, hence not part of
        :data:`ANSWER_FAULTS`.
        """
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

    # -- hostile answers: what a client must refuse, not retry ------------

    @classmethod
    def huge_body(cls, size: int) -> Fault:
        """The normal answer, its ``output`` padded for the body to be *size* bytes.

        An API request gets the normal status (200; 201 for a create) and
        ``Content-Type``, and a body of exactly *size* bytes (its
        ``Content-Length``): the normal JSON object, keys in their usual
        order, whose ``output`` is a string of ``x`` long enough for the
        whole body to be *size* bytes.  When *size* is smaller than the
        object with ``"output": ""``, that object is sent, longer than *size*.
        A download (``files=True``) gets 200 ``application/octet-stream``
        with *size* bytes of ``x``.  The body is streamed in 64 KiB pieces,
        never held whole, so sizes of several GiB are fine.

        Args:
            size: Bytes of the body, >= 0.

        Raises:
            ValueError: *size* is negative.
        """
        return cls("huge_body", size=_count("size", size))

    @classmethod
    def gzip_bomb(cls, unpacked: int) -> Fault:
        """A small gzip body that unpacks to *unpacked* bytes.

        An API request gets the normal status (200; 201 for a create) and
        ``Content-Type`` with ``Content-Encoding: gzip``, and a body that is
        one gzip member (with a correct ``Content-Length``) unpacking to
        exactly *unpacked* bytes of valid JSON: the normal JSON object with
        ``output`` moved first, ``{"output": "xxx...", "id": ...}``, padded
        as for :meth:`huge_body` (the same rule when *unpacked* is too small).
        A download (``files=True``) gets 200 ``application/octet-stream``
        with ``Content-Encoding: gzip``, unpacking to *unpacked* bytes of
        ``x``.  Deflate packs a run of ``x`` about 1030 to 1: 64 MiB take
        about 64 KiB on the wire, 1 GiB about 1 MiB, 4 GiB about 4 MiB.
        Packing runs in a thread at about 300 MB/s (4 GiB: some 15 s) and is
        cached per size, so later bombs of that size cost only a few
        milliseconds each.

        Args:
            unpacked: Bytes of the body once unpacked, >= 0.

        Raises:
            ValueError: *unpacked* is negative.
        """
        return cls("gzip_bomb", size=_count("unpacked", unpacked))

    @classmethod
    def endless_body(cls) -> Fault:
        """A 200 body that never ends.

        An API request gets the normal status (200; 201 for a create) and
        ``Content-Type`` with ``Transfer-Encoding: chunked`` and no
        ``Content-Length``: the normal JSON object up to ``"output":"``, then
        64 KiB pieces of ``x`` for ever.  A download (``files=True``) gets
        200 ``application/octet-stream``, chunked, ``x`` for ever.  It ends
        when the client goes away (quietly: nothing is logged).
        """
        return cls("endless_body")

    @classmethod
    def trickle(cls, interval: float, *, chunk: int = 1) -> Fault:
        """The normal answer, *chunk* bytes every *interval* seconds.

        Status, headers and body are the normal ones (API JSON, error or
        file), with a correct ``Content-Length``; the first *chunk* bytes
        (with the headers) go at once, each next piece *interval* seconds of
        real time later (other requests go on meanwhile), so a body of *n*
        bytes takes ``(ceil(n / chunk) - 1) * interval`` seconds.

        Args:
            interval: Seconds between two pieces, >= 0.
            chunk: Bytes in a piece, >= 1.

        Raises:
            ValueError: A negative or infinite *interval*, or *chunk* < 1.
        """
        if not 0 <= interval < math.inf:
            raise ValueError(f"interval must be a finite number >= 0, not {interval}")
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be an int >= 1, not {chunk!r}")
        return cls("trickle", delay=interval, chunk=chunk)

    @classmethod
    def mismatched_id(cls, other: str | None = None) -> Fault:
        """A valid prediction record, but not of the prediction asked for.

        The answer has the normal status (200; 201 for a create) and is
        ``application/json``: the current record of *other* (as its own GET
        under the request's prefix would answer), or, without *other*, the
        record of the prediction asked for (or of a fresh, succeeded one with
        a null output, for a request naming none) under a made-up id of 26
        characters from ``a-z2-7`` that no prediction of the server has (its
        output URLs, if any, answer 404).  API requests only.

        Args:
            other: Id of a prediction of the server; checked by
                :meth:`FakeReplicate.add_fault`.

        Raises:
            ValueError: *other* is empty or contains ``/``.
        """
        if other is not None and (
            not isinstance(other, str) or not other or "/" in other
        ):
            raise ValueError(f"other must be a prediction id, not {other!r}")
        return cls("mismatched_id", other=other)

    @classmethod
    def echoed_key(
        cls, code: int = 401, *, offset: int = 0, where: str = "detail"
    ) -> Fault:
        """An answer that echoes the API key the client sent.

        The key is the token of the request's ``Authorization: Bearer <key>``
        header, verbatim ("" without one).  The echo *text* is *offset*
        ``x``, the key, then 40 ``x`` (10 for ``"header"``).  *where* says
        what the client gets:

        - ``"detail"``: status *code*, ``application/problem+json``
          ``{"detail": text}``.
        - ``"comet"``: status *code*, ``application/json``, CometAPI's
          ``{"error": {"message": "<text> (request id: <id>)", "type":
          "comet_api_error", "param": "", "code": ""}}``.
        - ``"header"``: status *code*, ``application/problem+json``
          ``{"detail": <the status's reason phrase>, "status": code}``, and
          the text as the ``X-Request-Id`` header.
        - ``"html"``: status *code*, ``text/html; charset=utf-8``, a page
          whose ``<title>`` is the text.
        - ``"status"``: the normal answer (200 for a GET, the key checked as
          usual), a prediction record whose ``status`` is the text.

        API requests only.

        Args:
            code: HTTP status: 200 to 599 but 204 and 304 (statuses that
                have a body); ignored for ``"status"``.
            offset: Filler characters before the key, >= 0.
            where: ``"detail"``, ``"comet"``, ``"header"``, ``"html"`` or
                ``"status"``.

        Raises:
            ValueError: A bad *where*, *offset* or *code*.
        """
        if where not in _ECHO_PLACES:
            raise ValueError(f"where must be one of {_ECHO_PLACES}, not {where!r}")
        if isinstance(code, bool) or not isinstance(code, int) or code not in _CODES:
            raise ValueError(f"code must be an HTTP status with a body, not {code!r}")
        return cls("echoed_key", code, offset=_count("offset", offset), where=where)


def _count(name: str, value: int) -> int:
    """Return *value* if it is an ``int`` >= 0, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int >= 0, not {value!r}")
    return value


_CODES: Final = frozenset(range(200, 600)) - {204, 304}
#: Where :meth:`Fault.echoed_key` may echo the key.
_ECHO_PLACES: Final = ("detail", "comet", "header", "html", "status")
#: Fault kinds that only apply to API requests, not to downloads.
_API_ONLY: Final = frozenset({"mismatched_id", "echoed_key"})


#: Every transient fault that spoils one answer without pausing or delaying
#: anything, which a client must survive by retrying: the building blocks of
#: a chaos mix.  :meth:`Fault.html_200` is not one (a 200 HTML page is what a
#: wrong base URL serves: a configuration error), nor are the
#: :data:`HOSTILE_FAULTS`.
ANSWER_FAULTS: Final = (
    Fault.server_error(),
    Fault.bad_gateway_html(),
    Fault.unavailable_comet(),
    Fault.gateway_timeout_empty(),
    Fault.cloudflare_timeout(),
    Fault.reset(),
    Fault.truncated_json(),
    Fault.truncated_body(),
)

#: The ways a handled request's answer is lost on the way back, each
#: :meth:`Fault.after_handling`: a reset, a body cut short, an nginx 502 page,
#: an empty 504, a Cloudflare 524.  Aimed at creates (``add_fault(...,
#: creates=True)``), each leaves a prediction the client never heard of: a
#: client that simply retries makes a second one.
LOST_ANSWER_FAULTS: Final = tuple(
    fault.after_handling()
    for fault in (
        Fault.reset(),
        Fault.truncated_body(),
        Fault.bad_gateway_html(),
        Fault.gateway_timeout_empty(),
        Fault.cloudflare_timeout(),
    )
)

#: What :meth:`FakeReplicate.set_chaos` draws from by default: every kind,
#: with pauses short enough for tests.
CHAOS_FAULTS: Final = (Fault.rate_limited(0.05), *ANSWER_FAULTS, Fault.slow(0.05))

#: One of each hostile fault, with sizes small enough for tests: answers a
#: client must refuse or survive without retrying them blindly or running out
#: of memory or time (a 32 MiB body, a 64 MiB gzip bomb, an endless body, a
#: trickle of 1 byte every 0.05 s, a record of a made-up prediction, a 401
#: echoing the key).  Not part of :data:`CHAOS_FAULTS`: chaos takes them only
#: as :class:`Fault` values, not by kind name.
HOSTILE_FAULTS: Final = (
    Fault.huge_body(32 << 20),
    Fault.gzip_bomb(64 << 20),
    Fault.endless_body(),
    Fault.trickle(0.05),
    Fault.mismatched_id(),
    Fault.echoed_key(),
)


@attrs.define
class _Armed:
    """A fault waiting for its matching requests."""

    fault: Fault
    prediction_id: str | None
    files: bool
    remaining: int | None
    creates: bool = False


@attrs.define
class FaultPlan:
    """Which request gets which fault: queued faults first, then chaos."""

    _armed: list[_Armed] = attrs.Factory(list)
    _chaos: float = 0.0
    _chaos_creates: bool = False
    _menu: tuple[Fault, ...] = CHAOS_FAULTS
    _rng: random.Random = attrs.Factory(random.Random)

    @property
    def active(self) -> bool:
        """Whether any request may get a fault (checked before :meth:`pick`)."""
        return bool(self._armed or self._chaos)

    def add(
        self,
        fault: Fault,
        prediction_id: str | None,
        times: int | None,
        files: bool,
        creates: bool = False,
    ) -> None:
        """Queue *fault*; see :meth:`FakeReplicate.add_fault`."""
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if files and fault.kind in _API_ONLY:
            raise ValueError(f"Fault.{fault.kind} applies to API requests, not files")
        if creates and (files or prediction_id is not None):
            raise ValueError(
                "creates=True aims at create requests: no files, no prediction_id"
            )
        self._armed.append(_Armed(fault, prediction_id, files, times, creates))

    def remove(self, fault: Fault) -> None:
        """Drop the queued entries of *fault*, whatever they have left."""
        self._armed[:] = [armed for armed in self._armed if armed.fault != fault]

    def clear(self) -> None:
        """Drop queued faults and turn chaos off."""
        self._armed.clear()
        self._chaos = 0.0

    def set_chaos(
        self,
        probability: float,
        kinds: Iterable[Fault | str] | None,
        seed: int,
        creates: bool = False,
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
        self._chaos_creates = creates
        self._rng = random.Random(seed)

    def pick(
        self,
        api: bool,
        files: bool,
        prediction_id: str | None,
        create: bool = False,
    ) -> Fault | None:
        """Return the fault for the next request, if any.

        Args:
            api: It is an API request.
            files: It is a file download.
            prediction_id: The prediction in its path, if any.
            create: It is a create request.
        """
        if not (api or files):
            return None
        for i, armed in enumerate(self._armed):
            if (
                armed.files is files
                and armed.prediction_id in (None, prediction_id)
                and (create or not armed.creates)
            ):
                if armed.remaining is not None:
                    armed.remaining -= 1
                    if not armed.remaining:
                        del self._armed[i]
                return armed.fault
        # Chaos hits GET and cancel (paths with an id), creates only when
        # asked (a retried create may duplicate a prediction), never downloads.
        chaos = self._chaos
        if (
            api
            and chaos
            and (prediction_id is not None or (create and self._chaos_creates))
            and self._rng.random() < chaos
        ):
            return self._rng.choice(self._menu)
        return None
