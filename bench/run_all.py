"""Run every benchmark, save the figures, and rewrite the benchmarks page.

    python bench/run_all.py            # the full run (three quarters of an hour)
    python bench/run_all.py --quick    # a smoke run, a few minutes

The full run writes ``bench/results/latest.json``, ``docs/benchmarks.md`` and
``docs/_static/bench-schedule.png``. The quick run writes
``bench/results/quick.json``, ``quick.md`` and ``quick.png`` beside it (not
the docs: its figures are too rough to publish), unless ``--docs``.
``--only get,schedule`` runs some of them: get, manager, scale, rate,
schedule, learned, sweep, webhooks, redis_budget, redis_batch (in a full
run, the others are kept from ``latest.json``; redis_budget needs a Redis at
``REDIS_URL``).
``--render bench/results/latest.json`` rewrites the page and the plot from
saved figures, without measuring.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, ROOT, git_commit, machine, write_json

BENCHMARKS = {
    "get": "bench_get",
    "manager": "bench_manager",
    "scale": "bench_scale",
    "rate": "bench_rate",
    "schedule": "bench_schedule",
    "learned": "bench_learned",
    "sweep": "bench_sweep",
    "webhooks": "bench_webhooks",
    "redis_budget": "bench_redis_budget",
    "redis_batch": "bench_redis_batch",
}
DOCS_PAGE = ROOT / "docs" / "benchmarks.md"
DOCS_PLOT = ROOT / "docs" / "_static"


def run(names: list[str], *, quick: bool) -> dict[str, Any]:
    """Run the named benchmarks in order; print each one's figures as it ends."""
    results: dict[str, Any] = {
        "quick": quick,
        "commit": git_commit(),
        "machine": machine(),
    }
    results["runs"] = {}
    start = time.perf_counter()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        began = time.perf_counter()
        results[name] = module.run(quick=quick)
        module.report(results[name])
        seconds = time.perf_counter() - began
        results["runs"][name] = {
            "commit": results["commit"],
            "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "seconds": round(seconds, 1),
        }
        print(f"  ({name}: {seconds:.0f} s)\n", flush=True)
    results["seconds"] = time.perf_counter() - start
    return results


def merge(saved: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """``fresh`` sections over those saved in ``saved`` (a partial rerun)."""
    results: dict[str, Any] = json.loads(saved.read_text())
    runs = results.setdefault("runs", {})
    for name in BENCHMARKS:
        if name in fresh:
            results[name] = fresh[name]
            runs[name] = fresh["runs"][name]
    results["machine"] = fresh["machine"]
    results["commit"] = fresh["commit"]
    results["seconds"] = sum(run["seconds"] for run in runs.values())
    return results


def write(
    results: dict[str, Any], *, docs: bool, out: Path, rendering: bool = False
) -> list[Path]:
    """Save the JSON, the page and the plot; return the paths written."""
    import report

    stem = "quick" if results["quick"] else "latest"
    json_path = out / f"{stem}.json"
    written = []
    if not rendering:
        write_json(json_path, results)
        written.append(json_path)
    if docs:
        page, plot_path = DOCS_PAGE, DOCS_PLOT / report.PLOT_NAME
    else:
        page, plot_path = out / f"{stem}.md", out / f"{stem}.png"
    page.write_text(report.render(results, findings=report.findings(results)))
    written.append(page)
    if "schedule" in results:
        try:
            report.plot(results, plot_path)
        except ImportError:
            print("matplotlib is not installed: no plot", file=sys.stderr)
        else:
            written.append(plot_path)
    return written


def main() -> None:
    """Parse arguments, run, write."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (< 60 s)")
    parser.add_argument(
        "--only", help=f"comma-separated, from: {', '.join(BENCHMARKS)}"
    )
    docs = parser.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", default=None, help="write docs/")
    docs.add_argument("--no-docs", dest="docs", action="store_false")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON directory")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="only rewrite the page from JSON"
    )
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    docs_too = (not args.quick) if args.docs is None else args.docs
    if args.render:
        results = json.loads(args.render.read_text())
        docs_too = True if args.docs is None else args.docs
    else:
        results = run(names, quick=args.quick)
        saved = args.out / "latest.json"
        if args.only and not args.quick and saved.exists():
            results = merge(saved, results)  # keep the sections not rerun
    written = write(results, docs=docs_too, out=args.out, rendering=bool(args.render))
    for path in written:
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    if not args.render:
        print(f"all done in {results['seconds']:.0f} s")


if __name__ == "__main__":
    main()
