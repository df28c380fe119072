"""``replipoll poll``: poll a batch of ids, one durable JSON line per finished id.

The click command lives in :mod:`replipoll._cli`; this module holds the batch
run that appends to a :class:`~replipoll._resultlog.ResultLog` as each id
finishes (ids are read by :mod:`replipoll._cli._ids`).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import Counter
from typing import IO, Any

import attrs
from rich.console import Console

from .._client import Client
from .._errors import BatchStoppedError, TransportError
from .._manager import PollManager
from .._results import Diagnosis
from ._common import say
from ._resultlog import ResultLog, dumps, record_for
from ._ui import Tally, live_progress, outcome_table, plain

__all__ = ["BatchRun", "cause_of", "print_summary", "run_batch"]


def cause_of(error: BaseException) -> str:
    """What an error is, for the summary's count of causes.

    Example:
        >>> from replipoll import AuthenticationError, ConnectError
        >>> cause_of(AuthenticationError("Invalid token", status=401))
        '401 AuthenticationError'
        >>> cause_of(ConnectError("could not connect to h:9: Connection refused"))
        'ConnectError: could not connect to h:9: Connection refused'
    """
    name = type(error).__name__
    status = getattr(error, "status", None)
    if status is not None:
        return f"{status} {name}"
    if isinstance(error, TransportError):  # the message says what happened
        message = error.message if len(error.message) < 80 else error.message[:79]
        return f"{name}: {message}"
    return name


@attrs.define
class BatchRun:
    """Where a batch stands; kept outside the coroutine so an interrupt can report.

    Attributes:
        ids: Every id asked for, in order, once each.
        done_before: Outcomes of ids already finished in the results file.
        tally: Live status counts of every id, earlier runs included.
        outcomes: Outcomes of ids finished in this run.
        causes: What the errors of this run were, counted (see :func:`cause_of`).
        log: The results file, if any (else lines go to standard output).
        started: ``time.monotonic()`` at the start.
        diagnosis: Why the whole batch failed, when its first answers said so;
            the ids not finished then were not polled (nor recorded).
        not_sent: Ids left unpolled because of :attr:`diagnosis`.
    """

    ids: list[str]
    done_before: dict[str, str] = attrs.Factory(dict)
    tally: Tally = attrs.field(init=False)
    outcomes: Counter[str] = attrs.Factory(Counter)
    causes: Counter[str] = attrs.Factory(Counter)
    log: ResultLog | None = None
    started: float = attrs.Factory(time.monotonic)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    sweeps: int = 0
    sweep_pages: int = 0
    diagnosis: Diagnosis | None = None
    not_sent: int = 0

    def __attrs_post_init__(self) -> None:
        self.tally = Tally(len(self.todo), Counter(self.done_before.values()))

    @property
    def todo(self) -> list[str]:
        """The ids this run polls."""
        return [pid for pid in self.ids if pid not in self.done_before]

    @property
    def all_outcomes(self) -> Counter[str]:
        """Outcomes of every finished id, earlier runs included."""
        return Counter(self.done_before.values()) + self.outcomes

    @property
    def all_succeeded(self) -> bool:
        """True when every id asked for ended ``succeeded``."""
        outcomes = self.all_outcomes
        return outcomes["succeeded"] == len(self.ids) == outcomes.total()

    def summary_line(self, *, interrupted: bool = False) -> str:
        """One line: how many ids ended how, why the errors, where the results are."""
        outcomes = self.all_outcomes
        parts = [f"{n} {k}" for k, n in outcomes.most_common()]
        left = len(self.ids) - outcomes.total()
        if left:
            parts.append(f"{left} not finished")
        earlier = (
            f", {len(self.done_before)} from earlier runs" if self.done_before else ""
        )
        causes = "; ".join(f"{k} x {n}" for k, n in self.causes.most_common(3))
        why = f" [{causes}]" if causes else ""
        where = f"; results in {self.log.path}" if self.log is not None else ""
        verb = "interrupted after" if interrupted else "in"
        elapsed = time.monotonic() - self.started
        return (
            f"{len(self.ids)} ids: {', '.join(parts) or 'nothing to do'}{earlier}"
            f"{why} ({verb} {elapsed:.1f}s){where}"
        )

    def figures(self) -> dict[str, str]:
        """Counters for the summary table."""
        figures = {
            "requests sent": str(self.requests),
            "retries": str(self.retries),
            "429s honoured": str(self.throttled),
            "wall time": f"{time.monotonic() - self.started:.1f}s",
        }
        if self.sweeps:
            figures["list sweeps"] = (
                f"{self.sweeps} ({self.sweep_pages} pages, counted in requests)"
            )
        if self.done_before:
            figures["from earlier runs"] = f"{len(self.done_before)} (counted above)"
        if self.not_sent:
            figures["not polled (stopped)"] = str(self.not_sent)
        return figures


async def run_batch(
    run: BatchRun,
    client: Client,
    *,
    concurrency: int,
    rate: float | None,
    timeout: float | None,
    console: Console | None,
    stdout: IO[str] | None = None,
    sweep: bool | None = None,
    full_records: bool = True,
) -> None:
    """Poll ``run.todo`` to the end, recording each id as soon as it finishes.

    With ``run.log`` each record is appended there (one write, then fsync, in
    a worker thread so polling goes on); otherwise it is printed to
    ``stdout``. With a ``console`` a live progress bar is shown on it. With
    ``-v`` (the ``replipoll`` logger at INFO) each id's error is said as it
    happens. A batch whose first
    answers show it fails for one reason stops there (``run.diagnosis``):
    the ids it did not finish are neither polled nor recorded, so a rerun
    after the fix polls them. ``sweep`` and ``full_records`` are the
    :class:`PollManager`'s.
    """
    ids = run.todo
    manager = PollManager(
        client,
        sweep=sweep,
        full_records=full_records,
        max_concurrency=concurrency,
        rate_limit=rate,
        timeout=timeout,
        on_update=run.tally.update,
        stop_on_systemic=True,
    )

    def paused() -> float:
        return max(manager.budget.paused_until - time.monotonic(), 0.0)

    try:
        async with manager:
            if console is not None:
                async with live_progress(
                    console,
                    run.tally,
                    len(run.ids),
                    "polling",
                    paused=paused,
                    mode=lambda: manager.stats.mode,
                ):
                    await _drain(run, manager, ids, stdout, console)
            else:
                await _drain(run, manager, ids, stdout, None)
    finally:
        stats = manager.stats
        run.requests, run.retries, run.throttled = (
            stats.requests,
            stats.retries,
            stats.throttled,
        )
        run.sweeps, run.sweep_pages = stats.sweeps, stats.sweep_pages
        run.diagnosis = manager.diagnosis


async def _drain(
    run: BatchRun,
    manager: PollManager,
    ids: list[str],
    stdout: IO[str] | None,
    console: Console | None,
) -> None:
    verbose = logging.getLogger("replipoll").isEnabledFor(logging.INFO)
    async for result in manager.as_completed(ids):
        error = result.error
        if isinstance(error, BatchStoppedError):
            run.not_sent += 1  # not recorded: a rerun after the fix polls it
            run.tally.finish_unsent(result.id)
            continue
        outcome = run.tally.finish(result)
        if error is not None:
            run.causes[cause_of(error)] += 1
            if verbose:
                line = f"{result.id}: {error}"
                if console is not None:  # above the progress bar
                    console.print(plain(f"replipoll: {line}", "red"))
                else:
                    say(line)
        record: dict[str, Any] = record_for(result)
        if run.log is not None:
            await asyncio.to_thread(run.log.append, record)
        else:
            # Looked up each time: a progress bar swaps sys.stdout for a proxy.
            out = sys.stdout if stdout is None else stdout
            out.write(dumps(record) + "\n")
            out.flush()
        run.outcomes[outcome] += 1


def print_summary(run: BatchRun, console: Console) -> None:
    """The end-of-run table, for a terminal."""
    console.print(
        outcome_table(
            "replipoll poll", dict(run.all_outcomes), run.figures(), run.causes
        )
    )
