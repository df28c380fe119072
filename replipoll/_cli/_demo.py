"""``replipoll demo``: a few hundred predictions on the built-in fake server.

No API key, no network: a :class:`~replipoll.testing.FakeReplicate` listens on
loopback with scripted predictions of mixed durations and outcomes, some
unknown ids, a storm of 429s, a slow stretch and a sprinkle of 5xx, resets
and truncated answers; one :class:`~replipoll.PollManager` polls them all.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping
from typing import Any, Final

import attrs
from rich.console import Console

from .._client import Client
from .._manager import PollManager
from ..testing import FakeReplicate, Fault
from ._ui import Tally, live_progress, outcome_table

__all__ = ["DemoResult", "run_demo", "script_demo"]

#: Faults sprinkled on a few percent of requests; all are worth a retry.
CHAOS_KINDS: Final = (
    "server_error",
    "bad_gateway_html",
    "unavailable_comet",
    "reset",
    "truncated_json",
    "cloudflare_timeout",
)
_MODELS: Final = (
    "black-forest-labs/flux-schnell",
    "stability-ai/sdxl",
    "bytedance/sdxl-lightning-4step",
)


@attrs.frozen
class DemoResult:
    """What the demo saw: outcomes by name, and the figures of the summary."""

    outcomes: Mapping[str, int]
    figures: Mapping[str, str]


def script_demo(server: FakeReplicate, n: int, *, seed: int, scale: float) -> list[str]:
    """Add ``n`` predictions (and two unknown ids) to ``server``; return the ids.

    Most succeed after 0.3-3 s, a quarter take up to 7 s, a few up to 10 s;
    every tenth fails, every twentieth is canceled, one is aborted (its
    deadline passed before it started). ``scale`` multiplies every duration.
    """
    rng = random.Random(seed)

    def vary(i: int) -> dict[str, Any]:
        roll = rng.random()
        duration = (
            rng.uniform(0.3, 3.0)
            if roll < 0.7
            else rng.uniform(3.0, 7.0)
            if roll < 0.95
            else rng.uniform(7.0, 10.0)
        )
        outcome = "succeeded"
        if i % 10 == 3:
            outcome = "failed"
        elif i % 20 == 7:
            outcome = "canceled"
        elif i == n // 2:
            outcome = "aborted"
        return {
            "queue": round(rng.uniform(0.0, 1.5) * scale, 3),
            "duration": round(duration * scale, 3),
            "outcome": outcome,
            "n_files": rng.randint(1, 4),
            "model": rng.choice(_MODELS),
            "input": {"prompt": f"demo prompt {i}", "seed": i},
        }

    ids = server.add_predictions(n, vary)
    if n >= 20:
        # Ids nobody created: polling them ends in a 404 error, not a status.
        ids[5:5] = ["ghost-prediction-1"]
        ids[n // 3 : n // 3] = ["ghost-prediction-2"]
    return ids


def _schedule_trouble(
    server: FakeReplicate, n: int, *, seed: int, scale: float
) -> None:
    loop = asyncio.get_running_loop()
    server.set_chaos(0.03, CHAOS_KINDS, seed=seed)
    # A 429 storm: every request gets 429 + Retry-After until n/6 were sent,
    # or for two seconds (a limit resets with time, however few requests
    # come: a PollManager sweeping the list sends few).
    storm = Fault.rate_limited(max(0.1, round(1.0 * scale, 2)))
    loop.call_later(2.5 * scale, lambda: server.add_fault(storm, times=max(1, n // 6)))
    loop.call_later(2.5 * scale + 2.0, lambda: server.remove_fault(storm))
    # A slow gateway: the next n/3 answers each take 0.8 s.
    slow = Fault.slow(0.8 * scale)
    loop.call_later(5.0 * scale, lambda: server.add_fault(slow, times=max(1, n // 3)))


async def run_demo(
    *,
    predictions: int,
    seed: int,
    scale: float,
    concurrency: int,
    console: Console,
    progress: bool,
) -> DemoResult:
    """Serve, script and poll the demo batch; return its summary.

    Args:
        predictions: How many scripted predictions.
        seed: Seeds durations, outcomes and faults.
        scale: Multiplies every scripted duration (0.2 = five times faster).
        concurrency: The most requests in flight.
        console: Where the progress bar goes.
        progress: Show the progress bar.
    """
    started = time.monotonic()
    async with FakeReplicate(seed=seed, request_log_size=0) as server:
        ids = script_demo(server, predictions, seed=seed, scale=scale)
        console.print(
            f"[bold]replipoll demo[/]: {len(ids)} predictions on a fake Replicate "
            f"at {server.base_url()} (loopback only, no API key needed)"
        )
        _schedule_trouble(server, predictions, seed=seed, scale=scale)
        tally = Tally(len(ids))
        client = Client(base_url=server.base_url(), api_key=server.api_key)
        manager = PollManager(
            client, max_concurrency=concurrency, on_update=tally.update
        )
        async with client, manager:
            if progress:
                async with live_progress(console, tally, len(ids), "demo"):
                    await _drain(manager, ids, tally)
            else:
                await _drain(manager, ids, tally)
        stats = manager.stats
        faults = server.stats.faults_injected
    elapsed = time.monotonic() - started
    per_id = stats.requests / max(1, len(ids))
    retried = sum(faults.values()) - faults["rate_limited"] - faults["slow"]
    figures = {
        "requests sent": f"{stats.requests} ({per_id:.1f} per id)",
        "retries": str(stats.retries),
        "429s honoured": str(stats.throttled),
        "5xx, resets, bad answers retried": str(retried),
        "slow answers waited out": str(faults["slow"]),
        "peak requests in flight": str(stats.peak_in_flight),
        "wall time": f"{elapsed:.1f}s",
    }
    if stats.sweeps:
        figures["list sweeps"] = f"{stats.sweeps} ({stats.sweep_pages} pages)"
    return DemoResult(tally.snapshot(), figures)


async def _drain(manager: PollManager, ids: list[str], tally: Tally) -> None:
    async for result in manager.as_completed(ids):
        tally.finish(result)


def print_demo(result: DemoResult, console: Console) -> None:
    """The demo's summary table and what to try next."""
    console.print(outcome_table("replipoll demo", result.outcomes, result.figures))
    console.print(
        "Errors are the two ids nobody created (404). Next: "
        "[bold]replipoll fake-server --scenario demo[/] and "
        "[bold]replipoll poll --help[/]."
    )
