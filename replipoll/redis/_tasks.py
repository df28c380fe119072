"""Stopping background tasks for certain, though a cancellation may be lost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["end_tasks"]


async def end_tasks(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for their end, cancelling again any that go on.

    On Python 3.11 a cancellation can be lost in ``asyncio.wait_for`` (which
    redis-py uses) when the awaited call ends at the same moment: a task
    cancelled in a Redis call may carry on as if nothing happened.
    """
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in every:
        if not task.cancelled():
            task.exception()  # retrieved: the caller reports what matters
