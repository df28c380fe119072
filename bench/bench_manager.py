"""PollManager end to end: 10,000 ids of mixed durations, polled to the end.

    python bench/bench_manager.py [--quick]

A fake server (another process) scripts the predictions: a fifth finished
already, half finishing within 1-10 s, the rest within 10-30 s; mostly
successes, some failures and cancellations. A fresh interpreter submits them
all to one ``PollManager`` (default schedule, ``max_concurrency=32``) and
reads its own CPU time from before ``poll_many`` to the last result. The same
batch runs once more on a fresh server with ``coalesce=0``, to show what
coalescing due times saves.

Two floors, each measured by another fresh interpreter on the same server:

* *replayed*: the very requests the manager made (the server logs when each
  arrived), sent at the same moments by the barest poller: one coroutine
  that sleeps until the next moment and queues the id, 32 workers doing
  aiohttp GET + ``json()``. Same ids, same timing, same concurrency: the
  like-for-like floor.
* *saturated*: aiohttp GET + ``json()`` back to back, 32 at a time, as in
  ``bench_get.py``. Cheaper per request than any real polling pattern,
  because a loop kept busy answers many sockets per wake-up.

Those runs, and both floors, use asyncio's own loop and the standard
library's JSON (``REPLIPOLL_NO_SPEEDUPS=1``), as replipoll does without the
speed extra. With the extra installed, the same batch runs once more on a
fresh server on the fast path (uvloop, msgspec), compared with the same
default floors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    Script,
    cpu,
    emit,
    fake_server,
    fast_path_installed,
    ids_file,
    median,
    run_child,
)

CONCURRENCY = 32
#: The environment of the default runs, and of the fast path's.
DEFAULT_ENV = {"REPLIPOLL_NO_SPEEDUPS": "1"}
FAST_ENV = {"REPLIPOLL_NO_SPEEDUPS": ""}


def mixed_script(n: int, *, stretch: float = 1.0, seed: int = 0) -> Script:
    """``n`` predictions: 20% done, 50% end in 1-10 s, 30% in 10-30 s."""
    rng = random.Random(seed)
    outcomes = ["succeeded"] * 90 + ["failed"] * 7 + ["canceled"] * 3
    script = []
    for _ in range(n):
        draw = rng.random()
        if draw < 0.2:
            duration = 0.0
        elif draw < 0.7:
            duration = rng.uniform(1.0, 10.0)
        else:
            duration = rng.uniform(10.0, 30.0)
        script.append((round(duration * stretch, 3), rng.choice(outcomes)))
    return script


async def poll_all(
    base_url: str, ids: list[str], coalesce: float | None = None
) -> dict[str, Any]:
    """Poll every id to the end with one PollManager; runs in a child."""
    import replipoll
    from replipoll import _speedups

    options = {} if coalesce is None else {"coalesce": coalesce}
    async with (
        replipoll.Client(base_url=base_url, api_key=API_KEY) as client,
        replipoll.PollManager(
            client, max_concurrency=CONCURRENCY, sweep=False, **options
        ) as manager,
    ):
        wall, start = time.perf_counter(), cpu()
        results = await manager.poll_many(ids)
        used, wall = cpu() - start, time.perf_counter() - wall
        stats = manager.stats
    return {
        "ids": len(ids),
        "ok": sum(r.is_terminal for r in results),
        "cpu": used,
        "wall": wall,
        "requests": stats.requests,
        "retries": stats.retries,
        "errors": stats.errors,
        "peak_in_flight": stats.peak_in_flight,
        "by_status": stats.by_status,
        "json_loader": _speedups.JSON_LOADER,
        "loop": type(asyncio.get_running_loop()).__module__,
    }


async def floor(
    base_url: str, ids: list[str], count: int, arrivals: list[tuple[float, str]]
) -> dict[str, Any]:
    """Bare aiohttp GET + json(): replayed, or ``count`` back to back; a child."""
    import aiohttp

    from bench_get import drive

    headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100)
    ) as session:

        async def fetch(pid: str) -> object:
            url = f"{base_url}/predictions/{pid}"
            async with session.get(url, headers=headers) as response:
                response.raise_for_status()
                return await response.json()

        await drive(fetch, ids, CONCURRENCY * 20, CONCURRENCY)
        wall, start = time.perf_counter(), cpu()
        if arrivals:
            await replay(fetch, arrivals)
            count = len(arrivals)
        else:
            await drive(fetch, ids, count, CONCURRENCY)
        used, wall = cpu() - start, time.perf_counter() - wall
    return {"count": count, "cpu": used, "wall": wall}


async def replay(
    fetch: Callable[[str], Awaitable[object]], arrivals: list[tuple[float, str]]
) -> None:
    """Fetch each id at its moment (seconds from now), ``CONCURRENCY`` at most."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def worker() -> None:
        while (pid := await queue.get()) is not None:
            await fetch(pid)

    async with asyncio.TaskGroup() as group:
        for _ in range(CONCURRENCY):
            group.create_task(worker())
        start = loop.time()
        for moment, pid in arrivals:
            wait = start + moment - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            queue.put_nowait(pid)
        for _ in range(CONCURRENCY):
            queue.put_nowait(None)


def run(*, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Run the end-to-end batch ``rounds`` times, each with its floor."""
    n, stretch = (1_000, 0.1) if quick else (10_000, 1.0)
    rounds = rounds or (1 if quick else 3)
    fast_path = fast_path_installed()
    samples: list[dict[str, Any]] = []

    def child(*args: str, env: dict[str, str] = DEFAULT_ENV) -> dict[str, Any]:
        figures = run_child("bench_manager.py", *args, env=env)
        if env is DEFAULT_ENV and figures.get("json_loader", "json") != "json":
            raise RuntimeError(f"not the default path: {figures}")
        return figures

    for r in range(rounds):
        script = mixed_script(n, stretch=stretch, seed=r)
        with (
            fake_server(script, log_arrivals=True) as server,
            ids_file(server.ids) as path,
            tempfile.TemporaryDirectory() as tmp,
        ):
            url = server.base_url
            batch = child("batch", url, path)
            log = Path(tmp, "arrivals.json")
            log.write_text(json.dumps(server.arrivals()))
            replayed = child("floor", url, path, "0", str(log))
            count = str(min(batch["requests"], 10_000))
            saturated = child("floor", url, path, count)
        with fake_server(script) as server, ids_file(server.ids) as path:
            off = child("batch", server.base_url, path, "0")
        batch["us_per_request"] = batch["cpu"] / batch["requests"] * 1e6
        batch["uncoalesced_us"] = off["cpu"] / off["requests"] * 1e6
        batch["x_uncoalesced"] = batch["us_per_request"] / batch["uncoalesced_us"]
        for name, base in (("replayed", replayed), ("saturated", saturated)):
            batch[f"{name}_floor_us"] = base["cpu"] / base["count"] * 1e6
            batch[f"x_{name}_floor"] = (
                batch["us_per_request"] / batch[f"{name}_floor_us"]
            )
        if fast_path:
            with fake_server(script) as server, ids_file(server.ids) as path:
                fast = child("batch-fast", server.base_url, path, env=FAST_ENV)
            if (fast["json_loader"], fast["loop"]) != ("msgspec", "uvloop"):
                raise RuntimeError(f"not the fast path: {fast}")
            batch["fast_us"] = fast["cpu"] / fast["requests"] * 1e6
            batch["fast_requests"] = fast["requests"]
            batch["fast_ok"] = fast["ok"]
            for name in ("replayed", "saturated"):
                batch[f"x_fast_{name}_floor"] = (
                    batch["fast_us"] / batch[f"{name}_floor_us"]
                )
        samples.append(batch)
    return {
        "ids": n,
        "durations": "20% done, 50% 1-10 s, 30% 10-30 s"
        + (f" (x{stretch:g})" if stretch != 1 else ""),
        "max_concurrency": CONCURRENCY,
        "rounds": rounds,
        "us_per_request": round(median([s["us_per_request"] for s in samples]), 1),
        **{
            key: round(median([s[key] for s in samples]), digits)
            for key, digits in (
                ("replayed_floor_us", 1),
                ("x_replayed_floor", 2),
                ("saturated_floor_us", 1),
                ("x_saturated_floor", 2),
                ("uncoalesced_us", 1),
                ("x_uncoalesced", 2),
            )
        },
        "x_saturated_floor_rounds": [round(s["x_saturated_floor"], 3) for s in samples],
        "x_replayed_floor_rounds": [round(s["x_replayed_floor"], 3) for s in samples],
        **(_fast_figures(samples, n) if fast_path else {}),
        "wall_seconds": round(median([s["wall"] for s in samples]), 1),
        "requests_per_id": round(median([s["requests"] / n for s in samples]), 2),
        "peak_in_flight": max(s["peak_in_flight"] for s in samples),
        "all_finished": all(s["ok"] == n for s in samples),
        "samples": [
            {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}
            for s in samples
        ],
    }


def _fast_figures(samples: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """The fast path's figures: medians of the rounds, and each round's ratio."""
    figures: dict[str, Any] = {
        "fast_us_per_request": round(median([s["fast_us"] for s in samples]), 1),
        "fast_all_finished": all(s["fast_ok"] == n for s in samples),
    }
    for name in ("saturated", "replayed"):
        rounds = [round(s[f"x_fast_{name}_floor"], 3) for s in samples]
        figures[f"x_fast_{name}_floor"] = round(median(rounds), 2)
        figures[f"x_fast_{name}_floor_rounds"] = rounds
    return figures


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    print(
        f"PollManager end to end: {result['ids']} ids ({result['durations']}), "
        f"max_concurrency {result['max_concurrency']}, {result['rounds']} rounds"
    )
    print(
        f"  client CPU {result['us_per_request']} us/request; floor replayed "
        f"{result['replayed_floor_us']} us ({result['x_replayed_floor']}x), "
        f"saturated {result['saturated_floor_us']} us "
        f"({result['x_saturated_floor']}x)"
    )
    if "fast_us_per_request" in result:
        fast = result["x_fast_saturated_floor_rounds"]
        print(
            f"  fast path (uvloop + msgspec): {result['fast_us_per_request']} "
            f"us/request, {result['x_fast_saturated_floor']}x the saturated floor "
            f"(rounds {min(fast):.2f}-{max(fast):.2f}), "
            f"{result['x_fast_replayed_floor']}x the replayed one"
        )
    else:
        print("  (fast path not measured: pip install -e '.[speed]')")
    print(
        f"  with coalesce=0: {result['uncoalesced_us']} us/request "
        f"(coalescing: {result['x_uncoalesced']}x of that)"
    )
    print(
        f"  wall {result['wall_seconds']} s, {result['requests_per_id']} requests/id, "
        f"peak in flight {result['peak_in_flight']}/{result['max_concurrency']}, "
        f"all finished: {result['all_finished']}"
    )


def main() -> None:
    """Parse arguments; measure (as the parent) or run one part (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        part, base_url, path, *rest = args.child
        ids = Path(path).read_text().split()
        if part == "batch":
            coalesce = float(rest[0]) if rest else None
            emit(asyncio.run(poll_all(base_url, ids, coalesce)))
        elif part == "batch-fast":  # as a program would: replipoll[speed], uvloop
            import uvloop

            emit(uvloop.run(poll_all(base_url, ids)))
        else:
            log = json.loads(Path(rest[1]).read_text()) if len(rest) > 1 else []
            arrivals = [(float(t), str(pid)) for t, pid in log]
            emit(asyncio.run(floor(base_url, ids, int(rest[0]), arrivals)))
        return
    report(run(quick=args.quick, rounds=args.rounds))


if __name__ == "__main__":
    main()
