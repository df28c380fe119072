"""Learned schedule: requests per prediction and detection delay on a mixed workload.

    python bench/bench_learned.py [--quick] [--rounds 3]

Four schedules poll the same seeded, realistic workload
(:func:`replipoll.testing.add_workload`: an image model, a language model and
a video model, 60:30:10, cold starts 20% of the time), each in its own
:class:`~replipoll.PollManager` against its own
:class:`~replipoll.testing.FakeReplicate`, all four at once in one event
loop: the official client's fixed 0.5 s (``PollPolicy.fixed(0.5)``, no
coalescing grid), today's default ``PollPolicy()``,
``LearnedPolicy(use_logs=False)`` and ``LearnedPolicy()`` (the default).
Every manager polls each id on its own (``sweep=False``): this benchmark is
about the schedule.

Predictions *arrive*: the workload's creation times are spread over a window
(a steady rate, as an app creating them), and each id is submitted to the
four managers at its creation time, so the learned schedules learn online,
as they would in use. The first 20% of arrivals are a warm-up and are not
measured. For each measured prediction: the requests the server received for
it, and the detection delay, from its completion on the server
(:meth:`FakeReplicate.timeline`, on ``time.monotonic``) to its future being
resolved (``loop.time()`` in a done callback, the same clock).

A round runs in a child process of its own, and the rounds (different seeds)
run side by side: each round is one event loop with four servers and four
managers, a few tens of requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from replipoll import Client, LearnedPolicy, PollManager, PollPolicy
from replipoll.testing import DEFAULT_MODELS, FakeReplicate, ModelProfile, add_workload

from _common import BENCH

OFFICIAL = "fixed 0.5 s (official client)"
TODAY = "PollPolicy() (today's default)"
NO_LOGS = "LearnedPolicy(use_logs=False)"
LEARNED = "LearnedPolicy() (the default)"

#: The schedules compared, in the order shown; each made fresh per round.
POLICIES: dict[str, Callable[[], PollPolicy | LearnedPolicy]] = {
    OFFICIAL: lambda: PollPolicy.fixed(0.5),
    TODAY: PollPolicy,
    NO_LOGS: lambda: LearnedPolicy(use_logs=False),
    LEARNED: LearnedPolicy,
}

#: Targets of issue 14, on the mixed workload.
TODAY_RATIO_TARGET = 0.45  # LearnedPolicy() requests / PollPolicy() requests
OFFICIAL_RATIO_TARGET = 0.12  # LearnedPolicy() requests / fixed 0.5 s requests
DELAY_TARGET = 1.0  # mean delay, seconds, against the official client

#: Share of the arrivals (the first ones) not measured.
WARMUP = 0.2


@attrs.frozen
class Size:
    """How big a round is: ``n`` predictions arriving over ``over`` seconds.

    ``scale`` multiplies every time of the workload (run, queue and cold
    start times): below 1 only for the quick run, whose figures are rough.
    """

    n: int
    over: float
    scale: float = 1.0
    video: bool = True

    def models(self) -> tuple[ModelProfile, ...]:
        """The workload's models, their run times scaled."""
        return tuple(
            attrs.evolve(m, median=m.median * self.scale)
            for m in DEFAULT_MODELS
            if self.video or "video" not in m.model
        )


FULL = Size(n=600, over=300.0)
QUICK = Size(n=100, over=10.0, scale=0.05)


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _note(resolved: dict[str, float], pid: str, loop: Any, _: object) -> None:
    """A future's done callback: when ``pid`` resolved (``loop.time()``)."""
    resolved.setdefault(pid, loop.time())


async def run_round(seed: int, size: Size) -> dict[str, Any]:
    """One round: the four schedules at once on the same seeded workload."""
    loop = asyncio.get_running_loop()
    start = time.monotonic() + 1.0  # the first creation: after the setup
    scale = size.scale
    servers, workloads = {}, {}
    for name in POLICIES:
        server = FakeReplicate(seed=seed, request_log_size=0)
        workloads[name] = add_workload(
            server,
            size.n,
            seed=seed,
            models=size.models(),
            cold_start=0.2,
            cold_start_time=(20.0 * scale, 90.0 * scale),
            queue_time=(0.1 * scale, 1.0 * scale),
            start=start,
            over=size.over,
        )
        servers[name] = server
    ids = workloads[OFFICIAL]
    timelines = {pid: servers[OFFICIAL].timeline(pid) for pid in ids}
    # The same seed gives the same predictions: ids and timelines alike.
    for name in POLICIES:
        assert workloads[name] == ids, "the workloads differ"
        assert all(servers[name].timeline(pid) == timelines[pid] for pid in ids)
    models = {pid: servers[OFFICIAL].prediction_state(pid)["model"] for pid in ids}
    # A cold start: at least the shortest cold start's time in the queue.
    cold = {
        pid: (t := timelines[pid]).started is not None
        and t.started - t.created >= 20.0 * scale
        for pid in ids
    }
    order = sorted(ids, key=lambda pid: timelines[pid].created)
    measured = order[math.ceil(WARMUP * len(order)) :]

    resolved: dict[str, dict[str, float]] = {name: {} for name in POLICIES}
    managers: dict[str, PollManager] = {}
    clients: list[Client] = []
    try:
        for name, make in POLICIES.items():
            server = servers[name]
            await server.start()
            client = Client(base_url=server.base_url(), api_key=server.api_key)
            clients.append(client)
            managers[name] = PollManager(
                client,
                policy=make(),
                sweep=False,
                # The official client polls on its own clock, without a grid.
                coalesce=0.0 if name == OFFICIAL else 0.2,
                timeout=None,
            )
        began = time.monotonic()
        futures: dict[str, list[asyncio.Future[Any]]] = {n: [] for n in POLICIES}
        for pid in order:
            wait = timelines[pid].created - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            for name, manager in managers.items():
                future = manager.submit(pid)
                future.add_done_callback(
                    functools.partial(_note, resolved[name], pid, loop)
                )
                futures[name].append(future)
        await asyncio.gather(*(f for fs in futures.values() for f in fs))
        wall = time.monotonic() - began
        stats = {name: m.stats for name, m in managers.items()}
    finally:
        for manager in managers.values():
            await manager.close()
        for client in clients:
            await client.close()
        for server in servers.values():
            await server.close()

    figures = {}
    for name in POLICIES:
        server = servers[name]
        assert server.stats.list_requests == 0  # per-id polling only
        per_id = server.stats.requests_per_id
        requests = [per_id[pid] for pid in measured]
        delays = [resolved[name][pid] - timelines[pid].completed for pid in measured]
        by_model: dict[str, dict[str, Any]] = {}
        for model in sorted({models[pid] for pid in measured}):
            mine = [i for i, pid in enumerate(measured) if models[pid] == model]
            by_model[model] = {
                "predictions": len(mine),
                "requests_per_prediction": round(
                    statistics.fmean(requests[i] for i in mine), 3
                ),
                "mean_delay": round(statistics.fmean(delays[i] for i in mine), 3),
            }
        by_start: dict[str, dict[str, Any]] = {}
        for label, group in (("warm", False), ("cold start", True)):
            mine = [i for i, pid in enumerate(measured) if cold[pid] is group]
            if mine:
                by_start[label] = {
                    "predictions": len(mine),
                    "requests_per_prediction": round(
                        statistics.fmean(requests[i] for i in mine), 3
                    ),
                    "mean_delay": round(statistics.fmean(delays[i] for i in mine), 3),
                }
        ordered = sorted(delays)
        figures[name] = {
            "requests_per_prediction": round(statistics.fmean(requests), 3),
            "mean_delay": round(statistics.fmean(delays), 3),
            "p95_delay": round(_quantile(ordered, 0.95), 3),
            "max_delay": round(ordered[-1], 3),
            "all_requests": stats[name].requests,
            "by_model": by_model,
            "by_start": by_start,
        }
    return {
        "seed": seed,
        "predictions": len(ids),
        "measured": len(measured),
        "cold_starts": round(sum(cold.values()) / len(ids), 3),
        "identical_workloads": True,
        "wall_seconds": round(wall, 1),
        "policies": figures,
    }


def ratios(round_: dict[str, Any]) -> dict[str, float]:
    """The target's ratios of one round: requests of the learned schedules."""
    p = round_["policies"]
    learned = p[LEARNED]["requests_per_prediction"]
    return {
        "learned_over_today": learned / p[TODAY]["requests_per_prediction"],
        "learned_over_official": learned / p[OFFICIAL]["requests_per_prediction"],
        "no_logs_over_today": p[NO_LOGS]["requests_per_prediction"]
        / p[TODAY]["requests_per_prediction"],
        "no_logs_over_official": p[NO_LOGS]["requests_per_prediction"]
        / p[OFFICIAL]["requests_per_prediction"],
    }


def _summary(values: list[float]) -> dict[str, Any]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "rounds": [round(v, 3) for v in values],
    }


def summarize(rounds: list[dict[str, Any]], size: Size) -> dict[str, Any]:
    """Medians and spreads over the rounds, the targets, the median round."""
    keys = ("requests_per_prediction", "mean_delay", "p95_delay")
    policies = {
        name: {k: _summary([r["policies"][name][k] for r in rounds]) for k in keys}
        for name in POLICIES
    }
    per_round = [ratios(r) for r in rounds]
    ratio = {k: _summary([x[k] for x in per_round]) for k in per_round[0]}
    # The median round: the one whose learned/today ratio is the median.
    by_ratio = sorted(
        range(len(rounds)), key=lambda i: per_round[i]["learned_over_today"]
    )
    middle = rounds[by_ratio[(len(rounds) - 1) // 2]]
    learned, today = policies[LEARNED], policies[TODAY]
    official = policies[OFFICIAL]
    x_today = ratio["learned_over_today"]["median"]
    x_official = ratio["learned_over_official"]["median"]
    targets = [
        {
            "target": f"LearnedPolicy() <= {TODAY_RATIO_TARGET:g}x the requests of "
            "PollPolicy() at no worse mean delay",
            "requests_ratio": x_today,
            "ratio_limit": TODAY_RATIO_TARGET,
            "delay_limit": today["mean_delay"]["median"],
            "mean_delay": learned["mean_delay"]["median"],
            "reference_delay": today["mean_delay"]["median"],
            "met": x_today <= TODAY_RATIO_TARGET
            and learned["mean_delay"]["median"] <= today["mean_delay"]["median"],
        },
        {
            "target": f"LearnedPolicy() <= {OFFICIAL_RATIO_TARGET:g}x the requests of "
            f"fixed 0.5 s at <= {DELAY_TARGET:g} s mean delay",
            "requests_ratio": x_official,
            "ratio_limit": OFFICIAL_RATIO_TARGET,
            "delay_limit": DELAY_TARGET,
            "mean_delay": learned["mean_delay"]["median"],
            "reference_delay": official["mean_delay"]["median"],
            "met": x_official <= OFFICIAL_RATIO_TARGET
            and learned["mean_delay"]["median"] <= DELAY_TARGET,
        },
    ]
    return {
        "size": attrs.asdict(size),
        "warmup": WARMUP,
        "models": [attrs.asdict(m) for m in size.models()],
        "policies": policies,
        "ratios": ratio,
        "targets": targets,
        "median_round": middle["seed"],
        "rounds": rounds,
    }


def _child(seed: int, size: Size) -> None:
    """Run one round; print its figures as one JSON line."""
    print(json.dumps(asyncio.run(run_round(seed, size))), flush=True)


def run(*, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """``rounds`` rounds (seeds 1, 2, ...) side by side, each in a child process."""
    size = QUICK if quick else FULL
    count = rounds if rounds is not None else (2 if quick else 3)
    began = time.perf_counter()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                str(BENCH / "bench_learned.py"),
                "--child",
                str(seed),
                "--size",
                json.dumps(attrs.asdict(size)),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for seed in range(1, count + 1)
    ]
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise RuntimeError(f"a round failed (exit {child.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    summary = summarize(results, size)
    summary["wall_seconds"] = round(time.perf_counter() - began, 1)
    return summary


def _span(s: dict[str, Any], unit: str = "", digits: int = 2) -> str:
    text = f"{s['median']:.{digits}f}{unit}"
    if len(s["rounds"]) > 1:
        text += f" ({s['min']:.{digits}f} to {s['max']:.{digits}f})"
    return text


def report(result: dict[str, Any]) -> None:
    """Print the figures and the targets."""
    size = result["size"]
    print(
        f"Learned schedule: {size['n']} predictions arriving over {size['over']:g} s"
        f" (times x{size['scale']:g}), first {result['warmup']:.0%} not measured, "
        f"{len(result['rounds'])} rounds, {result['wall_seconds']:.0f} s"
    )
    for name, f in result["policies"].items():
        print(
            f"  {name:<34} {_span(f['requests_per_prediction'])} req/prediction, "
            f"delay mean {_span(f['mean_delay'], ' s')}, "
            f"p95 {_span(f['p95_delay'], ' s')}"
        )
    for key, s in result["ratios"].items():
        print(f"  {key:<24} {_span(s, 'x', 3)}")
    middle = next(r for r in result["rounds"] if r["seed"] == result["median_round"])
    print(f"  per model, median round (seed {middle['seed']}):")
    for name, f in middle["policies"].items():
        cells = ", ".join(
            f"{model.split('/')[-1]} {m['requests_per_prediction']:.1f} req "
            f"{m['mean_delay']:.2f} s"
            for model, m in f["by_model"].items()
        )
        print(f"    {name:<32} {cells}")
    print("  warm and cold starts, median round:")
    for name, f in middle["policies"].items():
        cells = ", ".join(
            f"{label} {m['requests_per_prediction']:.1f} req {m['mean_delay']:.2f} s"
            for label, m in f.get("by_start", {}).items()
        )
        print(f"    {name:<32} {cells}")
    for t in result["targets"]:
        verdict = "met" if t["met"] else "MISSED"
        print(
            f"  target: {t['target']}: {t['requests_ratio']:.3f}x at "
            f"{t['mean_delay']:.2f} s mean delay (reference {t['reference_delay']:.2f}"
            f" s): {verdict}"
        )


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 60 s)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, Size(**json.loads(args.size)))
        return
    report(run(quick=args.quick, rounds=args.rounds))


if __name__ == "__main__":
    main()
