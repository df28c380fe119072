"""``replipoll download``: fetch predictions, then save their output files.

Predictions come from one ``GET`` each, or, with ``--wait``, from a
:class:`~replipoll.PollManager` (one budget, few requests in flight, the
batch stopped early when it fails for one reason). Each finished prediction's
files are saved as soon as it is known; a progress bar counts predictions and
files, and a summary table ends the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import attrs
from rich.console import Console
from rich.table import Table

from .._client import Client
from .._download import DownloadReport, save_outputs
from .._errors import BatchStoppedError, ReplipollError
from .._manager import PollManager, PollResult
from .._models import Prediction
from .._results import Diagnosis
from ._common import printable
from ._ui import Tally, live_progress, outcome_table, plain

__all__ = ["DownloadRun", "download_all", "human_size"]


def human_size(size: int) -> str:
    """``1.5 MB``-style size (powers of 1000, like ``ls -h --si``).

    Example:
        >>> human_size(999), human_size(1500), human_size(2_500_000)
        ('999 B', '1.5 kB', '2.5 MB')
    """
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


@attrs.define
class DownloadRun:
    """What a download run did, for the progress bar and the summary.

    Attributes:
        ids: The predictions asked for.
        tally: Where each prediction stands (for the bar).
        files: Files saved, present already, failed.
        saved_bytes: Bytes written by this run.
        problems: Why predictions or files failed, one line each.
        diagnosis: Why the whole batch failed, when it did (``--wait``).
        not_sent: Predictions not polled because of :attr:`diagnosis`.
        started: ``time.monotonic()`` at the start.
    """

    ids: Sequence[str]
    tally: Tally = attrs.field(init=False)
    files: Counter[str] = attrs.Factory(Counter)
    saved_bytes: int = 0
    problems: list[str] = attrs.Factory(list)
    diagnosis: Diagnosis | None = None
    not_sent: int = 0
    started: float = attrs.Factory(time.monotonic)

    def __attrs_post_init__(self) -> None:
        self.tally = Tally(len(self.ids))

    @property
    def ok(self) -> bool:
        """Every prediction succeeded and every one of its files is on disk."""
        outcomes = self.tally.counts
        return (
            not self.problems
            and self.diagnosis is None
            and outcomes["succeeded"] == len(self.ids)
        )

    def summary_line(self) -> str:
        """One line: predictions by outcome, files, bytes, time."""
        counts = self.tally.snapshot()
        if self.not_sent:
            counts["not polled"] = self.not_sent
        outcomes = ", ".join(f"{n} {k}" for k, n in counts.items())
        files = self.files
        return (
            f"{len(self.ids)} predictions: {outcomes or 'none'}; "
            f"{files['saved']} files saved ({human_size(self.saved_bytes)}), "
            f"{files['present']} already present, {files['failed']} failed "
            f"(in {time.monotonic() - self.started:.1f}s)"
        )

    def table(self) -> Table:
        """The end-of-run summary: predictions by outcome, then files and bytes."""
        outcomes = {k: v for k, v in self.tally.snapshot().items() if v > 0}
        if self.not_sent:
            outcomes["not polled"] = self.not_sent
        figures = {
            "files saved": str(self.files["saved"]),
            "files already present": str(self.files["present"]),
            "files failed": str(self.files["failed"]),
            "bytes saved": human_size(self.saved_bytes),
            "wall time": f"{time.monotonic() - self.started:.1f}s",
        }
        return outcome_table("replipoll download", outcomes, figures)


async def download_all(
    client: Client,
    ids: Sequence[str],
    dest: Path,
    *,
    overwrite: bool,
    concurrency: int,
    wait: bool,
    out: Console,
    err: Console,
    progress: bool = False,
) -> DownloadRun:
    """Save the outputs of every id under ``dest``.

    Without ``progress`` each file is reported on ``out`` as it is saved
    (one line each, for scripts); with it a progress bar on ``err`` counts
    predictions and files, and nothing scrolls past. Problems are said on
    ``err`` either way. Predictions are handled ``concurrency`` at a time,
    sharing one download session (which never carries the API key).
    """
    run = DownloadRun(ids)
    saving = asyncio.Semaphore(concurrency)

    async def save(prediction: Prediction, session: aiohttp.ClientSession) -> None:
        async with saving:
            report = await _save(prediction, dest, session, concurrency, overwrite)
        _account(run, prediction, report, out if not progress else None, err)

    async with (
        client,
        aiohttp.ClientSession() as session,
        _maybe_progress(err, run, wait, enabled=progress),
    ):
        tasks: set[asyncio.Task[None]] = set()
        async for result in _predictions(client, ids, wait, concurrency, run):
            if result.error is not None or result.prediction is None:
                if isinstance(result.error, BatchStoppedError):
                    run.tally.finish_unsent(result.id)
                    run.not_sent += 1
                else:
                    run.tally.finish(result)
                    _problem(run, err, f"{result.id}: {result.error}")
                continue
            run.tally.update(result.prediction)
            task = asyncio.create_task(save(result.prediction, session))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.gather(*tasks)
    return run


async def _predictions(
    client: Client, ids: Sequence[str], wait: bool, concurrency: int, run: DownloadRun
) -> AsyncIterator[PollResult]:
    """Each id's record as soon as it is known: one GET each, or polled to the end."""
    if wait:
        async with PollManager(
            client,
            max_concurrency=concurrency,
            on_update=run.tally.update,
            stop_on_systemic=True,
        ) as manager:
            async for result in manager.as_completed(ids):
                yield result
            run.diagnosis = manager.diagnosis
        return
    slots = asyncio.Semaphore(concurrency)

    async def get(pid: str) -> PollResult:
        async with slots:
            try:
                return PollResult(pid, await client.get(pid))
            except ReplipollError as exc:
                return PollResult(pid, None, exc)

    for next_done in asyncio.as_completed([get(pid) for pid in ids]):
        yield await next_done


async def _save(
    prediction: Prediction,
    dest: Path,
    session: aiohttp.ClientSession,
    concurrency: int,
    overwrite: bool,
) -> DownloadReport | str:
    """The files saved, or why none could be."""
    pid = prediction.id
    if not prediction.is_terminal:
        return f"{pid} is still {prediction.status}; use --wait"
    if prediction.data_removed:
        return f"{pid}: the provider removed its outputs (data_removed)"
    return await save_outputs(
        prediction, dest, session=session, concurrency=concurrency, overwrite=overwrite
    )


def _account(
    run: DownloadRun,
    prediction: Prediction,
    report: DownloadReport | str,
    out: Console | None,
    err: Console,
) -> None:
    """Count what one prediction's saving did; say it (``out``) and its problems."""
    pid = prediction.id
    run.tally.finish(PollResult(pid, prediction))
    if isinstance(report, str):
        _problem(run, err, report)
        return
    for saved in report.files:
        kind = "present" if saved.skipped else "saved"
        run.files[kind] += 1
        if not saved.skipped:
            run.saved_bytes += saved.size
        if out is not None:
            verb = "present" if saved.skipped else "saved  "
            line = f"{verb} {saved.path}  ({human_size(saved.size)})"
            out.print(plain(line), soft_wrap=True)
    for error in report.errors:
        run.files["failed"] += 1
        _problem(run, err, str(error))
    if not report.files and not report.errors and out is not None:
        out.print(plain(f"{pid}: no output files"))
    if prediction.status != "succeeded":
        message = prediction.error_message
        detail = f": {message}" if message else ""
        _problem(run, err, f"{pid} {prediction.status}{detail}")


def _problem(run: DownloadRun, err: Console, line: str) -> None:
    run.problems.append(line)
    err.print(
        plain(f"replipoll: error: {printable(line, one_line=True)}"), soft_wrap=True
    )


@contextlib.asynccontextmanager
async def _maybe_progress(
    err: Console, run: DownloadRun, wait: bool, *, enabled: bool
) -> AsyncIterator[None]:
    if not enabled:
        yield
        return
    what = "waiting and saving" if wait else "saving"
    async with live_progress(err, run.tally, len(run.ids), what):
        yield
