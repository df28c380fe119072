"""A batch shared through Redis: 100,000 ids, 3 workers, one killed with SIGKILL.

    python bench/bench_redis_batch.py [--ids 100000] [--workers 3] [--rounds 1]
                                      [--reclaim-after 30] [--quick]

A round scripts ``--ids`` predictions on the benchmarks' fake server (its own
process; each finishes 1 to 2 s after the server starts), and starts
``--workers`` ``replipoll poll --redis URL --batch NAME --from ids.txt``
processes, every one given the whole file (so the load itself is shared:
the union is loaded once). When half the batch is done, the first worker is
killed with ``SIGKILL`` while it holds ids; the others go on, take its ids
over after ``--reclaim-after`` seconds (the CLI's default, 30), and exit once
the whole batch is done. Then the results stream is read back *raw* (not
through ``replipoll batch export``, which would hide a duplicate):

* **lost**: ids with no result (target 0);
* **duplicated**: ids with more than one result (target 0);
* **reclaim**: seconds from the kill until the dead worker had nothing
  pending (every id it held taken over), with how many it held;
* **total**: seconds from the workers' start to the last one's exit, and ids
  per second;
* **requests per id**: API requests the server answered (GETs and list
  pages, retries included), divided by the ids.

Redis is a ``redis-server`` of the round's own on a free loopback port (no
persistence), or ``--redis URL`` (keys under a prefix of the round's own,
deleted afterwards).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from replipoll.redis import BatchKeys
from replipoll.redis._batch import GROUP

import redis
from _common import API_KEY, fake_server, span

NAME = "bench"
#: When the first worker is killed: this share of the batch done.
KILL_AT = 0.5
LOST_TARGET = 0
DUPLICATED_TARGET = 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def private_redis(url: str | None) -> Iterator[tuple[str, str]]:
    """A Redis URL and a key prefix for one round; cleaned up afterwards."""
    prefix = f"replipoll-bench:{uuid.uuid4().hex[:8]}:"
    binary = shutil.which("redis-server")
    if url is not None or binary is None:
        url = url or "redis://127.0.0.1:6379/0"
        try:
            yield url, prefix
        finally:
            connection = redis.Redis.from_url(url)
            keys = list(connection.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                connection.delete(*keys)
            connection.close()
        return
    with tempfile.TemporaryDirectory(prefix="replipoll-bench-redis-") as folder:
        port = _free_port()
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", folder, "--logfile", "redis.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        try:
            connection = redis.Redis.from_url(url)
            for _ in range(200):
                with contextlib.suppress(redis.ConnectionError):
                    if connection.ping():
                        break
                time.sleep(0.025)
            connection.close()
            yield url, prefix
        finally:
            server.terminate()
            server.wait(10)


def script(n: int, seed: int) -> list[tuple[float, str]]:
    """``n`` predictions that finish 1 to 2 s after the server starts."""
    rng = random.Random(seed)
    return [(round(rng.uniform(1.0, 2.0), 3), "succeeded") for _ in range(n)]


def one_round(
    n: int, workers: int, reclaim_after: float, seed: int, url: str | None
) -> dict[str, Any]:
    """Run one round; return its figures."""
    with (
        fake_server(script(n, seed), seed=seed) as server,
        private_redis(url) as (redis_url, prefix),
        tempfile.TemporaryDirectory(prefix="replipoll-bench-batch-") as tmp,
    ):
        ids_path = Path(tmp, "ids.txt")
        ids_path.write_text("\n".join(server.ids) + "\n")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("REPLIPOLL_") and k != "REPLICATE_API_TOKEN"
        }
        env["REPLICATE_API_TOKEN"] = API_KEY
        command = [
            sys.executable, "-c",
            "import sys; from replipoll._cli import main; sys.exit(main())",
            "poll", "--redis", redis_url, "--batch", NAME,
            "--redis-prefix", prefix, "--from", str(ids_path),
            "--base-url", server.base_url, "--reclaim-after", str(reclaim_after),
            "--no-progress", "-q",
        ]  # fmt: skip
        keys = BatchKeys.of(prefix, NAME)
        connection: Any = redis.Redis.from_url(redis_url, decode_responses=True)
        logs = [Path(tmp, f"worker{i}.err") for i in range(workers)]
        began = time.monotonic()
        procs = [
            subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=log.open("w"),
                env=env,
            )
            for log in logs
        ]
        victim = procs[0]
        try:
            # Kill the first worker once the batch is half done, while it holds ids.
            dead_name, held = "", 0
            while True:
                done = connection.scard(keys.done)
                if done >= KILL_AT * n and connection.exists(keys.queue):
                    for consumer in connection.xinfo_consumers(keys.queue, GROUP):
                        if f":{victim.pid}:" in consumer["name"]:
                            dead_name, held = consumer["name"], consumer["pending"]
                    if held:
                        break
                if victim.poll() is not None:
                    raise RuntimeError(f"worker 0 ended early: {logs[0].read_text()}")
                time.sleep(0.02)
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            victim.wait(10)
            held = _pending(connection, keys.queue, dead_name)
            done_at_kill = connection.scard(keys.done)
            reclaimed = None
            while any(p.poll() is None for p in procs[1:]):
                if (
                    reclaimed is None
                    and _pending(connection, keys.queue, dead_name) == 0
                ):
                    reclaimed = time.monotonic() - killed
                time.sleep(0.02)
            total = time.monotonic() - began
            codes = [p.returncode for p in procs[1:]]
            if any(codes):
                raise RuntimeError(
                    f"a survivor exited {codes}: "
                    + " | ".join(log.read_text()[-500:] for log in logs[1:])
                )
            results = Counter()
            writers: Counter[str] = Counter()
            start = "-"
            while True:
                page = connection.xrange(keys.results, start, "+", count=5000)
                for _, fields in page:
                    results[fields["id"]] += 1
                    writers[fields["worker"]] += 1
                if len(page) < 5000:
                    break
                start = "(" + page[-1][0]
            stats = server.stats()
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            connection.close()
    lost = sum(1 for pid in server.ids if results[pid] == 0)
    duplicated = sum(1 for count in results.values() if count > 1)
    return {
        "ids": n,
        "workers": workers,
        "reclaim_after": reclaim_after,
        "lost": lost,
        "duplicated": duplicated,
        "foreign": len(set(results) - set(server.ids)),
        "killed_held": held,
        "done_at_kill": done_at_kill,
        "kill_at_seconds": round(killed - began, 2),
        "reclaim_seconds": None if reclaimed is None else round(reclaimed, 2),
        "total_seconds": round(total, 2),
        "ids_per_second": round(n / total, 1),
        "requests": stats["allowed"] + stats["throttled"],
        "requests_per_id": round((stats["allowed"] + stats["throttled"]) / n, 4),
        "list_requests": stats["list_requests"],
        "written_by": sorted(writers.values(), reverse=True),
        "killed_wrote": writers[dead_name],
    }


def _pending(connection: Any, queue: str, consumer: str) -> int:
    """The entries ``consumer`` holds (0 once it was removed from the group)."""
    for info in connection.xinfo_consumers(queue, GROUP):
        if info["name"] == consumer:
            return int(info["pending"])
    return 0


def run(
    *,
    quick: bool = False,
    rounds: int | None = None,
    ids: int | None = None,
    workers: int = 3,
    reclaim_after: float | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Every round, one after another."""
    n = ids if ids is not None else (10_000 if quick else 100_000)
    reclaim = reclaim_after if reclaim_after is not None else (5.0 if quick else 30.0)
    began = time.perf_counter()
    results = [
        one_round(n, workers, reclaim, seed, url)
        for seed in range(1, (rounds or (1 if quick else 3)) + 1)
    ]
    return {
        "rounds": results,
        "targets": {"lost": LOST_TARGET, "duplicated": DUPLICATED_TARGET},
        "wall_seconds": round(time.perf_counter() - began, 1),
    }


def _span1(values: list[float], unit: str = "", digits: int = 1) -> str:
    return span(values, unit, digits)


def report(result: dict[str, Any]) -> None:
    """Print the figures of every round, then the targets."""
    rounds = result["rounds"]
    first = rounds[0]
    print(
        f"Redis batch: {first['ids']} ids, {first['workers']} worker processes, "
        f"one killed with SIGKILL at {KILL_AT:.0%} done; reclaim_after "
        f"{first['reclaim_after']:g} s; {len(rounds)} round(s), "
        f"{result['wall_seconds']:.0f} s"
    )
    for number, r in enumerate(rounds, 1):
        reclaim = (
            "never" if r["reclaim_seconds"] is None else f"{r['reclaim_seconds']:.1f} s"
        )
        print(
            f"  round {number}: lost {r['lost']}, duplicated {r['duplicated']}; "
            f"killed at {r['kill_at_seconds']:.1f} s holding {r['killed_held']} "
            f"ids, all taken over {reclaim} later; total {r['total_seconds']:.1f} s "
            f"({r['ids_per_second']:.0f} ids/s); {r['requests_per_id']:.3f} "
            f"requests per id ({r['list_requests']} list pages); written by "
            f"worker: {r['written_by']} (the killed one: {r['killed_wrote']})"
        )
    lost = sum(r["lost"] for r in rounds)
    duplicated = sum(r["duplicated"] for r in rounds)
    reclaims = [r["reclaim_seconds"] for r in rounds if r["reclaim_seconds"]]
    print(
        f"  lost {lost} (target {LOST_TARGET}), duplicated {duplicated} (target "
        f"{DUPLICATED_TARGET}); reclaim {_span1(reclaims, ' s')} after the kill "
        f"(bound: reclaim_after + a quarter of it); total "
        f"{_span1([r['total_seconds'] for r in rounds], ' s')}; requests per id "
        f"{_span1([r['requests_per_id'] for r in rounds], '', 3)}"
    )


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 ids, 5 s")
    parser.add_argument("--ids", type=int, default=None, help="default: 100000")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--reclaim-after", type=float, default=None, help="default: 30 (the CLI's)"
    )
    parser.add_argument(
        "--redis", default=None, help="default: a redis-server of its own"
    )
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers must be at least 2 (one is killed)")
    report(
        run(
            quick=args.quick,
            rounds=args.rounds,
            ids=args.ids,
            workers=args.workers,
            reclaim_after=args.reclaim_after,
            url=args.redis,
        )
    )


if __name__ == "__main__":
    main()
