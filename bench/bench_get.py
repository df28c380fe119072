"""Client CPU per GET: bare aiohttp (the floor), replipoll, the official client.

    python bench/bench_get.py [--quick]

Each client fetches the same prediction ids, the same number of times, with
the same number of requests in flight, from a fake server in another process.
One interpreter holds all the clients, warms each up, then times batches of
GETs with its own CPU clock (user + system), the clients taking turns in an
order that rotates by cycle: the machine is shared and noisy, and a load
spike then weighs on all clients alike instead of on whichever ran during it.
That is repeated in fresh interpreters; figures are medians over all batches,
and a ratio is the median of the per-cycle ratios.
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


async def client(
    variant: str, base_url: str
) -> tuple[Callable[[str], Awaitable[object]], Callable[[], Awaitable[object]]]:
    """A fetch function for ``variant``, and how to close it."""
    if variant == "floor":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}

        async def fetch(pid: str) -> object:
            url = f"{base_url}/predictions/{pid}"
            async with session.get(url, headers=headers) as response:
                response.raise_for_status()
                return await response.json()

        return fetch, session.close
    if variant == "replipoll":
        import replipoll

        ours = replipoll.Client(base_url=base_url, api_key=API_KEY)
        return ours.get, ours.close
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
    return official.predictions.async_get, official._async_client.aclose


async def measure(
    base_url: str, ids: list[str], batch: int, cycles: int, concurrency: int
) -> dict[str, Any]:
    """Time batches of GETs, the clients taking turns; runs in a child.

    Each cycle runs one batch per client, in an order rotating by cycle, so
    that whatever else the machine is doing weighs on all of them alike.
    """
    clients = {v: await client(v, base_url) for v in VARIANTS}
    for fetch, _ in clients.values():  # warm up: connections, caches
        await drive(fetch, ids, max(concurrency * 4, batch), concurrency)
    cpu_us: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rate: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for cycle in range(cycles):
        shift = cycle % len(VARIANTS)
        for variant in VARIANTS[shift:] + VARIANTS[:shift]:
            fetch = clients[variant][0]
            wall, start = time.perf_counter(), cpu()
            await drive(fetch, ids, batch, concurrency)
            used, wall = cpu() - start, time.perf_counter() - wall
            cpu_us[variant].append(used / batch * 1e6)
            rate[variant].append(batch / wall)
    for _, close in clients.values():
        await close()
    return {"cpu_us": cpu_us, "rate": rate}


def run(
    *, quick: bool = False, concurrency: int = 30, rounds: int | None = None
) -> dict[str, Any]:
    """Run every client in turns, in ``rounds`` fresh interpreters; figures."""
    batch, cycles = (100, 2) if quick else (250, 10)
    rounds = rounds or (1 if quick else 3)
    cpu_us: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rate: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with fake_server(static_script()) as server, ids_file(server.ids) as ids_path:
        for _ in range(rounds):
            args = (server.base_url, ids_path, str(batch), str(cycles))
            child = run_child("bench_get.py", *args, str(concurrency))
            for v in VARIANTS:
                cpu_us[v] += child["cpu_us"][v]
                rate[v] += child["rate"][v]
    floor = cpu_us["floor"]

    def ratio(a: list[float], b: list[float]) -> float:
        return median([x / y for x, y in zip(a, b, strict=True)])

    figures = {
        v: {
            "label": LABELS[v],
            "us_per_get": round(median(cpu_us[v]), 1),
            "us_per_get_min": round(min(cpu_us[v]), 1),
            "x_floor": round(ratio(cpu_us[v], floor), 2),
            "gets_per_s": round(median(rate[v])),
            "samples_us": [round(x, 1) for x in cpu_us[v]],
        }
        for v in VARIANTS
    }
    return {
        "concurrency": concurrency,
        "gets_per_batch": batch,
        "batches": cycles * rounds,
        "rounds": rounds,
        "variants": figures,
        "official_over_replipoll": round(
            ratio(cpu_us["replicate"], cpu_us["replipoll"]), 1
        ),
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    print(
        f"CPU per GET, concurrency {result['concurrency']}, "
        f"{result['batches']} batches of {result['gets_per_batch']} GETs per client"
    )
    for figures in result["variants"].values():
        print(
            f"  {figures['label']:<48} {figures['us_per_get']:>8.1f} us/GET "
            f"(min {figures['us_per_get_min']:.1f})  {figures['x_floor']:>5.2f}x floor"
            f"  {figures['gets_per_s']:>6} GET/s"
        )
    print(f"  official client / replipoll: {result['official_over_replipoll']}x")


def main() -> None:
    """Parse arguments; measure (as the parent) or run the clients (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", nargs=5, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base_url, ids_path, batch, cycles, concurrency = args.child
        ids = Path(ids_path).read_text().split()
        figures = measure(base_url, ids, int(batch), int(cycles), int(concurrency))
        emit(asyncio.run(figures))
        return
    report(run(quick=args.quick, concurrency=args.concurrency, rounds=args.rounds))


if __name__ == "__main__":
    main()
