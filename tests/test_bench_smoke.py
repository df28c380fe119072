"""The benchmarks in bench/ cannot rot: their pure parts run here, quickly.

The schedule simulation's quick variant runs end to end and its page section
is rendered; the server's rate limiter is checked against GCRA by hand. The
measuring scripts themselves (fake server in another process, CPU timing)
run with ``python bench/run_all.py --quick``.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from replipoll import PollPolicy

BENCH = Path(__file__).resolve().parent.parent / "bench"

Loader = Callable[[str], ModuleType]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Loader:
    """Import a module of bench/ the way its scripts do (bench/ on sys.path)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def test_simulated_polls_match_the_managers_schedule(bench: Loader) -> None:
    schedule = bench("bench_schedule")
    fixed = PollPolicy.fixed(0.5)
    # Polls at 0, 0.5, 1.0 and 1.5 s; the one at 1.5 s sees the end at 1.2 s.
    requests, delay = schedule.poll(fixed, 1.2, random.Random(0))
    assert requests == 4
    assert delay == pytest.approx(0.3)
    # With a 0.1 s round trip: sent at 0, 0.6, 1.2; the last sees it at 1.25.
    requests, delay = schedule.poll(fixed, 1.2, random.Random(0), rtt=0.1)
    assert requests == 3
    assert delay == pytest.approx(0.1)
    # Done before the first answer: one request.
    assert schedule.poll(fixed, 0.0, random.Random(0))[0] == 1
    # On a 0.2 s grid each poll of a fixed schedule goes up to 0.2 s later,
    # never earlier: never more requests, the end seen within one interval
    # plus the grid.
    rng = random.Random(0)
    every_second = PollPolicy.fixed(1.0)
    runs = [schedule.poll(every_second, 2.4, rng, coalesce=0.2) for _ in range(200)]
    assert all(count <= 4 for count, _ in runs)
    assert all(0 <= delay < 1.0 + 0.2 for _, delay in runs)
    assert len({round(delay, 6) for _, delay in runs}) > 1  # the grid moved polls
    # A jittery schedule goes to the nearest point: on average no later.
    jittery = PollPolicy(min_interval=1.0, max_interval=1.0, jitter=0.2)
    durations = [random.Random(n).uniform(1.0, 20.0) for n in range(2000)]
    plain = sum(
        schedule.poll(jittery, d, random.Random(n))[1] for n, d in enumerate(durations)
    )
    gridded = sum(
        schedule.poll(jittery, d, random.Random(n), coalesce=0.2)[1]
        for n, d in enumerate(durations)
    )
    assert gridded / plain == pytest.approx(1.0, abs=0.05)


def test_quick_schedule_simulation_runs_and_renders(bench: Loader) -> None:
    schedule, report, common = (
        bench("bench_schedule"),
        bench("report"),
        bench("_common"),
    )
    sim = schedule.run_simulation(quick=True)
    figures = sim["schedules"]
    official = figures[schedule.OFFICIAL_NAME]
    assert official["requests_ratio"] == 1.0
    assert 0.2 < official["mean_delay"] < 0.3  # half of the 0.5 s interval
    default = next(f for name, f in figures.items() if "default" in name)
    assert default["requests_per_prediction"] < official["requests_per_prediction"]
    assert set(sim["frontier"]) >= {"fixed interval"}
    results = {
        "quick": True,
        "commit": None,
        "machine": common.machine(),
        "seconds": 1.0,
        "schedule": {"simulation": sim},
    }
    page = report.render(results, findings=report.findings(results))
    assert "## 5. Schedule efficiency" in page
    assert "| fixed 0.5 s (official client) |" in page


def test_fake_servers_rate_limiter_is_gcra_per_key(bench: Loader) -> None:
    limiter = bench("fake_server").KeyLimiter(rate=10, burst=3)
    # A burst of 3 at once, then one every 0.1 s; the 4th at once waits 0.1 s.
    assert [limiter.admit("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.admit("a", 0.0) == pytest.approx(0.1)
    assert limiter.admit("a", 0.1) == 0.0
    assert limiter.admit("b", 0.1) == 0.0  # another key has its own budget


def test_over_limit_counts_what_the_client_sent_too_fast(bench: Loader) -> None:
    rate = bench("bench_rate")
    paced = [i * 0.1 for i in range(20)]
    assert rate.over_limit(paced, rate=10, burst=1) == 0
    bunched = [0.0] * 5 + [0.5 + i * 0.1 for i in range(5)]
    assert rate.over_limit(bunched, rate=10, burst=3) == 2


def test_learned_schedule_round_runs_and_renders(bench: Loader) -> None:
    """A tiny round of bench_learned: four schedules on one workload, rendered."""
    import asyncio

    learned, report, common = bench("bench_learned"), bench("report"), bench("_common")
    size = learned.Size(n=30, over=2.0, scale=0.02, video=False)
    one = asyncio.run(learned.run_round(1, size))
    assert one["identical_workloads"]
    assert one["measured"] == 30 - 6  # the first 20% are a warm-up
    figures = one["policies"]
    assert set(figures) == set(learned.POLICIES)
    # The official client's 0.5 s: the most requests, the quickest detection.
    official = figures[learned.OFFICIAL]
    assert all(
        f["requests_per_prediction"] <= official["requests_per_prediction"]
        for f in figures.values()
    )
    assert 0 <= official["mean_delay"] < 0.6
    result = learned.summarize([one], size)
    result["wall_seconds"] = 1.0
    learned.report(result)
    results = {
        "quick": True,
        "commit": None,
        "machine": common.machine(),
        "seconds": 1.0,
        "learned": result,
    }
    page = report.render(results, findings=report.findings(results))
    assert "## 6. Learned schedule" in page
    assert "| fixed 0.5 s (official client) |" in page
    assert "`LearnedPolicy()` ≤ 0.45\N{MULTIPLICATION SIGN} the requests" in page


def test_sweep_delays_censored_at_the_window_are_lower_bounds(bench: Loader) -> None:
    sweep = bench("bench_sweep")
    exact = sweep.delays_summary([1.0] * 99, [50.0])
    assert exact["p95_delay"] == 1.0
    assert not exact["p95_bound"]
    assert exact["mean_bound"]  # an undetected one: the mean is at least this
    # Most never seen within the window: the p95 is only a bound.
    bound = sweep.delays_summary([1.0] * 10, [30.0] * 90)
    assert bound["p95_delay"] == 30.0
    assert bound["p95_bound"]
    # A bound below the p95 might hide a delay that moves it: a bound only.
    assert sweep.delays_summary([1.0] * 90 + [9.0] * 10, [0.5])["p95_bound"]
    # Bounds above it leave it exact.
    assert not sweep.delays_summary([1.0] * 98 + [9.0] * 2, [2.0])["p95_bound"]


def test_sweep_round_runs_and_renders(bench: Loader) -> None:
    """A tiny round of bench_sweep (a fake server per mode), rendered."""
    sweep, report, common = bench("bench_sweep"), bench("report"), bench("_common")
    # A window well past the last end (2.5 s): a sweep every second, then a
    # GET, catch every one of them even on a busy machine.
    case = sweep.Case(40, created_over=2.0, finish=(0.5, 2.5), window=6.0, setup=3.0)
    script, tracked = case.script(1)
    assert len(script) == 160
    assert len(tracked) == 40
    assert all(c < case.lead for _, _, c in script)  # created before the start
    one = sweep.run_round(case, 1)
    for mode, figures in one["modes"].items():
        assert figures["detected"] == 40, mode
        assert figures["gets"] > 0
    assert one["modes"]["sweep"]["list_requests"] > 0
    # full_records=False: a finished list item is the result, no GET for it.
    items = one["modes"]["sweep-list-items"]
    assert items["list_requests"] > 0
    assert items["gets_done"] < one["modes"]["sweep"]["gets_done"]
    assert one["modes"]["per-id"]["list_requests"] == 0
    result = {"cases": {"40": sweep.summarize(case, [one])}}
    result["cases"]["40"]["wall_seconds"] = 1.0
    sweep.report(result)
    results = {
        "quick": True,
        "commit": None,
        "machine": common.machine(),
        "seconds": 1.0,
        "sweep": result,
    }
    page = report.render(results, findings=report.findings(results))
    assert "## 7. Sweeps" in page
    assert "| 40 | sweeps (`sweep=True`) |" in page


def test_compare_exports_a_revision_and_prints_the_ratios(
    bench: Loader, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """bench/compare.py: the base version is a copy of the package at a revision."""
    if not (BENCH.parent / ".git").exists():
        pytest.skip("not a git checkout")
    compare = bench("compare")
    short = compare.export("HEAD", tmp_path)
    assert short
    assert (tmp_path / "replipoll" / "__init__.py").is_file()
    assert not (tmp_path / "tests").exists()
    rounds = {"base": [200.0, 210.0], "tree": [180.0, 200.0], "floor": [100.0, 100.0]}
    compare.report({"manager": rounds})
    assert capsys.readouterr().out == (
        "manager: tree / base 0.926x (0.900-0.952); against the floor: "
        "base 2.05x (2.00-2.10), tree 1.90x (1.80-2.00)\n"
    )
