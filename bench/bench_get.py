"""Client CPU per GET: bare aiohttp (the floor), replipoll, the official client.

    python bench/bench_get.py [--quick]

Each client fetches the same prediction ids, the same number of times, with
the same number of requests in flight, from a fake server in another process.
One interpreter holds all the clients, warms each up, then times batches of
GETs with its own CPU clock (user + system), the clients taking turns in an
order that rotates by cycle: the machine is shared and noisy, and a load
spike then weighs on all clients alike instead of on whichever ran during it.
Before each batch, garbage is collected and a few untimed GETs warm the
client up again, so that no batch pays for the client that ran before it.
That is repeated in fresh interpreters; figures are medians over all batches,
and a ratio is the median of the per-cycle ratios (``x_floor``), also given
per interpreter (``x_floor_rounds``: the spread between rounds).

With the speed extra installed, each round also runs an interpreter for the
fast path: replipoll with its batches on a uvloop event loop of their own and
its answers parsed by msgspec, and the floor's client on that uvloop loop,
taking turns with the default floor and replipoll's default path (asyncio's
own loop, the standard library's JSON), to which its ratios are. The fast
path is kept apart from the official client: beside it, the two clients on
uvloop measured about a fifth higher, the others did not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from _common import (
    API_KEY,
    FOREVER,
    Script,
    cpu,
    emit,
    fake_server,
    fast_path_installed,
    ids_file,
    median,
    run_child,
)

T = TypeVar("T")

DEFAULT_VARIANTS = ("floor", "replipoll", "replicate", "replicate-keepalive")
#: On uvloop, with msgspec parsing the answers (``replipoll[speed]``).
FAST = "replipoll-fast"
#: The floor's client on uvloop: what the fast path's loop alone saves.
FLOOR_UVLOOP = "floor-uvloop"
#: The clients whose batches run on uvloop.
ON_UVLOOP = (FLOOR_UVLOOP, FAST)
LABELS = {
    "floor": "aiohttp GET + json() (floor)",
    "replipoll": "replipoll Client.get",
    "replicate": "replicate 1.0.7 predictions.async_get",
    "replicate-keepalive": "replicate 1.0.7, keep-alive pool raised to 100",
    FLOOR_UVLOOP: "aiohttp GET + json() on uvloop",
    FAST: "replipoll Client.get, fast path (uvloop + msgspec)",
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
    if variant in ("floor", FLOOR_UVLOOP):
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}

        async def fetch(pid: str) -> object:
            url = f"{base_url}/predictions/{pid}"
            async with session.get(url, headers=headers) as response:
                response.raise_for_status()
                return await response.json()

        return fetch, session.close
    if variant in ("replipoll", FAST):
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


class Loops:
    """One event loop per kind, each client's batches run on its own kind.

    asyncio's own loop for every client but the fast path's and the floor's
    twin, which get a uvloop loop. Before each run replipoll's JSON loader is
    set as an install would have it on import: the standard library's, or
    msgspec's for the fast path (``REPLIPOLL_NO_SPEEDUPS`` chooses alike).
    The other clients parse with the standard library whatever is set.
    """

    def __init__(self, stack: contextlib.ExitStack, names: Sequence[str]) -> None:
        from replipoll import _speedups

        self._speedups = _speedups
        self._runners = {"asyncio": stack.enter_context(asyncio.Runner())}
        if any(name in ON_UVLOOP for name in names):
            factory = _speedups.loop_factory({})
            self._runners["uvloop"] = stack.enter_context(
                asyncio.Runner(loop_factory=factory)
            )

    def run(self, variant: str, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on ``variant``'s loop, with its JSON loader."""
        speedups = self._speedups
        fast = variant == FAST
        speedups.loads = speedups.msgspec_loads if fast else speedups.stdlib_loads
        loop = "uvloop" if variant in ON_UVLOOP else "asyncio"
        return self._runners[loop].run(work)


def measure(
    base_url: str,
    ids: list[str],
    batch: int,
    cycles: int,
    concurrency: int,
    names: Sequence[str],
) -> dict[str, Any]:
    """Time batches of GETs, the clients taking turns; runs in a child.

    Each cycle runs one batch per client, in an order rotating by cycle, so
    that whatever else the machine is doing weighs on all of them alike.
    """
    names = tuple(names)
    cpu_us: dict[str, list[float]] = {v: [] for v in names}
    rate: dict[str, list[float]] = {v: [] for v in names}
    with contextlib.ExitStack() as stack:
        loops = Loops(stack, names)
        clients = {v: loops.run(v, client(v, base_url)) for v in names}
        for v, (fetch, _) in clients.items():  # warm up: connections, caches
            loops.run(v, drive(fetch, ids, max(concurrency * 4, batch), concurrency))
        for cycle in range(cycles):
            shift = cycle % len(names)
            for variant in names[shift:] + names[:shift]:
                fetch = clients[variant][0]
                # In a rotation each client follows the same one most cycles:
                # the garbage of the one before (the official client makes
                # plenty) is collected now, and a few untimed GETs bring this
                # one's code and data back into the caches, so that no batch
                # pays for the client before it.
                gc.collect()
                loops.run(variant, drive(fetch, ids, concurrency, concurrency))
                work = drive(fetch, ids, batch, concurrency)
                wall, start = time.perf_counter(), cpu()
                loops.run(variant, work)
                used, wall = cpu() - start, time.perf_counter() - wall
                cpu_us[variant].append(used / batch * 1e6)
                rate[variant].append(batch / wall)
        for v, (_, close) in clients.items():
            loops.run(v, close())
    return {"cpu_us": cpu_us, "rate": rate}


#: Which clients share an interpreter. The fast path gets interpreters of its
#: own, taking turns with the default floor and replipoll's default path:
#: next to the official client (long batches, much memory) the two clients
#: on uvloop measured about a fifth higher than without it, the others did not.
GROUPS: dict[str, tuple[str, ...]] = {
    "clients": DEFAULT_VARIANTS,
    "fast path": ("floor", "replipoll", FLOOR_UVLOOP, FAST),
}


def ratio(a: list[float], b: list[float]) -> float:
    """The median of the ratios of paired batches."""
    return median([x / y for x, y in zip(a, b, strict=True)])


def run(
    *, quick: bool = False, concurrency: int = 30, rounds: int | None = None
) -> dict[str, Any]:
    """Run every client in turns, in ``rounds`` fresh interpreters; figures."""
    batch, cycles = (100, 2) if quick else (250, 10)
    rounds = rounds or (1 if quick else 3)
    groups = {
        group: names
        for group, names in GROUPS.items()
        if group == "clients" or fast_path_installed()
    }
    cpu_us = {g: {v: [] for v in names} for g, names in groups.items()}
    rate = {g: {v: [] for v in names} for g, names in groups.items()}
    by_round = {g: {v: [] for v in names} for g, names in groups.items()}
    with fake_server(static_script()) as server, ids_file(server.ids) as ids_path:
        for _ in range(rounds):
            args = (server.base_url, ids_path, str(batch), str(cycles))
            for group, names in groups.items():
                child = run_child(
                    "bench_get.py", *args, str(concurrency), ",".join(names)
                )
                for v in names:
                    cpu_us[group][v] += child["cpu_us"][v]
                    rate[group][v] += child["rate"][v]
                    by_round[group][v].append(
                        round(ratio(child["cpu_us"][v], child["cpu_us"]["floor"]), 3)
                    )

    def figures(group: str, v: str) -> dict[str, Any]:
        samples = cpu_us[group][v]
        return {
            "label": LABELS[v],
            "us_per_get": round(median(samples), 1),
            "us_per_get_min": round(min(samples), 1),
            "x_floor": round(ratio(samples, cpu_us[group]["floor"]), 2),
            "x_floor_rounds": by_round[group][v],
            "gets_per_s": round(median(rate[group][v])),
            "samples_us": [round(x, 1) for x in samples],
        }

    result: dict[str, Any] = {
        "concurrency": concurrency,
        "gets_per_batch": batch,
        "batches": cycles * rounds,
        "rounds": rounds,
        "fast_path": "fast path" in groups,
        "variants": {v: figures("clients", v) for v in DEFAULT_VARIANTS},
        "official_over_replipoll": round(
            ratio(cpu_us["clients"]["replicate"], cpu_us["clients"]["replipoll"]), 1
        ),
    }
    if "fast path" in groups:
        fast = cpu_us["fast path"]
        for v in ON_UVLOOP:
            result["variants"][v] = figures("fast path", v)
        # replipoll's default path measured beside the fast path, for the
        # saving between the two in the same interpreters.
        result["fast_path_default"] = figures("fast path", "replipoll")
        result["fast_over_default"] = round(ratio(fast[FAST], fast["replipoll"]), 2)
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    print(
        f"CPU per GET, concurrency {result['concurrency']}, "
        f"{result['batches']} batches of {result['gets_per_batch']} GETs per client"
    )
    for figures in result["variants"].values():
        rounds = figures.get("x_floor_rounds") or [figures["x_floor"]]
        print(
            f"  {figures['label']:<52} {figures['us_per_get']:>8.1f} us/GET "
            f"(min {figures['us_per_get_min']:.1f})  {figures['x_floor']:>5.2f}x floor"
            f" ({min(rounds):.2f}-{max(rounds):.2f})"
            f"  {figures['gets_per_s']:>6} GET/s"
        )
    if result.get("fast_path"):
        default = result["fast_path_default"]
        print(
            f"  (fast path measured beside replipoll's default path, then "
            f"{default['x_floor']:.2f}x floor; fast / default: "
            f"{result['fast_over_default']:.2f}x)"
        )
    else:
        print("  (fast path not measured: pip install -e '.[speed]')")
    print(f"  official client / replipoll: {result['official_over_replipoll']}x")


def main() -> None:
    """Parse arguments; measure (as the parent) or run the clients (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--child", nargs=6, metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base_url, ids_path, batch, cycles, concurrency, names = args.child
        ids = Path(ids_path).read_text().split()
        counts = (int(batch), int(cycles), int(concurrency))
        emit(measure(base_url, ids, *counts, names.split(",")))
        return
    report(run(quick=args.quick, concurrency=args.concurrency, rounds=args.rounds))


if __name__ == "__main__":
    main()
