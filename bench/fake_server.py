"""The benchmarks' server: a FakeReplicate in its own process, scripted from a file.

Run by the benchmarks, not by hand (but ``--help`` works)::

    python bench/fake_server.py --script predictions.json --ids-file ids.txt \
        [--rate-limit 200 --burst 10]

It adds one prediction per entry of the script (``[duration, outcome]``
pairs; durations count from the server's start), writes their ids to
``--ids-file`` and prints ``replipoll fake server on http://127.0.0.1:PORT/v1``
once it listens, like ``python -m replipoll.testing``. An entry may have a
third number, its creation time in seconds from the server's start (negative:
before it; later: unknown to the API until then); it still completes
``duration`` seconds from the start, processing from its creation on.

Two things the benchmarks need on top of :class:`~replipoll.testing.FakeReplicate`:

* ``--rate-limit R --burst B``: a per-key limit in GCRA form. A request over it
  is answered ``429`` with ``Retry-After`` (seconds, fractional) and the
  Replicate problem+json body, and counted.
* ``GET /_bench/stats`` answers the counters as JSON (API requests allowed and
  throttled, per status; list requests and GETs of a prediction apart, and
  of those GETs, the ones of a prediction finished by then; the server's
  start on ``time.monotonic``, which script times count from),
  ``POST /_bench/reset`` zeroes them. They are not API paths: neither is
  counted nor rate limited.
* ``--log-arrivals``: ``GET /_bench/arrivals`` answers ``[[seconds, id], ...]``,
  when each API request for a prediction arrived (seconds since the first),
  so that another client can replay the same requests at the same times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from aiohttp import web
from aiohttp.typedefs import Handler
from replipoll.testing import FakeReplicate

API_PREFIXES = ("/v1/", "/replicate/v1/")


@attrs.define
class KeyLimiter:
    """GCRA per API key: ``rate`` requests/s, ``burst`` at once; pure, clock-injected.

    Example:
        >>> limiter = KeyLimiter(rate=10, burst=2)
        >>> [round(limiter.admit("k", 0.0), 3) for _ in range(3)]
        [0.0, 0.0, 0.1]
        >>> round(limiter.admit("k", 0.1), 3)
        0.0
    """

    rate: float
    burst: int = 1
    _tat: dict[str, float] = attrs.Factory(dict)

    def admit(self, key: str, now: float) -> float:
        """Admit one request at ``now``: 0.0 if allowed, else seconds to wait."""
        interval = 1.0 / self.rate
        tat = max(self._tat.get(key, now), now)
        wait = tat + interval - now - self.burst * interval
        if wait > 1e-9:
            return wait
        self._tat[key] = tat + interval
        return 0.0


@attrs.define
class Counters:
    """What ``/_bench/stats`` reports."""

    allowed: int = 0
    throttled: int = 0
    by_status: Counter[int] = attrs.Factory(Counter)
    first: float | None = None
    last: float | None = None
    arrivals: list[tuple[float, str]] | None = None
    #: When the server started: what the script's times count from.
    started: float = 0.0
    list_requests: int = 0
    gets: int = 0
    #: GETs of a prediction that was finished when asked, and of one not yet.
    gets_done: int = 0
    gets_running: int = 0

    def as_json(self) -> dict[str, Any]:
        """The counters as a JSON-ready dict (times are ``time.monotonic()``)."""
        return {
            "allowed": self.allowed,
            "throttled": self.throttled,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "first": self.first,
            "last": self.last,
            "started": self.started,
            "list_requests": self.list_requests,
            "gets": self.gets,
            "gets_done": self.gets_done,
            "gets_running": self.gets_running,
        }


def build(
    script: Sequence[tuple[float, str] | tuple[float, str, float]],
    *,
    rate_limit: float | None,
    burst: int,
    seed: int,
    log_arrivals: bool = False,
) -> tuple[FakeReplicate, list[str], Counters]:
    """A server with the scripted predictions, the limiter and the stats routes."""
    # No request log: the benchmarks send hundreds of thousands of requests.
    server = FakeReplicate(seed=seed, request_log_size=0)
    started = server.now()
    ids = []
    for i, (duration, outcome, *created) in enumerate(script):
        if created:  # created then, processing until `duration` from the start
            ids.append(
                server.add_prediction(
                    duration=max(0.0, duration - created[0]),
                    outcome=outcome,
                    n_files=1 + i % 3,
                    created=started + created[0],
                )
            )
        else:
            ids.append(
                server.add_prediction(
                    duration=duration, outcome=outcome, n_files=1 + i % 3
                )
            )
    counters = Counters(arrivals=[] if log_arrivals else None, started=started)
    limiter = KeyLimiter(rate_limit, burst) if rate_limit else None

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIXES):
            return await handler(request)
        now = time.monotonic()
        if counters.first is None:
            counters.first = now
        counters.last = now
        if counters.arrivals is not None and "id" in request.match_info:
            counters.arrivals.append((now, request.match_info["id"]))
        key = request.headers.get("Authorization", "")
        wait = limiter.admit(key, now) if limiter is not None else 0.0
        if wait:
            counters.throttled += 1
            counters.by_status[429] += 1
            detail = "Request was throttled. Your rate limit resets in ~1s."
            return web.json_response(
                {"detail": detail, "status": 429},
                status=429,
                content_type="application/problem+json",
                headers={"Retry-After": f"{wait:.3f}"},
            )
        counters.allowed += 1
        if request.method == "GET":
            pid = request.match_info.get("id")
            if pid is not None:
                counters.gets += 1
                try:
                    done = server.timeline(pid).completed <= server.now()
                except KeyError:
                    done = False
                if done:
                    counters.gets_done += 1
                else:
                    counters.gets_running += 1
            elif request.path.endswith("/predictions"):
                counters.list_requests += 1
        response = await handler(request)
        counters.by_status[response.status] += 1
        return response

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(counters.as_json())

    async def arrivals(request: web.Request) -> web.Response:
        log = counters.arrivals or []
        start = log[0][0] if log else 0.0
        return web.json_response([[round(t - start, 6), pid] for t, pid in log])

    async def reset(request: web.Request) -> web.Response:
        counters.allowed = counters.throttled = 0
        counters.list_requests = counters.gets = 0
        counters.gets_done = counters.gets_running = 0
        counters.by_status.clear()
        counters.first = counters.last = None
        if counters.arrivals is not None:
            counters.arrivals.clear()
        return web.json_response(counters.as_json())

    # Inside FakeReplicate's own middleware, so its counters see the 429s too.
    server.app.middlewares.append(limit)
    server.app.router.add_get("/_bench/stats", stats)
    server.app.router.add_get("/_bench/arrivals", arrivals)
    server.app.router.add_post("/_bench/reset", reset)
    return server, ids, counters


async def serve(args: argparse.Namespace) -> None:
    """Start, print the URL line, serve until SIGTERM/SIGINT."""
    script: list[tuple[float, str] | tuple[float, str, float]] = [
        (float(entry[0]), str(entry[1]), float(entry[2]))
        if len(entry) > 2
        else (float(entry[0]), str(entry[1]))
        for entry in json.loads(args.script.read_text())
    ]
    server, ids, _ = build(
        script,
        rate_limit=args.rate_limit,
        burst=args.burst,
        seed=args.seed,
        log_arrivals=args.log_arrivals,
    )
    args.ids_file.write_text("".join(f"{pid}\n" for pid in ids))
    await server.start("127.0.0.1", args.port)
    print(f"replipoll fake server on {server.base_url()}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--ids-file", type=Path, required=True)
    parser.add_argument("--rate-limit", type=float, default=None)
    parser.add_argument("--burst", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-arrivals", action="store_true")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
