"""A batch shared through Redis: ``replipoll poll --redis URL --batch NAME``.

Each ``poll --batch`` process is one worker of a
:class:`~replipoll.redis.RedisBatch`: it loads the ids it was given (every
worker may be given the same ones), polls its share, and stays until the
whole batch is done, taking over the ids of workers that died. ``replipoll
batch status|export|delete`` read, write out and remove a batch.

:mod:`replipoll.redis` (and the ``redis`` package) is imported only here,
and only when a command names a Redis; the URL's password is never shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Final

import attrs
from rich.console import Console
from rich.progress import (
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from .._client import Client
from .._errors import ConfigurationError
from .._manager import PollManager, PollResult
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    printable,
    run_async,
    say,
    stderr,
    stdout,
)
from ._poll import cause_of
from ._resultlog import ForeignFileError, ResultLog, dumps, record_for, same_file
from ._ui import REFRESH, StatusBarColumn, outcome_table, plain

if TYPE_CHECKING:
    from ..redis import BatchStatus, RedisBatch, RedisBudget, WorkerReport

__all__ = ["batch_status", "delete_batch", "export_batch", "open_batch", "poll_batch"]

#: Seconds between two readings of the batch's progress from Redis.
_STATUS_EVERY: Final = 0.5


def open_batch(
    url: str,
    name: str,
    *,
    prefix: str,
    reclaim_after: float = 30.0,
    prefetch: int = 500,
) -> RedisBatch:
    """The batch ``name`` at ``url``, on a connection of its own.

    Raises:
        ConfigurationError: the ``redis`` package is missing, or the URL or
            the name is unusable (never showing the password).
    """
    try:
        from ..redis import RedisBatch
    except ImportError as exc:
        if (exc.name or "").partition(".")[0] != "redis":
            raise
        raise ConfigurationError(
            "--redis needs the redis package: pip install 'replipoll[redis]'"
        ) from None
    return RedisBatch.from_url(
        url, name, prefix=prefix, reclaim_after=reclaim_after, prefetch=prefetch
    )


def _unknown(batch: RedisBatch) -> ConfigurationError:
    return ConfigurationError(
        f"no batch {batch.name!r} at {batch.url} (prefix {batch.prefix!r}): no "
        "ids were loaded into it; check the name, --redis-prefix and --redis"
    )


def _open_log(out: Path, from_file: str | None, *, durable: bool = True) -> ResultLog:
    """A results file, opened and locked (exit 2 when it cannot be)."""
    from ._ids import STDIN

    if from_file not in (None, STDIN) and same_file(out, from_file):
        raise ConfigurationError(
            f"--out {out} is the --from file: the results would be appended to "
            "the ids; choose another --out"
        )
    log = ResultLog(out, durable=durable)
    try:
        log.open()
    except BlockingIOError:
        raise ConfigurationError(
            f"{out} is in use by another replipoll process"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"cannot open {out}: {exc.strerror or exc}") from None
    except ForeignFileError as exc:
        raise ConfigurationError(
            f"{exc}; choose another --out, or delete it if it is yours"
        ) from None
    return log


@attrs.define
class WorkerRun:
    """One worker's run, kept outside the coroutine so an interrupt can report.

    Attributes:
        name: The batch.
        log: This worker's results file (the ids it finished), if any.
        loaded: Ids this worker added to the batch (new to it).
        given: Ids this worker was given.
        status: The batch as last read from Redis.
        report: What the worker did, once it returned.
        written: Results this worker wrote (so far).
        outcomes: Their outcomes.
        causes: What this worker's errors were, counted.
    """

    name: str
    log: ResultLog | None = None
    loaded: int = 0
    given: int = 0
    status: BatchStatus | None = None
    report: WorkerReport | None = None
    written: int = 0
    outcomes: Counter[str] = attrs.Factory(Counter)
    causes: Counter[str] = attrs.Factory(Counter)
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    started: float = attrs.Factory(time.monotonic)

    def batch_line(self) -> str:
        """``300 of 300 ids done (290 succeeded, 10 error)``, batch-wide."""
        status = self.status
        if status is None:
            return "nothing read from Redis"
        parts = ", ".join(f"{n} {k}" for k, n in Counter(status.outcomes).most_common())
        line = f"{status.done} of {status.total} ids done"
        return f"{line} ({parts})" if parts else line

    def summary_line(self, *, interrupted: bool = False) -> str:
        """The batch, then what this worker did, why the errors, how long."""
        report = self.report
        mine = f"this worker wrote {self.written}"
        if report is not None and report.taken_over:
            mine += f", took over {report.taken_over} from stopped workers"
        if report is not None and report.duplicates:
            mine += f", {report.duplicates} already written by another worker"
        if self.loaded:
            mine = f"loaded {self.loaded} new ids; {mine}"
        causes = "; ".join(f"{k} x {n}" for k, n in self.causes.most_common(3))
        why = f" [{causes}]" if causes else ""
        verb = "interrupted after" if interrupted else "in"
        elapsed = time.monotonic() - self.started
        where = f"; its results in {self.log.path}" if self.log is not None else ""
        return (
            f"batch {self.name}: {self.batch_line()}; {mine}{why} "
            f"({verb} {elapsed:.1f}s){where}"
        )

    def figures(self) -> dict[str, str]:
        """Counters for the summary table."""
        report = self.report
        figures = {"this worker wrote": str(self.written)}
        if self.loaded:
            figures["ids it loaded (new)"] = str(self.loaded)
        if report is not None:
            figures["taken over from stopped workers"] = str(report.taken_over)
            if report.duplicates:
                figures["already written elsewhere"] = str(report.duplicates)
        figures.update(
            {
                "requests sent": str(self.requests),
                "retries": str(self.retries),
                "429s honoured": str(self.throttled),
                "wall time": f"{time.monotonic() - self.started:.1f}s",
            }
        )
        return figures


def poll_batch(
    *,
    client: Client,
    key_id: str,
    url: str,
    name: str,
    prefix: str,
    reclaim_after: float,
    prefetch: int,
    ids: list[str] | None,
    from_file: str | None,
    out: Path | None,
    concurrency: int,
    rate: float | None,
    timeout: float | None,
    sweep: bool | None,
    full_records: bool,
    quiet: bool,
    show: bool,
) -> int:
    """Run one worker of the batch to the batch's end; return the exit status.

    ``rate`` is shared, through the batch's Redis, by every worker on the same
    API key (``key_id``, a digest of it, names the budget).
    """
    batch = open_batch(
        url, name, prefix=prefix, reclaim_after=reclaim_after, prefetch=prefetch
    )
    log = _open_log(out, from_file) if out is not None else None
    run = WorkerRun(name, log=log, given=len(ids or ()))
    try:
        budget = _shared_budget(url, f"{prefix}budget:{key_id}", rate)
        run_async(_work(run, batch, client, ids, show, concurrency, budget, timeout,
                        sweep, full_records))  # fmt: skip
    except Interrupted as stop:
        say(
            f"{run.summary_line(interrupted=True)}; the ids it held were handed "
            "back: the other workers (or this command, run again) finish them"
        )
        return stop.code
    finally:
        if log is not None:
            log.close()
    report = run.report
    assert report is not None
    if show:
        status = run.status
        counts = dict(Counter(status.outcomes).most_common()) if status else {}
        if status is not None and status.total > status.done:
            counts["not finished"] = status.total - status.done
        title = f"replipoll poll --batch {name}"
        (stdout if out is not None else stderr).print(
            outcome_table(title, counts, run.figures(), run.causes)
        )
    elif not quiet and report.diagnosis is None:
        say(run.summary_line())
    if run.status is not None and run.status.interrupted_loads:
        say(
            f"warning: {run.status.interrupted_loads} load(s) of batch {name} "
            "stopped halfway: run a worker with the same ids to load the rest"
        )
    if report.diagnosis is not None:
        say(
            f"error: {report.diagnosis.message}; this worker's ids were handed "
            "back to the batch; fix it and run the same command again"
        )
        return EXIT_FAILED if report.diagnosis.kind == "unreachable" else EXIT_USAGE
    status = run.status
    return EXIT_OK if status is not None and status.all_succeeded else EXIT_FAILED


def _shared_budget(url: str, key: str, rate: float | None) -> RedisBudget | None:
    """The key's budget at ``rate``, kept in Redis for every worker; None: no limit."""
    if rate is None:
        return None
    from ..redis import RedisBudget

    return RedisBudget.from_url(url, key, rate=rate, burst=max(1, min(10, int(rate))))


async def _work(
    run: WorkerRun,
    batch: RedisBatch,
    client: Client,
    ids: list[str] | None,
    show: bool,
    concurrency: int,
    budget: RedisBudget | None,
    timeout: float | None,
    sweep: bool | None,
    full_records: bool,
) -> None:
    from ..redis import UnknownBatchError

    verbose = logging.getLogger("replipoll").isEnabledFor(logging.INFO)
    console = stderr if show else None

    async def finished(result: PollResult, written: bool) -> None:
        if result.error is not None:
            run.causes[cause_of(result.error)] += 1
            if verbose:
                line = f"{result.id}: {result.error}"
                if console is not None:  # above the progress bar
                    console.print(plain(f"replipoll: {line}", "red"))
                else:
                    say(line)
        if not written:
            return
        record = record_for(result)
        run.written += 1
        run.outcomes[record["result"]] += 1
        if run.log is not None:
            await asyncio.to_thread(run.log.append, record)

    async with batch:
        if ids:
            run.loaded = await batch.load(ids)
        run.status = await batch.status()
        manager = PollManager(
            client,
            max_concurrency=concurrency,
            budget=budget,
            timeout=timeout,
            sweep=sweep,
            full_records=full_records,
            stop_on_systemic=True,
        )
        try:
            async with client, manager:
                work = batch.work(manager, on_result=finished, record=record_for)
                if console is None:
                    run.report = await work
                else:
                    run.report = await _with_progress(
                        run, batch, manager, console, work
                    )
        except UnknownBatchError:
            raise _unknown(batch) from None
        finally:
            stats = manager.stats
            run.requests, run.retries = stats.requests, stats.retries
            run.throttled = stats.throttled
            if budget is not None:
                await budget.aclose()
        run.status = await batch.status()


async def _with_progress(
    run: WorkerRun,
    batch: RedisBatch,
    manager: PollManager,
    console: Console,
    work: Awaitable[WorkerReport],
) -> WorkerReport:
    """Await ``work`` under a bar of the whole batch, read from Redis."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False, style="bold"),
        StatusBarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}", markup=False),
        console=console,
        refresh_per_second=REFRESH,
    )
    task = progress.add_task(f"batch {run.name}", total=None, counts={}, note="")

    def draw() -> None:
        status = run.status
        if status is None:
            return
        counts = {**status.outcomes, "queued": max(status.total - status.done, 0)}
        note = f"this worker: {run.written} written, {manager.stats.tracked} polling"
        progress.update(
            task,
            total=status.total,
            completed=status.done,
            counts={k: n for k, n in counts.items() if n},
            note=note,
        )

    over = asyncio.Event()

    async def tick() -> None:
        while not over.is_set():
            run.status = await batch.status()
            draw()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_STATUS_EVERY):
                    await over.wait()

    with progress:
        # Stopped, not cancelled: on Python 3.11 redis-py may lose a
        # cancellation (see replipoll.redis._tasks.end_tasks).
        ticker = asyncio.create_task(tick())
        try:
            report: WorkerReport = await work
        finally:
            over.set()
            await asyncio.gather(ticker, return_exceptions=True)
        run.status = await batch.status()
        draw()
    return report


# -- replipoll batch ---------------------------------------------------------


def batch_status(url: str, name: str, *, prefix: str, as_json: bool) -> int:
    """Print where a batch stands; exit 2 if there is no such batch."""
    batch = open_batch(url, name, prefix=prefix)

    async def read() -> BatchStatus:
        async with batch:
            return await batch.status()

    status = run_async(read())
    if not status.exists and not status.done:
        raise _unknown(batch)
    if as_json:
        data = attrs.asdict(status)
        data.update(complete=status.complete, url=batch.url, prefix=prefix)
        data["interrupted_loads"] = status.interrupted_loads
        _echo(json.dumps(data, indent=2))
        return EXIT_OK
    outcomes = ", ".join(f"{n} {k}" for k, n in Counter(status.outcomes).most_common())
    lines = [
        f"batch {name} at {batch.url} (prefix {prefix})",
        f"  ids: {status.total} loaded, {status.done} done"
        + (f" ({outcomes})" if outcomes else "")
        + f", {max(status.total - status.done, 0)} to go",
        f"  workers: {status.consumers} in the group, holding {status.pending} ids",
    ]
    if status.loading:
        lines.append(f"  loading: {status.loading} worker(s) loading ids now")
    if status.interrupted_loads:
        lines.append(
            f"  warning: {status.interrupted_loads} load(s) stopped halfway: run a "
            "worker with the same ids to load the rest"
        )
    lines.append("  complete" if status.complete else "  not complete")
    for line in lines:
        _echo(printable(line))
    return EXIT_OK


def _echo(text: str) -> None:
    """Print ``text`` and a newline on standard output, as it is."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def export_batch(url: str, name: str, *, prefix: str, out: Path | None) -> int:
    """Write every result of a batch as JSON Lines, each id once.

    With ``out``, results of ids already in the file are not written again
    (so a rerun adds what finished since), and the file is made durable at
    the end. Without, the lines go to standard output.
    """
    batch = open_batch(url, name, prefix=prefix)
    # One fsync at the end, not one per line.
    log = _open_log(out, None, durable=False) if out is not None else None
    seen: set[str] = set(log.contents.results) if log is not None else set()
    before = len(seen)
    lines = 0

    async def export() -> BatchStatus:
        nonlocal lines
        async with batch:
            status = await batch.status()
            if not status.exists and not status.done:
                raise _unknown(batch)
            async for result in batch.results():
                if result.id in seen:
                    continue
                seen.add(result.id)
                if log is not None:
                    log.append(result.record)
                else:
                    sys.stdout.write(dumps(result.record) + "\n")
                lines += 1
            return status

    try:
        status = run_async(export())
        if log is not None and lines:
            with open(log.path, "rb") as file:
                os.fsync(file.fileno())
    finally:
        if log is not None:
            log.close()
        sys.stdout.flush()
    where = f" to {out}" if out is not None else ""
    kept = f" ({before} already there)" if before else ""
    left = max(status.total - status.done, 0)
    tail = f"; {left} ids not finished yet" if left else ""
    say(f"batch {name}: {lines} results written{where}{kept}{tail}")
    return EXIT_OK


def delete_batch(url: str, name: str, *, prefix: str) -> int:
    """Delete a batch's keys (ids, results and all)."""
    batch = open_batch(url, name, prefix=prefix)

    async def delete() -> int:
        async with batch:
            return await batch.delete()

    keys = run_async(delete())
    say(
        f"batch {name}: deleted ({keys} keys)"
        if keys
        else f"batch {name}: nothing to delete at {batch.url} (prefix {prefix})"
    )
    return EXIT_OK
