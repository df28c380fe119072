"""Client CPU per GET: bare aiohttp (the floor), replipoll, the official client.

    python bench/bench_get.py [--quick]

Each client fetches the same prediction ids, the same number of times, with
the same number of requests in flight, from a fake server in another process.
Each run is a fresh interpreter that warms up, then reads its own CPU time
(user + system) around the measured GETs. Runs are repeated in rotating order;
the figures are medians, and ratios are the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    FOREVER,
    Script,
    cpu,
    emit,
    fake_server,
    ids_file,
    median,
    run_child,
)

VARIANTS = ("floor", "replipoll", "replicate", "replicate-keepalive")
LABELS = {
    "floor": "aiohttp GET + json() (floor)",
    "replipoll": "replipoll Client.get",
    "replicate": "replicate 1.0.7 predictions.async_get",
    "replicate-keepalive": "replicate 1.0.7, keep-alive pool raised to 100",
}


def static_script(n: int = 200) -> Script:
    """Records that do not change during the run: done, failed, or running."""
    kinds = [(0.0, "succeeded")] * 7 + [(FOREVER, "succeeded")] * 2 + [(0.0, "failed")]
    return [kinds[i % len(kinds)] for i in range(n)]


async def drive(
    fetch: Callable[[str], Awaitable[object]],
    ids: Sequence[str],
    count: int,
    concurrency: int,
) -> None:
    """Make ``count`` fetches over ``ids``, ``concurrency`` of them at a time."""
    counter = itertools.count()

    async def worker() -> None:
        for i in counter:
            if i >= count:
                return
            await fetch(ids[i % len(ids)])

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())


async def measure(
    variant: str, base_url: str, ids: list[str], count: int, concurrency: int
) -> dict[str, Any]:
    """Warm up, then time ``count`` GETs with one client; runs in a child."""
    closers: list[Callable[[], Awaitable[object]]] = []
    fetch: Callable[[str], Awaitable[object]]
    if variant == "floor":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        closers.append(session.close)
        headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}

        async def fetch(pid: str) -> object:
            url = f"{base_url}/predictions/{pid}"
            async with session.get(url, headers=headers) as response:
                response.raise_for_status()
                return await response.json()

    elif variant == "replipoll":
        import replipoll

        client = replipoll.Client(base_url=base_url, api_key=API_KEY)
        closers.append(client.close)
        fetch = client.get
    else:
        import httpx
        import replicate

        kwargs: dict[str, Any] = {}
        if variant == "replicate-keepalive":
            kwargs["limits"] = httpx.Limits(
                max_connections=100, max_keepalive_connections=100
            )
        official = replicate.Client(  # type: ignore[attr-defined]
            api_token=API_KEY, base_url=base_url.removesuffix("/v1"), **kwargs
        )
        closers.append(official._async_client.aclose)
        fetch = official.predictions.async_get

    await drive(fetch, ids, max(concurrency * 4, count // 5), concurrency)
    wall, start = time.perf_counter(), cpu()
    await drive(fetch, ids, count, concurrency)
    used, wall = cpu() - start, time.perf_counter() - wall
    for close in closers:
        await close()
    return {"variant": variant, "count": count, "cpu": used, "wall": wall}


def run(
    *, quick: bool = False, concurrency: int = 30, rounds: int | None = None
) -> dict[str, Any]:
    """Run every variant ``rounds`` times; return per-variant figures and ratios."""
    count = 300 if quick else 2000
    rounds = rounds or (1 if quick else 5)
    samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with fake_server(static_script()) as server, ids_file(server.ids) as ids_path:
        for r in range(rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                child = run_child(
                    "bench_get.py",
                    variant,
                    server.base_url,
                    ids_path,
                    str(count),
                    str(concurrency),
                )
                samples[variant].append(child["cpu"] / count * 1e6)
                walls[variant].append(count / child["wall"])
    floor = samples["floor"]
    figures = {
        v: {
            "label": LABELS[v],
            "us_per_get": round(median(samples[v]), 1),
            "us_per_get_min": round(min(samples[v]), 1),
            "x_floor": round(
                median([a / b for a, b in zip(samples[v], floor, strict=True)]), 2
            ),
            "gets_per_s": round(median(walls[v])),
            "samples_us": [round(s, 1) for s in samples[v]],
        }
        for v in VARIANTS
    }
    leaner = [
        a / b for a, b in zip(samples["replicate"], samples["replipoll"], strict=True)
    ]
    return {
        "concurrency": concurrency,
        "gets_per_run": count,
        "rounds": rounds,
        "variants": figures,
        "official_over_replipoll": round(median(leaner), 1),
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    print(
        f"CPU per GET, concurrency {result['concurrency']}, "
        f"{result['gets_per_run']} GETs x {result['rounds']} rounds"
    )
    for figures in result["variants"].values():
        print(
            f"  {figures['label']:<48} {figures['us_per_get']:>8.1f} us/GET "
            f"(min {figures['us_per_get_min']:.1f})  {figures['x_floor']:>5.2f}x floor"
            f"  {figures['gets_per_s']:>6} GET/s"
        )
    print(f"  official client / replipoll: {result['official_over_replipoll']}x")


def main() -> None:
    """Parse arguments; measure (as the parent) or run one variant (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, base_url, ids_path, count, concurrency = args.child
        ids = Path(ids_path).read_text().split()
        emit(asyncio.run(measure(variant, base_url, ids, int(count), int(concurrency))))
        return
    report(run(quick=args.quick, concurrency=args.concurrency, rounds=args.rounds))


if __name__ == "__main__":
    main()
