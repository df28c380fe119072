"""Scale: memory per tracked id, and CPU per request from 1,000 to 100,000 ids.

    python bench/bench_scale.py [--quick]

Memory (tracemalloc, a fresh interpreter per size). The ids are made before
tracing starts (they are the caller's), and the client is a stub whose
``send`` answers one shared, pre-built "processing" record after yielding to
the loop: nothing is sent, and no record is allocated per id, so what
tracemalloc sees is the manager's own overhead. Two moments are measured:

* *queued*: right after ``submit`` of every id (nothing answered yet: a
  track, a future and a queue entry each);
* *scheduled*: after each id's first answer, when every id waits for its
  next poll (``PollPolicy.fixed(1800)``) and for its deadline (the default
  hour): the steady state.

CPU per request vs ids tracked: ``N`` ids, a rate budget of ``R`` requests/s
and ``PollPolicy.fixed(0.5 * N / R)``: the ids ask more than ``R`` (even
with the manager's coalescing of due times, which bunches them), so the
budget paces every round at ``R`` requests/s of the same ``N`` ids, which
sit in the heap in between. After one round of warm-up, CPU time and requests
are read over a window. The stub client isolates the manager's own cost per
request; the real run (full mode) polls the fake server in another process
(its predictions never finish) and so includes aiohttp.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import linecache
import threading
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    FOREVER,
    cpu,
    emit,
    fake_server,
    ids_file,
    median,
    run_child,
)


def _stub_client() -> Any:
    """A Client that answers "processing" without sending anything.

    It replaces the one private method the manager polls through (the
    manager alone is measured: one shared record, no socket).
    """
    import replipoll

    record = replipoll.Prediction.from_json({"id": "x", "status": "processing"})
    hashes = itertools.count(2**62)

    class StubClient(replipoll.Client):
        __slots__ = ()

        async def _exchange(self, *_: Any) -> tuple[replipoll.Prediction, int]:
            await asyncio.sleep(0)
            # The record, and its body's hash: an int of its own per answer,
            # as a real one is (kept per id with the record).
            return record, next(hashes)

    return StubClient(base_url="http://127.0.0.1:9/v1", api_key="stub")


def make_ids(n: int) -> list[str]:
    """``n`` distinct 26-character ids, like Replicate's."""
    return [f"{i:08d}abcdefghijklmnopqr" for i in range(n)]


async def memory(n: int) -> dict[str, Any]:
    """Bytes the manager holds per id, queued and scheduled; runs in a child."""
    import replipoll

    client = _stub_client()
    ids = make_ids(n)
    futures: list[object] = [None] * n  # the caller's list: allocated untraced
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    answered = asyncio.Event()

    def first_answer(record: replipoll.Prediction) -> None:
        # Called once per id: its status changes from "unknown" to "processing".
        if manager.stats.requests >= n:
            answered.set()

    manager = replipoll.PollManager(
        client,
        policy=replipoll.PollPolicy.fixed(1800),  # within the default deadline
        on_update=first_answer,
        sweep=False,
    )
    async with manager:
        for i, pid in enumerate(ids):
            futures[i] = manager.submit(pid)
        queued = tracemalloc.get_traced_memory()[0] - base
        await answered.wait()
        await asyncio.sleep(0.05)  # the last answers reschedule their ids
        gc.collect()
        scheduled = tracemalloc.get_traced_memory()[0] - base
        snapshot = tracemalloc.take_snapshot()
        tracked = manager.stats.tracked
    tracemalloc.stop()
    top = snapshot.filter_traces(
        [tracemalloc.Filter(False, tracemalloc.__file__)]
    ).statistics("lineno")[:6]
    return {
        "ids": n,
        "tracked": tracked,
        "queued_bytes_per_id": queued / n,
        "scheduled_bytes_per_id": scheduled / n,
        "top": [
            {
                "where": f"{Path(s.traceback[0].filename).name}:"
                f"{s.traceback[0].lineno}",
                "code": linecache.getline(
                    s.traceback[0].filename, s.traceback[0].lineno
                ).strip(),
                "bytes_per_id": round(s.size / n, 1),
            }
            for s in top
        ],
    }


async def _window(manager: Any, window: float) -> dict[str, Any]:
    """Requests and CPU per request over ``window`` seconds of ``manager``."""
    requests, start, wall = manager.stats.requests, cpu(), time.perf_counter()
    await asyncio.sleep(window)
    used, wall = cpu() - start, time.perf_counter() - wall
    requests = manager.stats.requests - requests
    return {
        "tracked": manager.stats.tracked,
        "requests": requests,
        "rate": requests / wall,
        "us_per_request": used / requests * 1e6,
    }


async def steady(
    n: int, rate: float, window: float, base_url: str | None, ids: list[str]
) -> dict[str, Any]:
    """CPU per request with ``n`` ids tracked, at ``rate`` requests/s; a child."""
    import replipoll

    if base_url is None:
        client = _stub_client()
    else:
        client = replipoll.Client(base_url=base_url, api_key=API_KEY)
    policy = replipoll.PollPolicy.fixed(0.5 * n / rate)  # the budget paces
    async with (
        client,
        replipoll.PollManager(
            client,
            rate_limit=rate,
            burst=10,
            policy=policy,
            timeout=None,
            sweep=False,
        ) as manager,
    ):
        for pid in ids[:n]:
            manager.submit(pid)
        await asyncio.sleep(n / rate + min(2.0, window / 2))  # one round and more
        figures = await _window(manager, window)
    return {"ids": n, **figures}


#: A running prediction as Replicate serves it (about 1.1 KB of JSON).
RUNNING_RECORD: dict[str, Any] = {
    "id": "",
    "model": "black-forest-labs/flux-schnell",
    "version": "f2ab8a5bfe79f02f0789a146cf5e73d2a4ff2684a98c2b303d1e1ff3814271db",
    "input": {
        "prompt": "a watercolour painting of a lighthouse on a cliff at dawn, "
        "gulls over the sea, soft light",
        "num_outputs": 1,
        "aspect_ratio": "1:1",
        "output_format": "webp",
        "output_quality": 80,
    },
    "logs": "Using seed: 40442\nrunning quantized prediction\n"
    "  0%|          | 0/4 [00:00<?, ?it/s]\n"
    " 50%|#####     | 2/4 [00:00<00:00,  5.31it/s]\n",
    "output": None,
    "data_removed": False,
    "error": None,
    "status": "processing",
    "created_at": "2026-11-27T10:31:02.412000Z",
    "started_at": "2026-11-27T10:31:03.158932Z",
    "urls": {
        "cancel": "https://api.replicate.com/v1/predictions/{id}/cancel",
        "get": "https://api.replicate.com/v1/predictions/{id}",
        "stream": "https://stream.replicate.com/v1/files/bcwr-3okdfv3o2wehstv5f2okyftwxy57hhypqsi6osiim5iaq5yebb6a",
        "web": "https://replicate.com/p/{id}",
    },
    "metrics": {},
}


def _decoding_stub_client() -> Any:
    """A Client that answers each poll with a fresh running record, decoded.

    Like :func:`_stub_client`, nothing is sent; but every answer is a new
    record of its id, parsed and structured as a real one is, so the
    manager's memory and the garbage collector see what a real batch makes.
    """
    import json

    import replipoll

    body = json.dumps(RUNNING_RECORD)

    class DecodingStubClient(replipoll.Client):
        __slots__ = ()

        async def _exchange(
            self, request: Any, *_: Any
        ) -> tuple[replipoll.Prediction, int]:
            # Every answer decoded, as if each had changed since the last.
            await asyncio.sleep(0)
            pid = request.prediction_id
            text = body.replace('"id": ""', f'"id": "{pid}"')
            return replipoll.Prediction.from_json(json.loads(text)), hash(text)

    return DecodingStubClient(base_url="http://127.0.0.1:9/v1", api_key="stub")


async def million(
    n: int, rate: float, window: float, *, freeze: bool
) -> dict[str, Any]:
    """``n`` running ids in one process: peak RSS, loop stalls, CPU/request.

    The whole process is measured (the caller's ids and futures included).
    Every id is polled at once when submitted, then every ``0.5 * n / rate``
    seconds, so the budget paces every round at ``rate``; CPU per request
    is read over ``window`` seconds after the first round. With ``freeze``,
    the submitting code follows the recipe of docs/performance.md: the
    collector off while the ids go in, then ``gc.freeze()``.
    """
    import resource

    import replipoll

    client = _decoding_stub_client()
    ids = make_ids(n)
    loop = asyncio.get_running_loop()
    worst = 0.0
    stalls: list[tuple[float, float]] = []  # (when, how long), over 50 ms
    pauses: list[float] = []  # full collections
    collections: list[tuple[float, float, int]] = []  # (start, end, generation)
    began = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal began
        if phase == "start":
            began = time.perf_counter()
            return
        end = time.perf_counter()
        collections.append((began, end, info["generation"]))
        if info["generation"] == 2:
            pauses.append(end - began)

    async def watch() -> None:
        """The longest time the loop took to come back to a 5 ms sleep."""
        nonlocal worst
        while True:
            start = loop.time()
            await asyncio.sleep(0.005)
            late = loop.time() - start - 0.005
            worst = max(worst, late)
            if late > 0.05:
                stalls.append((start, late))

    # A thread that sleeps 5 ms at a time: when it wakes late too, while no
    # collection ran, the whole process was held up (the machine, or a long
    # call that kept the GIL), not just the loop. Each stall is put down to
    # one of the three.
    machine = _MachineWatch()
    machine.start()

    began_at = loop.time()
    rss: dict[str, float] = {"start": _rss_mib()}  # the process's, by phase
    answered = asyncio.Event()
    first_answers = 0

    def first_answer(_: replipoll.Prediction) -> None:
        # Called once per id: its status changes from "unknown" to "processing".
        nonlocal first_answers
        first_answers += 1
        if first_answers >= n:
            answered.set()

    gc.callbacks.append(on_gc)
    watcher = asyncio.create_task(watch())
    policy = replipoll.PollPolicy.fixed(0.5 * n / rate)
    async with (
        client,
        replipoll.PollManager(
            client,
            rate_limit=rate,
            burst=10,
            policy=policy,
            timeout=None,
            keep_last=False,
            sweep=False,
            on_update=first_answer,
        ) as manager,
    ):
        futures = []
        if freeze:
            gc.disable()
        for start in range(0, n, 2048):  # a turn of the loop for every 2,048
            futures.extend(manager.submit(pid) for pid in ids[start : start + 2048])
            await asyncio.sleep(0)
        submit_ends = loop.time() - began_at
        rss["submitted"] = _rss_mib()
        if freeze:
            gc.freeze()
            gc.enable()
        submitted = len(pauses)
        await answered.wait()  # every id's first poll
        rss["first_round"] = _rss_mib()
        await asyncio.sleep(min(2.0, window / 2))
        figures = await _window(manager, window)
        rss["polling"] = _rss_mib()
        rss_polling_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        # The loop while polling, apart from the closing of the manager,
        # which ends every id left (a million errors made at once).
        polling_worst, worst = worst, 0.0
        polling_pauses = list(pauses)
        closing = time.perf_counter()
        close_at = loop.time()
    closing = time.perf_counter() - closing
    watcher.cancel()
    machine.stop()
    gc.callbacks.remove(on_gc)
    causes = [_stall_cause(t, late, collections, machine.late) for t, late in stalls]
    return {
        "ids": n,
        **figures,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worst_stall_ms": polling_worst * 1e3,
        "close_seconds": closing,
        "close_worst_stall_ms": worst * 1e3,
        "submit_seconds": submit_ends,
        "rss_mib": {phase: round(mib) for phase, mib in rss.items()},
        "achieved_rate": figures["rate"],
        # (seconds from the start, ms, cause), while polling / while closing
        "stalls_over_50ms": [
            (round(t - began_at, 1), round(d * 1e3), cause)
            for (t, d), cause in zip(stalls, causes, strict=True)
            if t < close_at
        ][:40],
        "close_stalls_over_50ms": [
            (round(t - began_at, 1), round(d * 1e3), cause)
            for (t, d), cause in zip(stalls, causes, strict=True)
            if t >= close_at
        ][:40],
        "peak_rss_polling_mib": rss_polling_peak,
        "longest_collections": [
            (round(a - began_at, 1), generation, round((b - a) * 1e3, 1))
            for a, b, generation in sorted(collections, key=lambda c: c[0] - c[1])[:8]
        ],
        "gc_freeze": freeze,
        "full_collections": len(polling_pauses),
        "full_collections_after_submit": len(polling_pauses) - submitted,
        "longest_collection_ms": max(polling_pauses, default=0.0) * 1e3,
        "close_longest_collection_ms": max(pauses[len(polling_pauses) :], default=0.0)
        * 1e3,
    }


class _MachineWatch(threading.Thread):
    """Sleeps 5 ms at a time and notes each wake-up over 50 ms late."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.late: list[tuple[float, float]] = []  # (start, end), perf_counter
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            start = time.perf_counter()
            time.sleep(0.005)
            end = time.perf_counter()
            if end - start > 0.055:
                self.late.append((start, end))

    def stop(self) -> None:
        self._done.set()
        self.join()


def _stall_cause(
    loop_start: float,
    late: float,
    collections: list[tuple[float, float, int]],
    machine: list[tuple[float, float]],
) -> str:
    """Why the loop came back ``late`` s late to a sleep begun at ``loop_start``.

    ``"gc"`` if collections took over half the stall, else ``"process"``
    if the sleeping thread was held up over half of it (the machine, or
    a long call that kept the GIL), else ``"loop"``
    (the event loop's own callbacks ran that long). ``loop_start`` is on
    the loop's clock, which is ``time.monotonic`` as ``perf_counter`` is
    on Linux.
    """
    start, end = loop_start + 0.005, loop_start + 0.005 + late

    def overlap(spans: list[tuple[float, float]]) -> float:
        return sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)

    if overlap([(a, b) for a, b, _ in collections]) > late / 2:
        return "gc"
    if overlap(machine) > late / 2:
        return "process"
    return "loop"


def _rss_mib() -> float:
    """The process's resident set size now, in MiB (Linux)."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


MILLION_RATE = 20_000.0


def million_runs(rounds: int, n: int = 1_000_000) -> dict[str, Any]:
    """``n`` ids with the collector recipe, ``rounds`` times; once without it.

    The same child at 10,000 ids (same rate, same records) gives the CPU
    per request to compare with.
    """
    rate, window = str(MILLION_RATE), "8"
    small = [
        run_child("bench_scale.py", "million", "10000", rate, window, "0")
        for _ in range(rounds)
    ]
    big = [
        run_child("bench_scale.py", "million", str(n), rate, window, "1")
        for _ in range(rounds)
    ]
    plain = run_child("bench_scale.py", "million", str(n), rate, window, "0")
    base = median([r["us_per_request"] for r in small])

    def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            key: round(median([r[key] for r in runs]), 1)
            for key in (
                "us_per_request",
                "peak_rss_mib",
                "peak_rss_polling_mib",
                "worst_stall_ms",
                "longest_collection_ms",
                "close_seconds",
                "close_worst_stall_ms",
                "close_longest_collection_ms",
            )
        } | {
            "samples_us": [round(r["us_per_request"], 1) for r in runs],
            "samples_rss_mib": [round(r["peak_rss_mib"]) for r in runs],
            "samples_stall_ms": [round(r["worst_stall_ms"]) for r in runs],
            "x_10k": round(median([r["us_per_request"] for r in runs]) / base, 2),
            "rss_mib": {
                phase: round(median([r["rss_mib"][phase] for r in runs]))
                for phase in runs[0]["rss_mib"]
            },
            "achieved_rate": round(median([r["achieved_rate"] for r in runs])),
            # How many stalls over 50 ms each cause made, over all the runs.
            "stall_causes": dict(
                Counter(c for r in runs for _, _, c in r["stalls_over_50ms"])
            ),
            "close_stall_causes": dict(
                Counter(c for r in runs for _, _, c in r["close_stalls_over_50ms"])
            ),
        }

    return {
        "ids": n,
        "rate": MILLION_RATE,
        "rounds": rounds,
        "ten_thousand": summary(small),
        "recipe": summary(big),
        "plain": summary([plain]),
    }


def run(*, quick: bool = False, real: bool | None = None) -> dict[str, Any]:
    """Memory at each size; CPU per request vs size, stub and (full) real."""
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    # More sizes for the manager alone: where its cost steps up says whether
    # it is an algorithm (steadily, with log N) or the caches (once).
    stub_sizes = sizes if quick else (1_000, 3_000, 10_000, 30_000, 100_000)
    real = not quick if real is None else real
    mem = [run_child("bench_scale.py", "memory", str(n)) for n in sizes]
    stub_rate, stub_window = 5_000.0, 1.0 if quick else 5.0
    rounds = 1 if quick else 3
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in stub_sizes}
    for _ in range(rounds):
        for n in stub_sizes:
            args = ("steady", str(n), str(stub_rate), str(stub_window))
            runs[n].append(run_child("bench_scale.py", *args))
    stub = [
        {
            **runs[n][0],
            "rate": median([r["rate"] for r in runs[n]]),
            "us_per_request": median([r["us_per_request"] for r in runs[n]]),
            "samples_us": [round(r["us_per_request"], 1) for r in runs[n]],
        }
        for n in stub_sizes
    ]
    result: dict[str, Any] = {
        "memory": mem,
        "stub": stub,
        "stub_rate": stub_rate,
        "stub_rounds": rounds,
    }
    if real:
        real_rate, window = 1_000.0, 8.0
        script = [(FOREVER, "succeeded")] * max(sizes)
        with fake_server(script) as server, ids_file(server.ids) as path:
            result["real"] = [
                run_child(
                    "bench_scale.py",
                    "steady",
                    str(n),
                    str(real_rate),
                    str(window),
                    server.base_url,
                    path,
                )
                for n in sizes
            ]
        result["real_rate"] = real_rate
    if not quick:
        result["million"] = million_runs(rounds)
    for key in ("stub", "real"):
        if key in result:
            first = result[key][0]["us_per_request"]
            for row in result[key]:
                row["x_smallest"] = round(row["us_per_request"] / first, 2)
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    print("Memory per tracked id (manager's own allocations, tracemalloc):")
    for row in result["memory"]:
        print(
            f"  {row['ids']:>7} ids: queued {row['queued_bytes_per_id']:.0f} B/id, "
            f"scheduled {row['scheduled_bytes_per_id']:.0f} B/id"
        )
    if "million" in result:
        m = result["million"]
        print(
            f"{m['ids']:,} running ids in one process ({m['rate']:g} requests/s, "
            f"records decoded, keep_last=False; median of {m['rounds']}):"
        )
        for key, label in (
            ("ten_thousand", "10,000 ids"),
            ("recipe", "with gc.freeze() recipe"),
            ("plain", "without it (1 run)"),
        ):
            row = m[key]
            print(
                f"  {label:>24}: {row['us_per_request']:.1f} us/request "
                f"({row['x_10k']}x 10k), peak RSS {row['peak_rss_mib']:.0f} MiB, "
                f"worst stall {row['worst_stall_ms']:.0f} ms"
            )
    for key, label in (("stub", "stub client"), ("real", "fake server")):
        if key not in result:
            continue
        print(f"CPU per request vs ids tracked ({label}, {result[key + '_rate']:g}/s):")
        for row in result[key]:
            print(
                f"  {row['ids']:>7} ids: {row['us_per_request']:7.1f} us/request "
                f"({row['x_smallest']}x), {row['rate']:.0f} requests/s"
            )


def main() -> None:
    """Parse arguments; measure (as the parent) or run one part (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        part, n, *rest = args.child
        if part == "memory":
            emit(asyncio.run(memory(int(n))))
            return
        if part == "million":
            rate, window, freeze = rest
            emit(
                asyncio.run(
                    million(int(n), float(rate), float(window), freeze=freeze == "1")
                )
            )
            return
        rate, window, *server = rest
        if server:
            base_url: str | None = server[0]
            ids = Path(server[1]).read_text().split()
        else:
            base_url, ids = None, make_ids(int(n))
        emit(asyncio.run(steady(int(n), float(rate), float(window), base_url, ids)))
        return
    report(run(quick=args.quick))


if __name__ == "__main__":
    main()
