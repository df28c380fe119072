"""RedisBudget: four processes on one key keep to its limit; what Redis costs a request.

    python bench/bench_redis_budget.py [--quick] [--rounds 3]

Needs a Redis at ``REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); keys
are made under ``replipoll-bench:`` and deleted afterwards.

**Shared limit.** One :class:`~replipoll.testing.FakeReplicate`, in this
process, logs when each request arrives. Four child processes, each with
its own :class:`~replipoll.Client`, :class:`~replipoll.PollManager` and
:class:`~replipoll.redis.RedisBudget` on one key at R = 50/s (burst 5),
poll 100 ids each that never finish, every 0.5 s: together ten times the
demand R allows. Once all four poll, the achieved rate is measured over
four seconds (as % of R); then one request is answered ``429`` with
``Retry-After: 2``, and every request that arrives in the two seconds
after it is counted: those within 10 ms of the 429 were on the wire
already (sent before the pause reached Redis), any later one is an error.
Four seconds later the children stop; the most requests in any 1-s window
of the whole run must be at most R + burst.

**Cost per request.** ``Client.get`` of one prediction, one request at a
time, against the benchmarks' fake server in another process: with a local
:class:`~replipoll.RateBudget` and with a ``RedisBudget`` (both at a rate so
high they never wait: the Redis variant measures the script call), and
bare aiohttp (``GET`` + ``json()``) as the floor. Each variant runs in a
fresh interpreter; client CPU (user + system) and wall time per request.

Each figure is the median of the rounds, with their spread (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    BENCH,
    FOREVER,
    cpu,
    emit,
    fake_server,
    ids_file,
    run_child,
    span,
)

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RATE, BURST, PROCESSES, IDS_EACH = 50.0, 5, 4, 100
RETRY_AFTER = 2.0
IN_FLIGHT = 0.010  # seconds after the 429 within which a request was already sent
STEADY = 4.0  # seconds over which the achieved rate is measured
VARIANTS = ("floor", "local", "redis")
LABELS = {
    "floor": "aiohttp GET + json() (floor)",
    "local": "Client.get, local RateBudget",
    "redis": "Client.get, RedisBudget",
}


def _redis_key() -> str:
    return f"replipoll-bench:{uuid.uuid4().hex[:12]}"


async def _drop(key: str) -> None:
    from redis.asyncio import Redis

    connection = Redis.from_url(REDIS_URL)
    try:
        await connection.delete(key)
    finally:
        await connection.aclose()


# -- (a) four processes, one key -----------------------------------------------


async def poller(base_url: str, key: str, ids: list[str]) -> dict[str, Any]:
    """A child: poll ``ids`` through a RedisBudget until stdin closes."""
    import aiohttp
    import replipoll
    from replipoll.redis import RedisBudget

    # The 429's retry is expected; an outage of Redis would still show.
    logging.getLogger("replipoll").setLevel(logging.ERROR)
    loop = asyncio.get_running_loop()
    sent: list[float] = []

    async def note(*_: Any) -> None:
        sent.append(time.monotonic())  # the request is handed to aiohttp

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(note)
    async with (
        RedisBudget.from_url(REDIS_URL, key, rate=RATE, burst=BURST) as budget,
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        replipoll.Client(
            base_url=base_url, api_key=API_KEY, budget=budget, session=session
        ) as client,
        replipoll.PollManager(
            client,
            sweep=False,
            policy=replipoll.PollPolicy.fixed(0.5),
            max_concurrency=16,
        ) as manager,
    ):
        for pid in ids:
            manager.submit(pid)
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent says
        stats = manager.stats
    return {"requests": stats.requests, "throttled": stats.throttled, "sent": sent}


async def shared_limit(seed: int) -> dict[str, Any]:
    """One round of (a): the figures from the server's log."""
    from replipoll.testing import FakeReplicate, Fault

    key = _redis_key()
    async with (
        FakeReplicate(seed=seed, request_log_size=100_000) as server,
        contextlib.AsyncExitStack() as files,
    ):
        owner: dict[str, int] = {}
        children = []
        try:
            for child in range(PROCESSES):
                ids = server.add_predictions(IDS_EACH, duration=FOREVER)
                owner.update(dict.fromkeys(ids, child))
                path = files.enter_context(ids_file(ids))
                children.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable,
                        str(BENCH / "bench_redis_budget.py"),
                        "--child",
                        "poll",
                        server.base_url(),
                        key,
                        path,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                    )
                )
            log = server.stats.request_log

            def polling() -> int:
                return len({owner.get(r.path.rsplit("/", 1)[-1]) for r in log} - {None})

            while polling() < PROCESSES:  # noqa: ASYNC110 (the log has no event)
                await asyncio.sleep(0.05)
            all_in = time.monotonic()
            await asyncio.sleep(1.0 + STEADY)
            server.add_fault(Fault.rate_limited(RETRY_AFTER))
            await asyncio.sleep(RETRY_AFTER + 4.0)
        finally:
            reports = []
            for proc in children:
                assert proc.stdin is not None
                proc.stdin.close()
                out, _ = await proc.communicate()
                reports.append(json.loads(out.decode().strip().splitlines()[-1]))
            await _drop(key)
        times = sorted(r.time for r in log if r.path.startswith("/v1/"))
        (throttled,) = [r.time for r in log if r.status == 429]
    steady_from = all_in + 1.0
    steady = [t for t in times if steady_from <= t < steady_from + STEADY]
    after = [t for t in times if throttled < t < throttled + RETRY_AFTER]
    in_flight = [t for t in after if t <= throttled + IN_FLIGHT]
    sent = sorted(t for report in reports for t in report.pop("sent"))
    return {
        "requests": len(times),
        "max_1s_window": max_in_window(times),
        # The same, on the times the clients handed their requests to aiohttp
        # (CLOCK_MONOTONIC is the same clock in every process): what the
        # budget let through, before the way to the server bunched any up.
        "max_1s_window_sent": max_in_window(sent),
        "achieved_ratio": len(steady) / STEADY / RATE,
        "during_pause": len(after) - len(in_flight),
        "in_flight_at_429": len(in_flight),
        "first_after_pause": next(t for t in times if t > throttled + IN_FLIGHT)
        - throttled,
        "children": reports,
    }


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of ``times`` (sorted) within any ``window`` seconds."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


# -- (b) the cost of a script call --------------------------------------------


async def cost(variant: str, base_url: str, pid: str, n: int) -> dict[str, Any]:
    """A child: ``n`` sequential GETs of ``pid``; CPU and wall time per request."""
    import aiohttp
    import replipoll
    from replipoll.redis import RedisBudget

    key = _redis_key()
    closers: list[Any] = []
    if variant == "floor":
        session = aiohttp.ClientSession()
        closers.append(session.close)
        headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}

        async def fetch() -> object:
            url = f"{base_url}/predictions/{pid}"
            async with session.get(url, headers=headers) as response:
                response.raise_for_status()
                return await response.json()

    else:
        budget: replipoll.Budget
        if variant == "redis":
            budget = RedisBudget.from_url(REDIS_URL, key, rate=1e6, burst=1000)
            closers.append(budget.aclose)
        else:
            budget = replipoll.RateBudget(rate=1e6, burst=1000)
        client = replipoll.Client(base_url=base_url, api_key=API_KEY, budget=budget)
        closers.insert(0, client.close)

        async def fetch() -> object:
            return await client.get(pid)

    try:
        for _ in range(max(n // 10, 50)):  # warm up: connections, script loaded
            await fetch()
        began_cpu, began = cpu(), time.perf_counter()
        for _ in range(n):
            await fetch()
        wall, used = time.perf_counter() - began, cpu() - began_cpu
    finally:
        for close in closers:
            await close()
        if variant == "redis":
            await _drop(key)
    return {"cpu_us": used / n * 1e6, "latency_us": wall / n * 1e6}


def per_request(n: int, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """(b): each variant in a fresh interpreter, in a rotating order, per round."""
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    with fake_server([(0.0, "succeeded")]) as server:
        for round_ in range(rounds):
            order = VARIANTS[round_ % 3 :] + VARIANTS[: round_ % 3]
            for variant in order:
                args = (variant, server.base_url, server.ids[0], str(n))
                results[variant].append(run_child("bench_redis_budget.py", *args))
    return results


# -- the run ---------------------------------------------------------------------


def _check_redis() -> None:
    import redis

    try:
        connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
        try:
            connection.ping()
        finally:
            connection.close()
    except redis.RedisError as exc:
        raise SystemExit(f"this benchmark needs a Redis at {REDIS_URL}: {exc}") from exc


def run(
    *, quick: bool = False, rounds: int | None = None, parts: str = "shared,cost"
) -> dict[str, Any]:
    """Both measurements (or ``parts`` of them), ``rounds`` times (3; 1 if quick)."""
    _check_redis()
    count = rounds if rounds is not None else (1 if quick else 3)
    began = time.perf_counter()
    shared, costs = [], {}
    if "shared" in parts:
        shared = [asyncio.run(shared_limit(seed)) for seed in range(1, count + 1)]
    n = 1000 if quick else 4000
    if "cost" in parts:
        costs = per_request(n, count)
    return {
        "rate": RATE,
        "burst": BURST,
        "processes": PROCESSES,
        "retry_after": RETRY_AFTER,
        "rounds": count,
        "gets": n,
        "shared": shared,
        "cost": costs,
        "wall_seconds": round(time.perf_counter() - began, 1),
    }


def report(result: dict[str, Any]) -> None:
    """Print the figures and the targets."""
    rate, burst = result["rate"], result["burst"]
    shared = result["shared"]
    print(
        f"RedisBudget: {result['processes']} processes on one key, R = {rate:g}/s "
        f"(burst {burst}), {result['rounds']} rounds, {result['wall_seconds']:.0f} s"
    )
    if shared:
        _report_shared(result)
    if result["cost"]:
        _report_cost(result)


def _report_shared(result: dict[str, Any]) -> None:
    rate, burst = result["rate"], result["burst"]
    shared = result["shared"]
    windows = [r["max_1s_window"] for r in shared]
    sent = [r["max_1s_window_sent"] for r in shared]
    print(
        f"  most requests in any 1-s window: {span(windows, '', 0)} as they "
        f"arrived, {span(sent, '', 0)} as they were sent "
        f"(limit R + burst = {rate + burst:g})"
    )
    ratio = [r["achieved_ratio"] * 100 for r in shared]
    print(f"  achieved rate: {span(ratio, ' %', 1)} of R (target >= 95 %)")
    during = [r["during_pause"] for r in shared]
    flight = [r["in_flight_at_429"] for r in shared]
    first = [r["first_after_pause"] for r in shared]
    print(
        f"  after a 429 with Retry-After {result['retry_after']:g}: requests during "
        f"the pause {span(during, '', 0)} (target 0), already in flight "
        f"(within {IN_FLIGHT * 1000:.0f} ms) {span(flight, '', 0)}; the first "
        f"after it came {span(first, ' s', 3)} after the 429"
    )


def _report_cost(result: dict[str, Any]) -> None:
    cost = result["cost"]
    print(f"  per request ({result['gets']} sequential GETs, client side):")
    for variant in VARIANTS:
        rows = cost[variant]
        print(
            f"    {LABELS[variant]:<32} CPU "
            f"{span([r['cpu_us'] for r in rows], ' us', 0)}, latency "
            f"{span([r['latency_us'] for r in rows], ' us', 0)}"
        )

    def ratio_of(a: str, b: str, figure: str) -> list[float]:
        return [x[figure] / y[figure] for x, y in zip(cost[a], cost[b], strict=True)]

    def added(figure: str) -> list[float]:
        return [
            x[figure] - y[figure]
            for x, y in zip(cost["redis"], cost["local"], strict=True)
        ]

    cpu_ratio = ratio_of("redis", "local", "cpu_us")
    print(
        f"    RedisBudget / local: CPU {span(cpu_ratio, 'x')}"
        f", latency {span(ratio_of('redis', 'local', 'latency_us'), 'x')}; adds "
        f"{span(added('cpu_us'), ' us', 0)} CPU, "
        f"{span(added('latency_us'), ' us', 0)} latency"
    )
    print(
        f"    over the floor: local {span(ratio_of('local', 'floor', 'cpu_us'), 'x')}"
        f" CPU, {span(ratio_of('local', 'floor', 'latency_us'), 'x')} latency; "
        f"RedisBudget {span(ratio_of('redis', 'floor', 'cpu_us'), 'x')} CPU, "
        f"{span(ratio_of('redis', 'floor', 'latency_us'), 'x')} latency"
    )


def main() -> None:
    """Parse arguments; measure (as the parent) or run one child."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, default=None, help="default 3")
    parser.add_argument(
        "--parts", default="shared,cost", help="shared, cost, or both (default)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, *rest = args.child
        if what == "poll":
            base_url, key, path = rest
            ids = Path(path).read_text().split()
            emit(asyncio.run(poller(base_url, key, ids)))
        else:
            base_url, pid, n = rest
            emit(asyncio.run(cost(what, base_url, pid, int(n))))
        return
    report(run(quick=args.quick, rounds=args.rounds, parts=args.parts))


if __name__ == "__main__":
    main()
