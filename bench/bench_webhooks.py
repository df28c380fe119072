"""Create and push: requests per prediction and detection delay with webhooks.

    python bench/bench_webhooks.py [--quick] [--rounds 3]

One workload, four ways of learning that each prediction ended. A round
creates ``n`` predictions at once through :meth:`PollManager.run_many`
against a :class:`~replipoll.testing.FakeReplicate` (seeded run times of 1
to 6 s, queue times up to 0.5 s), and waits for all of them:

* **webhooks**: ``webhook=`` a loopback aiohttp app serving
  :func:`replipoll.webhook_handler`; the fake server sends each
  prediction's signed ``completed`` webhook, the handler verifies it and
  pushes the record to the manager. Polls are only the safety net (the
  manager's defaults: ``webhook_grace=10``, ``safety_interval=30``).
* **webhooks, 10% lost**: the same, with ``webhook_loss=0.1``: the lost
  ones must be found by the safety polls, within the stated bound.
* **polling**: no webhook, the manager's default schedule
  (:class:`~replipoll.LearnedPolicy`, sweeps where they measure cheaper).
* **fixed 0.5 s**: no webhook, polled every 0.5 s per id (the official
  client's schedule: ``PollPolicy.fixed(0.5)``, ``sweep=False``).

For each prediction: the requests the server received for it (its create
and every ``GET`` of it; list pages are shared, and counted per prediction
as pages / n) and the detection delay, from its completion on the server
(:meth:`FakeReplicate.timeline`, ``time.monotonic``) to its result in the
``run_many`` loop (``loop.time()``, the same clock). With webhooks, also the
webhook latency: from completion to the delivery reaching the handler, so
that the delay replipoll adds is the difference.

Each scenario of a round runs in a child process of its own, one after
another (a round of 1,000 predictions, 4 scenarios: about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from typing import Any

from aiohttp import web
from replipoll import (
    Client,
    PollManager,
    PollPolicy,
    Prediction,
    webhook_handler,
)
from replipoll.testing import FakeReplicate

from _common import BENCH, span

WEBHOOKS = "webhooks"
LOSSY = "webhooks, 10% lost"
POLLING = "polling (the default schedule)"
FIXED = "fixed 0.5 s (official client)"
SCENARIOS = (WEBHOOKS, LOSSY, POLLING, FIXED)

#: Targets of issue 16, with webhooks on.
REQUESTS_TARGET = 1.1  # requests per prediction
OVERHEAD_TARGET = 0.050  # seconds of mean delay past the webhook's latency
#: The safety net's bound for a lost webhook (the manager's defaults): found
#: at most safety_interval after it ended, or webhook_grace after its
#: expected finish, whichever is later; plus the coalescing grid (0.2 s).
SAFETY_INTERVAL = 30.0
WEBHOOK_GRACE = 10.0


def inputs(n: int, seed: int) -> list[dict[str, Any]]:
    """The workload: ``n`` inputs scripting the fake's run and queue times."""
    rng = random.Random(seed)
    return [
        {
            "prompt": f"input {i}",
            "replipoll_queue": round(rng.uniform(0.0, 0.5), 3),
            "replipoll_duration": round(rng.uniform(1.0, 6.0), 3),
        }
        for i in range(n)
    ]


class Receiver:
    """Hands webhooks to the manager, noting when each arrived."""

    def __init__(self) -> None:
        self.manager: PollManager | None = None
        self.arrived: dict[str, float] = {}

    def push(self, prediction: Prediction) -> object:
        if prediction.is_terminal:
            self.arrived.setdefault(prediction.id, asyncio.get_running_loop().time())
        assert self.manager is not None
        return self.manager.push(prediction)


async def scenario(name: str, n: int, seed: int) -> dict[str, Any]:
    """One scenario of one round; the figures per prediction."""
    lossy = name == LOSSY
    hooks = name in (WEBHOOKS, LOSSY)
    loop = asyncio.get_running_loop()
    async with FakeReplicate(
        seed=seed, request_log_size=0, webhook_loss=0.1 if lossy else 0.0
    ) as server:
        receiver = Receiver()
        app = web.Application()
        app.router.add_post("/hooks", webhook_handler(receiver, server.webhook_secret))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        options: dict[str, Any] = {}
        if hooks:
            options["webhook"] = f"http://127.0.0.1:{port}/hooks"
        if name == FIXED:
            options.update(policy=PollPolicy.fixed(0.5), sweep=False, coalesce=0)
        ended: dict[str, float] = {}
        began = time.perf_counter()
        try:
            async with (
                Client(base_url=server.base_url(), api_key=server.api_key) as client,
                PollManager(
                    client,
                    max_concurrency=64,
                    safety_interval=SAFETY_INTERVAL,
                    webhook_grace=WEBHOOK_GRACE,
                    **options,
                ) as manager,
            ):
                receiver.manager = manager
                async for result in manager.run_many(
                    inputs(n, seed),
                    "acme/bench",
                    webhook_events_filter=["completed"] if hooks else None,
                ):
                    if result.error is not None or result.id is None:
                        raise RuntimeError(f"input {result.index}: {result.error}")
                    ended[result.id] = loop.time()
                stats = manager.stats
        finally:
            await runner.cleanup()
        wall = time.perf_counter() - began
        per_id = server.stats.requests_per_id
        pages = server.stats.list_requests
        delays, latencies, lost_delays = [], [], []
        requests = []
        for pid, seen in ended.items():
            completed = server.timeline(pid).completed
            assert completed is not None
            delays.append(seen - completed)
            requests.append(1 + per_id[pid] + pages / n)
            if hooks:
                if pid in receiver.arrived:
                    latencies.append(receiver.arrived[pid] - completed)
                else:
                    lost_delays.append(seen - completed)
    figures: dict[str, Any] = {
        "n": len(ended),
        "requests_per_prediction": statistics.mean(requests),
        "mean_delay": statistics.mean(delays),
        "p95_delay": statistics.quantiles(delays, n=20)[-1],
        "max_delay": max(delays),
        "wall_seconds": wall,
        "sweeps": stats.sweeps,
        "pushed": stats.pushed,
    }
    if hooks:
        figures["webhooks_delivered"] = len(latencies)
        figures["webhooks_lost"] = server.stats.webhooks_lost
        figures["mean_webhook_latency"] = statistics.mean(latencies)
        pushed_delays = [
            ended[pid] - server.timeline(pid).completed  # type: ignore[operator]
            for pid in receiver.arrived
        ]
        figures["mean_delay_pushed"] = statistics.mean(pushed_delays)
        figures["overhead"] = (
            figures["mean_delay_pushed"] - figures["mean_webhook_latency"]
        )
        figures["max_lost_delay"] = max(lost_delays) if lost_delays else None
        figures["lost_found"] = len(lost_delays)
    return figures


def _child(name: str, n: int, seed: int) -> None:
    print(json.dumps(asyncio.run(scenario(name, n, seed))))


def run(*, quick: bool = False, rounds: int | None = None) -> dict[str, Any]:
    """Every scenario of ``rounds`` rounds, each in a child process, in turn."""
    n = 200 if quick else 1000
    count = rounds if rounds is not None else (1 if quick else 3)
    began = time.perf_counter()
    by_scenario: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
    for seed in range(1, count + 1):
        for name in SCENARIOS:
            child = subprocess.run(
                [
                    sys.executable,
                    str(BENCH / "bench_webhooks.py"),
                    "--child",
                    name,
                    "--n",
                    str(n),
                    "--seed",
                    str(seed),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if child.returncode:
                sys.stderr.write(child.stderr[-3000:])
                raise RuntimeError(f"{name}, round {seed} failed")
            by_scenario[name].append(json.loads(child.stdout.strip().splitlines()[-1]))
    return {
        "n": n,
        "rounds": count,
        "scenarios": by_scenario,
        "targets": {
            "requests_per_prediction": REQUESTS_TARGET,
            "overhead": OVERHEAD_TARGET,
            "safety_interval": SAFETY_INTERVAL,
            "webhook_grace": WEBHOOK_GRACE,
        },
        "wall_seconds": round(time.perf_counter() - began, 1),
    }


def figure(result: dict[str, Any], name: str, key: str) -> list[float]:
    """One figure of one scenario, every round."""
    return [r[key] for r in result["scenarios"][name]]


def report(result: dict[str, Any]) -> None:
    """Print the figures and the targets."""
    print(
        f"Create and push: {result['n']} predictions created at once, "
        f"{result['rounds']} rounds, {result['wall_seconds']:.0f} s"
    )
    for name in SCENARIOS:
        print(
            f"  {name:<32} {span(figure(result, name, 'requests_per_prediction'))}"
            f" req/prediction, delay mean "
            f"{span(figure(result, name, 'mean_delay'), ' s', 3)}, "
            f"p95 {span(figure(result, name, 'p95_delay'), ' s', 3)}, "
            f"max {span(figure(result, name, 'max_delay'), ' s', 2)}"
        )
    latency = figure(result, WEBHOOKS, "mean_webhook_latency")
    overhead = figure(result, WEBHOOKS, "overhead")
    requests = figure(result, WEBHOOKS, "requests_per_prediction")
    print(
        f"  with webhooks: latency {span(latency, ' s', 3)}, replipoll adds "
        f"{span([o * 1000 for o in overhead], ' ms', 1)} "
        f"(target <= {OVERHEAD_TARGET * 1000:.0f} ms); "
        f"{span(requests, '', 3)} req/prediction (target <= {REQUESTS_TARGET})"
    )
    lost = figure(result, LOSSY, "lost_found")
    worst = [d for d in figure(result, LOSSY, "max_lost_delay") if d is not None]
    resolved = all(r["n"] == result["n"] for r in result["scenarios"][LOSSY])
    print(
        f"  10% lost: all resolved: {resolved}; {span(lost, '', 0)} found by "
        f"safety polls, worst delay {span(worst, ' s', 1)} (bound: "
        f"{SAFETY_INTERVAL:g} s after the end, or {WEBHOOK_GRACE:g} s after "
        "the expected finish)"
    )
    fixed = figure(result, FIXED, "requests_per_prediction")
    polling = figure(result, POLLING, "requests_per_prediction")
    print(
        f"  requests, webhooks / polling: "
        f"{span([a / b for a, b in zip(requests, polling, strict=True)], 'x', 3)}, "
        f"webhooks / fixed 0.5 s: "
        f"{span([a / b for a, b in zip(requests, fixed, strict=True)], 'x', 3)}"
    )


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.n, args.seed)
        return
    report(run(quick=args.quick, rounds=args.rounds))


if __name__ == "__main__":
    main()
