"""``replipoll run --inputs FILE``: create a prediction per input, resumably.

One :class:`~replipoll.PollManager` creates the inputs to create
(:meth:`~replipoll.PollManager.run_many`) and polls, by id, the predictions
an earlier run created but did not see finish
(:meth:`~replipoll.PollManager.as_completed`); nothing is created twice.
The lines written, and how a rerun reads them, are in
:mod:`replipoll._cli._journal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import (
    AsyncGenerator,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, Final

import attrs
from rich.console import Console

from .._client import Client
from .._errors import (
    AuthenticationError,
    BaseURLError,
    NotFoundError,
    PredictionMayExistError,
    TransportError,
)
from .._manager import PollManager, PollResult, RunResult
from .._models import Prediction
from ._journal import CREATED, CREATING, UNCERTAIN, Journal, ResumePlan, placeholder
from ._poll import cause_of
from ._resultlog import describe_error, finite
from ._ui import Tally, live_progress, outcome_table

__all__ = [
    "RunBatch",
    "SendGate",
    "closing",
    "count",
    "print_summary",
    "run_inputs",
]

#: Create failures in a row, before any create succeeded, that stop a batch
#: failing for one reason (a refused key, an unknown model, no connection).
SYSTEMIC_AFTER: Final = 3


class NotSent(Exception):
    """The batch stopped before this input's create was built; nothing was sent."""


class SendGate(Mapping[str, Any]):
    """An input that says when its create request is being built.

    :meth:`Client.create <replipoll.Client.create>` reads the input (to
    build the request body) after it got its turn and before anything is
    sent, so reading it is the last moment to write the ``"creating"``
    line, or to refuse to send (:class:`NotSent`) once the batch stops.
    ``run_many`` offers no hook there; this mapping is one.
    """

    def __init__(
        self, index: int, data: Mapping[str, Any], on_send: Callable[[int], None]
    ) -> None:
        self.index = index
        self._data = data
        self._on_send: Callable[[int], None] | None = on_send

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        on_send, self._on_send = self._on_send, None
        if on_send is not None:
            on_send(self.index)  # may raise NotSent: the body is not built
        return iter(self._data)


@attrs.define
class RunBatch:
    """Where a batch stands; kept outside the coroutine so an interrupt can report.

    Attributes:
        inputs: Every input, in order.
        digests: Each input's fingerprint (kept in its lines).
        plan: What this run does with each input.
        journal: Where lines go.
        tally: Live status counts of every input, earlier runs included.
        outcomes: How the inputs finished in this run ended.
        causes: What the errors of this run were, counted.
        created: Predictions created by this run.
        resumed: Predictions of earlier runs polled by this run.
        in_flight: Inputs whose create may be on its way: ``sent_at``.
        ids: The prediction id of each input created or polled by this run.
        diagnosis: Why the batch stopped creating, if it failed for one reason.
        usage: The diagnosis is the user's to fix (key, model, URL: exit 2).
        not_sent: Inputs not created because of :attr:`diagnosis`.
    """

    inputs: Sequence[Mapping[str, Any]]
    digests: Sequence[str]
    plan: ResumePlan
    journal: Journal
    tally: Tally = attrs.field(init=False)
    outcomes: Counter[str] = attrs.Factory(Counter)
    causes: Counter[str] = attrs.Factory(Counter)
    created: int = 0
    resumed: int = 0
    in_flight: dict[int, float] = attrs.Factory(dict)
    ids: dict[int, str] = attrs.Factory(dict)
    diagnosis: str | None = None
    usage: bool = False
    not_sent: int = 0
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    started: float = attrs.Factory(time.monotonic)
    _refusals: int = 0

    def __attrs_post_init__(self) -> None:
        todo = len(self.plan.create) + len(self.plan.poll)
        self.tally = Tally(todo, Counter(self.plan.done.values()))

    @property
    def all_outcomes(self) -> Counter[str]:
        """Outcomes of every finished input, earlier runs included."""
        return Counter(self.plan.done.values()) + self.outcomes

    @property
    def uncertain(self) -> int:
        """Inputs whose prediction may exist: left alone, or new this run."""
        return self.all_outcomes[UNCERTAIN]

    @property
    def all_succeeded(self) -> bool:
        """Every input ended ``succeeded``."""
        outcomes = self.all_outcomes
        return outcomes["succeeded"] == len(self.inputs) == outcomes.total()

    def summary_line(self, *, interrupted: bool = False) -> str:
        """One line: inputs by outcome, creates, errors, time, the file."""
        outcomes = self.all_outcomes
        parts = [f"{n} {k}" for k, n in outcomes.most_common()]
        if self.not_sent:
            parts.append(f"{self.not_sent} not created")
        left = len(self.inputs) - outcomes.total() - self.not_sent
        if left:
            parts.append(f"{left} not finished")
        left_alone = len(self.plan.uncertain)
        finished = len(self.plan.done) - left_alone
        work = [f"{self.created} created"]
        if self.resumed:
            work.append(f"{self.resumed} polled from earlier runs")
        if finished:
            work.append(f"{finished} finished in earlier runs")
        if left_alone:
            work.append(f"{left_alone} uncertain left alone")
        causes = "; ".join(f"{k} x {n}" for k, n in self.causes.most_common(3))
        why = f" [{causes}]" if causes else ""
        log = self.journal.log
        where = f"; results in {log.path}" if log is not None else ""
        verb = "interrupted after" if interrupted else "in"
        return (
            f"{len(self.inputs)} inputs: {', '.join(parts) or 'nothing to do'}; "
            f"{', '.join(work)}{why} ({verb} "
            f"{time.monotonic() - self.started:.1f}s){where}"
        )

    def figures(self) -> dict[str, str]:
        """Counters for the summary table."""
        figures = {"predictions created": str(self.created)}
        if self.resumed:
            figures["polled, created earlier"] = str(self.resumed)
        left_alone = len(self.plan.uncertain)
        if len(self.plan.done) > left_alone:
            finished = len(self.plan.done) - left_alone
            figures["finished earlier"] = f"{finished} (counted above)"
        if left_alone:
            figures["uncertain, left alone"] = f"{left_alone} (counted above)"
        if self.plan.recreated:
            figures["uncertain, created again"] = str(self.plan.recreated)
        if self.not_sent:
            figures["not created (stopped)"] = str(self.not_sent)
        figures.update(
            {
                "poll requests": str(self.requests),
                "retries": str(self.retries),
                "429s honoured": str(self.throttled),
                "wall time": f"{time.monotonic() - self.started:.1f}s",
            }
        )
        return figures

    # -- lines -----------------------------------------------------------------

    def line(self, index: int, pid: str | None, result: str) -> dict[str, Any]:
        """The fields every line of an input starts with."""
        return {
            "id": pid if pid is not None else placeholder(index),
            "result": result,
            "input_index": index,
            "input_digest": self.digests[index],
        }

    def sending(self, index: int) -> None:
        """An input's create request is being built: stop, or say so on disk first."""
        if self.diagnosis is not None:
            raise NotSent(index)
        sent_at = time.time()
        self.journal.write_now({**self.line(index, None, CREATING), "sent_at": sent_at})
        self.in_flight[index] = sent_at

    async def on_created(self, index: int, prediction: Prediction) -> None:
        """The prediction exists: its id goes to disk before it is waited for."""
        self.created += 1
        self.ids[index] = prediction.id
        self.tally.update(prediction)
        # Not in flight from here: the line is written even if the caller
        # is cancelled now (Journal.close waits for it).
        self.in_flight.pop(index, None)
        await self.journal.write(
            self.line(index, prediction.id, CREATED), outcome=False
        )

    async def finish(
        self,
        index: int,
        prediction: Prediction | None,
        error: BaseException | None,
    ) -> None:
        """Record how an input ended (or that the batch stopped before it)."""
        pid = self.ids.get(index)
        if isinstance(error, NotSent):
            self.not_sent += 1
            self.tally.finish_unsent(placeholder(index))
            return
        if pid is None and error is not None:
            self._judge_refusal(error)
        if isinstance(error, PredictionMayExistError):
            outcome = UNCERTAIN
            record = self.line(index, None, UNCERTAIN)
            info = describe_error(error)
            info["sent_at"] = error.sent_at
            record.update(status=None, prediction=None, error=info)
            record["sent_at"] = error.sent_at
        else:
            status = None if prediction is None else str(prediction.status)
            outcome = "error" if error is not None or status is None else status
            record = self.line(index, pid, outcome)
            record.update(
                status=status,
                prediction=None if prediction is None else prediction.to_json(),
                error=None if error is None else describe_error(error),
            )
        self.tally.finish(
            PollResult(pid or placeholder(index), prediction, error), outcome
        )
        if error is not None:
            self.causes[cause_of(error)] += 1
        self.in_flight.pop(index, None)
        self.outcomes[outcome] += 1
        await self.journal.write(finite(record), outcome=True)

    def _judge_refusal(self, error: BaseException) -> None:
        """Stop creating when the first creates all fail for one reason."""
        if self.created or self.diagnosis is not None:
            return
        usage = isinstance(error, AuthenticationError | NotFoundError | BaseURLError)
        unreachable = isinstance(error, TransportError) and not error.sent
        if not (usage or unreachable):
            self._refusals = 0
            return
        self._refusals += 1
        if self._refusals >= SYSTEMIC_AFTER:
            self.diagnosis = f"the first {SYSTEMIC_AFTER} creates failed: {error}"
            self.usage = usage


async def run_inputs(
    batch: RunBatch,
    client: Client,
    target: Mapping[str, Any],
    *,
    concurrency: int,
    rate: float | None,
    timeout: float | None,
    console: Console | None,
) -> None:
    """Create and poll ``batch``'s inputs to the end, recording each line at once.

    Args:
        target: ``model``, ``version``, ``deployment``, ``cancel_after`` and
            ``wait`` for :meth:`PollManager.run_many`.
        console: Where to show a live progress bar, if anywhere.
    """
    manager = PollManager(
        client,
        max_concurrency=concurrency,
        rate_limit=rate,
        timeout=timeout,
        on_update=batch.tally.update,
    )
    plan = batch.plan
    gated = [SendGate(i, batch.inputs[i], batch.sending) for i in plan.create]
    order = plan.create

    async def creates() -> None:
        if not gated:
            return
        results = closing(
            manager.run_many(gated, **target, on_created=_by_index(batch, order))
        )
        async with results as each:
            async for result in each:
                await _finish_run(batch, order, result)

    async def polls() -> None:
        if not plan.poll:
            return
        for pid, index in plan.poll.items():
            batch.ids[index] = pid
        batch.resumed = len(plan.poll)
        async for result in manager.as_completed(list(plan.poll)):
            await batch.finish(plan.poll[result.id], result.prediction, result.error)

    def paused() -> float:
        return max(manager.budget.paused_until - time.monotonic(), 0.0)

    try:
        async with manager:
            if console is None:
                await _both(creates(), polls())
            else:
                async with live_progress(
                    console,
                    batch.tally,
                    len(batch.inputs),
                    "running",
                    paused=paused,
                    mode=lambda: manager.stats.mode,
                    note=lambda: f"{batch.created} created",
                ):
                    await _both(creates(), polls())
    finally:
        stats = manager.stats
        batch.requests, batch.retries = stats.requests, stats.retries
        batch.throttled = stats.throttled


def count(n: int, noun: str) -> str:
    """``n`` and ``noun``, plural unless ``n`` is 1.

    Example:
        >>> count(1, "input"), count(3, "input")
        ('1 input', '3 inputs')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def closing(
    results: AsyncGenerator[RunResult, None],
) -> contextlib.aclosing[AsyncGenerator[RunResult, None]]:
    """``contextlib.aclosing`` for what ``run_many`` returns.

    Leaving the loop closes it at once, which stops the creates not yet sent.
    """
    return contextlib.aclosing(results)


async def _both(*jobs: Any) -> None:
    async with asyncio.TaskGroup() as group:
        for job in jobs:
            group.create_task(job)


def _by_index(
    batch: RunBatch, order: Sequence[int]
) -> Callable[[int, Prediction], Any]:
    """``on_created`` for ``run_many``, whose indexes count the inputs passed."""

    def created(position: int, prediction: Prediction) -> Any:
        return batch.on_created(order[position], prediction)

    return created


async def _finish_run(batch: RunBatch, order: Sequence[int], result: RunResult) -> None:
    await batch.finish(order[result.index], result.prediction, result.error)


def print_summary(batch: RunBatch, console: Console) -> None:
    """The end-of-run table, for a terminal."""
    console.print(
        outcome_table(
            "replipoll run", dict(batch.all_outcomes), batch.figures(), batch.causes
        )
    )
