"""The HTTP side of the fake server: routes, middleware, handlers, faults on the wire.

Per-request work is kept small (benchmarks poll 100,000 predictions through
it): one clock read, a few counters, one ``json.dumps`` of a dict.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import hashlib
import http
import itertools
import json
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Final, Literal
from urllib.parse import urlencode

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler

from ._create import CreateBudget, CreateRecord, Invalid, hold, read_create, retry_after
from ._faults import Fault, FaultPlan
from ._listing import CreatedIndex, Cursor, parse_date_time, select
from ._records import Prediction, render, served_file, timestamp
from ._stats import RequestRecord, ServerStats
from ._streaming import STREAM_PREFIX, serve_stream

ErrorStyle = Literal["auto", "replicate", "comet"]

#: Where the API is served: Replicate's layout and the gateways' one.
PREFIXES: Final = ("/v1", "/replicate/v1")

#: The current request's id, set by the middleware.  Handlers run in the
#: middleware's task, so this carries the id without touching the request.
REQUEST_ID: Final = contextvars.ContextVar[str]("replipoll_request_id")
#: Replaced by the request id wherever it occurs in a fault's body.
REQUEST_ID_TOKEN: Final = b"{request_id}"

_API: Final = tuple(f"{prefix}/" for prefix in PREFIXES)
_GATEWAY: Final = "/replicate/"
_FILES: Final = "/files/"
_PROBLEM: Final = "application/problem+json"
#: The list endpoint's path, under each prefix.
_LIST: Final = tuple(f"{prefix}/predictions" for prefix in PREFIXES)
#: The query parameters a list request's links carry on.
_FILTERS: Final = ("created_after", "created_before")
_INVALID: Final = "Input validation failed"
#: A path segment holding a prediction id: anything but "/" (aiohttp's
#: default pattern also refuses "{" and "}", which add_prediction accepts).
_ID: Final = "{id:[^/]+}"

#: Hostile bodies are streamed in pieces of this many bytes.
_CHUNK: Final = 1 << 16
_PADDING: Final = b"x" * _CHUNK
#: Gzip bombs cache the packed padding in multiples of this many bytes; the
#: rest (and the prediction's own bytes) are packed per request.
_BOMB_STEP: Final = 1 << 16
_FILLER: Final = "x"
#: Hostile faults that pad the normal answer (for files: that send padding).
_PADDED: Final = frozenset({"huge_body", "gzip_bomb", "endless_body"})
_HOSTILE: Final = _PADDED | {"trickle", "mismatched_id", "echoed_key"}

Answer = Callable[[], Awaitable[web.StreamResponse]]


def _json(
    data: object, status: int = 200, ctype: str = "application/json"
) -> web.Response:
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(status=status, body=body, content_type=ctype)


@attrs.define(eq=False)
class Api:
    """The aiohttp app of a :class:`FakeReplicate` and what it counts."""

    predictions: dict[str, Prediction]
    index: CreatedIndex
    add_prediction: Callable[..., str]
    faults: FaultPlan
    clock: Callable[[], float]
    wall_offset: float
    api_key: str
    error_style: ErrorStyle
    log_size: int
    latency: float
    retention: float | None
    early_grace: float
    list_lag: float
    list_omits: frozenset[str]
    create_budget: CreateBudget | None = None
    #: Real seconds after which a stream's connection is dropped; None: never.
    stream_cut_after: float | None = None
    stats: ServerStats = attrs.field(init=False, factory=ServerStats)
    #: Predictions created through the API, in creation order.
    created: list[CreateRecord] = attrs.field(init=False, factory=list)
    paused_until: float = float("-inf")
    pause_started: float = float("-inf")
    _ids: itertools.count[int] = attrs.field(init=False, factory=itertools.count)

    def __attrs_post_init__(self) -> None:
        self.reset_stats()

    def reset_stats(self) -> None:
        """Replace :attr:`stats`, keeping requests still in flight counted."""
        in_flight = self.stats.in_flight
        self.stats = ServerStats(
            in_flight=in_flight,
            peak_in_flight=in_flight,
            request_log=deque(maxlen=self.log_size),
        )

    def build_app(self) -> web.Application:
        """Return a new application serving this API."""
        app = web.Application(middlewares=[self._middleware])
        add_get, add_post = app.router.add_get, app.router.add_post
        for prefix in PREFIXES:
            add_get(f"{prefix}/predictions", self._list)
            add_post(f"{prefix}/predictions", self._create)
            add_get(f"{prefix}/predictions/{_ID}", self._get)
            add_post(f"{prefix}/predictions/{_ID}/cancel", self._cancel)
            add_post(
                f"{prefix}/{{kind:models|deployments}}/{{owner}}/{{name}}/predictions",
                self._create,
            )
        add_get(f"{_FILES}{_ID}/{{name}}", self._file)
        add_get(f"{STREAM_PREFIX}{_ID}", self._stream)
        return app

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Count, inject faults, authenticate, tag with ``X-Request-Id``."""
        now = self.clock()
        stats = self.stats
        stats.total_requests += 1
        request_id = f"req_{next(self._ids):010x}"
        REQUEST_ID.set(request_id)
        path = request.path
        api = path.startswith(_API)
        # Streams need the key, but are counted apart from API requests.
        streaming = path.startswith(STREAM_PREFIX)
        if streaming:
            stats.stream_requests += 1
        keyed = api or streaming
        pid = request.match_info.get("id")
        create = False
        if api:
            stats.in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, stats.in_flight)
            if now < self.paused_until:
                stats.requests_during_pause += 1
                if now >= self.pause_started + self.early_grace:
                    stats.early_requests += 1
            if pid is not None:
                stats.requests_per_id[pid] += 1
            elif request.method == "GET":
                if path in _LIST:
                    stats.list_requests += 1
            elif request.method == "POST" and (
                path in _LIST or "owner" in request.match_info
            ):
                create = True
                stats.create_requests += 1
        fault = None
        try:
            if api and self.latency:
                await asyncio.sleep(self.latency)
            answer = functools.partial(self._answer, request, handler, keyed)
            if self.faults.active:
                fault = self.faults.pick(keyed, path.startswith(_FILES), pid, create)
            if fault is None:
                response = await answer()
            else:
                self.stats.faults_injected[fault.kind] += 1
                response = await self._inject(fault, request, answer)
        finally:
            if api:
                self.stats.in_flight -= 1  # self.stats: reset_stats may have run
        status = 0 if fault is not None and fault.kind == "reset" else response.status
        self.stats.responses_by_status[status] += 1
        if self.log_size:
            record = RequestRecord(now, request.method, path, status)
            self.stats.request_log.append(record)
        if not response.prepared:  # unless a fault put one there (echoed_key)
            response.headers.setdefault("X-Request-Id", request_id)
        return response

    async def _inject(
        self, fault: Fault, request: web.Request, answer: Answer
    ) -> web.StreamResponse:
        """Produce what the client sees when *fault* hits *request*."""
        kind = fault.kind
        if fault.after:  # handle the request first, then spoil the answer
            answer = _ready(await answer())
        if kind == "slow":
            await asyncio.sleep(fault.delay)
            return await answer()
        if kind == "reset":
            _close(request)
            return web.Response()  # aiohttp quietly fails to send it
        if kind in {"truncated_json", "truncated_body"}:
            return await _truncate(request, await answer(), kind == "truncated_body")
        if kind == "echoed_key" and fault.where != "status":
            return _echo(fault, request)
        if kind in _HOSTILE:
            return await self._hostile(fault, request, await answer())
        headers = dict(fault.headers)
        if fault.content_type is not None:
            headers["Content-Type"] = fault.content_type
        body = fault.body.replace(REQUEST_ID_TOKEN, REQUEST_ID.get().encode())
        response = web.Response(status=fault.code, body=body, headers=headers)
        if fault.retry_after is not None:  # the pause runs from the answer
            now = self.clock()
            if now >= self.paused_until:  # a new pause, not an extension
                self.pause_started = now
            self.paused_until = max(self.paused_until, now + fault.retry_after)
        return response

    async def _hostile(
        self, fault: Fault, request: web.Request, normal: web.StreamResponse
    ) -> web.StreamResponse:
        """Rework *normal* as a hostile fault says (see :class:`Fault`)."""
        kind = fault.kind
        status = normal.status
        headers = {k: v for k, v in normal.headers.items() if k != "Content-Length"}
        if kind == "trickle":
            body = normal.body if isinstance(normal, web.Response) else None
            if not isinstance(body, bytes):
                return normal
            pieces = _pieces(body, fault.chunk)
            return await _stream(
                request, status, headers, pieces, len(body), fault.delay
            )
        if request.path.startswith(_FILES):
            if status != 200 or kind not in _PADDED:
                return normal
            head = tail = b""
        else:
            record = _json_object(normal)
            if record is None:
                return normal
            if kind == "mismatched_id":
                return _json(self._mismatched(request, fault.other, record), status)
            if kind == "echoed_key":  # where="status" (the others are canned)
                record["status"] = _echo_text(fault, request, 40)
                return _json(record, status)
            head, tail = _split(record, output_first=kind == "gzip_bomb")
        if kind == "gzip_bomb":
            headers["Content-Encoding"] = "gzip"
            body = await _bomb(head, fault.size - len(head) - len(tail), tail)
            return web.Response(status=status, body=body, headers=headers)
        if kind == "huge_body":
            pad = max(0, fault.size - len(head) - len(tail))
            padded = itertools.chain((head,), _padding(pad), (tail,))
            length = len(head) + pad + len(tail)
            return await _stream(request, status, headers, padded, length)
        endless = itertools.chain((head,), itertools.repeat(_PADDING))
        return await _stream(request, status, headers, endless, None)

    def _mismatched(
        self, request: web.Request, other: str | None, record: dict[str, Any]
    ) -> dict[str, Any]:
        """The record *other*, or that of *record* (or a fresh one), made up."""
        now = self.clock()
        if other is not None:
            return self._render(request, self.predictions[other], now)
        pid = record.get("id")
        base = self.predictions.get(pid) if isinstance(pid, str) else None
        fake = self._made_up_id()
        if base is None:
            base = Prediction(
                fake,
                now,
                0.0,
                0.0,
                "succeeded",
                None,
                0,
                0,
                None,
                {},
                "owner/model",
                "",
                None,
            )
        return self._render(request, attrs.evolve(base, id=fake), now)

    def _made_up_id(self) -> str:
        """A Replicate-like id, derived from the request id, of no prediction."""
        for n in itertools.count():
            seed = f"{REQUEST_ID.get()}/{n}".encode()
            digest = base64.b32encode(hashlib.sha256(seed).digest())
            pid = digest[:26].decode().lower()
            if pid not in self.predictions:
                return pid
        raise AssertionError("unreachable")  # pragma: no cover

    async def _answer(
        self, request: web.Request, handler: Handler, api: bool
    ) -> web.StreamResponse:
        if api:
            scheme, _, key = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or key != self.api_key:
                detail = "You did not pass a valid authentication token"
                return self._error(request, 401, detail, title="Unauthenticated")
        try:
            return await handler(request)
        except web.HTTPException as exc:  # the router's 404 and 405
            if self._comet(request.path):  # gateways answer wrong paths in HTML
                page = f"<html><body><h1>{exc.status} {exc.reason}</h1></body></html>"
                return web.Response(
                    status=exc.status, text=page, content_type="text/html"
                )
            detail = "Not found." if exc.status == 404 else exc.reason
            return _json({"detail": detail, "status": exc.status}, exc.status, _PROBLEM)

    def _comet(self, path: str) -> bool:
        style = self.error_style
        return style == "comet" or (style == "auto" and path.startswith(_GATEWAY))

    def _error(
        self, request: web.Request, status: int, detail: str, *, title: str = ""
    ) -> web.Response:
        if self._comet(request.path):
            message = f"{detail} (request id: {REQUEST_ID.get()})"
            error = {
                "message": message,
                "type": "comet_api_error",
                "param": "",
                "code": "",
            }
            return _json({"error": error}, status)
        problem = {"title": title, "detail": detail, "status": status}
        if not title:
            del problem["title"]
        return _json(problem, status, _PROBLEM)

    def _render(
        self,
        request: web.Request,
        p: Prediction,
        now: float,
        omit: frozenset[str] = frozenset(),
    ) -> dict[str, Any]:
        return render(
            p,
            now,
            wall_offset=self.wall_offset,
            origin=f"{request.scheme}://{request.host}",
            gateway=request.path.startswith(_GATEWAY),
            retention=self.retention,
            omit=omit,
        )

    async def _get(self, request: web.Request) -> web.StreamResponse:
        now = self.clock()
        p = self.predictions.get(request.match_info["id"])
        if p is None or p.created > now:  # not created yet
            return self._error(request, 404, "Not found.")
        return _json(self._render(request, p, now))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        pid = request.match_info["id"]
        self.stats.cancel_requests[pid] += 1
        now = self.clock()
        p = self.predictions.get(pid)
        if p is None or p.created > now:
            return self._error(request, 404, "Not found.")
        p.cancel(now)
        return _json(self._render(request, p, now))

    async def _create(self, request: web.Request) -> web.StreamResponse:
        """Create a prediction; ``_create`` reads the request, budget and wait."""
        budget = self.create_budget
        if budget is not None:  # checked first: a throttled request does nothing
            wait = budget.spend(self.clock())
            if wait:
                self.stats.creates_throttled += 1
                response = self._error(
                    request, 429, budget.detail(wait), title="Request was throttled"
                )
                response.headers["Retry-After"] = retry_after(wait)
                return response
        try:
            body = await request.json()
        except ValueError:
            return self._error(request, 400, "Request body is not valid JSON.")
        try:
            spec = read_create(request.match_info, request.headers, body)
        except Invalid as exc:
            return self._error(request, 422, str(exc), title=_INVALID)
        pid = self.add_prediction(**spec.script)
        p = self.predictions[pid]
        # Replicate's extra fields never change: rendered once, as extras.
        fields: dict[str, Any] = {}
        if spec.deployment is not None:
            p.deployment = fields["deployment"] = spec.deployment
        if spec.cancel_after is not None:
            p.set_deadline(p.created + spec.cancel_after)
            style = zlib.crc32(pid.encode()) % 3  # as render picks it
            at = p.created + spec.cancel_after + self.wall_offset
            fields["deadline"] = timestamp(at, style)
        if spec.webhook is not None:
            p.webhook = fields["webhook"] = spec.webhook
            p.webhook_events_filter = spec.events
            fields["webhook_events_filter"] = list(spec.events)
        p.extra = fields or None
        self.stats.creations += 1
        self.created.append(
            CreateRecord(
                pid,
                p.input,
                p.model,
                spec.deployment,
                spec.webhook,
                spec.events,
                spec.wait,
                p.deadline,
                p.created,
                REQUEST_ID.get(),
            )
        )
        if spec.wait is not None:
            await hold(p, self.clock, spec.wait)
        return _json(self._render(request, p, self.clock()), 201)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        """``GET /predictions``: keyset pages, newest first (see ``_listing``)."""
        query = request.query
        bounds: dict[str, float] = {}
        for name in _FILTERS:
            if name in query:
                try:
                    bounds[name] = parse_date_time(query[name])
                except ValueError:
                    detail = (
                        f"{name}: {query[name]!r} is not an ISO 8601 date-time"
                        " (like 2026-11-27T15:00:00.123456Z)."
                    )
                    return self._error(request, 400, detail)
        cursor = None
        if "cursor" in query:
            try:
                cursor = Cursor.decode(query["cursor"])
            except ValueError:
                return self._error(request, 400, "Invalid cursor.")
        now = self.clock()
        times, ids = self.index.sorted()
        offset = self.wall_offset
        page = select(
            times,
            ids,
            now=now,
            after=bounds.get("created_after"),
            before=bounds.get("created_before"),
            cursor=cursor,
            wall=lambda created: created + offset,
        )
        if query.get("source") == "web":  # every prediction here came by the API
            page = attrs.evolve(page, ids=[], next=None, previous=None)
        prefix = PREFIXES[1] if request.path.startswith(_GATEWAY) else PREFIXES[0]
        link = f"{request.scheme}://{request.host}{prefix}/predictions?"
        kept = {name: query[name] for name in _FILTERS if name in query}

        def url(at: Cursor | None) -> str | None:
            if at is None:
                return None
            return link + urlencode({**kept, "cursor": at.encode()})

        lag, predictions, omit = self.list_lag, self.predictions, self.list_omits
        results = []
        for pid in page.ids:
            p = predictions[pid]
            seen = max(p.created, now - lag) if lag else now
            results.append(self._render(request, p, seen, omit))
        return _json(
            {"next": url(page.next), "previous": url(page.previous), "results": results}
        )

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        """``GET /stream/{id}``: the prediction's server-sent events."""
        p = self.predictions.get(request.match_info["id"])
        if p is None or p.created > self.clock():  # not created yet
            return self._error(request, 404, "Not found.")
        return await serve_stream(
            request,
            p,
            clock=self.clock,
            stats=self.stats,
            request_id=REQUEST_ID.get(),
            cut_after=self.stream_cut_after,
        )

    async def _file(self, request: web.Request) -> web.StreamResponse:
        p = self.predictions.get(request.match_info["id"])
        body = None if p is None else served_file(p, request.match_info["name"])
        if body is None:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=body, content_type="application/octet-stream")


def _ready(response: web.StreamResponse) -> Answer:
    """An :data:`Answer` that gives *response*, already made."""

    async def answer() -> web.StreamResponse:
        return response

    return answer


async def _truncate(
    request: web.Request, normal: web.StreamResponse, stream: bool
) -> web.StreamResponse:
    """Send half of *normal*'s body: as all of it, or (*stream*) then hang up."""
    body = normal.body if isinstance(normal, web.Response) else None
    if not isinstance(body, bytes):
        return normal
    cut = body[: len(body) // 2]
    headers = {k: v for k, v in normal.headers.items() if k != "Content-Length"}
    if not stream:
        return web.Response(status=normal.status, body=cut, headers=headers)
    headers["X-Request-Id"] = REQUEST_ID.get()  # sent before the middleware sees it
    partial = web.StreamResponse(status=normal.status, headers=headers)
    partial.content_length = len(body)
    try:
        await partial.prepare(request)
        await partial.write(cut)
    except ConnectionResetError:
        # The client hung up first (its timeout passed): nobody to cut off,
        # and nothing for aiohttp to log as an error.
        _close(request)
        return web.Response()  # aiohttp quietly fails to send it
    _close(request)
    return partial


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _json_object(response: web.StreamResponse) -> dict[str, Any] | None:
    """The body of a 2xx answer that is a JSON object, else ``None``."""
    body = response.body if isinstance(response, web.Response) else None
    if not (200 <= response.status < 300 and isinstance(body, bytes)):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _split(record: dict[str, Any], *, output_first: bool) -> tuple[bytes, bytes]:
    """Return the JSON of *record* around the characters of its ``output`` string.

    ``head + b"abc" + tail`` is *record*'s JSON with ``"output": "abc"``, in
    the usual place (added last if there is none), or first.
    """
    keys = [key for key in record if key != "output"]
    at = len(keys) if "output" not in record else list(record).index("output")
    if output_first:
        at = 0
    before = {key: record[key] for key in keys[:at]}
    after = {key: record[key] for key in keys[at:]}
    head = _dumps(before)[:-1] + (b"," if before else b"") + b'"output":"'
    tail = b'"' + (b"," + _dumps(after)[1:] if after else b"}")
    return head, tail


def _padding(count: int) -> Iterator[bytes]:
    """*count* bytes of padding, in pieces of at most :data:`_CHUNK`."""
    whole, rest = divmod(count, _CHUNK)
    yield from itertools.repeat(_PADDING, whole)
    if rest:
        yield _PADDING[:rest]


def _pieces(body: bytes, size: int) -> Iterator[memoryview]:
    """*body* in pieces of *size* bytes (the last one may be shorter)."""
    view = memoryview(body)
    return (view[i : i + size] for i in range(0, len(body), size))


@functools.lru_cache(maxsize=8)
def _packed(head: bytes, count: int) -> tuple[bytes, zlib._Compress]:
    """Gzip *head* and *count* bytes of padding.

    Return the packed bytes so far and the compressor to go on with (copy it
    first: it is shared).
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(head)]
    parts.extend(compressor.compress(piece) for piece in _padding(count))
    return b"".join(parts), compressor


async def _bomb(head: bytes, pad: int, tail: bytes) -> bytes:
    """One gzip member of *head*, max(0, *pad*) bytes of padding and *tail*.

    Only the padding is expensive, and it does not depend on the prediction:
    it is packed once per size (in a thread, not to hold up other requests)
    and the compressor's state copied for each answer.
    """
    pad = max(0, pad)
    cached = pad - pad % _BOMB_STEP
    start, compressor = await asyncio.to_thread(_packed, head, cached)
    compressor = compressor.copy()
    end = compressor.compress(_PADDING[: pad - cached]) + compressor.compress(tail)
    return start + end + compressor.flush()


async def _stream(
    request: web.Request,
    status: int,
    headers: dict[str, str],
    pieces: Iterable[bytes | memoryview],
    length: int | None,
    interval: float = 0.0,
) -> web.StreamResponse:
    """Send *pieces*, *interval* seconds apart, until done or the client leaves.

    *length* is the ``Content-Length``; ``None``: chunked.  Between two pieces
    the event loop runs (other requests go on), even with no *interval*.
    """
    headers["X-Request-Id"] = REQUEST_ID.get()  # sent before the middleware sees it
    response = web.StreamResponse(status=status, headers=headers)
    if length is None:
        response.enable_chunked_encoding()
    else:
        response.content_length = length
    try:
        await response.prepare(request)
        first = True
        for piece in pieces:
            if not piece:
                continue
            if not first:
                await asyncio.sleep(interval)
            first = False
            await response.write(piece)
    except ConnectionError:
        # The client went away (it had seen enough): a ConnectionResetError
        # from a write, or a plain ConnectionError from a drain the reset
        # woke up.  Nothing to log; aiohttp quietly fails to end the response.
        _close(request)
    return response


def _echo_text(fault: Fault, request: web.Request, trailer: int) -> str:
    """*fault*'s filler, the key the client sent ("" if none), then *trailer* more."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        key = ""
    return f"{_FILLER * fault.offset}{key}{_FILLER * trailer}"


def _echo(fault: Fault, request: web.Request) -> web.Response:
    """The canned answer of :meth:`Fault.echoed_key` (any *where* but "status")."""
    where, code = fault.where, fault.code
    if where == "header":
        try:
            phrase = http.HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        response = _json({"detail": phrase, "status": code}, code, _PROBLEM)
        response.headers["X-Request-Id"] = _echo_text(fault, request, 10)
        return response
    text = _echo_text(fault, request, 40)
    if where == "comet":
        error = {
            "message": f"{text} (request id: {REQUEST_ID.get()})",
            "type": "comet_api_error",
            "param": "",
            "code": "",
        }
        return _json({"error": error}, code)
    if where == "html":
        page = (
            f"<!DOCTYPE html><html><head><title>{text}</title></head>"
            f"<body><h1>{code}</h1></body></html>"
        )
        return web.Response(status=code, text=page, content_type="text/html")
    return _json({"detail": text}, code, _PROBLEM)
