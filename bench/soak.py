"""Soak: poll 100,000 ids through every fault at once; lose nothing, leak nothing.

    python bench/soak.py                 # 100,000 ids (several minutes)
    python bench/soak.py --ids 5000      # a quick run
    python bench/soak.py --no-debug      # without asyncio debug mode (faster)

The scenario is ``tests/test_chaos.py``'s at scale (a
:class:`~replipoll.testing.chaos.ChaosBatch`, without its invalid and duplicate
ids), in one process: a :class:`~replipoll.testing.FakeReplicate` on
``127.0.0.1`` answers with a fault on one request in five, drawn from every
class (429 with ``Retry-After``, 500, 502 HTML, 503 CometAPI envelope, 504,
524, resets, truncated JSON and bodies, HTML 200s, answers slower than "45 s" that the
CometAPI timeout allows); one id in 400 has a first answer slower than the
per-request timeout, another in 400 fails on every request. Predictions end
in every outcome; one in 100 sits in an undocumented status and is ended by
a short deadline (a second manager on the same client). Durations are
real-world ones divided by ``SCALE`` (50): the CometAPI preset's 120 s
timeout is 2.4 s, "slower than 45 s" is 1.2 s.

It runs in asyncio debug mode with warnings as errors, and prints one block
of figures; the exit status is 1 if any invariant failed: an id lost or
duplicated, a success not kept without exhausted retries, a request sent
inside a ``Retry-After``, more requests open than ``max_concurrency``, a
task, connection, unretrieved exception or warning left behind, or anything
logged at ``ERROR`` (by replipoll, aiohttp or the fake server).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import time
import warnings
from collections import Counter
from typing import Any

import aiohttp
import attrs
from replipoll import (
    Client,
    NotFoundError,
    PollManager,
    PollPolicy,
    PollResult,
    PollTimeout,
    RequestError,
    RetryPolicy,
    Timeouts,
)
from replipoll._providers import PROVIDERS
from replipoll.testing import ANSWER_FAULTS, FakeReplicate, Fault
from replipoll.testing.chaos import ChaosBatch, RequestWatch

SCALE = 50
COMET = PROVIDERS["cometapi"].timeouts
assert COMET.total is not None
assert COMET.total > 45  # CometAPI's answers can take longer than 45 s
TIMEOUTS = Timeouts(
    total=COMET.total / SCALE,
    # Not scaled: a loopback connect has nothing to scale, and a 0.2 s limit
    # would time event-loop stalls (a garbage collection), not the network.
    connect=1.0,
    read=COMET.read / SCALE if COMET.read else None,
)
SLOW_WITHIN = 60 / SCALE  # slower than "45 s", within the 120 s timeout
SLOW_BEYOND = 150 / SCALE  # slower than the per-request timeout
RETRY_AFTER = 0.5
EARLY_GRACE = 0.25  # see tests/test_chaos.py: requests already on their way
PREFIX = "/replicate/v1"
UNDOCUMENTED = ChaosBatch.UNDOCUMENTED
POLICY = PollPolicy(min_interval=0.15, age_factor=0.1, max_interval=0.4, jitter=0.2)
RETRY = RetryPolicy(max_attempts=6, base_delay=0.05, max_delay=0.4, max_retry_after=5)
MAX_CONCURRENCY = 28
LATE_CONCURRENCY = 4


def menu(n: int) -> list[Fault]:
    """Every fault class; 429s and slow answers rarer in big runs.

    Each 429 pauses the whole client for ``RETRY_AFTER``: at the test's mix a
    100,000-id run would spend minutes paused, so cheap faults are weighted
    up with the size (the mix of classes stays the same).
    """
    weight = max(5, n // 5000)
    return [
        *ANSWER_FAULTS * weight,
        Fault.rate_limited(RETRY_AFTER),
        Fault.slow(SLOW_WITHIN),
    ]


@attrs.define
class Watch(RequestWatch):
    """aiohttp's view of the client's requests, and what went wrong around them."""

    loop_errors: list[dict[str, Any]] = attrs.Factory(list)
    unraisable: list[str] = attrs.Factory(list)


class ErrorLog(logging.Handler):
    """Keeps every record logged at ERROR or above, from any logger."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def freeze() -> None:
    """Move what exists now out of the collector's sight (``gc.freeze``).

    The run holds 100,000 scripted predictions, tracks and futures (each
    with a traceback, in debug mode) for its whole length; full collections
    walking them took up to ~200 ms each at 20,000 ids, stalling the one loop
    that client and server share. Long-running services freeze their startup
    state for the same reason.
    """
    gc.collect()
    gc.freeze()


def other_tasks() -> int:
    """Tasks alive besides this one and the fake server's request handlers."""
    return sum(
        1
        for t in asyncio.all_tasks()
        if t is not asyncio.current_task()
        and not getattr(t.get_coro(), "__qualname__", "").startswith("RequestHandler.")
    )


async def soak(n: int, seed: int) -> dict[str, Any]:
    """Run the scenario once; return every figure."""
    watch = Watch()
    loop = asyncio.get_running_loop()
    loop.slow_callback_duration = 1.0
    loop.set_exception_handler(lambda _, context: watch.loop_errors.append(context))
    async with FakeReplicate(
        latency=0.005, early_grace=EARLY_GRACE, seed=seed, request_log_size=0
    ) as server:
        chaos = ChaosBatch.script(
            server,
            n,
            seed=seed,
            slow_beyond=SLOW_BEYOND,
            faults=menu(n),
            invalid_ids=False,
            duplicates=0,
        )
        batch, late_ids = chaos.batch, chaos.undocumented
        expected, permanent, missing = chaos.expected, chaos.permanent, chaos.missing
        freeze()

        connector = aiohttp.TCPConnector(limit=100)
        async with (
            aiohttp.ClientSession(
                connector=connector, trace_configs=[watch.trace_config()]
            ) as session,
            Client(
                "cometapi",
                base_url=server.base_url(PREFIX),
                api_key=server.api_key,
                timeouts=TIMEOUTS,
                retry=RETRY,
                session=session,
            ) as client,
        ):
            watch.budget = client.budget
            start = time.monotonic()
            async with (
                PollManager(
                    client,
                    max_concurrency=MAX_CONCURRENCY,
                    timeout=4 * 3600,
                    policy=POLICY,
                ) as main,
                PollManager(
                    client,
                    max_concurrency=LATE_CONCURRENCY,
                    timeout=1.5,
                    policy=POLICY,
                ) as short,
            ):

                async def stuck() -> list[PollResult]:
                    return [r async for r in short.as_completed(late_ids)]

                batches = asyncio.gather(main.poll_many(batch), stuck())
                await asyncio.sleep(0)  # every id is submitted in that step
                freeze()
                results, late = await batches
                stats, late_stats = main.stats, short.stats
            wall = time.monotonic() - start
            leaked_tasks = other_tasks()
            held = len(connector._acquired)
        server_stats = server.stats
    gc.unfreeze()
    gc.collect()  # a future nobody retrieved reports it from __del__
    await asyncio.sleep(0)

    # -- the invariants ------------------------------------------------------
    seen = Counter(r.id for r in results) + Counter(r.id for r in late)
    wanted = Counter(batch) + Counter(late_ids)
    lost = sum((wanted - seen).values())
    duplicated = sum((seen - wanted).values())
    ending: Counter[str] = Counter()
    wrong: list[str] = []
    exhausted_by_chaos = 0
    for r in results:
        error = r.error
        if r.id in missing:
            kind = "not found" if isinstance(error, NotFoundError) else "WRONG"
        elif error is None:
            ok = r.prediction is not None and r.prediction.status == expected[r.id]
            kind = expected[r.id] if ok and r.id not in permanent else "WRONG"
        elif (
            isinstance(error, RequestError)
            and RETRY.is_retryable(error)
            and error.attempts == RETRY.max_attempts
        ):
            kind = "retries exhausted"
            exhausted_by_chaos += r.id not in permanent
        else:
            kind = "WRONG"
        if kind == "WRONG":
            wrong.append(f"{r.id}: {r.error!r}")
        ending[kind] += 1
    for r in late:
        kind = "deadline" if isinstance(r.error, PollTimeout) else "WRONG"
        ending[f"{UNDOCUMENTED} ({kind})"] += 1
    requests = server_stats.total_requests
    return {
        "ids": len(batch) + len(late_ids),
        "wall": wall,
        "faults": dict(server_stats.faults_injected.most_common()),
        "outcomes": dict(ending.most_common()),
        "lost": lost,
        "duplicated": duplicated,
        "wrong": wrong,
        "permanent": len(permanent),
        "exhausted_by_chaos": exhausted_by_chaos,
        "early_requests": server_stats.early_requests,
        "requests_during_pause": server_stats.requests_during_pause,
        "early_starts": watch.early_starts,
        "leaked_tasks": leaked_tasks,
        "connections_held": held,
        "loop_errors": [str(c.get("message")) for c in watch.loop_errors],
        "peak_client": watch.peak,
        "peak_managers": (stats.peak_in_flight, late_stats.peak_in_flight),
        "peak_server": server_stats.peak_in_flight,
        "max": MAX_CONCURRENCY + LATE_CONCURRENCY,
        "timeouts": watch.timeouts,
        "timeout_kinds": dict(watch.timeout_kinds),
        "beyond": len(chaos.beyond),
        "requests": requests,
        "requests_per_id": requests / (len(batch) + len(late_ids)),
        "retries": stats.retries + late_stats.retries,
        "throttled": stats.throttled + late_stats.throttled,
    }


def report(f: dict[str, Any], *, debug: bool, seed: int) -> list[str]:
    """Print the figures; return the invariants that failed."""
    failed = []

    def check(ok: bool, name: str) -> str:
        if not ok:
            failed.append(name)
        return "ok" if ok else "FAILED"

    within = f["faults"].get("slow", 0) - f["beyond"]
    print(
        f"replipoll soak: {f['ids']:,} ids, seed {seed}, "
        f"asyncio debug {'on' if debug else 'off'}, warnings are errors"
    )
    print(f"  wall time            {f['wall']:.1f} s")
    print(
        f"  requests             {f['requests']:,} "
        f"({f['requests_per_id']:.2f} per id; {f['retries']:,} retries, "
        f"{f['throttled']:,} throttled)"
    )
    print(
        "  faults injected      "
        + ", ".join(f"{k} {v:,}" for k, v in f["faults"].items())
    )
    print(
        f"    of which slow      {within:,} slower than '45 s' within the "
        f"timeout, {f['beyond']:,} beyond it"
    )
    print(
        "  outcomes             "
        + ", ".join(f"{k} {v:,}" for k, v in f["outcomes"].items())
    )
    print(
        f"    exhausted          {f['permanent']:,} scripted to fail every "
        f"request, {f['exhausted_by_chaos']:,} by chance (six faults in a row)"
    )
    print(f"  lost                 {f['lost']}  {check(f['lost'] == 0, 'lost')}")
    print(
        f"  duplicated           {f['duplicated']}  "
        f"{check(f['duplicated'] == 0, 'duplicated')}"
    )
    print(
        f"  wrong endings        {len(f['wrong'])}  "
        f"{check(not f['wrong'], 'wrong endings')}"
    )
    print(
        f"  early requests       {f['early_requests']} at the server "
        f"(grace {EARLY_GRACE} s; {f['requests_during_pause']:,} arrived "
        f"during a pause), {f['early_starts']} started by the client during "
        f"a known pause  "
        f"{check(f['early_requests'] == 0 and f['early_starts'] == 0, 'early')}"
    )
    print(
        f"  timeouts             {f['timeouts']:,} (= answers beyond the "
        f"timeout: {f['beyond']:,}; {f['timeout_kinds']})  "
        f"{check(f['timeouts'] == f['beyond'], 'slow answers retried')}"
    )
    print(
        f"  peak in flight       {f['peak_client']} client (aiohttp), "
        f"managers {f['peak_managers'][0]} + {f['peak_managers'][1]}, "
        f"max {f['max']}; server {f['peak_server']} (counts requests the "
        f"client abandoned at its timeout)  "
        f"{check(f['peak_client'] <= f['max'], 'peak')}"
    )
    print(
        f"  leaked tasks         {f['leaked_tasks']}  "
        f"{check(f['leaked_tasks'] == 0, 'tasks')}"
    )
    print(
        f"  connections held     {f['connections_held']}  "
        f"{check(f['connections_held'] == 0, 'connections')}"
    )
    print(
        f"  loop errors          {len(f['loop_errors'])}  "
        f"{check(not f['loop_errors'], 'loop errors')}"
    )
    for line in [*f["wrong"][:10], *f["loop_errors"][:10]]:
        print(f"    {line}")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=100_000, help="batch size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-debug", action="store_true", help="asyncio debug mode off"
    )
    args = parser.parse_args()
    warnings.simplefilter("error")
    unraisable: list[str] = []
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_value!r} in {u.object!r}")
    logging.basicConfig(level=logging.ERROR)  # retries are WARNING: not shown
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    debug = not args.no_debug
    figures = asyncio.run(soak(args.ids, args.seed), debug=debug)
    failed = report(figures, debug=debug, seed=args.seed)
    print(f"  error log lines      {len(errors.lines)}")
    if errors.lines:
        failed.append("error log lines")
        print("    " + "\n    ".join(errors.lines[:10]))
    print(f"  unraisable           {len(unraisable)}")
    if unraisable:
        failed.append("unraisable")
        print("    " + "\n    ".join(unraisable[:10]))
    print(
        "  result               "
        + ("all invariants held" if not failed else "FAILED: " + ", ".join(failed))
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
