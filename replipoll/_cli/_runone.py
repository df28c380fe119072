"""``replipoll run`` for one prediction: create it, follow it, print its output.

The prediction is created and followed by a :class:`~replipoll.PollManager`
(``run_many`` of one input, so that its id is known, and said, as soon as it
exists), with a live status line on standard error. Creating is not
idempotent, so a create that may have made a prediction is said, with what
to do, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import click
from rich.console import Console

from .._client import Client
from .._download import save_outputs
from .._errors import PredictionMayExistError
from .._learn import parse_progress
from .._manager import PollManager, RunResult
from .._models import Prediction
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    Interrupted,
    printable,
    run_async,
    say,
    stderr,
    stdout,
)
from ._resultlog import dumps

__all__ = ["OneRun", "output_text", "run_one", "uncertain_message"]


def output_text(output: Any) -> str | None:
    """What ``replipoll run`` prints of an output; ``None`` for no output.

    A string as it is; a list of file URLs one a line; a list of other
    strings joined (a language model's output is its tokens); anything else
    as JSON.

    Example:
        >>> output_text("hi"), output_text(["https://x/a.png", "https://x/b.png"])
        ('hi', 'https://x/a.png\\nhttps://x/b.png')
        >>> output_text(["Hel", "lo", " world"]), output_text({"n": 1})
        ('Hello world', '{\\n  "n": 1\\n}')
    """
    if output is None:
        return None
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(item, str) for item in output):
        if output and all(
            item.lower().startswith(("https://", "http://", "data:")) for item in output
        ):
            return "\n".join(output)
        return "".join(output)
    return dumps(output, indent=2)


def _when(sent_at: float) -> str:
    return datetime.fromtimestamp(sent_at, UTC).isoformat(timespec="seconds")


def uncertain_message(error: PredictionMayExistError) -> str:
    """What to tell a user whose create may have made a prediction."""
    rid = error.request_id
    request = f"request id {rid}" if rid else "no request id"
    return (
        f"the create failed after the request may have reached the server "
        f"({error.reason.message}): the prediction may exist ({request}, "
        f"sent at {_when(error.sent_at)}). Look for it (on Replicate: your "
        "predictions created since then) before running again: running "
        "again may create it twice"
    )


@attrs.define
class OneRun:
    """Where a single run stands, for the status line and an interrupt."""

    target: str
    #: A live status line shows the id; else it is said once, at once.
    live: bool = False
    started: float = attrs.Factory(time.monotonic)
    sent_at: float | None = None
    prediction: Prediction | None = None
    #: The manager's latest record of an id (its logs move between statuses).
    latest: Callable[[str], Prediction | None] | None = None

    def sending(self, index: int) -> None:
        """The create request is being built (``SendGate``'s callback)."""
        self.sent_at = time.time()

    def created(self, index: int, prediction: Prediction) -> None:
        """The prediction exists (``run_many``'s ``on_created``)."""
        self.prediction = prediction
        if not self.live:
            say(f"created {prediction.id}")

    def update(self, prediction: Prediction) -> None:
        """A new status (the manager's ``on_update``)."""
        self.prediction = prediction

    def text(self) -> str:
        """The status line: id, status, progress from the logs, time."""
        elapsed = time.monotonic() - self.started
        prediction = self.prediction
        if prediction is None:
            return f"creating a prediction of {self.target}  {elapsed:.0f}s"
        if self.latest is not None:
            prediction = self.latest(prediction.id) or prediction
        progress = parse_progress(prediction.logs or "")
        percent = "" if progress is None else f" {progress.fraction:.0%}"
        return f"{prediction.id} {prediction.status}{percent}  {elapsed:.0f}s"


@contextlib.asynccontextmanager
async def _status_line(console: Console | None, state: OneRun) -> AsyncIterator[None]:
    if console is None:
        yield
        return
    with console.status(printable(state.text(), one_line=True)) as line:

        async def tick() -> None:
            while True:
                await asyncio.sleep(0.25)
                line.update(printable(state.text(), one_line=True))

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker


async def _create_and_wait(
    client: Client,
    target: Mapping[str, Any],
    inputs: Mapping[str, Any],
    timeout: float | None,
    state: OneRun,
    console: Console | None,
) -> RunResult:
    from ._runbatch import SendGate, closing

    async with (
        client,
        PollManager(client, timeout=timeout, on_update=state.update) as manager,
        _status_line(console, state),
    ):
        state.latest = manager.latest
        gate = SendGate(0, inputs, state.sending)
        results = manager.run_many([gate], **target, on_created=state.created)
        async with closing(results) as each:
            async for result in each:
                return result
    raise AssertionError("run_many yields one result per input")  # pragma: no cover


def run_one(
    client: Client,
    target: Mapping[str, Any],
    inputs: Mapping[str, Any],
    *,
    name: str,
    timeout: float | None,
    show: bool,
    as_json: bool,
    save: Path | None,
) -> int:
    """Create one prediction, follow it, print its output; return the exit status.

    Args:
        target: ``run_many``'s keyword arguments but the inputs.
        name: What is run (``owner/name``), for the status line.
        show: Draw a live status line on standard error.
        as_json: Print the whole record instead of the output.
        save: Save the output files under this directory; print their paths.
    """
    state = OneRun(name, live=show)
    try:
        result = run_async(
            _create_and_wait(
                client, target, inputs, timeout, state, stderr if show else None
            )
        )
    except Interrupted as stop:
        if state.prediction is not None:
            pid = state.prediction.id
            say(
                f"interrupted; prediction {pid} goes on running: "
                f"`replipoll poll {pid}` follows it"
            )
        elif state.sent_at is not None:
            say(
                "interrupted while creating: the prediction may have been created "
                f"(request sent at {_when(state.sent_at)}); look for it before "
                "running again"
            )
        else:
            say("interrupted")
        return stop.code
    error, prediction = result.error, result.prediction
    if isinstance(error, PredictionMayExistError):
        say(f"error: {uncertain_message(error)}")
        return EXIT_FAILED
    if error is not None:
        if state.prediction is None:
            say(f"error: the create failed, no prediction was made: {error}")
        else:
            pid = state.prediction.id
            say(f"error: {error}; `replipoll poll {pid}` follows it")
        return EXIT_FAILED
    assert prediction is not None
    if as_json:
        click.echo(dumps(prediction.to_json(), indent=2))
    if prediction.status != "succeeded":
        message = prediction.error_message
        why = f": {message}" if message else ""
        say(f"error: prediction {prediction.id} {prediction.status}{why}")
        return EXIT_FAILED
    if save is not None:
        return _save(prediction, save, as_json)
    if not as_json:
        _print_output(prediction)
    return EXIT_OK


def _print_output(prediction: Prediction) -> None:
    text = output_text(prediction.output)
    if text is not None:
        click.echo(printable(text))


def _save(prediction: Prediction, dest: Path, as_json: bool) -> int:
    report = run_async(save_outputs(prediction, dest))
    for saved in report.files:
        if as_json:
            say(f"saved {saved.path}")
        else:
            stdout.print(printable(str(saved.path)), soft_wrap=True, markup=False)
    for problem in report.errors:
        say(f"error: {problem}")
    if not report.files and not report.errors:
        say("no output files to save")
        if not as_json:
            _print_output(prediction)
    return EXIT_FAILED if report.errors else EXIT_OK
