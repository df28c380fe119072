"""``replipoll download``: fetch predictions, then save their output files."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.markup import escape

from .._client import Client
from .._download import DownloadReport, save_outputs
from .._errors import ReplipollError
from .._models import Prediction

__all__ = ["download_all"]


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


_Outcome = tuple[Prediction | None, DownloadReport | None, str | None]


async def _one(
    client: Client,
    pid: str,
    dest: Path,
    *,
    session: aiohttp.ClientSession,
    overwrite: bool,
    concurrency: int,
    wait: bool,
) -> _Outcome:
    """Return the prediction, what was saved, and why it is a failure (if it is)."""
    try:
        prediction = await (client.wait(pid) if wait else client.get(pid))
    except ReplipollError as exc:
        return None, None, str(exc)
    if not prediction.is_terminal:
        return prediction, None, f"{pid} is still {prediction.status}; use --wait"
    if prediction.data_removed:
        return (
            prediction,
            None,
            f"{pid}: the provider removed its outputs (data_removed)",
        )
    report = await save_outputs(
        prediction, dest, session=session, concurrency=concurrency, overwrite=overwrite
    )
    problem = None
    if prediction.status != "succeeded":
        message = prediction.error_message
        detail = f": {message}" if message else ""
        problem = f"{pid} {prediction.status}{detail}"
    return prediction, report, problem


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
) -> bool:
    """Save the outputs of every id under ``dest``; report each file on ``out``.

    Predictions are handled ``concurrency`` at a time, sharing one download
    session (which never carries the API key).

    Returns:
        True when every prediction succeeded and every output file is on disk.
    """
    slots = asyncio.Semaphore(concurrency)
    ok = True

    async with client, aiohttp.ClientSession() as session:

        async def limited(pid: str) -> tuple[str, _Outcome]:
            async with slots:
                result = await _one(
                    client,
                    pid,
                    dest,
                    session=session,
                    overwrite=overwrite,
                    concurrency=concurrency,
                    wait=wait,
                )
                return pid, result

        for next_done in asyncio.as_completed([limited(pid) for pid in ids]):
            pid, (_, report, problem) = await next_done
            if report is not None:
                for saved in report.files:
                    verb = "present" if saved.skipped else "saved  "
                    out.print(
                        f"{verb} {escape(str(saved.path))}  ({human_size(saved.size)})",
                        soft_wrap=True,
                    )
                for error in report.errors:
                    err.print(
                        f"replipoll: error: {error}", markup=False, soft_wrap=True
                    )
                    ok = False
                if not report.files and not report.errors and problem is None:
                    out.print(f"{pid}: no output files", markup=False)
            if problem is not None:
                err.print(f"replipoll: error: {problem}", markup=False, soft_wrap=True)
                ok = False
    return ok
