"""What the command line shows: a progress bar split by status, and summaries.

Only the CLI imports this module (it needs ``rich``, from the ``cli`` extra).
:class:`Tally` is the plain bookkeeping behind the bar: it follows every id
from ``queued`` through the statuses the API reports to its outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Final

from rich.console import Console, RenderableType
from rich.progress import (
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from .._manager import PollResult
from .._models import Prediction
from ._common import printable

__all__ = [
    "ORDER",
    "StatusBarColumn",
    "Tally",
    "live_progress",
    "outcome_table",
    "plain",
    "prediction_view",
]

#: Outcomes first, then the statuses of ids still running.
ORDER: Final = (
    "succeeded",
    "failed",
    "canceled",
    "aborted",
    "error",
    "uncertain",
    "processing",
    "starting",
    "queued",
)
STYLES: Final[Mapping[str, str]] = {
    "succeeded": "green",
    "failed": "red",
    "canceled": "yellow",
    "aborted": "magenta",
    "error": "bold red",
    "uncertain": "yellow",
    "processing": "blue",
    "starting": "cyan",
    "queued": "bright_black",
}
#: How often the bar is redrawn, per second.
REFRESH: Final = 8


class Tally:
    """Where every id of a batch stands: ``queued``, a status, or its outcome.

    Feed it :meth:`update` as ``PollManager(on_update=...)`` and :meth:`finish`
    with each :class:`~replipoll.PollResult`; :attr:`counts` is the live view.
    Ids finished in an earlier run (``earlier``: their outcomes) count from
    the start, so the view covers the whole batch.
    """

    def __init__(self, ids: int, earlier: Mapping[str, int] | None = None) -> None:
        self.counts: Counter[str] = Counter({"queued": ids})
        self.counts.update(earlier or {})
        #: Ids finished, earlier runs included.
        self.finished = sum((earlier or {}).values())
        #: Ids finished in earlier runs.
        self.earlier = self.finished
        self._where: dict[str, str] = {}

    def _move(self, pid: str, to: str) -> None:
        old = self._where.get(pid, "queued")
        if old != to:
            self.counts[old] -= 1
            self.counts[to] += 1
            self._where[pid] = to

    def update(self, prediction: Prediction) -> None:
        """Record a status change (the manager's ``on_update`` callback)."""
        self._move(prediction.id, str(prediction.status))

    def finish(self, result: PollResult, outcome: str | None = None) -> str:
        """Record how an id ended; return its outcome (a status or ``"error"``).

        ``outcome`` overrides the one read from ``result`` (``"uncertain"``).
        """
        if outcome is None:
            outcome = (
                "error"
                if result.error is not None or result.prediction is None
                else str(result.prediction.status)
            )
        self._move(result.id, outcome)
        self._where.pop(result.id, None)  # finished ids need no memory
        self.finished += 1
        return outcome

    def finish_unsent(self, pid: str) -> None:
        """An id the batch stopped before polling it: no longer queued."""
        self.counts[self._where.pop(pid, "queued")] -= 1

    def snapshot(self) -> dict[str, int]:
        """Non-zero counts, in :data:`ORDER` (unknown statuses last)."""
        known = [(k, self.counts[k]) for k in ORDER if self.counts[k] > 0]
        other = sorted((k, v) for k, v in self.counts.items() if k not in ORDER and v)
        return dict(known + other)


def allocate(counts: Mapping[str, int], width: int) -> dict[str, int]:
    """Split ``width`` cells among ``counts`` (largest remainder; pure)."""
    total = sum(counts.values())
    if total <= 0 or width <= 0:
        return dict.fromkeys(counts, 0)
    exact = {k: v * width / total for k, v in counts.items()}
    cells = {k: int(x) for k, x in exact.items()}
    spare = width - sum(cells.values())
    for k in sorted(exact, key=lambda k: exact[k] - cells[k], reverse=True)[:spare]:
        cells[k] += 1
    return cells


class _TwoLineProgress(Progress):
    """A progress display with the status legend on a line of its own."""

    legend: Text = Text()

    def get_renderables(self) -> Iterable[RenderableType]:
        """The bar, then the legend (too long to share a line at 80 columns)."""
        yield self.make_tasks_table(self.tasks)
        yield self.legend


class StatusBarColumn(ProgressColumn):
    """A progress bar whose segments are coloured by status."""

    def __init__(self, width: int = 40) -> None:
        super().__init__()
        self.width = width

    def render(self, task: Task) -> Text:
        """Draw the bar from the task's ``counts`` field."""
        counts: Mapping[str, int] = task.fields.get("counts", {})
        text = Text()
        for status, cells in allocate(counts, self.width).items():
            text.append("━" * cells, style=STYLES.get(status, "white"))
        return text


def legend(counts: Mapping[str, int]) -> Text:
    """``succeeded 12  processing 40 ...`` in the bar's colours."""
    text = Text()
    for status, n in counts.items():
        if text:
            text.append("  ")
        text.append(f"{printable(status)} {n}", style=STYLES.get(status, "white"))
    return text


class RateColumn(ProgressColumn):
    """Ids finished per second (in this run), once there is a rate to show."""

    def render(self, task: Task) -> Text:
        """``4.2/s``, or nothing yet."""
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "", style="progress.data.speed")


def pause_note(seconds: float) -> str:
    """What the bar says during a ``Retry-After`` pause.

    Example:
        >>> pause_note(3.2)
        'paused by the provider (Retry-After), resuming in 4s'
    """
    return f"paused by the provider (Retry-After), resuming in {math.ceil(seconds)}s"


@contextlib.asynccontextmanager
async def live_progress(
    console: Console,
    tally: Tally,
    total: int,
    description: str,
    *,
    paused: Callable[[], float] | None = None,
    mode: Callable[[], str] | None = None,
    note: Callable[[], str] | None = None,
) -> AsyncIterator[None]:
    """Show a status bar for ``tally`` on ``console`` while the block runs.

    Args:
        console: Where to draw (standard error).
        tally: The counts; ids finished in earlier runs count as done, and
            the description says how many there were.
        total: Every id of the batch, earlier runs included.
        description: What is going on (``"polling"``).
        paused: Seconds until requests may go again (0: not paused); while
            positive, the description becomes a countdown.
        mode: The manager's mode (:attr:`PollStats.mode`); while
            ``"sweep"``, the description says that pages of the list
            report the ids.
        note: A few words added to the description, read at each redraw
            (``"12 created"``).
    """
    progress = _TwoLineProgress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        StatusBarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=REFRESH,
        transient=False,
    )
    label = description
    if tally.earlier:
        label = f"{description} ({tally.earlier} done in earlier runs)"
    task = progress.add_task(label, total=total, counts={}, completed=tally.earlier)
    # The rate and the time left are this run's: start from what it found.
    progress.reset(task, total=total, completed=tally.earlier, description=label)

    def draw() -> None:
        counts = tally.snapshot()
        wait = paused() if paused is not None else 0.0
        progress.legend = legend(counts)
        text = label if note is None else f"{label}, {note()}"
        if wait > 0:
            text = pause_note(wait)
        elif mode is not None and mode() == "sweep":
            text = f"{text}, sweeping the list"
        progress.update(task, completed=tally.finished, counts=counts, description=text)

    async def tick() -> None:
        while True:
            draw()
            await asyncio.sleep(1 / REFRESH)

    with progress:
        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            draw()


def outcome_table(
    title: str,
    counts: Mapping[str, int],
    figures: Mapping[str, str],
    causes: Mapping[str, int] | None = None,
) -> Table:
    """The end-of-run summary: outcomes, what the errors were, a few figures."""
    table = Table(title=title, show_header=False, title_justify="left", min_width=40)
    table.add_column(style="bold")
    table.add_column(justify="right")
    total = sum(counts.values()) or 1
    for status, n in counts.items():
        percent = 100 * n / total
        share = f"{n} (<1%)" if 0 < percent < 1 else f"{n} ({percent:.0f}%)"
        table.add_row(plain(status, STYLES.get(status, "white")), share)
    if causes:
        table.add_section()
        for cause, n in causes.items():
            table.add_row(plain(f"error: {cause}", "red"), f"x {n}")
    table.add_section()
    for name, value in figures.items():
        table.add_row(name, value)
    return table


def plain(value: object, style: str = "") -> Text:
    """``str(value)`` as plain :class:`~rich.text.Text`: no markup, no controls.

    For anything a server sent: ``[/bold]`` is shown as written, and an
    escape character as ``\\x1b`` (see :func:`~replipoll._cli._common.printable`).
    """
    return Text(printable(str(value)), style=style)


def prediction_view(prediction: Prediction) -> Table:
    """One prediction as a two-column grid, for ``replipoll get``.

    Every value the server sent is shown as plain text (:func:`plain`).
    """
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    status = str(prediction.status)
    grid.add_row("id", plain(prediction.id))
    grid.add_row("status", plain(status, STYLES.get(status, "white")))
    for name in ("model", "created_at", "started_at", "completed_at"):
        value = getattr(prediction, name)
        if value is not None:
            grid.add_row(name.replace("_at", ""), plain(value))
    if prediction.error_message is not None:
        grid.add_row("error", plain(prediction.error_message))
    if prediction.metrics is not None and prediction.metrics.predict_time is not None:
        grid.add_row("predict time", f"{prediction.metrics.predict_time:.2f}s")
    urls = list(prediction.output_urls())
    if urls:
        grid.add_row("output", plain("\n".join(urls)))
    elif prediction.output is not None:
        text = json.dumps(prediction.output)
        grid.add_row("output", plain(text if len(text) < 500 else text[:499] + "…"))
    if prediction.data_removed:
        grid.add_row("data", "removed by the provider")
    return grid
