"""``replipoll poll``: poll a batch of ids, one durable JSON line per finished id.

The click command lives in :mod:`replipoll._cli`; this module holds the
parts worth testing without a terminal: reading ids, and the batch run that
appends to a :class:`~replipoll._resultlog.ResultLog` as each id finishes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import IO, Any, Final

import attrs
from rich.console import Console

from .._client import Client
from .._manager import PollManager
from ._resultlog import ResultLog, record_for
from ._ui import Tally, live_progress, outcome_table

__all__ = ["BatchRun", "parse_ids", "run_batch"]

STDIN: Final = "-"


def parse_ids(lines: Iterable[str]) -> list[str]:
    """Ids from lines of text: stripped, blanks and ``#`` comments skipped.

    Example:
        >>> parse_ids(["abc\\n", "  # a comment\\n", "", " def ", "abc"])
        ['abc', 'def', 'abc']
    """
    ids = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            ids.append(text)
    return ids


def gather_ids(args: Sequence[str], from_file: str | None, stdin: IO[str]) -> list[str]:
    """The ids to poll, in order, once each: from ``args``, a file, or stdin.

    ``-`` (as an argument or as ``from_file``) reads standard input.

    Raises:
        OSError: ``from_file`` cannot be read.
    """
    ids: list[str] = []
    read_stdin = STDIN in args or from_file == STDIN
    for arg in args:
        if arg != STDIN:
            ids.append(arg)
    if from_file is not None and from_file != STDIN:
        with open(from_file, encoding="utf-8") as file:
            ids.extend(parse_ids(file))
    if read_stdin:
        ids.extend(parse_ids(stdin))
    return list(dict.fromkeys(ids))


@attrs.define
class BatchRun:
    """Where a batch stands; kept outside the coroutine so an interrupt can report.

    Attributes:
        ids: Every id asked for, in order, once each.
        done_before: Outcomes of ids already finished in the results file.
        tally: Live status counts of the ids polled in this run.
        outcomes: Outcomes of ids finished in this run.
        log: The results file, if any (else lines go to standard output).
        started: ``time.monotonic()`` at the start.
    """

    ids: list[str]
    done_before: dict[str, str] = attrs.Factory(dict)
    tally: Tally = attrs.field(init=False)
    outcomes: Counter[str] = attrs.Factory(Counter)
    log: ResultLog | None = None
    started: float = attrs.Factory(time.monotonic)
    requests: int = 0
    retries: int = 0
    throttled: int = 0

    def __attrs_post_init__(self) -> None:
        self.tally = Tally(len(self.todo))

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
        """One line: how many ids ended how, and where the results are."""
        outcomes = self.all_outcomes
        parts = [f"{n} {k}" for k, n in outcomes.most_common()]
        left = len(self.ids) - outcomes.total()
        if left:
            parts.append(f"{left} not finished")
        earlier = (
            f", {len(self.done_before)} from earlier runs" if self.done_before else ""
        )
        where = f"; results in {self.log.path}" if self.log is not None else ""
        verb = "interrupted after" if interrupted else "in"
        elapsed = time.monotonic() - self.started
        return (
            f"{len(self.ids)} ids: {', '.join(parts) or 'nothing to do'}{earlier} "
            f"({verb} {elapsed:.1f}s){where}"
        )

    def figures(self) -> dict[str, str]:
        """Counters for the summary table."""
        return {
            "requests sent": str(self.requests),
            "retries": str(self.retries),
            "429s honoured": str(self.throttled),
            "wall time": f"{time.monotonic() - self.started:.1f}s",
        }


async def run_batch(
    run: BatchRun,
    client: Client,
    *,
    concurrency: int,
    rate: float | None,
    timeout: float | None,
    console: Console | None,
    stdout: IO[str] | None = None,
) -> None:
    """Poll ``run.todo`` to the end, recording each id as soon as it finishes.

    With ``run.log`` each record is appended there (one write, then fsync, in
    a worker thread so polling goes on); otherwise it is printed to
    ``stdout``. With a ``console`` a live progress bar is shown on it.
    """
    ids = run.todo
    manager = PollManager(
        client,
        max_concurrency=concurrency,
        rate_limit=rate,
        timeout=timeout,
        on_update=run.tally.update,
    )
    try:
        async with manager:
            if console is not None:
                async with live_progress(console, run.tally, len(ids), "polling"):
                    await _drain(run, manager, ids, stdout)
            else:
                await _drain(run, manager, ids, stdout)
    finally:
        stats = manager.stats
        run.requests, run.retries, run.throttled = (
            stats.requests,
            stats.retries,
            stats.throttled,
        )


async def _drain(
    run: BatchRun, manager: PollManager, ids: list[str], stdout: IO[str] | None
) -> None:
    async for result in manager.as_completed(ids):
        outcome = run.tally.finish(result)
        record: dict[str, Any] = record_for(result)
        if run.log is not None:
            await asyncio.to_thread(run.log.append, record)
        else:
            # Looked up each time: a progress bar swaps sys.stdout for a proxy.
            out = sys.stdout if stdout is None else stdout
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            out.flush()
        run.outcomes[outcome] += 1


def print_summary(run: BatchRun, console: Console) -> None:
    """The end-of-run table, for a terminal."""
    console.print(
        outcome_table("replipoll poll", dict(run.all_outcomes), run.figures())
    )
