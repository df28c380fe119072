"""Schedule efficiency: requests per prediction, and how late each end is noticed.

    python bench/bench_schedule.py [--quick] [--no-real]

The main figure is a simulation: :class:`~replipoll.PollPolicy` is pure, so
the polls one prediction gets can be replayed exactly on a virtual clock, for
thousands of predictions, in a fraction of a second. The simulation does what
the :class:`~replipoll.PollManager` does: poll at once on submission, then
``next_delay(age)`` after each answer that is not terminal, moved onto the
manager's ``coalesce`` grid (each prediction at a random phase of it; the
official client's schedule is simulated without one). Answers are taken as
instant (add your round-trip time to every delay). The delay of a
prediction is the time from its completion on the server to the answer that
shows it terminal.

The real run confirms it against the fake server (another process): it
creates predictions with the same durations scaled down by ``scale`` and
polls them to the end with a PollManager per schedule (the schedule scaled
likewise: its intervals times ``scale``, ``age_factor`` unchanged, which
leaves requests per prediction the same and multiplies every delay by
``scale``), then scales the delays back up.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from replipoll import PollManager, PollPolicy
from replipoll._schedule import on_grid

#: The official client's schedule: every 0.5 s (``REPLICATE_POLL_INTERVAL``).
OFFICIAL = PollPolicy.fixed(0.5)
#: replipoll's first defaults, kept to show what changed: they spend
#: half the official client's requests, missing the target of a third.
PREVIOUS = PollPolicy(min_interval=0.5, age_factor=0.15, max_interval=2.0)
#: The defaults this benchmark proposed (see ``search``), replipoll's defaults
#: since: every 1.5 s for the first 15 s, then 10% of the age, up to every 3 s
#: from 30 s on. Shown apart only while they differ from ``PollPolicy()``.
PROPOSED = PollPolicy(min_interval=1.5, age_factor=0.1, max_interval=3.0)
#: The PollManager's default grid for due times (seconds).
COALESCE: float = inspect.signature(PollManager).parameters["coalesce"].default


@dataclass(frozen=True)
class Workload:
    """Seeded prediction durations (seconds from submission to completion)."""

    name: str
    median: float = 8.0
    sigma: float = 1.2
    cap: float = 1800.0  # Replicate stops a prediction after 30 minutes

    def durations(self, n: int, seed: int = 0) -> list[float]:
        """``n`` lognormal durations with this median and sigma, capped."""
        rng = random.Random(seed)
        mu = math.log(self.median)
        return [min(self.cap, rng.lognormvariate(mu, self.sigma)) for _ in range(n)]


#: The workload the targets are stated on: median 8 s, a tail of minutes.
MAIN = Workload("lognormal, median 8 s, sigma 1.2")
#: Other shapes, to show the defaults are not fitted to one workload.
OTHERS = (
    Workload("lognormal, median 8 s, sigma 1.0", 8.0, 1.0),
    Workload("fast: median 3 s, sigma 0.8", 3.0, 0.8),
    Workload("slow: median 60 s, sigma 1.0", 60.0, 1.0),
)


@dataclass(frozen=True)
class Figures:
    """How one schedule did on one set of durations."""

    schedule: str
    predictions: int
    requests_per_prediction: float
    mean_delay: float
    p50_delay: float
    p95_delay: float
    max_delay: float


def summarize(schedule: str, requests: Sequence[int], delays: list[float]) -> Figures:
    """Figures from per-prediction request counts and detection delays."""
    delays = sorted(delays)
    return Figures(
        schedule=schedule,
        predictions=len(delays),
        requests_per_prediction=statistics.fmean(requests),
        mean_delay=statistics.fmean(delays),
        p50_delay=_quantile(delays, 0.50),
        p95_delay=_quantile(delays, 0.95),
        max_delay=delays[-1],
    )


def _quantile(ordered: Sequence[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def poll(
    policy: PollPolicy,
    duration: float,
    rng: random.Random,
    rtt: float = 0.0,
    coalesce: float = 0.0,
) -> tuple[int, float]:
    """Requests and delay for a prediction that completes ``duration`` s after submit.

    As the PollManager does: the first request goes at submission; each
    answer that is not terminal schedules the next request
    ``next_delay(age)`` later, ``age`` counted at the answer, moved onto
    the ``coalesce`` grid (:func:`replipoll._schedule.on_grid`). A request
    sent at ``t`` sees the status at ``t + rtt / 2`` and is answered at
    ``t + rtt``.
    """
    # Where submission falls on the event loop's grid.
    phase = rng.uniform(0.0, coalesce) if coalesce else 0.0
    sent, requests = 0.0, 1
    while sent + rtt / 2 < duration:
        answered = sent + rtt
        sent = answered + policy.next_delay(answered, rng)
        if coalesce:
            earliest = answered + policy.shortest_delay(answered) + phase
            sent = (
                on_grid(sent + phase, answered + phase, coalesce, earliest=earliest)
                - phase
            )
        requests += 1
    return requests, sent + rtt - duration


def simulate(
    policy: PollPolicy,
    durations: Sequence[float],
    *,
    name: str = "",
    seed: int = 1,
    rtt: float = 0.0,
    coalesce: float = COALESCE,
) -> Figures:
    """Replay ``policy`` over ``durations`` on a virtual clock (jitter seeded).

    ``coalesce`` is the PollManager's grid; 0 for a poller without one.
    """
    rng = random.Random(seed)
    requests, delays = [], []
    for duration in durations:
        count, delay = poll(policy, duration, rng, rtt, coalesce)
        requests.append(count)
        delays.append(delay)
    return summarize(name or repr(policy), requests, delays)


def scaled(policy: PollPolicy, scale: float) -> PollPolicy:
    """``policy`` on a clock ``scale`` times as fast: same polls per prediction."""
    return PollPolicy(
        min_interval=policy.min_interval * scale,
        age_factor=policy.age_factor,
        max_interval=policy.max_interval * scale,
        jitter=policy.jitter,
    )


def schedules() -> dict[str, PollPolicy]:
    """The schedules compared: the official client's, a fixed 2 s, replipoll's
    default, and (while they differ from it) the previous and proposed ones."""
    named = {
        OFFICIAL_NAME: OFFICIAL,
        REFERENCE_NAME: PollPolicy.fixed(2.0),
        f"replipoll default {_params(PollPolicy())}": PollPolicy(),
    }
    if PollPolicy() != PREVIOUS:
        named[f"previous default {_params(PREVIOUS)}"] = PREVIOUS
    if PollPolicy() != PROPOSED:
        named[f"proposed default {_params(PROPOSED)}"] = PROPOSED
    return named


OFFICIAL_NAME = "fixed 0.5 s (official client)"


def grid(name: str) -> float:
    """The due-time grid a named schedule runs on: none for the official client."""
    return 0.0 if name == OFFICIAL_NAME else COALESCE


#: A slower fixed interval, to show what the adaptive shape adds to one.
REFERENCE_NAME = "fixed 2 s (for comparison)"


def _params(policy: PollPolicy) -> str:
    return (
        f"({policy.min_interval:g} s, x{policy.age_factor:g}, "
        f"{policy.max_interval:g} s)"
    )


def frontier(durations: Sequence[float]) -> dict[str, list[dict[str, float]]]:
    """Requests vs mean delay as each kind of schedule is made faster or slower.

    Fixed intervals from 0.25 s to 4 s; the adaptive shapes (the default's,
    and the previous and proposed ones' while they differ from it) with both
    intervals scaled, age_factor kept.
    """
    curves: dict[str, list[dict[str, float]]] = {"fixed interval": []}
    for interval in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0):
        figures = simulate(PollPolicy.fixed(interval), durations, coalesce=0)
        curves["fixed interval"].append(_point(interval, figures))
    shapes = {f"shape of the default {_params(PollPolicy())}": PollPolicy()}
    if PollPolicy() != PREVIOUS:
        shapes[f"shape of the previous default {_params(PREVIOUS)}"] = PREVIOUS
    if PollPolicy() != PROPOSED:
        shapes[f"shape of the proposed {_params(PROPOSED)}"] = PROPOSED
    for label, shape in shapes.items():
        curves[label] = [
            _point(factor, simulate(scaled(shape, factor), durations))
            for factor in (0.33, 0.5, 0.67, 0.83, 1.0, 1.33, 1.67, 2.0)
        ]
    return curves


def search(
    durations: Sequence[float], *, max_mean_delay: float = 0.95
) -> list[dict[str, float]]:
    """Grid-search PollPolicy's parameters (jitter 0.1) on ``durations``.

    Returns the settings whose mean delay stays under ``max_mean_delay``,
    fewest requests first: the evidence behind the defaults.
    """
    base = simulate(OFFICIAL, durations, coalesce=0).requests_per_prediction
    found = []
    for low in (0.5, 1.0, 1.25, 1.5, 1.75, 2.0):
        for factor in (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0):
            for high in (2.0, 2.5, 3.0, 4.0, 5.0, 10.0):
                if high < low:
                    continue
                policy = PollPolicy(low, factor, high)
                figures = simulate(policy, durations)
                if figures.mean_delay <= max_mean_delay:
                    found.append(
                        {
                            "min_interval": low,
                            "age_factor": factor,
                            "max_interval": high,
                            "requests_ratio": round(
                                figures.requests_per_prediction / base, 3
                            ),
                            "mean_delay": round(figures.mean_delay, 3),
                            "p95_delay": round(figures.p95_delay, 3),
                        }
                    )
    found.sort(key=lambda row: (row["requests_ratio"], row["mean_delay"]))
    return found


def _point(parameter: float, figures: Figures) -> dict[str, float]:
    return {
        "parameter": parameter,
        "requests_per_prediction": round(figures.requests_per_prediction, 3),
        "mean_delay": round(figures.mean_delay, 4),
    }


def run_simulation(*, quick: bool = False) -> dict[str, Any]:
    """The simulated figures: main workload, other workloads, the frontier."""
    n = 1_000 if quick else 20_000
    durations = MAIN.durations(n)
    named = schedules()
    main = {
        name: simulate(p, durations, name=name, coalesce=grid(name))
        for name, p in named.items()
    }
    base = main[OFFICIAL_NAME].requests_per_prediction
    others = {}
    for workload in OTHERS:
        durations_other = workload.durations(n)
        base_other = simulate(
            OFFICIAL, durations_other, coalesce=0
        ).requests_per_prediction
        others[workload.name] = {}
        for name, p in named.items():
            figures = simulate(p, durations_other, name=name, coalesce=grid(name))
            others[workload.name][name] = {
                **_round(asdict(figures)),
                "requests_ratio": round(
                    figures.requests_per_prediction / base_other, 3
                ),
            }
    single = {}
    for d in (1.0, 5.0, 60.0, 600.0):
        # "About d": spread over +-10%, so that a fixed interval's phase
        # does not decide the delay.
        around = [d * (0.9 + 0.2 * i / 199) for i in range(200)]
        single[f"about {d:g} s"] = {}
        for name, p in named.items():
            figures = simulate(p, around, coalesce=grid(name))
            single[f"about {d:g} s"][name] = {
                "requests": round(figures.requests_per_prediction),
                "delay": round(figures.mean_delay, 2),
            }
    found = [] if quick else search(durations[:5_000])
    return {
        "workload": asdict(MAIN),
        "predictions": n,
        "durations": {
            "mean": round(statistics.fmean(durations), 2),
            "p50": round(_quantile(sorted(durations), 0.5), 2),
            "p95": round(_quantile(sorted(durations), 0.95), 2),
            "max": round(max(durations), 1),
        },
        "schedules": {
            name: {
                **_round(asdict(f)),
                "requests_ratio": round(f.requests_per_prediction / base, 3),
            }
            for name, f in main.items()
        },
        "other_workloads": others,
        "single_predictions": single,
        "frontier": frontier(durations[: min(n, 5_000)]),
        "search": found[:12],
        "search_min_interval_0.5": [r for r in found if r["min_interval"] == 0.5][:3],
    }


def _round(data: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in data.items()}


def _note(resolved: dict[str, float], pid: str, _: object) -> None:
    """A future's done callback: note when ``pid`` resolved (wall clock)."""
    resolved.setdefault(pid, time.time())


class _RequestCounter:
    """Counts requests per URL and their seconds, through aiohttp's tracing."""

    def __init__(self) -> None:
        from collections import Counter

        self.counts: Counter[str] = Counter()
        self.seconds = 0.0

    def trace_config(self) -> Any:
        import aiohttp

        async def start(_: object, ctx: Any, params: Any) -> None:
            self.counts[str(params.url)] += 1
            ctx.start = time.perf_counter()

        async def end(_: object, ctx: Any, __: object) -> None:
            self.seconds += time.perf_counter() - ctx.start

        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(start)
        trace.on_request_end.append(end)
        trace.on_request_exception.append(end)
        return trace


async def _real(
    base_url: str, durations: Sequence[float], scale: float
) -> dict[str, dict[str, Any]]:
    """Create the predictions, poll them with each schedule at once; figures."""
    import aiohttp
    import replipoll

    from _common import API_KEY

    named = schedules()
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with aiohttp.ClientSession(headers=headers) as session:

        async def create(duration: float) -> str:
            body = {"version": "bench", "input": {"replipoll_duration": duration}}
            async with session.post(f"{base_url}/predictions", json=body) as answer:
                answer.raise_for_status()
                return str((await answer.json())["id"])

        async def run(
            name: str, policy: PollPolicy
        ) -> tuple[list[int], list[float], float]:
            counter = _RequestCounter()
            async with (
                aiohttp.ClientSession(
                    trace_configs=[counter.trace_config()]
                ) as polling,
                replipoll.Client(
                    base_url=base_url, api_key=API_KEY, session=polling
                ) as client,
                replipoll.PollManager(
                    client,
                    policy=scaled(policy, scale),
                    coalesce=grid(name) * scale,
                    sweep=False,
                ) as manager,
            ):
                resolved: dict[str, float] = {}
                futures = []
                for duration in durations:
                    # Submitted as soon as created: its duration counts from here.
                    pid = await create(duration * scale)
                    future = manager.submit(pid)
                    future.add_done_callback(functools.partial(_note, resolved, pid))
                    futures.append(future)
                records = await asyncio.gather(*futures)
                requests = [
                    counter.counts[f"{base_url}/predictions/{r.id}"] for r in records
                ]
                rtt = counter.seconds / sum(counter.counts.values())
            delays = []
            for record in records:
                assert record.completed_at is not None
                late = resolved[record.id] - record.completed_at.timestamp()
                delays.append(late / scale)
            return requests, delays, rtt / scale

        results = await asyncio.gather(*(run(n, p) for n, p in named.items()))
        stats: dict[str, dict[str, Any]] = {}
        for (name, policy), (requests, delays, rtt) in zip(
            named.items(), results, strict=True
        ):
            # The same durations simulated with the round trip measured here.
            simulated = simulate(
                policy, durations, name=name, rtt=rtt, coalesce=grid(name)
            )
            stats[name] = {
                "real": _round(asdict(summarize(name, requests, delays))),
                "simulated": _round(asdict(simulated)),
                "round_trip": round(rtt, 4),
            }
        return stats


def run_real(*, quick: bool = False) -> dict[str, Any]:
    """Poll scaled-down predictions on the fake server with each schedule."""
    from _common import fake_server

    n, scale, cap = (60, 0.05, 100.0) if quick else (200, 0.1, 300.0)
    # Capped so that the run ends within 30 s (5 s when quick).
    durations = [min(d, cap) for d in MAIN.durations(n, seed=7)]
    with fake_server([]) as server:
        started = time.perf_counter()
        stats = asyncio.run(_real(server.base_url, durations, scale))
    return {
        "predictions": n,
        "scale": scale,
        "cap": cap,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "schedules": stats,
    }


def run(*, quick: bool = False, real: bool = True) -> dict[str, Any]:
    """The simulation, and (unless ``real=False``) the real run."""
    result = {"simulation": run_simulation(quick=quick)}
    if real:
        result["real"] = run_real(quick=quick)
    return result


def report(result: dict[str, Any]) -> None:
    """Print the figures."""
    sim = result["simulation"]
    print(
        f"Schedule simulation: {sim['predictions']} predictions, "
        f"{sim['workload']['median']:g} s median, sigma {sim['workload']['sigma']:g}"
        f" (mean {sim['durations']['mean']} s, p95 {sim['durations']['p95']} s)"
    )
    for name, f in sim["schedules"].items():
        print(
            f"  {name:<50} {f['requests_per_prediction']:7.2f} req/prediction "
            f"({f['requests_ratio']:.3f}x)  delay mean {f['mean_delay']:.2f} s, "
            f"p95 {f['p95_delay']:.2f} s"
        )
    for workload, by_name in sim["other_workloads"].items():
        print(f"  {workload}:")
        for name, f in by_name.items():
            print(
                f"    {name:<48} {f['requests_ratio']:.3f}x requests, "
                f"delay mean {f['mean_delay']:.2f} s"
            )
    if "real" in result:
        real = result["real"]
        print(
            f"Real run: {real['predictions']} predictions at scale {real['scale']}, "
            f"{real['wall_seconds']} s"
        )
        for name, pair in real["schedules"].items():
            r, s = pair["real"], pair["simulated"]
            print(
                f"  {name:<50} real {r['requests_per_prediction']:.2f} req, "
                f"mean {r['mean_delay']:.2f} s, p95 {r['p95_delay']:.2f} s | "
                f"simulated {s['requests_per_prediction']:.2f} req, "
                f"mean {s['mean_delay']:.2f} s"
            )


def main() -> None:
    """Parse arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run")
    parser.add_argument("--no-real", action="store_true", help="simulation only")
    args = parser.parse_args()
    report(run(quick=args.quick, real=not args.no_real))


if __name__ == "__main__":
    main()
