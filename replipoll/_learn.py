"""A poll schedule that learns how long each model runs: pure, clock-injected.

:class:`LearnedPolicy` keeps, per model (and model version), a window of the
run and queue times of its finished predictions, and polls a running
prediction near its expected finish instead of on a clock.
:func:`parse_progress` reads the last tqdm progress line of a prediction's
logs, which predicts the finish better still. Nothing here reads a clock:
callers pass ``now`` (wall-clock Unix seconds) and ``age``.
"""

from __future__ import annotations

import math
import random
import re
from bisect import bisect_left, bisect_right
from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple

import attrs

from ._errors import ConfigurationError
from ._models import Prediction
from ._options import at_least, positive
from ._schedule import PollPolicy

__all__ = ["LearnedPolicy", "Progress", "parse_progress"]

#: How much of the logs' end is searched for a progress line.
_TAIL_CHARS = 2048
# One tqdm bar from its percentage on, e.g. ` 45%|████▌     | 23/50 [00:05<00:06,
# 4.1it/s]`. Every part is bounded and none crosses a line end, so garbage
# costs little and numbers stay finite.
_BAR = re.compile(
    r"\d{1,3}%\|[^|\r\n]{0,200}\|[ \t]*"
    r"(\d{1,15}(?:\.\d{1,6})?)([kMGTPEZY]?)/(\d{1,15}(?:\.\d{1,6})?)([kMGTPEZY]?)"
    r"[ \t]*\[([\d:]{1,16}|\?)<([\d:]{1,16}|\?)[,\]]"
)
_SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


@attrs.frozen
class Progress:
    """What the last progress line of a prediction's logs says.

    Attributes:
        fraction: ``done / total``, from 0 to 1.
        done: Steps done (the ``23`` of ``23/50``; ``2.5e9`` for ``2.50G``).
        total: Steps in all; above 0.
        elapsed: Seconds since the bar started, or ``None`` (``?``).
        remaining: Seconds left: as printed, else estimated from ``elapsed``
            and ``done`` at the rate so far, else ``None``.
    """

    fraction: float
    done: float
    total: float
    elapsed: float | None
    remaining: float | None


def _seconds(text: str) -> float | None:
    """``MM:SS`` or ``H:MM:SS`` as seconds; ``None`` for ``?`` or garbage."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 3 or not all(parts):
        return None
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return seconds


def parse_progress(logs: str) -> Progress | None:
    """Read the last tqdm-style progress line in the last 2 KB of ``logs``.

    Lines may end in ``\\n`` or ``\\r`` and carry other text; a bar without
    a total (``23it [00:05, 4.1it/s]``) or with a total of 0 is skipped.
    Never raises on any text.

    Example:
        >>> p = parse_progress("loading\\n 45%|████▌ | 23/50 [01:00:05<00:06, 1.2s/it]")
        >>> p.fraction, p.done, p.total, p.elapsed, p.remaining
        (0.46, 23.0, 50.0, 3605.0, 6.0)
        >>> parse_progress("no bar here") is None
        True
    """
    tail = logs[-_TAIL_CHARS:]
    at = tail.rfind("%|")
    while at >= 0:
        start = at
        while start > 0 and at - start < 3 and tail[start - 1].isdigit():
            start -= 1
        match = _BAR.match(tail, start)
        if match:
            done_text, done_unit, total_text, total_unit, spent, left = match.groups()
            done = float(done_text) * _SCALE.get(done_unit, 1.0)
            total = float(total_text) * _SCALE.get(total_unit, 1.0)
            if total > 0:
                elapsed = _seconds(spent)
                remaining = _seconds(left)
                if remaining is None and elapsed is not None and done > 0:
                    remaining = max(0.0, elapsed * (total - done) / done)
                return Progress(
                    fraction=min(1.0, done / total),
                    done=done,
                    total=total,
                    elapsed=elapsed,
                    remaining=remaining,
                )
        at = tail.rfind("%|", 0, at)
    return None


def _quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of sorted ``values``, interpolated between ranks."""
    position = q * (len(values) - 1)
    below = int(position)
    above = min(below + 1, len(values) - 1)
    return values[below] + (values[above] - values[below]) * (position - below)


def _timestamp(moment: datetime | None) -> float | None:
    """Unix seconds of ``moment``; a naive datetime is taken as UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


@attrs.define(eq=False)
class _Model:
    """The recent samples of one model key, and what the schedule needs of them."""

    runs: deque[float]
    queues: deque[float]
    #: Sorted run times, and the poll offsets from ``started_at`` they suggest.
    run_sorted: list[float] = attrs.Factory(list)
    grid: list[float] = attrs.Factory(list)
    run_low: float = 0.0
    #: Sorted queue times; queue times past ``cold_after`` are cold starts.
    queue_sorted: list[float] = attrs.Factory(list)
    queue_low: float = 0.0
    cold_after: float = math.inf
    cold: tuple[float, float] | None = None
    #: Samples learnt since the plans above were made.
    new_runs: int = 0
    new_queues: int = 0


class _Reading(NamedTuple):
    """What planning reads of a non-terminal record, once per answer."""

    #: ``started_at`` in Unix seconds.
    started: float | None
    #: The progress line's seconds left and step (``processing`` only).
    progress: tuple[float, float] | None
    #: The model's samples, when no progress line says more and enough are kept.
    model: _Model | None


def _is_policy(value: object) -> None:
    if not isinstance(value, PollPolicy):
        raise ConfigurationError(
            f"LearnedPolicy: base must be a PollPolicy, got {value!r:.60}",
            option="base",
        )


def _flag(instance: object, attribute: Any, value: object) -> None:
    """An attrs validator: ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{type(instance).__name__}: {attribute.name} must be True or False, "
            f"got {value!r:.60}",
            option=attribute.name,
        )


@attrs.define(eq=False, on_setattr=attrs.setters.frozen)
class LearnedPolicy:
    """A poll schedule that learns each model's run and queue times.

    :meth:`learn` is fed every terminal record; :meth:`next_delay` then
    plans the polls of a model with at least ``min_samples`` succeeded runs
    (those of its version, else of the model). Until then, and for records
    without a model or timestamps, it is exactly ``base``. No delay is ever
    above ``ceiling``, and each is jittered like ``base``'s (``base.jitter``).

    - **Processing** (``e`` seconds since ``started_at``): nothing before the
      5% quantile of run times (less 2%, at least 0.3 s); then polls on a
      grid from there to the 95% quantile whose step is
      ``sqrt(2 S(t) / (PRICE f(t)))`` (0.3 s at least), where ``f`` is
      the density of run times near ``t`` and ``S`` the share still running:
      the step that minimises requests plus ``PRICE`` requests per second of
      detection delay, dense where runs usually end and sparse in the
      tails. Past the 95% quantile (an outlier) the step grows by a tenth of
      the overrun. Run times are ``completed_at - started_at`` (the moment
      the status turns, on the server's clock), else ``predict_time``; only
      ``succeeded`` runs count, as failed and canceled ones end for other
      reasons. Queue times (``started_at - created_at``) count for any
      prediction that started, however it ended.
    - **Starting**: a poll only serves to notice the start (``started_at``
      then says exactly when), so it comes every 5% run-time quantile
      (``base.min_interval`` to ``ceiling``): a run is then seen before it
      can end. Not before the model's 5% queue quantile, if that is long. A
      prediction still starting past ``max(3 * median, median + 5 s)`` of
      queue time is in a cold start: if at least 3 past queue times were
      that long, polls wait for their 5% quantile and keep the run-time
      pace until their 95% quantile; past that, or without such history,
      every tenth of the time spent starting (like ``base``).
    - **Progress** (``use_logs``): the last tqdm line of the logs (see
      :func:`parse_progress`) beats history. Its time is taken as ``now``
      (it was written at most a step and a poll ago), so the poll comes at
      the predicted finish less a tenth of the time left or half a step,
      whichever is more (0.5 s at least); at 100% polls come every 0.5 s
      for the tail, if the bar ended within 10 s of the run's elapsed time,
      else the line is an older bar's and is ignored.

    Samples are kept per key (the model, and ``model:version`` where the
    version is known and not ``"hidden"``), the last ``window`` of each;
    at most ``max_models`` keys are kept, the least recently learnt
    forgotten first.

    Args:
        base: The schedule for what has not been learnt.
        ceiling: Seconds; the longest wait between two polls.
        min_samples: Succeeded runs a key needs before it is used.
        window: Recent samples kept per key.
        max_models: Keys kept (a model's versions count as models too).
        use_logs: Whether to plan from progress lines in the logs.

    Example:
        >>> from datetime import datetime, timedelta, UTC
        >>> import attrs
        >>> from replipoll import PollPolicy, Prediction
        >>> from replipoll._learn import LearnedPolicy
        >>> t0 = datetime(2025, 1, 1, tzinfo=UTC)
        >>> policy = LearnedPolicy(base=PollPolicy(jitter=0))
        >>> running = Prediction(
        ...     "p", "processing", model="acme/img", created_at=t0, started_at=t0
        ... )
        >>> policy.next_delay(running, age=0.0, now=t0.timestamp())  # unknown
        1.5
        >>> for run in (3.8, 3.9, 4.0, 4.1, 4.2):
        ...     end = t0 + timedelta(seconds=run)
        ...     done = attrs.evolve(running, status="succeeded", completed_at=end)
        ...     policy.learn(done)
        >>> policy.samples("acme/img")
        5
        >>> round(policy.next_delay(running, age=0.0, now=t0.timestamp()), 2)
        3.52
        >>> now = t0.timestamp()
        >>> round(policy.expected_finish(running, now=now) - now, 1)
        4.0
    """

    #: The quantiles of run times that bound the dense part of the grid.
    LOW: ClassVar[float] = 0.05
    HIGH: ClassVar[float] = 0.95
    #: Requests one second less of mean detection delay is worth.
    PRICE: ClassVar[float] = 15.0
    #: The shortest step of the grid, and of polls near a predicted finish.
    MIN_STEP: ClassVar[float] = 0.3
    PROGRESS_STEP: ClassVar[float] = 0.5
    #: Plans are made again once this share (1 / REPLAN) of samples is new.
    REPLAN: ClassVar[int] = 8

    base: PollPolicy = attrs.field(
        factory=PollPolicy, validator=lambda _, __, value: _is_policy(value)
    )
    ceiling: float = attrs.field(default=30.0, validator=positive())
    min_samples: int = attrs.field(default=5, validator=at_least(2))
    window: int = attrs.field(default=64, validator=at_least(2))
    max_models: int = attrs.field(default=1000, validator=at_least(1))
    use_logs: bool = attrs.field(default=True, validator=_flag)
    _models: OrderedDict[str, _Model] = attrs.field(
        factory=OrderedDict, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.ceiling < self.base.max_interval:
            raise ConfigurationError(
                f"LearnedPolicy: ceiling must be at least base.max_interval "
                f"({self.base.max_interval}), got {self.ceiling!r}",
                option="ceiling",
            )
        if self.window < self.min_samples:
            raise ConfigurationError(
                f"LearnedPolicy: window must be at least min_samples "
                f"({self.min_samples}), got {self.window!r}",
                option="window",
            )

    # -- learning ---------------------------------------------------------------

    def learn(self, prediction: Prediction) -> None:
        """Learn from a terminal record (any other record is ignored)."""
        if not prediction.is_terminal:
            return
        keys = _keys(prediction)
        if not keys:
            return
        created = _timestamp(prediction.created_at)
        started = _timestamp(prediction.started_at)
        completed = _timestamp(prediction.completed_at)
        queue = None if created is None or started is None else started - created
        run: float | None = None
        if prediction.status == "succeeded":
            if started is not None and completed is not None:
                run = completed - started
            elif prediction.metrics is not None:
                run = prediction.metrics.predict_time
        # A negative or infinite time is a broken record: trust none of it.
        queue = queue if queue is not None and 0 <= queue < math.inf else None
        run = run if run is not None and 0 <= run < math.inf else None
        if queue is None and run is None:
            return
        for key in keys:
            model = self._models.get(key)
            if model is None:
                model = self._models[key] = _Model(
                    deque(maxlen=self.window), deque(maxlen=self.window)
                )
                if len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            else:
                self._models.move_to_end(key)
            # Planned when next used (see _known), not on every sample.
            if run is not None:
                model.runs.append(run)
                model.new_runs += 1
            if queue is not None:
                model.queues.append(queue)
                model.new_queues += 1

    def _plan_runs(self, model: _Model) -> None:
        """Sort the run times and lay the grid of poll offsets out."""
        model.new_runs = 0
        runs = model.run_sorted = sorted(model.runs)
        count = len(runs)
        low = _quantile(runs, self.LOW)
        high = _quantile(runs, self.HIGH)
        start = max(0.0, low - max(self.MIN_STEP, 0.02 * low))
        near = max(2, count // 8)  # neighbours on each side for the density
        # At most a few hundred points, however wide the runs are spread.
        shortest = max(self.MIN_STEP, (high - start) / 256)
        grid = [start]
        offset = start
        while offset < high:
            at = bisect_left(runs, offset)
            first, last = max(at - near, 0), min(at + near, count - 1)
            width = max(runs[last] - runs[first], 0.05)
            density = max(last - first, 1) / (count * width)
            running = max(count - at, 1) / count
            step = math.sqrt(2 * running / (self.PRICE * density))
            offset += max(step, shortest)  # (next_delay caps waits at ceiling)
            grid.append(offset)
        model.grid = grid
        model.run_low = low

    def _plan_queues(self, model: _Model) -> None:
        """Sort the queue times; split the cold starts off."""
        model.new_queues = 0
        queues = model.queue_sorted = sorted(model.queues)
        model.queue_low = _quantile(queues, self.LOW)
        median = _quantile(queues, 0.5)
        model.cold_after = max(3 * median, median + 5.0)
        cold = queues[bisect_right(queues, model.cold_after) :]
        model.cold = (
            (_quantile(cold, self.LOW), _quantile(cold, self.HIGH))
            if len(cold) >= 3
            else None
        )

    def samples(self, model: str, version: str | None = None) -> int:
        """How many succeeded run times are kept for ``model`` (or a version of it)."""
        key = model if version is None else f"{model}:{version}"
        known = self._models.get(key)
        return 0 if known is None else len(known.runs)

    def _known(self, prediction: Prediction) -> _Model | None:
        """The samples to plan ``prediction`` with, or ``None`` if too few.

        Its plans are made again first if enough has been learnt since: once
        the new samples are ``1 / REPLAN`` of those kept (at every new one
        while a key holds ``REPLAN`` or fewer). A busy model ends
        many predictions between two polls of one of them; sorting its
        samples and laying its grid out for each would cost more than the
        polls, and a sample or two more moves no quantile far.
        """
        for key in _keys(prediction):
            model = self._models.get(key)
            if model is not None and len(model.runs) >= self.min_samples:
                new = model.new_runs
                if new and new * self.REPLAN >= len(model.runs):
                    self._plan_runs(model)
                new = model.new_queues
                if new and new * self.REPLAN >= len(model.queues):
                    self._plan_queues(model)
                return model
        return None

    # -- planning ---------------------------------------------------------------

    def next_delay(
        self,
        prediction: Prediction,
        *,
        age: float,
        now: float,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds until the next poll of a non-terminal ``prediction``.

        Args:
            prediction: The record just received.
            age: Seconds the id has been tracked (``base``'s clock).
            now: Wall-clock Unix seconds at which the record was received.
            rng: The source of jitter (a shared one if ``None``).
        """
        return self.next_poll(prediction, age=age, now=now, rng=rng)[0]

    def shortest_delay(
        self, prediction: Prediction, *, age: float, now: float
    ) -> float:
        """The least :meth:`next_delay` can be for the same arguments (jitter)."""
        planned = self._delay(prediction, age, now, self._read(prediction, now))
        if planned is None:
            return min(self.base.shortest_delay(age), self.ceiling)
        return min(planned * (1.0 - self.base.jitter), self.ceiling)

    def expected_finish(self, prediction: Prediction, *, now: float) -> float | None:
        """When ``prediction`` should end, in wall-clock Unix seconds.

        From the progress line if there is one, else the median of the
        learnt run (and queue) times longer than what has passed already;
        ``now`` once it is past them all. ``completed_at`` for a terminal
        record. ``None`` when nothing is known.
        """
        if prediction.is_terminal:
            return _timestamp(prediction.completed_at)
        return self._finish(prediction, now, self._read(prediction, now))

    def next_poll(
        self,
        prediction: Prediction,
        *,
        age: float,
        now: float,
        rng: random.Random | None = None,
    ) -> tuple[float, float, float | None]:
        """:meth:`next_delay`, :meth:`shortest_delay` and :meth:`expected_finish`.

        All three for a non-terminal ``prediction`` (the arguments as for
        :meth:`next_delay`), its timestamps and logs read once: what a
        :class:`~replipoll.PollManager` asks after every answer.
        """
        read = self._read(prediction, now)
        planned = self._delay(prediction, age, now, read)
        finish = self._finish(prediction, now, read)
        base, ceiling = self.base, self.ceiling
        if planned is None:
            delay = min(base.next_delay(age, rng), ceiling)
            return delay, min(base.shortest_delay(age), ceiling), finish
        jitter = base.jitter
        shortest = min(planned * (1.0 - jitter), ceiling)
        if jitter:
            planned *= (rng or _rng).uniform(1.0 - jitter, 1.0 + jitter)
        return min(planned, ceiling), shortest, finish

    def _read(self, prediction: Prediction, now: float) -> _Reading:
        """What planning reads of a non-terminal record (see :class:`_Reading`)."""
        started = _timestamp(prediction.started_at)
        if prediction.status == "processing":
            progress = self._left(prediction, started, now)
            if progress is not None:
                return _Reading(started, progress, None)
        return _Reading(started, None, self._known(prediction))

    def _finish(
        self, prediction: Prediction, now: float, read: _Reading
    ) -> float | None:
        """:meth:`expected_finish` of a non-terminal record, given :meth:`_read`."""
        started, progress, model = read
        if progress is not None:
            return now + progress[0]
        if model is None:
            return None
        if started is not None:
            return started + _beyond(model.run_sorted, now - started)
        created = _timestamp(prediction.created_at)
        if prediction.status != "starting" or created is None:
            return None
        start = now
        if len(model.queues) >= self.min_samples:
            start = created + _beyond(model.queue_sorted, now - created)
        return start + _quantile(model.run_sorted, 0.5)

    def _left(
        self, prediction: Prediction, started: float | None, now: float
    ) -> tuple[float, float] | None:
        """Seconds left by the logs' progress line, and its step; ``None`` if none."""
        if not self.use_logs or not prediction.logs:
            return None
        progress = parse_progress(prediction.logs)
        if progress is None or progress.remaining is None:
            return None
        step = (
            progress.elapsed / progress.done
            if progress.elapsed and progress.done
            else 0.0
        )
        if progress.fraction < 1.0:
            return progress.remaining, step
        # A finished bar is the tail of the run, unless it is an older bar
        # (loading weights) that ended long before the run's elapsed time.
        if started is None or progress.elapsed is None:
            return None
        return (0.0, 0.0) if now - started - progress.elapsed <= 10.0 else None

    def _delay(
        self, prediction: Prediction, age: float, now: float, read: _Reading
    ) -> float | None:
        """The next delay before jitter, given :meth:`_read`; ``None``: ``base``'s."""
        started, progress, model = read
        if progress is not None:
            left, step = progress
            return max(left - max(0.1 * left, 0.5 * step), self.PROGRESS_STEP)
        if model is None:
            return None
        status = prediction.status
        if status == "processing" and started is not None:
            elapsed = max(0.0, now - started)
            grid = model.grid
            # The next grid point at least half a step ahead: a poll that
            # came a little early does not poll again at once.
            at = bisect_right(grid, elapsed + self.MIN_STEP / 2)
            if at < len(grid):
                return grid[at] - elapsed
            last = grid[-1] - grid[-2] if len(grid) > 1 else self.MIN_STEP
            return last + 0.1 * (elapsed - grid[-1])
        if status == "starting":
            pace = min(max(model.run_low, self.base.min_interval), self.ceiling)
            if len(model.queues) < self.min_samples:
                return pace
            created = _timestamp(prediction.created_at)
            waited = age if created is None else max(0.0, now - created)
            if waited < model.queue_low:
                return max(pace, model.queue_low - waited)
            if waited <= model.cold_after:
                return pace
            if model.cold is not None:
                low, high = model.cold
                if waited < low:
                    return max(pace, low - waited)
                if waited <= high:
                    return pace
            return max(pace, 0.1 * waited)
        return None

    def __repr__(self) -> str:
        return (
            f"LearnedPolicy(ceiling={self.ceiling}, min_samples={self.min_samples},"
            f" window={self.window}, models={len(self._models)})"
        )


_rng = random.Random()


def _keys(prediction: Prediction) -> list[str]:
    """The keys a prediction's samples go under, most specific first."""
    model, version = prediction.model, prediction.version
    known = version is not None and version != "hidden" and version != ""
    if not model:
        return [version] if known and version else []
    return [f"{model}:{version}", model] if known else [model]


def _beyond(values: list[float], passed: float) -> float:
    """The median of sorted ``values`` above ``passed``; ``passed`` if none is."""
    at = bisect_right(values, passed)
    if at == len(values):
        return max(passed, 0.0)
    return values[(at + len(values) - 1) // 2]
