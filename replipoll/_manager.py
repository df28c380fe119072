"""The scheduler: many predictions, few requests in flight, one shared budget.

Shape: two timer queues (due polls, on the coalescing grid in a
:class:`~replipoll._schedule.GridTimers`; deadlines in a
:class:`~replipoll._schedule.TimerQueue`) and a fixed pool of
``max_concurrency`` workers. A tracked id costs one small record, one future
and a timer entry, not a sleeping task; one timer (``loop.call_at``) serves
both queues: it ends ids whose deadline passed and moves ids whose poll is
due onto the work queue. A worker waits for the rate budget, sends one
request through the client's transport, and either resolves the id's future
or makes the id due again: after the poll policy's delay when it is still
running, after the retry engine's wait when the request failed in a way
worth retrying. A retry therefore waits without holding a worker or a
connection.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import math
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from types import TracebackType
from typing import Any, Final, Self

from ._client import DEFAULT_TIMEOUT, Client
from ._create import create_request
from ._errors import (
    BatchStoppedError,
    ConfigurationError,
    ManagerClosedError,
    PollTimeout,
    RateLimitedError,
    RequestError,
)
from ._hints import ServerHints
from ._learn import LearnedPolicy
from ._models import Prediction, Status
from ._options import (
    check_at_least,
    check_callable,
    check_non_negative,
    check_positive,
)
from ._pages import PredictionPage
from ._results import (
    Diagnosis,
    PollResult,
    PollStats,
    RunResult,
    StatusTally,
    SystemicWatch,
)
from ._retry import Retrying, RetryPolicy
from ._sansio import ApiRequest
from ._schedule import GridTimers, PollPolicy, RateBudget, TimerQueue, on_grid
from ._share import Budget, Share
from ._sweep import Sweeper

__all__ = ["PollManager", "PollResult", "PollStats", "RunResult"]

logger: Final = logging.getLogger("replipoll")

#: Called with each record whose status differs from the last one seen.
UpdateCallback = Callable[[Prediction], Awaitable[None] | None]

#: Seconds the cancel of an id whose deadline passed may take, at most
#: (``cancel_on_timeout``); it runs beside the manager, not in the id's time.
CANCEL_DEADLINE: Final = 10.0

#: Seconds: the longest poll interval a server's ``Retry-After`` on a
#: successful answer is honoured for (a longer one is cut to this).
MAX_POLL_AFTER: Final = 300.0

#: Ids handled per turn of the event loop in bulk work (submitting a batch,
#: ending ids whose polls or deadlines fall due together): a million ids must
#: not stall the loop for seconds.
_CHUNK: Final = 2048


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


async def _all_done(futures: Iterable[asyncio.Future[Prediction]]) -> None:
    """Wait until every future is done.

    Like ``asyncio.wait`` without its per-future cleanup, which for a
    million futures is one long stall of the loop.
    """
    pending = 0
    finished = asyncio.get_running_loop().create_future()

    def one_done(_: object) -> None:
        nonlocal pending
        pending -= 1
        if pending == 0 and not finished.done():
            finished.set_result(None)

    for future in futures:  # (one listed twice is counted twice)
        if not future.done():
            pending += 1
            future.add_done_callback(one_done)
    if pending:
        await finished


#: A page of a sweep for a worker to fetch, and where its answer goes.
_PageJob = tuple[ApiRequest, asyncio.Future[PredictionPage]]
#: An entry of the work queue: (rank, arrival, an id, a page or a stop).
_Job = tuple[float, int, str | _PageJob | None]
#: Ranks in the work queue below any id's (0 until its first answer, then
#: a Unix time): the GET of an id a sweep found finished, a page.
_FINISHED: Final = -2.0
_PAGE: Final = -1.0
#: Terminal records pushed for ids not tracked are kept this many seconds,
#: this many at most (the oldest go first).
_EARLY_TTL: Final = 300.0
_EARLY_MAX: Final = 10_000


class _Track(asyncio.Future[Prediction]):
    """A tracked id: the future its awaiters share, and what polling needs.

    One object per id, the future and the bookkeeping together: at a million
    tracked ids every object counts, in bytes and in the garbage collector's
    work. Cancelling it (an awaiter's ``wait_for`` timing out,
    ``future.cancel()``) stops tracking the id at once: no more polls, no
    more counting.
    """

    __slots__ = (
        "counted",
        "deadline",
        "digest",
        "id",
        "last",
        "manager",
        "rank",
        "request",
        "retrying",
        "started",
        "webhook",
    )
    id: str
    #: None for the usual ``GET predictions/{id}``, built when sent.
    request: ApiRequest | None
    started: float
    deadline: float
    #: The retry state of a run of failed requests; None after a success.
    retrying: Retrying | None
    #: The latest record (``keep_last``); after an error, the last one seen.
    last: Prediction | None
    #: The hash of the body ``last`` was decoded from; None if not polled
    #: (a webhook's record, say). The same body again is not decoded again.
    digest: int | None
    #: The name this id is counted under in the status tally.
    counted: str
    #: Told when the future is cancelled; None once the id has ended.
    manager: PollManager | None
    #: Its place in the work queue, lowest first: 0 until its first answer,
    #: then Unix seconds when it is expected to end (when it was created,
    #: until that is known).
    rank: float
    #: Its webhook is expected: polled only as a safety net.
    webhook: bool

    def cancel(self, msg: Any | None = None) -> bool:
        """Cancel the future; the manager stops polling its id."""
        cancelled = super().cancel(msg)
        manager = self.manager
        if cancelled and manager is not None:
            manager._cancelled(self)
        return cancelled


class PollManager:
    """Poll many predictions concurrently until each is terminal.

    Args:
        client: The :class:`~replipoll.Client` to poll with; its transport,
            per-request timeouts and (by default) retry policy apply.
        max_concurrency: The most HTTP requests open at once (not ids tracked).
        rate_limit: Requests per second for this manager's requests, retries
            included; ``None`` uses the client's budget. A 429's
            ``Retry-After`` pauses the whole budget either way.
        burst: Requests that may go at once under ``rate_limit``.
        timeout: Seconds each id may take, from submission, to reach a
            terminal status; then it ends with :class:`~replipoll.PollTimeout`.
            ``None`` waits for ever. The same default as :meth:`Client.wait`.
        policy: The poll schedule. By default a :class:`LearnedPolicy`: it
            polls like :class:`PollPolicy` until it has seen a model's
            predictions finish, then near each one's expected finish (and
            from a progress bar in the logs); it learns across every id of
            this manager. Pass a :class:`PollPolicy` for a schedule that
            does not learn.
        retry: What to retry and how long to wait; the client's by default.
            A retry waits in the schedule, without holding a worker.
        on_update: Called (sync or async) with each record whose status
            changed. It runs in a worker, so keep it short. If it raises,
            that id ends with the callback's exception.
        cancel_on_timeout: Also ``POST .../cancel`` an id whose deadline
            passed. The id still ends at its deadline; the cancel goes out
            beside it, within its own 10 s, and its outcome is logged.
        coalesce: Seconds: the step of a grid that polls are moved onto,
            so that polls falling due close together go out together and
            the event loop wakes up once for many of them (less CPU per
            request: see :doc:`/benchmarks`). A poll goes to the nearest
            point, earlier only as far as the policy's jitter reaches (a
            :meth:`PollPolicy.fixed` poll or a retry is never early), so
            on average polls are not later than the policy says; a wait
            shorter than four steps uses a finer grid. ``0`` turns it off.
        stop_on_systemic: When the first answers show that the whole batch
            fails for one reason (see :attr:`diagnosis`), end every
            unfinished id with :class:`~replipoll.BatchStoppedError` at once
            (and every id submitted later), instead of spending a request
            and its retries on each. The judgement is made and logged either
            way.
        keep_last: Keep each running id's latest record, so that an id
            ending in an error still shows where it was
            (:attr:`PollTimeout.last <replipoll.PollTimeout>`,
            :attr:`PollResult.prediction`). A record takes 1-2 KB; for
            hundreds of thousands of ids at once, ``False`` keeps only the
            status name (the error message still gives it): see
            :doc:`/performance`. A finished id's record is never kept: it
            goes to the id's future.

        sweep: Follow unfinished ids through pages of the list endpoint
            (``GET predictions``, 100 a page) rather than a ``GET`` per id:
            ``None`` (the default) where a sweep measures cheaper, with 20
            ids or more; ``True`` whenever the server serves the list;
            ``False`` never. A server that does not serve it (the gateways)
            gets per-id polling, said once in the log. See
            :doc:`/explanation/sweeps`; :attr:`stats` says the mode.
        sweep_interval: Seconds from the start of one sweep to the next, at
            least (a sweep of many pages takes longer).
        full_records: Resolve an id that a sweep found finished with its
            whole record: one ``GET`` where the list item lacks a field a
            ``GET`` answers (Replicate's items lack ``logs``). ``False``
            resolves it with the list item itself (``logs`` ``None``),
            saving that request: when predictions finish faster than the
            rate limit allows a ``GET`` each, the list items are what keeps
            detection prompt.
        webhook: The URL that :meth:`run` and :meth:`run_many` ask the
            provider to send each prediction's record to (served by
            :func:`webhook_handler`, which hands it to :meth:`push`). An id
            whose webhook is expected is polled only as a safety net: see
            ``webhook_grace``.
        webhook_grace: Seconds past an id's expected finish (learned per
            model; until then, ``safety_interval`` after it was submitted,
            moved once the model is learned) before the first safety poll
            of an id whose webhook is expected; then one every
            ``safety_interval``. A lost webhook so
            costs delay, never the result: see :doc:`/howto/webhooks`.
        safety_interval: Seconds between the safety polls of an id whose
            webhook is expected.
        budget: The request budget to spend, any :class:`Budget` (a
            :class:`~replipoll.redis.RedisBudget` shares one key's limit
            between processes); the client's by default. Not with
            ``rate_limit``.
        share: Peers to share ids with, any :class:`Share`
            (:class:`~replipoll.redis.RedisShare`): each id is polled by one
            process at a time, and a record any of them learns, by a poll
            or a webhook pushed to it, resolves the id everywhere. See
            :doc:`/howto/redis`.

    Use it as ``async with``; on exit every poll still running is stopped and
    awaited, and every unfinished id ends with
    :class:`~replipoll.ManagerClosedError` (an error, not a cancellation:
    nothing cancelled the code awaiting it).

    Raises:
        ConfigurationError: a bad option; ``option`` names it.

    Example:
        >>> import asyncio, replipoll
        >>> from replipoll.testing import FakeReplicate
        >>> async def main():
        ...     async with FakeReplicate() as server:
        ...         ids = server.add_predictions(3, duration=0.2)
        ...         async with replipoll.Client(
        ...             base_url=server.base_url(), api_key=server.api_key
        ...         ) as client, replipoll.PollManager(client) as manager:
        ...             results = await manager.poll_many(ids)
        ...     return [str(r.prediction.status) for r in results]
        >>> asyncio.run(main())
        ['succeeded', 'succeeded', 'succeeded']
    """

    def __init__(
        self,
        client: Client,
        *,
        max_concurrency: int = 32,
        rate_limit: float | None = None,
        burst: int = 10,
        timeout: float | None = DEFAULT_TIMEOUT,
        policy: PollPolicy | LearnedPolicy | None = None,
        retry: RetryPolicy | None = None,
        on_update: UpdateCallback | None = None,
        cancel_on_timeout: bool = False,
        coalesce: float = 0.2,
        stop_on_systemic: bool = False,
        keep_last: bool = True,
        sweep: bool | None = None,
        sweep_interval: float = 1.0,
        full_records: bool = True,
        webhook: str | None = None,
        webhook_grace: float = 10.0,
        safety_interval: float = 30.0,
        budget: Budget | None = None,
        share: Share | None = None,
    ) -> None:
        owner = "PollManager"
        if not isinstance(client, Client):
            raise ConfigurationError(
                f"{owner}: client must be a replipoll.Client, "
                f"got {type(client).__name__}",
                option="client",
            )
        check_at_least(owner, "max_concurrency", max_concurrency, 1)
        check_positive(owner, "rate_limit", rate_limit, none=True)
        check_at_least(owner, "burst", burst, 1)
        check_positive(owner, "timeout", timeout, none=True)
        check_non_negative(owner, "coalesce", coalesce)
        check_positive(owner, "sweep_interval", sweep_interval)
        check_non_negative(owner, "webhook_grace", webhook_grace)
        check_positive(owner, "safety_interval", safety_interval)
        if webhook is not None:
            create_request("a/b", input={}, webhook=webhook)  # checks the URL
        if sweep not in (None, True, False):
            raise ConfigurationError(
                f"{owner}: sweep must be None (where it measures cheaper), "
                f"True or False, got {sweep!r}",
                option="sweep",
            )
        check_callable(owner, "on_update", on_update)
        for option, value, kind, named in (
            (
                "policy",
                policy,
                (PollPolicy, LearnedPolicy),
                "a PollPolicy, a LearnedPolicy",
            ),
            ("retry", retry, (RetryPolicy,), "a RetryPolicy"),
            ("budget", budget, (Budget,), "a replipoll.Budget"),
            ("share", share, (Share,), "a replipoll.Share"),
        ):
            if value is not None and not isinstance(value, kind):
                raise ConfigurationError(
                    f"{owner}: {option} must be {named} or None, "
                    f"got {type(value).__name__}",
                    option=option,
                )
        self.client = client
        self.max_concurrency = max_concurrency
        if budget is not None and rate_limit is not None:
            raise ConfigurationError(
                f"{owner}: pass either budget or rate_limit, not both "
                "(give the budget its rate)",
                option="budget",
            )
        self.budget: Budget = (
            budget
            if budget is not None
            else client.budget
            if rate_limit is None
            else RateBudget(rate_limit, burst)
        )
        self.share = share
        self._hooks = _Hooks(self) if share is not None else None
        self.timeout = timeout
        self.policy: PollPolicy | LearnedPolicy = (
            policy if policy is not None else LearnedPolicy()
        )
        self.retry = retry if retry is not None else client.retry
        self.on_update = on_update
        self.cancel_on_timeout = cancel_on_timeout
        self.coalesce = coalesce
        self.stop_on_systemic = stop_on_systemic
        self.keep_last = keep_last
        self.full_records = full_records
        self.webhook = webhook
        self.webhook_grace = webhook_grace
        self.safety_interval = safety_interval
        self._tracks: dict[str, _Track] = {}
        # Terminal records pushed for ids not (yet) tracked: a webhook may
        # beat the answer of the create that made its prediction.
        self._early: dict[str, tuple[float, Prediction]] = {}
        self._pushing: set[asyncio.Task[None]] = set()
        # Ids whose webhook is expected, by model, whose safety poll was set
        # before the model's run time was known: planned again once it is.
        self._unplanned: dict[str, set[str]] = {}
        self._created = self._pushed = 0
        self._polls = self._poll_timers()
        # Deadlines are a queue of their own, so that they pass on time
        # whatever the workers are doing (all asleep in a Retry-After, say).
        self._deadlines = TimerQueue()
        # Due work, most urgent first: (rank, arrival, what). Stops go
        # before all; then the GETs of ids a sweep found finished (each is a
        # result: while they wait, a page would only find more); then pages
        # of a sweep; then first GETs; then polls by when each id is
        # expected to end (or was created): when requests cannot keep up,
        # the ids likeliest to have ended long ago, nearest to losing their
        # outputs, go first.
        self._queue: asyncio.PriorityQueue[_Job] | None = None
        self._arrivals = itertools.count()
        self._sweeping: asyncio.Task[None] | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._tally = StatusTally(redact=client._redact, say=_say_undocumented)
        self._cancels: set[asyncio.Task[None]] = set()
        self._watch = SystemicWatch(client.base_url, key=client._key_env)
        self._diagnosis: Diagnosis | None = None
        # True until a record arrives or a diagnosis is made (read per request).
        self._judging = True
        self._finished = self._errors = self._in_flight = self._peak = 0
        self._submitted = 0
        self._requests = self._retries = self._throttled = 0
        self._budget_wait = 0.0
        self._hints = ServerHints()
        self._sweeper = (
            None
            if sweep is False
            else Sweeper(self, always=sweep is True, interval=sweep_interval)
        )

    # -- lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _start_loop(self) -> asyncio.AbstractEventLoop:
        self._start()
        assert self._loop is not None
        return self._loop

    def _start(self) -> asyncio.PriorityQueue[_Job]:
        if self._closed:
            raise RuntimeError("this PollManager is closed")
        if self._queue is None:
            self._loop = asyncio.get_running_loop()
            if self.share is not None:
                # First: a share that refuses (it serves another manager)
                # leaves no workers behind.
                assert self._hooks is not None
                self.share.attach(self._hooks)
            self._queue = asyncio.PriorityQueue()
            self._workers = [
                self._loop.create_task(self._work(), name=f"replipoll-worker-{n}")
                for n in range(self.max_concurrency)
            ]
            if self._sweeper is not None:
                self._sweeping = self._loop.create_task(
                    self._sweeper.run(), name="replipoll-sweeper"
                )
        return self._queue

    async def close(self) -> None:
        """Stop polling: stop and await every worker, end every unfinished id.

        An unfinished id's future fails with
        :class:`~replipoll.ManagerClosedError`; cancels sent for ids past
        their deadline (``cancel_on_timeout``) are stopped too.
        """
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        workers, self._workers = self._workers, []
        tasks = [*workers, *self._cancels, *self._pushing]
        self._pushing = set()
        if self._sweeping is not None:
            tasks.append(self._sweeping)
            self._sweeping = None
        self._cancels = set()
        for task in tasks:
            task.cancel()
        if self._queue is not None:
            for _ in workers:  # for a worker that lost its cancellation
                self._queue.put_nowait((-math.inf, next(self._arrivals), None))
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        tracks = list(self._tracks.values())
        try:
            for start in range(_CHUNK, len(tracks), _CHUNK):
                for track in tracks[start - _CHUNK : start]:
                    self._fail(track, ManagerClosedError(track.id))
                await asyncio.sleep(0)  # a million ids: no long stall of the loop
        finally:  # the rest (all of them, if this was cancelled meanwhile)
            for track in list(self._tracks.values()):
                self._fail(track, ManagerClosedError(track.id))
            if self.share is not None and self._queue is not None:
                assert self._hooks is not None
                self.share.detach(self._hooks)
        self._polls = self._poll_timers()
        self._deadlines = TimerQueue()

    # -- public API ----------------------------------------------------------

    def submit(
        self, prediction_id: str, *, webhook: bool = False
    ) -> asyncio.Future[Prediction]:
        """Start tracking an id; the future resolves with its terminal record.

        Submitting an id already tracked returns the same future: one poll
        stream per id, however many awaiters. The future is shared, so
        cancelling it (or a task awaiting it directly) stops the poll for every
        awaiter; use :meth:`wait` to wait without that risk.

        Args:
            webhook: The prediction's webhook is expected (its record will
                come through :meth:`push`): after its first ``GET``, it is
                polled only as a safety net (``webhook_grace``,
                ``safety_interval``).

        Raises:
            InvalidPredictionIdError: the id is unusable; nothing is tracked.
        """
        request = ApiRequest.for_prediction("GET", prediction_id)
        if self._diagnosis is not None and self.stop_on_systemic:
            stopped: asyncio.Future[Prediction] = self._start_loop().create_future()
            stopped.set_exception(BatchStoppedError(prediction_id, self._diagnosis))
            stopped.exception()  # retrieved: whoever awaits it gets it too
            return stopped
        pid = request.prediction_id
        track = self._tracks.get(pid)
        if track is not None:  # (an id is forgotten as its future is done)
            if webhook:
                track.webhook = True
            return track
        queue = self._start()
        track = self._new_track(pid, request, webhook)
        if self._early and self._take_early(track):
            return track
        if self.share is not None:
            self.share.track(pid)
        sweeper = self._sweeper
        if sweeper is not None and not webhook and sweeper.takes_new():
            sweeper.join_new(pid, track.started)  # found in the next sweep, no GET
        else:
            queue.put_nowait((track.rank, next(self._arrivals), pid))
        return track

    def _new_track(self, pid: str, request: ApiRequest, webhook: bool) -> _Track:
        """Track ``pid`` from now: its future, its deadline, its count."""
        loop = self._loop
        assert loop is not None
        now = loop.time()
        deadline = now + self.timeout if self.timeout is not None else math.inf
        track = _Track(loop=loop)
        track.id = pid
        # The usual path is rebuilt per request rather than kept per id.
        track.request = None if request.path == f"predictions/{pid}" else request
        track.started = now
        track.deadline = deadline
        track.retrying = None
        track.last = None
        track.digest = None
        track.counted = "unknown"
        track.manager = self
        track.rank = 0.0  # not seen yet: its first GET goes first
        track.webhook = webhook
        self._tracks[pid] = track
        if deadline < math.inf:
            self._deadlines.push(pid, deadline)
            if deadline < self._timer_at:
                self._arm(deadline)
        self._tally.count("unknown")
        self._submitted += 1
        return track

    def _take_early(self, track: _Track) -> bool:
        """Resolve ``track`` with a record pushed before it was tracked, if any."""
        early = self._early.pop(track.id, None)
        if early is None or time.monotonic() - early[0] >= _EARLY_TTL:
            return False
        self._observe(track, early[1])
        self._resolve(track, early[1], publish=False)  # published as pushed
        return True

    def push(self, prediction: Prediction) -> bool:
        """Hand over a record that arrived by other means than a poll (a webhook).

        A terminal record resolves its id's future at once; a running one
        counts as the id's latest (``on_update`` hears of a new status).
        A terminal record of an id not tracked (yet) is kept for a few
        minutes: a webhook may arrive before the answer of the create that
        made its prediction, and the id resolves as it is submitted. Verify
        a webhook's signature before pushing its record
        (:func:`verify_webhook`, or :func:`webhook_handler` which does both).

        Returns:
            True if the record was for an id being tracked.

        Raises:
            TypeError: ``prediction`` is not a :class:`Prediction`.
        """
        if not isinstance(prediction, Prediction):
            raise TypeError(
                f"push takes a replipoll.Prediction, got {type(prediction).__name__}"
            )
        if self.share is not None and not self._closed:
            self._start()
            self.share.publish(prediction)  # the id may be awaited elsewhere
        return self._apply(prediction)

    def _apply(self, prediction: Prediction, *, pushed: bool = True) -> bool:
        """Apply a record pushed here (or, not ``pushed``, learned by a peer)."""
        track = self._tracks.get(prediction.id)
        if track is None:
            if pushed and prediction.is_terminal and not self._closed:
                self._keep_early(prediction)
            return False
        if pushed:
            self._pushed += 1
        if self.on_update is None:
            self._observe(track, prediction)
            if prediction.is_terminal:
                self._resolve(track, prediction, publish=False)
            return True
        loop = self._start_loop()
        task = loop.create_task(self._heard(track, prediction, publish=False))
        self._pushing.add(task)
        task.add_done_callback(self._pushing.discard)
        return True

    def _keep_early(self, prediction: Prediction) -> None:
        early = self._early
        now = time.monotonic()
        while early:  # oldest first: drop what expired, and the oldest if full
            oldest = next(iter(early))
            if len(early) < _EARLY_MAX and now - early[oldest][0] < _EARLY_TTL:
                break
            del early[oldest]
        early[prediction.id] = (now, prediction)

    async def wait(self, prediction_id: str) -> Prediction:
        """Submit an id (or join its poll) and wait for its terminal record.

        Unlike awaiting :meth:`submit`'s shared future directly, cancelling
        the caller here (a request handler that gave up, an ``asyncio.timeout``)
        leaves the poll, and every other waiter on the same id, untouched.

        Raises:
            PollTimeout: not terminal before the deadline.
            RequestError: polling failed for good (not found, a bad key,
                retries exhausted: ``attempts`` says how many).
        """
        return await asyncio.shield(self.submit(prediction_id))

    async def run(
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
        """Create a prediction and wait for its terminal record, in one await.

        The arguments are :meth:`Client.create`'s. The record comes from
        whichever is first: the create's own answer (sync mode, ``wait=``),
        the webhook (``webhook=``, else this manager's ``webhook``, handed
        over by :meth:`push`), or polling. The create's answer serves as
        the first poll; with a webhook, polls are only a safety net.
        Cancelling the caller once the prediction exists leaves it running
        and polled (like :meth:`wait`); cancelling it while the create is
        in flight may leave a prediction that nobody follows, as any
        cancelled create may.

        Raises:
            ConfigurationError: a bad argument; nothing was sent.
            PredictionMayExistError: the create failed after the request
                may have arrived: see :meth:`Client.create`.
            RequestError: the create was refused, or polling failed for good.
            PollTimeout: not terminal before the manager's ``timeout``.

        Example:
            >>> import asyncio, replipoll
            >>> from replipoll.testing import FakeReplicate
            >>> async def main():
            ...     async with FakeReplicate() as server, replipoll.Client(
            ...         base_url=server.base_url(), api_key=server.api_key
            ...     ) as client, replipoll.PollManager(client) as manager:
            ...         done = await manager.run(
            ...             "acme/echo", input={"replipoll_duration": 0.2}
            ...         )
            ...     return str(done.status)
            >>> asyncio.run(main())
            'succeeded'
        """
        url = webhook if webhook is not None else self.webhook
        created = await self.client.create(
            model,
            version=version,
            deployment=deployment,
            input=input,
            webhook=url,
            webhook_events_filter=webhook_events_filter,
            cancel_after=cancel_after,
            wait=wait,
        )
        self._created += 1
        return await asyncio.shield(self._follow(created, webhook=url is not None))

    async def run_many(
        self,
        inputs: Iterable[Mapping[str, Any]],
        model: str | None = None,
        *,
        version: str | None = None,
        deployment: str | None = None,
        webhook: str | None = None,
        webhook_events_filter: Iterable[str] | None = None,
        cancel_after: float | str | None = None,
        wait: bool | float | None = None,
        on_created: Callable[[int, Prediction], Awaitable[None] | None] | None = None,
    ) -> AsyncGenerator[RunResult, None]:
        """Create a prediction per input; yield a :class:`RunResult` as each ends.

        Creates go out as the client's create budget allows, at most
        ``max_concurrency`` at once, each followed like :meth:`run`'s.
        ``inputs`` is read as the creates go out (a generator over a big
        file is fine), and a prediction waited for costs its tracked id's
        future, not a task. One
        input's failure (a refused create, a
        :class:`~replipoll.PredictionMayExistError`) is its result and
        never stops the others. Closing the iterator early (leave the loop
        inside ``contextlib.aclosing(...)`` to close it at once) stops the
        creates not yet sent; the predictions created so far stay tracked
        until the manager closes.

        Args:
            on_created: Called (sync or async) with an input's index and its
                record as soon as its prediction exists, before waiting for
                it: keep the id somewhere durable, and a crash costs no
                prediction (resume by polling the ids, not creating again).
                If it raises, that input's result carries the error; the
                prediction is not followed.

        Example:
            >>> import asyncio, replipoll
            >>> from replipoll.testing import FakeReplicate
            >>> async def main():
            ...     inputs = [{"n": n, "replipoll_duration": 0.1 * n} for n in range(3)]
            ...     async with FakeReplicate() as server, replipoll.Client(
            ...         base_url=server.base_url(), api_key=server.api_key
            ...     ) as client, replipoll.PollManager(client) as manager:
            ...         results = [
            ...             (r.index, r.succeeded)
            ...             async for r in manager.run_many(inputs, "acme/echo")
            ...         ]
            ...     return sorted(results)
            >>> asyncio.run(main())
            [(0, True), (1, True), (2, True)]
        """
        url = webhook if webhook is not None else self.webhook
        options: dict[str, Any] = {
            "version": version,
            "deployment": deployment,
            "webhook": url,
            "webhook_events_filter": webhook_events_filter,
            "cancel_after": cancel_after,
            "wait": wait,
        }
        loop = self._start_loop()
        # None: a creator ran out of inputs. Results of created predictions
        # come from their futures' callbacks: a tracked id costs no task.
        done: asyncio.Queue[RunResult | None] = asyncio.Queue()
        source = enumerate(inputs)  # read as creators take them, not ahead
        taken = 0

        def ended(
            index: int,
            given: Mapping[str, Any],
            created: Prediction,
            future: asyncio.Future[Prediction],
        ) -> None:
            if future.cancelled():
                error: BaseException | None = asyncio.CancelledError()
            else:
                error = future.exception()
            if error is None:
                done.put_nowait(RunResult(index, given, future.result()))
            else:
                last = future.last if isinstance(future, _Track) else None
                done.put_nowait(RunResult(index, given, last or created, error))

        async def creator() -> None:
            nonlocal taken
            try:
                for index, given in source:
                    taken += 1
                    record: Prediction | None = None
                    try:
                        record = await self.client.create(model, input=given, **options)
                        self._created += 1
                        if on_created is not None:
                            said = on_created(index, record)
                            if inspect.isawaitable(said):
                                await said
                    except Exception as exc:  # this input's own failure
                        done.put_nowait(RunResult(index, given, record, exc))
                        continue
                    future = self._follow(record, webhook=url is not None)
                    future.add_done_callback(
                        functools.partial(ended, index, given, record)
                    )
            finally:
                done.put_nowait(None)

        creators = [
            loop.create_task(creator(), name=f"replipoll-creator-{n}")
            for n in range(self.max_concurrency)
        ]
        idle = delivered = 0
        try:
            while idle < len(creators) or delivered < taken:
                result = await done.get()
                if result is None:
                    idle += 1
                    continue
                delivered += 1
                yield result
            for outcome in await asyncio.gather(*creators, return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome  # the inputs' iterator itself failed
        finally:
            for task in creators:
                task.cancel()
            await asyncio.gather(*creators, return_exceptions=True)

    def _follow(
        self, created: Prediction, *, webhook: bool
    ) -> asyncio.Future[Prediction]:
        """Track a prediction this manager created; its record is the first poll."""
        pid = created.id
        track = self._tracks.get(pid)
        if track is not None:
            if webhook:
                track.webhook = True
            return track
        if created.is_terminal:  # sync mode, or a webhook beat the answer
            finished: asyncio.Future[Prediction] = self._start_loop().create_future()
            finished.set_result(created)
            policy = self.policy
            if not isinstance(policy, PollPolicy):
                policy.learn(created)
            self._early.pop(pid, None)
            return finished
        self._start()
        track = self._new_track(pid, ApiRequest.for_prediction("GET", pid), webhook)
        if self._early and self._take_early(track):
            return track
        if self.share is not None:
            self.share.track(pid)
        self._observe(track, created)
        assert self._loop is not None
        self._next_poll(track, created, self._loop.time())
        return track

    async def poll_many(self, prediction_ids: Iterable[str]) -> list[PollResult]:
        """Poll every id to the end; one :class:`PollResult` per id, in input order.

        Duplicates get one result each (from one poll stream). One id's
        failure, an invalid id included, never affects the others.
        """
        ids = list(prediction_ids)
        futures: list[asyncio.Future[Prediction]] = []
        for chunk in _chunks(ids):
            futures.extend(self._submit_or_fail(pid) for pid in chunk)
            await asyncio.sleep(0)  # a million ids: no long stall of the loop
        await _all_done(futures)
        results: list[PollResult] = []
        for start in range(0, len(ids), _CHUNK):
            results.extend(
                self._result(pid, future)
                for pid, future in zip(
                    ids[start : start + _CHUNK],
                    futures[start : start + _CHUNK],
                    strict=True,
                )
            )
            if len(ids) > _CHUNK:
                await asyncio.sleep(0)
        return results

    async def as_completed(
        self, prediction_ids: Iterable[str]
    ) -> AsyncIterator[PollResult]:
        """Yield a :class:`PollResult` for each id as soon as it finishes."""
        done: asyncio.Queue[asyncio.Future[Prediction]] = asyncio.Queue()
        # The id of a future that is not a tracked one (an invalid id, say).
        untracked: dict[asyncio.Future[Prediction], str] = {}
        count = 0
        for pid in prediction_ids:
            future = self._submit_or_fail(pid)
            if not isinstance(future, _Track):
                untracked[future] = pid
            # One shared callback, no closure per id: a million ids add up.
            future.add_done_callback(done.put_nowait)
            count += 1
            if count % _CHUNK == 0:
                await asyncio.sleep(0)  # a million ids: no long stall of the loop
        for _ in range(count):
            future = await done.get()
            pid = future.id if isinstance(future, _Track) else untracked[future]
            yield self._result(pid, future)

    async def cancel(
        self, prediction_id: str, *, remote: bool = False
    ) -> Prediction | None:
        """Stop tracking an id, or cancel the prediction itself.

        With ``remote=False`` the id's future is cancelled and polling stops.
        With ``remote=True`` a ``POST .../cancel`` is sent; the answer is
        returned, ``on_update`` hears of it like of any status change, and
        the id (if tracked) resolves once it is terminal.
        """
        if not remote:
            track = self._tracks.get(prediction_id)
            if track is not None:
                track.cancel()  # which stops tracking it
            return None
        prediction = await self.client.cancel(prediction_id)
        track = self._tracks.get(prediction_id)
        if track is not None:
            try:
                if self._observe(track, prediction):
                    await self._notify(prediction)
            except Exception as exc:  # the callback raised: it ends the id
                self._fail(track, exc)
            else:
                if prediction.is_terminal:
                    self._resolve(track, prediction)
        return prediction

    def latest(self, prediction_id: str) -> Prediction | None:
        """The latest record of an id being tracked, or ``None``.

        What the last poll, pushed webhook or create answered (``None``
        before the first answer, for an id not tracked, and with
        ``keep_last=False``). Unlike ``on_update``, which hears of status
        changes, this is the record itself as it was last seen: its
        ``logs`` (and :func:`parse_progress`) say how far a running
        prediction got. A finished id is no longer tracked: its record is
        its future's result.
        """
        track = self._tracks.get(prediction_id)
        return None if track is None else track.last

    @property
    def diagnosis(self) -> Diagnosis | None:
        """Why the whole batch fails, if its first answers say so; else ``None``.

        Judged from the failed requests before any prediction came back: a
        key refused (401/403) for 3 ids, an HTML page where the API should
        be, no connection to the host for 3 ids, or 404 for the first 10 ids
        (or every id, if fewer). One prediction that comes back proves the
        batch works, and nothing is judged after it. Logged once as a
        warning; with ``stop_on_systemic=True`` it also stops the batch.
        """
        return self._diagnosis

    @property
    def stats(self) -> PollStats:
        """A snapshot of the counters."""
        return PollStats(
            tracked=len(self._tracks),
            finished=self._finished,
            errors=self._errors,
            in_flight=self._in_flight,
            peak_in_flight=self._peak,
            by_status=self._tally.snapshot(),
            requests=self._requests,
            retries=self._retries,
            throttled=self._throttled,
            budget_wait=self._budget_wait,
            mode="per-id" if self._sweeper is None else self._sweeper.mode,
            sweeps=0 if self._sweeper is None else self._sweeper.sweeps,
            sweep_pages=0 if self._sweeper is None else self._sweeper.pages,
            created=self._created,
            pushed=self._pushed,
        )

    # -- scheduling ----------------------------------------------------------

    def _submit_or_fail(self, pid: str) -> asyncio.Future[Prediction]:
        try:
            return self.submit(pid)
        except ValueError as exc:
            future: asyncio.Future[Prediction] = (
                asyncio.get_running_loop().create_future()
            )
            future.set_exception(exc)
            future.exception()  # retrieved: its PollResult reports it
            return future

    def _result(self, pid: str, future: asyncio.Future[Prediction]) -> PollResult:
        if future.cancelled():
            return PollResult(pid, None, asyncio.CancelledError())
        error = future.exception()
        if error is None:
            return PollResult(pid, future.result())
        last = future.last if isinstance(future, _Track) else None
        return PollResult(pid, last, error)

    def _cancelled(self, track: _Track) -> None:
        """The future of ``track`` was cancelled (by an awaiter, or cancel())."""
        if self._is_current(track):
            self._stop_tracking(track)

    def _schedule(
        self, track: _Track, due: float, now: float, earliest: float | None = None
    ) -> None:
        # Onto the grid: ids due in the same window share a wake-up of the
        # timer, and their requests leave together.
        due = on_grid(due, now, self.coalesce, earliest=earliest)
        if due > track.deadline:
            # Never sent: the deadline queue ends the id first (and a poll
            # due at its deadline would find it past).
            self._polls.discard(track.id)
            return
        self._polls.push(track.id, due)
        if due < self._timer_at:
            self._arm(due)

    def _poll_timers(self) -> TimerQueue | GridTimers:
        # On the grid, thousands of ids share each due time: one bucket each.
        return GridTimers() if self.coalesce else TimerQueue()

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        assert self._loop is not None
        assert self._queue is not None
        self._timer = None
        self._timer_at = math.inf
        now = self._loop.time()
        tracks = self._tracks
        # A bounded share per turn of the loop: what is left is due at once
        # and the timer fires again on the next turn, after other callbacks.
        for pid in self._deadlines.pop_due(now, _CHUNK):
            track = tracks.get(pid)
            if track is not None:
                self._time_out(track)
        put, arrivals = self._queue.put_nowait, self._arrivals
        for pid in self._polls.pop_due(now, _CHUNK):
            track = tracks.get(pid)
            if track is not None:
                put((track.rank, next(arrivals), pid))
        polls, deadlines = self._polls.next_due(), self._deadlines.next_due()
        if polls is not None or deadlines is not None:
            self._arm(min(t for t in (polls, deadlines) if t is not None))

    # -- the workers ---------------------------------------------------------

    async def _work(self) -> None:
        assert self._queue is not None
        assert self._loop is not None
        queue, loop = self._queue, self._loop
        this = asyncio.current_task()
        assert this is not None
        while True:
            pid = (await queue.get())[2]
            if pid is None:
                # close() cancelled this worker just as an aiohttp timeout
                # fired, and aiohttp took the cancellation for its own
                # timeout; the poll ended as usual. Stop all the same.
                return
            if not isinstance(pid, str):  # a page of a sweep
                await self._page_job(pid)
                continue
            track = self._tracks.get(pid)
            if track is None or track.done():
                continue
            share = self.share
            if share is not None and not share.may_poll(pid):
                continue  # a peer polls it; the share says when it is ours
            sweeper = self._sweeper
            if sweeper is not None and sweeper.claims(track, loop.time()):
                continue  # the sweeps report it
            try:
                await self._poll(track, loop)
            except Exception as exc:
                # e.g. ClientClosedError, or an on_update callback that raised.
                self._fail(track, exc)
            except asyncio.CancelledError:
                if this.cancelling():
                    raise  # close(): this worker is being stopped
                # Something the poll awaited was cancelled, not this worker
                # (an on_update callback awaiting a cancelled future): end
                # that id as cancelled. Dying here would strand every id
                # left in the queue, and hang poll_many.
                if self._is_current(track):
                    self._finished += 1
                    self._errors += 1
                    track.cancel()

    async def _poll(self, track: _Track, loop: asyncio.AbstractEventLoop) -> None:
        if loop.time() >= track.deadline:
            self._time_out(track)
            return
        budget = self.budget
        if not budget.try_acquire(time.monotonic()):
            # A Retry-After pause or a rate-limit slot: wait here, but not
            # past the id's deadline (ids still queued meanwhile end on time
            # through the deadline queue).
            deadline = track.deadline if track.deadline < math.inf else None
            try:
                async with asyncio.timeout_at(deadline):
                    self._budget_wait += await budget.acquire()
            except TimeoutError:
                self._time_out(track)
                return
            if not self._is_current(track):
                return  # ended (or cancelled) while waiting
        sent = loop.time()
        # The request may not outlast the id's deadline, nor the retry
        # policy's timeout for a run of failures.
        end = track.deadline
        retrying = track.retrying
        if retrying is not None and retrying.deadline is not None:
            if retrying.deadline <= sent and retrying.last is not None:
                # The coalescing grid (or a wait for the budget) took this
                # retry past the policy's timeout: end with the error that
                # asked for it, not a request left no time to answer.
                self._give_up(track, retrying)
                return
            end = min(end, retrying.deadline)
        within = end - sent if end < math.inf else None
        self._requests += 1
        self._in_flight += 1
        if self._in_flight > self._peak:
            self._peak = self._in_flight
        try:
            pid = track.id
            request = track.request or ApiRequest("GET", f"predictions/{pid}", pid)
            last, digest = track.last, track.digest
            prediction, digest = await self.client._exchange(
                request,
                budget,
                within,
                self.retry,
                self._hints,
                None if last is None or digest is None else (digest, last),
            )
        except RequestError as exc:
            self._in_flight -= 1
            if self._is_current(track):
                if loop.time() >= track.deadline:
                    self._time_out(track)
                else:
                    self._failed_request(track, exc, sent, loop.time())
            return
        except BaseException:
            self._in_flight -= 1
            raise
        self._in_flight -= 1
        if not self._is_current(track):
            return  # cancelled locally while the request ran: drop the answer
        track.retrying = None
        if self._judging:  # the first record: the batch as a whole works
            self._judging = False
            self._watch.answered()
        if self._observe(track, prediction, digest):
            await self._notify(prediction)
        if prediction.is_terminal:
            self._resolve(track, prediction)
        elif self._is_current(track):
            self._next_poll(track, prediction, loop.time())

    def _next_poll(self, track: _Track, prediction: Prediction, now: float) -> None:
        """Schedule the next poll of a running id, ``prediction`` its latest record."""
        if track.webhook:
            self._safety_poll(track, prediction, now)
            return
        sweeper = self._sweeper
        if sweeper is not None and sweeper.adopt(track, prediction, now):
            return  # the sweeps report it from now on
        age = now - track.started
        policy = self.policy
        if track.rank == 0.0:
            track.rank = _created(prediction)
        # Early onto the grid only as far as the policy's jitter goes.
        if isinstance(policy, PollPolicy):
            due = now + policy.next_delay(age)
            earliest = now + policy.shortest_delay(age)
        else:  # it knows the model: a time near the expected finish
            delay, shortest, finish = policy.next_poll(
                prediction, age=age, now=time.time()
            )
            due, earliest = now + delay, now + shortest
            if finish is not None:
                track.rank = finish
        hinted = self._hints.poll_after
        if hinted is not None:  # the server said when to ask again
            due = earliest = max(due, now + min(hinted, MAX_POLL_AFTER))
        self._schedule(track, due, now, earliest)

    def _safety_poll(self, track: _Track, prediction: Prediction, now: float) -> None:
        """Schedule the safety poll of an id whose webhook is expected.

        At its expected finish plus ``webhook_grace`` (the webhook should
        have come by then), else (no expectation, or it is past) after
        ``safety_interval``.
        """
        if track.rank == 0.0:
            track.rank = _created(prediction)
        due = now + self.safety_interval
        policy = self.policy
        if not isinstance(policy, PollPolicy):
            wall = time.time()
            finish = policy.expected_finish(prediction, now=wall)
            if finish is not None:
                track.rank = finish
                expected = now + (finish - wall) + self.webhook_grace
                if expected > now:
                    due = expected
            elif prediction.model:
                self._unplanned.setdefault(prediction.model, set()).add(track.id)
        self._schedule(track, due, now, due)

    def _replan(self, model: str) -> None:
        """Move the safety polls of ``model``'s ids, set before it was known.

        Once the model's run time is learned, each goes to its expected
        finish plus ``webhook_grace``, or at once if that has passed (its
        webhook is late: likely lost).
        """
        policy = self.policy
        assert self._loop is not None
        assert not isinstance(policy, PollPolicy)
        waiting = self._unplanned[model]
        now, wall = self._loop.time(), time.time()
        for pid in list(waiting):
            track = self._tracks.get(pid)
            last = None if track is None else track.last
            if track is None or last is None:
                waiting.discard(pid)
                continue
            finish = policy.expected_finish(last, now=wall)
            if finish is None:
                return  # not known yet (the others are of the same model)
            waiting.discard(pid)
            track.rank = finish
            self._polls.discard(pid)
            due = max(now, now + (finish - wall) + self.webhook_grace)
            self._schedule(track, due, now, due)
        del self._unplanned[model]

    # -- what the sweeper calls -------------------------------------------------

    async def _fetch_page(self, request: ApiRequest) -> PredictionPage:
        """One page of ``GET predictions``, fetched by a worker.

        Through the work queue, so that ``max_concurrency`` bounds the
        pages in flight with the polls.

        Raises:
            RequestError: the page failed for good.
        """
        assert self._queue is not None
        assert self._loop is not None
        job: _PageJob = (request, self._loop.create_future())
        self._queue.put_nowait((_PAGE, next(self._arrivals), job))
        return await job[1]

    async def _page_job(self, job: _PageJob) -> None:
        request, future = job
        try:
            page = await self._page(request)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
        else:
            if not future.done():
                future.set_result(page)

    async def _page(self, request: ApiRequest) -> PredictionPage:
        """One page: the budget, the request, retries within the worker.

        Raises:
            RequestError: the page failed for good.
        """
        assert self._loop is not None
        budget, loop = self.budget, self._loop
        retrying: Retrying | None = None
        while True:
            if not budget.try_acquire(time.monotonic()):
                self._budget_wait += await budget.acquire(urgent=True)
            self._requests += 1
            self._in_flight += 1
            if self._in_flight > self._peak:
                self._peak = self._in_flight
            sent = loop.time()
            try:
                return await self.client._exchange_page(
                    request, budget, None, self.retry, self._hints
                )
            except RequestError as exc:
                if isinstance(exc, RateLimitedError):
                    self._throttled += 1
                if retrying is None:
                    retrying = self.retry.start(sent)
                wait = retrying.next_wait(exc, loop.time(), what="the list")
                if wait is None:
                    raise
                self._retries += 1
            finally:
                self._in_flight -= 1
            await asyncio.sleep(wait)

    async def _heard(
        self, track: _Track, prediction: Prediction, *, publish: bool = True
    ) -> None:
        """A record of ``track``'s id from a sweep or a push: count it, resolve it.

        ``publish``: a terminal record goes to the share's peers (a sweep's;
        a push was published as it came).
        """
        if not self._is_current(track):
            return
        try:
            if self._observe(track, prediction):
                await self._notify(prediction)
        except Exception as exc:  # the callback raised: it ends the id
            self._fail(track, exc)
            return
        if prediction.is_terminal:
            self._resolve(track, prediction, publish=publish)

    def _poll_now(self, track: _Track, *, first: bool = False) -> None:
        """Poll ``track``'s id with its own GET, at once (``first``: before others).

        A ``first`` one is an id known to be finished: its record is worth
        more than any poll that may find nothing.
        """
        if self._is_current(track) and self._queue is not None:
            self._polls.discard(track.id)
            rank = _FINISHED if first else track.rank
            self._queue.put_nowait((rank, next(self._arrivals), track.id))

    def _failed_request(
        self, track: _Track, exc: RequestError, sent: float, now: float
    ) -> None:
        if isinstance(exc, RateLimitedError):
            self._throttled += 1
        elif self._judging:
            diagnosis = self._watch.failed(track.id, exc, tracked=self._submitted)
            if diagnosis is not None:
                self._diagnose(diagnosis)
                if self.stop_on_systemic:
                    return  # the id ended with the rest
        retrying = track.retrying
        if retrying is None:
            retrying = track.retrying = self.retry.start(sent)
        elif retrying.cut_short(exc, now):
            # A retry begun just before the policy's timeout and cut short by
            # it: the failure that asked for the retry is the answer.
            retrying.attempts += 1
            self._give_up(track, retrying)
            return
        wait = retrying.next_wait(exc, now, what=track.id)
        if wait is None:
            self._fail(track, exc)
        else:
            self._retries += 1
            self._schedule(track, now + wait, now)  # (a backoff: never early)

    def _give_up(self, track: _Track, retrying: Retrying) -> None:
        """End ``track`` with the last failure of its run of retries."""
        error = retrying.last
        assert error is not None
        if isinstance(error, RequestError):
            error.attempts = retrying.attempts
        self._fail(track, error)

    def _diagnose(self, diagnosis: Diagnosis) -> None:
        """The batch fails for one reason: say it once; stop if asked."""
        self._diagnosis = diagnosis
        self._judging = False
        logger.warning(
            "%s (judged from %d ids)%s",
            diagnosis.message,
            diagnosis.ids,
            "; stopping the batch" if self.stop_on_systemic else "",
            extra={"replipoll_diagnosis": diagnosis},
        )
        if self.stop_on_systemic:
            for track in list(self._tracks.values()):
                self._fail(track, BatchStoppedError(track.id, diagnosis))

    def _time_out(self, track: _Track) -> None:
        """End ``track`` at its deadline; cancel it remotely beside, if asked."""
        if not self._is_current(track):
            return
        assert self.timeout is not None
        seen = None if track.counted == "unknown" else track.counted
        error = PollTimeout(track.id, self.timeout, track.last, status=seen)
        self._fail(track, error)
        if self.cancel_on_timeout and not self._closed:
            assert self._loop is not None
            task = self._loop.create_task(
                self._cancel_late(track.id), name=f"replipoll-cancel-{track.id}"
            )
            self._cancels.add(task)
            task.add_done_callback(functools.partial(self._cancel_done, track.id))

    def _cancel_done(self, pid: str, task: asyncio.Task[None]) -> None:
        self._cancels.discard(task)
        if task.cancelled():  # close() stopped it, perhaps before it began
            logger.warning(
                "did not cancel %s after its deadline: the PollManager closed first",
                pid,
            )

    async def _cancel_late(self, pid: str) -> None:
        """Cancel a prediction whose deadline passed, within its own deadline."""
        try:
            async with asyncio.timeout(CANCEL_DEADLINE):
                prediction = await self.client.cancel(pid)
        except Exception as exc:  # a RequestError, or TimeoutError
            reason = str(exc) or f"no answer within {CANCEL_DEADLINE:g}s"
            logger.warning("could not cancel %s after its deadline: %s", pid, reason)
        else:
            logger.info(
                "canceled %s after its deadline (now %s)",
                pid,
                self._tally.name(prediction),
            )

    # -- bookkeeping ---------------------------------------------------------

    def _observe(
        self, track: _Track, prediction: Prediction, digest: int | None = None
    ) -> bool:
        """Record ``prediction`` as the latest; return True if its status changed.

        ``digest`` is the hash of the body it was decoded from, if polled.
        """
        if self.keep_last:
            track.last = prediction
            track.digest = digest
        status = prediction.status
        # (A documented status is its own name: no call on the hot path.)
        name = status.value if type(status) is Status else self._tally.name(prediction)
        if name == track.counted:
            return False
        self._tally.move(track.counted, name)
        track.counted = name
        return True

    async def _notify(self, prediction: Prediction) -> None:
        if self.on_update is not None:
            result = self.on_update(prediction)
            if inspect.isawaitable(result):
                await result

    def _is_current(self, track: _Track) -> bool:
        # An id cancelled and submitted again has a new _Track; a request of
        # the old one may still be running and must not touch it.
        return self._tracks.get(track.id) is track

    def _forget(self, track: _Track) -> None:
        """Stop tracking ``track``'s id: no more polls, no deadline."""
        del self._tracks[track.id]
        self._polls.discard(track.id)
        if self._sweeper is not None:
            self._sweeper.discard(track.id)
        self._deadlines.discard(track.id)
        if self.share is not None:
            self.share.untrack(track.id)
        if track.webhook and self._unplanned and track.last is not None:
            waiting = self._unplanned.get(track.last.model or "")
            if waiting is not None:
                waiting.discard(track.id)
        track.manager = track.retrying = track.request = None

    def _stop_tracking(self, track: _Track) -> None:
        """Forget a cancelled id, and stop counting it: it ended nowhere."""
        self._forget(track)
        self._tally.uncount(track.counted)

    def _resolve(
        self, track: _Track, prediction: Prediction, *, publish: bool = True
    ) -> None:
        """End ``track`` with its terminal record; ``publish`` it to the share."""
        if self._is_current(track):
            if publish and self.share is not None:
                self.share.publish(prediction)
            policy = self.policy
            if not isinstance(policy, PollPolicy):
                policy.learn(prediction)
            self._forget(track)
            if self._unplanned and prediction.model in self._unplanned:
                self._replan(prediction.model)
            self._finished += 1
            track.last = None  # the result is the record
            if not track.done():
                track.set_result(prediction)

    def _fail(self, track: _Track, error: BaseException) -> None:
        if self._is_current(track):
            self._forget(track)
            self._finished += 1
            self._errors += 1
            if not track.done():
                # (track.last stays: the PollResult carries the last record.)
                track.set_exception(error)
                # Retrieved: the error reaches every awaiter, and asyncio
                # need not log it for a future that nobody awaits.
                track.exception()


class _Hooks:
    """What a manager offers its share (see :class:`ShareHooks`)."""

    __slots__ = ("_manager",)

    def __init__(self, manager: PollManager) -> None:
        self._manager = manager

    def deliver(self, prediction: Prediction) -> None:
        """Apply a record a peer learned, as a push that is not published again."""
        manager = self._manager
        if not manager._closed:
            manager._apply(prediction, pushed=False)

    def poll_now(self, prediction_id: str) -> None:
        """Poll the id at once: this process took it over."""
        manager = self._manager
        track = manager._tracks.get(prediction_id)
        if track is not None and not manager._closed:
            manager._poll_now(track)


def _created(prediction: Prediction) -> float:
    """When ``prediction`` was created, in Unix seconds; now if it does not say."""
    created = prediction.created_at
    if created is not None:
        try:
            return created.timestamp()
        except (OverflowError, OSError, ValueError):  # a year 1 or 9999
            pass
    return time.time()


def _say_undocumented(name: str, prediction_id: str) -> None:
    if name == StatusTally.OTHER:
        logger.warning(
            "%d undocumented statuses seen; any other is counted as %r and "
            "not logged again",
            StatusTally.MAX_UNDOCUMENTED,
            name,
        )
    else:
        logger.warning(
            "undocumented status %r (prediction %s); polling on until terminal",
            name,
            prediction_id,
        )
