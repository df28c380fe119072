"""The public face of the fake server: lifecycle, scripting and inspection."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final

import attrs
from aiohttp import web

from ._create import CreateBudget, CreateRecord
from ._faults import Fault, FaultPlan
from ._http import Api, ErrorStyle
from ._listing import CreatedIndex
from ._records import MISSING, Prediction, Timeline, render, served_file
from ._stats import ServerStats
from ._webhooks import ALL_EVENTS, WebhookSender, is_loopback, new_secret

#: The key a :class:`FakeReplicate` accepts unless told otherwise.
DEFAULT_API_KEY: Final = "test-key"

_frozen: Final = attrs.setters.frozen
#: What list items lack by default (seen missing from Replicate's list).
LIST_OMITS: Final = frozenset({"logs", "version"})
# Maps random bytes onto lowercase base32 (a-z, 2-7), the alphabet of
# Replicate's ids; 256 is a multiple of 32, so every letter is as likely.
_ID_TABLE: Final = bytes(
    b"abcdefghijklmnopqrstuvwxyz234567"[i % 32] for i in range(256)
)


def _key_set(keys: Iterable[str]) -> frozenset[str]:
    """``list_omits`` as given (any iterable of key names), as a frozenset."""
    return frozenset(keys)


@attrs.define(eq=False, repr=False)
class FakeReplicate:
    """A Replicate-compatible HTTP server for tests, demos and benchmarks.

    It serves the prediction API under ``/v1`` (Replicate) and
    ``/replicate/v1`` (DeerAPI, CometAPI), output files under ``/files``, and
    answers from scripted predictions whose status follows *clock*.  It
    listens only where :meth:`start` says (loopback by default).

    Args:
        api_key: The only key accepted (``Authorization: Bearer <key>``).
        clock: Monotonic seconds; drives statuses and ``Retry-After``
            bookkeeping.  Pass a :class:`FakeClock` to step time by hand.
        seed: Seeds prediction ids, chaos draws and scenarios.
        error_style: ``"replicate"`` (problem+json errors), ``"comet"``
            (``{"error": {...}}`` envelopes) or ``"auto"`` (envelopes under
            ``/replicate/v1`` only).
        epoch: Unix time that *clock*'s reading at construction stands for
            (default: now); only used for the ``*_at`` timestamp strings.
        request_log_size: How many requests :attr:`ServerStats.request_log`
            keeps (the latest ones); 0 keeps none.
        latency: Real seconds every API request waits before it is answered
            (others go on meanwhile).  Without it the handlers never overlap,
            so :attr:`ServerStats.peak_in_flight` stays at 1 however many
            requests a client keeps open.
        retention: Seconds after completion when a prediction's input, output
            and logs are removed (``data_removed: true``), as Replicate does
            after about an hour; default: never.
        early_grace: Seconds after a pause begins during which arriving
            requests are not counted in :attr:`ServerStats.early_requests`:
            the client had sent them before the 429 could reach it.  Keep it
            at 0 for a client with one request open at a time; a few tens of
            milliseconds cover the requests a concurrent client has in flight.
        list_lag: Seconds by which list items lag: an item shows its
            prediction as it was that long ago (never before its creation),
            while ``GET /predictions/{id}`` shows it as it is.
        list_omits: Top-level keys list items leave out (default: ``logs``
            and ``version``); ``frozenset()`` serves full records.
        webhook_secret: The ``whsec_...`` secret webhooks are signed with
            (read it back as ``server.webhook_secret``); default: one drawn
            from *seed*.
        webhook_loss: Chance (0 to 1) that a webhook delivery is dropped,
            never sent (:attr:`ServerStats.webhooks_lost`); seeded draws.
        webhook_delay: Real seconds added before each webhook delivery.
        webhook_duplicates: Chance (0 to 1) that a delivery is sent twice,
            the same bytes with the same ``webhook-id``, as senders may.
        webhook_retry_window: Seconds of *clock* after a prediction
            completed during which its ``completed`` webhook is retried
            (with a doubling wait, from 0.1 s to 10 s) when the receiver
            answers non-2xx or not at all; other events are sent once.
            Replicate's window is about a minute.  See :doc:`/howto/webhooks`
            and :mod:`replipoll.testing._webhooks` for when deliveries go out.
        stream_cut_after: Real seconds after which an event stream's
            connection is dropped (mid-event), as Replicate cuts streams
            after 25-35 s, so that clients must reconnect; ``None``: never.
        create_rate_limit: Create requests a second this key may make (a
            budget apart from other requests', as on Replicate: 10 a second,
            0.1 for an account low on credit); ``None``: no limit.  Over it a
            create gets a 429 as Replicate words it for low credit, with
            ``Retry-After`` (seconds to the next free request, to the
            millisecond), and creates nothing.  Measured on *clock*.
        create_burst: Creates allowed at once (the bucket's size, full at
            the start), >= 1.

    Endpoints, under both ``/v1`` and ``/replicate/v1``:

    - ``GET /predictions/{id}``; ``POST /predictions/{id}/cancel``.
    - ``POST /predictions`` (``version`` + ``input``),
      ``POST /models/{owner}/{name}/predictions`` and
      ``POST /deployments/{owner}/{name}/predictions`` (``input``): 201 with
      a new prediction, scripted by the input keys ``replipoll_queue``
      (default 0), ``replipoll_duration`` (1) and ``replipoll_outcome``
      (``succeeded``); ``replipoll_model`` names the model of a deployment
      (default: the deployment's name) or of a bare version id.  A
      deployment's predictions carry ``"deployment": "owner/name"``.

      - ``Prefer: wait=N`` (1 to 60; ``wait`` alone: 60), sync mode: the
        answer waits, in real time, until the prediction is final or N
        seconds of *clock* passed, then shows it as it stands (maybe still
        ``starting`` or ``processing``).  A hand-driven clock that nobody
        moves during a 20 ms look answers at once.  A bad ``wait`` value is
        a 422 (Replicate's schema allows only these); other preferences are
        ignored.
      - ``Cancel-After`` (``90``, ``30s``, ``5m``, ``1h30m``; Replicate's
        5-second minimum is not enforced): a deadline, shown as
        ``"deadline"``, after which the prediction ends ``aborted`` if
        still ``starting`` (no ``predict_time``), ``canceled`` if running.
        A bad value is a 422 naming the header.
      - ``webhook`` and ``webhook_events_filter`` (a list of ``start``,
        ``output``, ``logs``, ``completed``; default all four) are checked
        (a 422 for a bad one), stored and shown in the record; the
        webhooks are sent, signed (see *webhook_secret*), to a URL on this
        machine only.
      - Bad JSON is a 400; a missing ``input`` (or ``version``), a bad
        script or header a 422; over *create_rate_limit* a 429.  Only a
        201 creates a prediction (:meth:`created`,
        :attr:`ServerStats.creations`).
    - ``GET /predictions``: every prediction created so far, newest first,
      100 a page, ``{"next", "previous", "results"}``; ``created_after``
      (inclusive) and ``created_before`` (exclusive) take ISO 8601
      date-times; ``cursor`` is an opaque keyset cursor from ``next`` or
      ``previous`` (pages do not shift as predictions are created);
      ``source=web`` answers no results.  Items lack *list_omits* and lag
      by *list_lag*.  A bad date or cursor is a 400.  See
      :doc:`/list-endpoint`.

    Beside them, with the key: ``GET /stream/{id}``, the prediction's
    server-sent events (its ``urls.stream`` points there): ``logs`` events
    (its *logs*, a line each) and ``output`` events (a string output a token
    at a time, a list an item at a time, no output given: its file URLs)
    spread over its run, then ``done`` with ``{}``; after a failure an
    ``error`` event then ``done`` with ``{"reason": "error"}``, after a
    cancel ``done`` with ``{"reason": "canceled"}``.  Every event has an
    ``id:``, and ``Last-Event-ID`` resumes after it.  Faults added for a
    prediction hit its stream requests too.

    And without a key: ``GET /files/{id}/out-{i}.bin``, the output files.

    Example:
        >>> from replipoll.testing import FakeClock
        >>> clock = FakeClock()
        >>> server = FakeReplicate(clock=clock)
        >>> pid = server.add_prediction(queue=1, duration=2)
        >>> server.prediction_state(pid)["status"]
        'starting'
        >>> clock.advance(3)
        >>> server.prediction_state(pid)["status"]
        'succeeded'
    """

    api_key: str = attrs.field(default=DEFAULT_API_KEY, on_setattr=_frozen)
    _clock: Callable[[], float] = attrs.field(
        default=time.monotonic, kw_only=True, alias="clock", on_setattr=_frozen
    )
    seed: int = attrs.field(default=0, kw_only=True, on_setattr=_frozen)
    error_style: ErrorStyle = attrs.field(
        default="auto",
        kw_only=True,
        validator=attrs.validators.in_(("auto", "replicate", "comet")),
        on_setattr=_frozen,
    )
    _epoch: float | None = attrs.field(
        default=None, kw_only=True, alias="epoch", on_setattr=_frozen
    )
    request_log_size: int = attrs.field(
        default=10_000, kw_only=True, on_setattr=_frozen
    )
    latency: float = attrs.field(default=0.0, kw_only=True, on_setattr=_frozen)
    early_grace: float = attrs.field(default=0.0, kw_only=True, on_setattr=_frozen)
    retention: float | None = attrs.field(
        default=None, kw_only=True, on_setattr=_frozen
    )
    list_lag: float = attrs.field(
        default=0.0,
        kw_only=True,
        validator=attrs.validators.ge(0.0),
        on_setattr=_frozen,
    )
    list_omits: frozenset[str] = attrs.field(
        default=LIST_OMITS, kw_only=True, converter=_key_set, on_setattr=_frozen
    )
    stream_cut_after: float | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.gt(0.0)),
        on_setattr=_frozen,
    )
    create_rate_limit: float | None = attrs.field(
        default=None,
        kw_only=True,
        validator=attrs.validators.optional(attrs.validators.gt(0.0)),
        on_setattr=_frozen,
    )
    create_burst: int = attrs.field(
        default=1, kw_only=True, validator=attrs.validators.ge(1), on_setattr=_frozen
    )
    webhook_secret: str = attrs.field(
        default=attrs.Factory(lambda self: new_secret(self.seed), takes_self=True),
        kw_only=True,
        on_setattr=_frozen,
    )
    webhook_loss: float = attrs.field(
        default=0.0,
        kw_only=True,
        validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)],
        on_setattr=_frozen,
    )
    webhook_delay: float = attrs.field(
        default=0.0,
        kw_only=True,
        validator=attrs.validators.ge(0.0),
        on_setattr=_frozen,
    )
    webhook_duplicates: float = attrs.field(
        default=0.0,
        kw_only=True,
        validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)],
        on_setattr=_frozen,
    )
    webhook_retry_window: float = attrs.field(
        default=60.0,
        kw_only=True,
        validator=attrs.validators.ge(0.0),
        on_setattr=_frozen,
    )

    _predictions: dict[str, Prediction] = attrs.field(init=False, factory=dict)
    _index: CreatedIndex = attrs.field(init=False, factory=CreatedIndex)
    _rng: random.Random = attrs.field(init=False)
    _faults: FaultPlan = attrs.field(init=False)
    _api: Api = attrs.field(init=False)
    _app: web.Application = attrs.field(init=False)
    _runner: web.AppRunner | None = attrs.field(init=False, default=None)
    _url: str | None = attrs.field(init=False, default=None)
    _webhooks: WebhookSender = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._faults = FaultPlan(rng=random.Random(self.seed))
        epoch = time.time() if self._epoch is None else self._epoch
        self._api = Api(
            predictions=self._predictions,
            index=self._index,
            add_prediction=self.add_prediction,
            faults=self._faults,
            clock=self._clock,
            wall_offset=epoch - self._clock(),
            api_key=self.api_key,
            error_style=self.error_style,
            log_size=self.request_log_size,
            latency=self.latency,
            retention=self.retention,
            early_grace=self.early_grace,
            list_lag=self.list_lag,
            list_omits=self.list_omits,
            stream_cut_after=self.stream_cut_after,
            create_budget=None
            if self.create_rate_limit is None
            else CreateBudget(self.create_rate_limit, self.create_burst),
        )
        self._app = self._api.build_app()
        self._webhooks = WebhookSender(
            secret=self.webhook_secret,
            loss=self.webhook_loss,
            delay=self.webhook_delay,
            duplicates=self.webhook_duplicates,
            retry_window=self.webhook_retry_window,
            seed=self.seed,
            clock=self._clock,
            render=self._webhook_body,
            stats=lambda: self._api.stats,
        )

    def __repr__(self) -> str:
        return f"<FakeReplicate url={self._url} predictions={len(self._predictions)}>"

    # -- lifecycle ---------------------------------------------------------

    @property
    def app(self) -> web.Application:
        """The :class:`aiohttp.web.Application` (to run it some other way)."""
        return self._app

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the started server.

        Raises:
            RuntimeError: The server is not started.
        """
        if self._url is None:
            raise RuntimeError("FakeReplicate is not started; await start() first")
        return self._url

    def base_url(self, prefix: str = "/v1") -> str:
        """Return the API base URL for *prefix* (``"/v1"`` or ``"/replicate/v1"``).

        Raises:
            RuntimeError: The server is not started.
        """
        return f"{self.url}{prefix}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on *host*:*port* (port 0: a free one); see :attr:`url`.

        Raises:
            RuntimeError: Already started.
            OSError: The address is not available.
        """
        if self._runner is not None:
            raise RuntimeError("FakeReplicate is already started")
        # A short shutdown timeout: close() should not wait long for requests
        # that a slow fault keeps waiting.
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self._runner, self._url = runner, f"http://{bound_host}:{bound_port}"
        await self._webhooks.start()

    async def close(self) -> None:
        """Stop listening and drop open connections; safe to call twice."""
        runner, self._runner, self._url = self._runner, None, None
        if runner is not None:
            await self._webhooks.close()  # no more deliveries, none in flight
            await runner.cleanup()

    async def __aenter__(self) -> FakeReplicate:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- scripting ---------------------------------------------------------

    def add_prediction(
        self,
        id: str | None = None,
        *,
        queue: float = 0.0,
        duration: float = 0.0,
        outcome: str = "succeeded",
        output: Any = MISSING,
        n_files: int = 1,
        file_size: int = 1024,
        error: str | None = None,
        input: Mapping[str, Any] | None = None,
        model: str = "owner/model",
        logs: str = "",
        extra: Mapping[str, Any] | None = None,
        progress_steps: int | None = None,
        created: float | None = None,
        webhook: str | None = None,
        webhook_events_filter: Iterable[str] | None = None,
    ) -> str:
        """Script a prediction, created now (or at *created*); return its id.

        It is ``starting`` for *queue* seconds, ``processing`` for *duration*
        seconds, then *outcome* for ever (unless cancelled first).

        Args:
            id: Its id; default: 26 random characters from ``a-z2-7``.
            queue: Seconds in ``starting``.
            duration: Seconds in ``processing``.
            outcome: ``succeeded``, ``failed``, ``canceled``, ``aborted`` (then
                ``starting`` for ``queue + duration`` and never started), or any
                other string, served as an undocumented final status.
            output: Output of a success; default: URLs of *n_files* files of
                *file_size* bytes that this server serves.
            n_files: Files served under ``/files/{id}/out-{i}.bin``.
            file_size: Size of each file in bytes.
            error: Error of a failure (default: an ``E1001`` out-of-memory one).
            input: The ``input`` object echoed back.
            model: ``owner/name``.
            logs: Logs shown once the prediction started.
            extra: Extra top-level fields (say ``{"x_gateway": {...}}``) for
                clients that must keep fields they do not know.
            progress_steps: Print a tqdm progress bar of this many steps
                after *logs* while processing, a line every few steps, each
                as tqdm draws it when its step ends; the bar takes the run
                but its last tenth (at most half a second of
                post-processing after 100%).  Nothing is stored per line:
                the logs are computed from the time on each GET.
            created: When it is created, in seconds of the server's clock;
                default: now.  Until then the API knows nothing of it (a
                GET is a 404, the list leaves it out).
            webhook: A URL on this machine that the server sends webhooks
                to, as for a create with ``"webhook"`` (see
                *webhook_secret*).
            webhook_events_filter: Which events: some of ``start``,
                ``output``, ``logs``, ``completed``; default: all four.

        Raises:
            ValueError: The id is taken or contains ``/``, a number is
                negative, or *created* is not finite, or *webhook* is not
                a loopback URL (the fake sends nothing off this machine).
        """
        if id is None:
            id = self._new_id()
        elif not id or "/" in id or id in self._predictions:
            raise ValueError(f"unusable or duplicate prediction id {id!r}")
        steps = progress_steps or 0
        if min(queue, duration, n_files, file_size, steps) < 0:
            raise ValueError(
                "queue, duration, n_files, file_size and progress_steps must be >= 0"
            )
        if created is not None and not math.isfinite(created):
            raise ValueError(f"created must be a finite time, not {created!r}")
        if webhook is not None and not is_loopback(webhook):
            raise ValueError(
                f"webhook must be an http(s) URL on this machine, not {webhook!r}"
            )
        events = ALL_EVENTS if webhook_events_filter is None else webhook_events_filter
        events = tuple(dict.fromkeys(events))
        if not set(events) <= set(ALL_EVENTS):
            raise ValueError(f"unknown webhook events in {events!r}")
        pid = self._script(
            Prediction(
                id,
                self._clock() if created is None else created,
                queue,
                duration,
                outcome,
                output,
                n_files,
                file_size,
                error,
                dict(input) if input else {},
                model,
                logs,
                dict(extra) if extra else None,
                None,
                steps,
            )
        )
        if webhook is not None:
            p = self._predictions[pid]
            p.webhook, p.webhook_events_filter = webhook, events
        return pid

    def _script(self, p: Prediction) -> str:
        """Add *p* as it is (checked, and its id free; the workload shares inputs)."""
        self._index.add(p.created, p.id)
        self._predictions[p.id] = p
        self._webhooks.added(p)  # it reads the webhook fields set after this
        return p.id

    def _webhook_body(self, p: Prediction, at: float) -> dict[str, Any]:
        """The record a webhook sent at *at* carries: a ``/v1`` GET's then."""
        return render(
            p,
            at,
            wall_offset=self._api.wall_offset,
            origin=self._url or "http://127.0.0.1",
            gateway=False,
            retention=self.retention,
        )

    def add_predictions(
        self,
        n: int,
        vary: Callable[[int], Mapping[str, Any]] | None = None,
        /,
        **kwargs: Any,
    ) -> list[str]:
        """Script *n* predictions at once; return their ids in order.

        Args:
            n: How many.
            vary: Called with each index; the keyword arguments of
                :meth:`add_prediction` it returns override *kwargs*.
            kwargs: Keyword arguments of :meth:`add_prediction` for all of them.
        """
        add = self.add_prediction
        if vary is None:
            return [add(**kwargs) for _ in range(n)]
        return [add(**{**kwargs, **vary(i)}) for i in range(n)]

    def add_fault(
        self,
        fault: Fault,
        *,
        prediction_id: str | None = None,
        times: int | None = 1,
        files: bool = False,
        creates: bool = False,
    ) -> None:
        """Inject *fault* into the next *times* matching requests.

        Faults hit before authentication, in the order they were added, and
        before any chaos (:meth:`set_chaos`).  Whether a create they hit
        made its prediction depends on the fault: see :class:`Fault` and
        :meth:`Fault.after_handling`.

        Args:
            fault: What to do.
            prediction_id: Only requests for this prediction; default: any API
                request (create and list included).
            times: How many requests; ``None``: all of them, until
                :meth:`clear_faults`.
            files: Match file downloads (``/files/{prediction_id}/...``)
                instead of API requests.
            creates: Match create requests only (``POST`` on
                ``/predictions``, ``/models/.../predictions``,
                ``/deployments/.../predictions``), which name no prediction.

        Raises:
            ValueError: *times* is below 1, a :meth:`Fault.mismatched_id`
                names no prediction of this server, a fault for API
                requests only (``mismatched_id``, ``echoed_key``) is given
                *files*, or *creates* comes with *files* or *prediction_id*.
        """
        self._check(fault)
        self._faults.add(fault, prediction_id, times, files, creates)

    def remove_fault(self, fault: Fault) -> None:
        """Stop injecting *fault* (every :meth:`add_fault` of it), now.

        A fault that should last for a while rather than a number of
        requests: add it with ``times=None``, remove it later.
        """
        self._faults.remove(fault)

    def clear_faults(self) -> None:
        """Forget the faults added with :meth:`add_fault` and turn chaos off."""
        self._faults.clear()

    def set_chaos(
        self,
        probability: float,
        kinds: Iterable[Fault | str] | None = None,
        *,
        seed: int | None = None,
        creates: bool = False,
    ) -> None:
        """Give each GET and cancel of a prediction a random fault.

        Lists and downloads are left alone, and creates unless *creates*.

        Args:
            probability: Chance per request, from 0 (off) to 1.
            kinds: Faults to draw from, as :class:`Fault` values or kind names
                of :data:`CHAOS_FAULTS`; default: all of :data:`CHAOS_FAULTS`.
            seed: Seed of the draws (default: the server's *seed*); the same
                seed and request order give the same faults.
            creates: Create requests get faults too, from the same *kinds*
                (add :data:`LOST_ANSWER_FAULTS` to lose answers of created
                predictions).

        Raises:
            ValueError: Bad probability, unknown kind name, no kinds, or a
                :meth:`Fault.mismatched_id` naming no prediction of this server.
        """
        kinds = None if kinds is None else list(kinds)
        for kind in kinds or ():
            if isinstance(kind, Fault):
                self._check(kind)
        seed = self.seed if seed is None else seed
        self._faults.set_chaos(probability, kinds, seed, creates)

    def _check(self, fault: Fault) -> None:
        other = fault.other
        if other is not None and other not in self._predictions:
            raise ValueError(f"Fault.mismatched_id: no prediction {other!r} here")

    # -- inspection --------------------------------------------------------

    @property
    def stats(self) -> ServerStats:
        """Live counters (replaced, not cleared, by :meth:`reset_stats`)."""
        return self._api.stats

    def reset_stats(self) -> None:
        """Start counting afresh (requests still in flight stay counted)."""
        self._api.reset_stats()

    def prediction_state(self, prediction_id: str) -> dict[str, Any]:
        """Return the JSON a ``/v1`` GET of *prediction_id* would answer now.

        A prediction created later (``created=``) is shown ``starting``,
        though the API answers 404 for it until then.

        Raises:
            KeyError: No such prediction.
        """
        return render(
            self._predictions[prediction_id],
            self._clock(),
            wall_offset=self._api.wall_offset,
            origin=self._url or "http://127.0.0.1",
            gateway=False,
            retention=self.retention,
        )

    def created(self) -> list[CreateRecord]:
        """Return the predictions created through the API, oldest first.

        Each :class:`CreateRecord` holds the id, the ``input`` sent, the
        model, deployment, webhook fields, sync wait and deadline asked for,
        and the create's request id: enough to prove that a client created
        each thing once.  Predictions scripted with :meth:`add_prediction`
        are not in it.
        """
        return list(self._api.created)

    def now(self) -> float:
        """Return the server's clock reading (what :meth:`timeline` counts in)."""
        return self._clock()

    def timeline(self, prediction_id: str) -> Timeline:
        """Return when *prediction_id* is created, starts and completes.

        Seconds of the server's clock, as scripted: a benchmark's detection
        delay is when its client saw the final status less
        ``timeline(pid).completed`` (on the same clock).

        Raises:
            KeyError: No such prediction.

        Example:
            >>> from replipoll.testing import FakeClock
            >>> server = FakeReplicate(clock=FakeClock(10.0))
            >>> server.timeline(server.add_prediction(queue=1, duration=2))
            Timeline(created=10.0, started=11.0, completed=13.0, status='succeeded')
        """
        return Timeline.of(self._predictions[prediction_id])

    def file_content(self, prediction_id: str, name: str) -> bytes:
        """Return the bytes ``/files/{prediction_id}/{name}`` serves.

        Raises:
            KeyError: No such prediction or file.
        """
        content = served_file(self._predictions[prediction_id], name)
        if content is None:
            raise KeyError(name)
        return content

    def _new_id(self) -> str:
        while True:
            pid = self._rng.randbytes(26).translate(_ID_TABLE).decode()
            if pid not in self._predictions:
                return pid
