"""Rate budget: under a limit of R requests/s, how close to R, and any 429s?

    python bench/bench_rate.py [--quick]

The fake server (another process) enforces R requests/s per API key with a
burst of 10, in GCRA form: a request over the limit is answered 429 with a
``Retry-After`` and counted. A PollManager is given the same limit
(``rate_limit=R``, with ``burst`` 10 like the server's, or 5) and far more
demand than R: 2,000 predictions that never finish, polled every 0.5 s. The
achieved rate is what the server let through over a window after the first
second; the server's 429s are counted over the whole run.

Which 429s did replipoll cause? The client notes when it hands each request
to aiohttp, and the server's GCRA is replayed on those times: a request over
the limit *as sent* is replipoll's doing. Others come from the way between
the two processes (a stall of either delays some requests and bunches the
next ones): with the client at exactly R and ``burst`` equal to the
server's, there is no slack left to absorb that.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from _common import API_KEY, FOREVER, emit, fake_server, ids_file, run_child

BURST = 10
IDS = 2_000


async def saturate(
    base_url: str, ids: list[str], rate: float, window: float, burst: int = BURST
) -> dict[str, Any]:
    """Poll ``ids`` under ``rate`` for 1 s + ``window``; read the server's counts."""
    import aiohttp
    import replipoll

    from _common import Server

    server = Server(base_url, [], 0)
    sent: list[float] = []

    async def note(*_: Any) -> None:
        sent.append(time.monotonic())  # the request is handed to aiohttp

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(note)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        replipoll.Client(base_url=base_url, api_key=API_KEY, session=session) as client,
        replipoll.PollManager(
            client,
            rate_limit=rate,
            burst=burst,
            sweep=False,
            policy=replipoll.PollPolicy.fixed(0.5),
            max_concurrency=32,
        ) as manager,
    ):
        for pid in ids:
            manager.submit(pid)
        await asyncio.sleep(1.0)
        before = await asyncio.to_thread(server.stats)
        start = time.perf_counter()
        await asyncio.sleep(window)
        after = await asyncio.to_thread(server.stats)
        elapsed = time.perf_counter() - start
        stats = manager.stats
    allowed = after["allowed"] - before["allowed"]
    return {
        "limit": rate,
        "achieved": allowed / elapsed,
        "ratio": allowed / elapsed / rate,
        "server_429s": after["throttled"],
        "client_over_limit": over_limit(sent, rate, BURST),
        "client_throttled": stats.throttled,
        "requests": stats.requests,
    }


def over_limit(sent: list[float], rate: float, burst: int) -> int:
    """Requests the server would refuse if each arrived the moment it was sent.

    The same GCRA as the server's, run on the client's own send times: what
    replipoll itself sent over the limit, whatever the transport did after.
    """
    from fake_server import KeyLimiter

    limiter = KeyLimiter(rate, burst)
    return sum(limiter.admit("", t) > 0 for t in sent)


def run(*, quick: bool = False) -> dict[str, Any]:
    """Measure each limit and client burst with a fresh server."""
    limits = (200.0,) if quick else (50.0, 200.0, 500.0)
    bursts = (5,) if quick else (BURST, 5)
    window = 3.0 if quick else 10.0
    rows = []
    for rate in limits:
        for burst in bursts:
            script = [(FOREVER, "succeeded")] * IDS
            with (
                fake_server(script, rate_limit=rate, burst=BURST) as server,
                ids_file(server.ids) as path,
            ):
                url = server.base_url
                args = (url, path, str(rate), str(window), str(burst))
                row = run_child("bench_rate.py", *args)
            rows.append({**row, "client_burst": burst})
    return {"burst": BURST, "ids": IDS, "window_seconds": window, "limits": rows}


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    print(
        f"Rate budget: server limit R per key (burst {result['burst']}), "
        f"PollManager(rate_limit=R), {result['ids']} ids polled every 0.5 s"
    )
    for row in result["limits"]:
        print(
            f"  R = {row['limit']:>5g}/s, burst {row['client_burst']:>2}: achieved "
            f"{row['achieved']:7.1f}/s ({row['ratio']:.1%}), 429s at the server "
            f"{row['server_429s']}, sent over the limit by replipoll "
            f"{row['client_over_limit']} (of {row['requests']})"
        )


def main() -> None:
    """Parse arguments; measure (as the parent) or run one limit (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        base_url, path, rate, window, *burst = args.child
        ids = Path(path).read_text().split()
        emit(
            asyncio.run(
                saturate(
                    base_url, ids, float(rate), float(window), int(*burst or [BURST])
                )
            )
        )
        return
    report(run(quick=args.quick))


if __name__ == "__main__":
    main()
