"""Before and after: one workload on two versions of replipoll, in one run.

    python bench/compare.py                      # the working tree against HEAD
    python bench/compare.py --base v0.1 --rounds 5 --fast

On a shared machine a figure drifts by a tenth from one hour to the next, so
a change worth a few percent shows only when both versions run side by side.
This script exports ``--base`` (any git revision) into a temporary directory
and measures, each round on fresh fake servers and in fresh interpreters:

* ``manager``: the 10,000-id batch of ``bench_manager.py`` (client CPU per
  request), the base version and this tree, in an order that alternates
  from round to round;
* ``get``: ``Client.get`` back to back, 32 at a time (client CPU per GET),
  the same way;
* the saturated floor of ``bench_manager.py`` (bare aiohttp GET + ``json()``,
  back to back) once per round, which both are also divided by.

It prints each round and, for each workload, the median and spread of the
rounds' ratios: this tree against the base, and each against the floor.
``--fast`` runs both versions on the fast path (uvloop + msgspec; the floor
stays the default one). ``--ids`` sizes the batch: a machine too slow to
keep up with 10,000 ids spends the whole run working, and its CPU per
request then says only how many requests fit in the time (the figures
print the requests of each run: they should barely differ).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    API_KEY,
    ROOT,
    cpu,
    emit,
    fake_server,
    ids_file,
    run_child,
    span,
)
from bench_manager import CONCURRENCY, DEFAULT_ENV, FAST_ENV, mixed_script

#: GETs per measurement of ``get`` (after a warm-up of 640).
GETS = 20_000


def export(revision: str, into: Path) -> str:
    """Write ``revision``'s ``replipoll/`` under ``into``; return its short hash."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "-C", str(ROOT), "archive", revision, "replipoll"],
            check=True,
            stdout=out,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", revision],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


async def gets(base_url: str, ids: list[str], count: int) -> dict[str, Any]:
    """``Client.get`` ``count`` times, ``CONCURRENCY`` at a time; runs in a child."""
    import replipoll

    from bench_get import drive

    async with replipoll.Client(base_url=base_url, api_key=API_KEY) as client:
        await drive(client.get, ids, CONCURRENCY * 20, CONCURRENCY)
        start = cpu()
        await drive(client.get, ids, count, CONCURRENCY)
        used = cpu() - start
    return {"count": count, "cpu": used, "replipoll": replipoll.__file__}


def measure(
    what: str, n: int, base_dir: Path | None, *, fast: bool, seed: int
) -> tuple[float, int]:
    """µs of client CPU per request of ``what`` for one version, and requests.

    Each on a fresh server.
    """
    env = dict(FAST_ENV if fast else DEFAULT_ENV)
    env["PYTHONPATH"] = str(base_dir) if base_dir is not None else ""
    part = {"manager": "batch-fast" if fast else "batch", "get": "get"}[what]
    with (
        fake_server(mixed_script(n, seed=seed)) as server,
        ids_file(server.ids) as path,
    ):
        figures = run_child(
            "compare.py", part, server.base_url, path, str(GETS), env=env
        )
    where = Path(figures["replipoll"]).resolve()
    inside = base_dir is not None and base_dir in where.parents
    if inside != (base_dir is not None):  # the wrong version was imported
        raise RuntimeError(f"measured the wrong replipoll: {where}")
    count = figures["requests"] if what == "manager" else figures["count"]
    return float(figures["cpu"]) / count * 1e6, int(count)


def floor(n: int, seed: int) -> float:
    """µs of client CPU per bare aiohttp GET + ``json()``, back to back."""
    with (
        fake_server(mixed_script(n, seed=seed)) as server,
        ids_file(server.ids) as path,
    ):
        figures = run_child(
            "bench_manager.py",
            "floor",
            server.base_url,
            path,
            str(GETS),
            env=DEFAULT_ENV,
        )
    return float(figures["cpu"]) / figures["count"] * 1e6


def run(
    base: str, rounds: int, whats: list[str], *, fast: bool, ids: int
) -> dict[str, Any]:
    """Measure every workload ``rounds`` times on both versions; print as it goes."""
    n = ids
    figures: dict[str, dict[str, list[float]]] = {
        what: {"base": [], "tree": [], "floor": [], "base_n": [], "tree_n": []}
        for what in whats
    }
    with tempfile.TemporaryDirectory(prefix="replipoll-base-") as tmp:
        base_dir = Path(tmp)
        short = export(base, base_dir)
        print(
            f"base {base} ({short}) against the working tree; {rounds} rounds, "
            f"{'fast path' if fast else 'default path'}",
            flush=True,
        )
        for r in range(rounds):
            floor_us = floor(n, seed=r)
            for what in whats:
                order = ["base", "tree"] if r % 2 == 0 else ["tree", "base"]
                for version in order:
                    us, count = measure(
                        what,
                        n,
                        base_dir if version == "base" else None,
                        fast=fast,
                        seed=r,
                    )
                    figures[what][version].append(us)
                    figures[what][f"{version}_n"].append(count)
                figures[what]["floor"].append(floor_us)
                row = figures[what]
                print(
                    f"  round {r + 1} {what}: base {row['base'][-1]:.1f} us "
                    f"({row['base_n'][-1]:.0f} requests), tree {row['tree'][-1]:.1f} "
                    f"us ({row['tree_n'][-1]:.0f}), floor {floor_us:.1f} us",
                    flush=True,
                )
    return {"base": base, "short": short, "rounds": rounds, "fast": fast, **figures}


def report(result: dict[str, Any]) -> None:
    """Print the medians and spreads of the rounds' ratios."""
    for what in ("manager", "get"):
        row = result.get(what)
        if not row:
            continue
        base, tree, low = row["base"], row["tree"], row["floor"]
        change = [t / b for t, b in zip(tree, base, strict=True)]
        base_x = [b / f for b, f in zip(base, low, strict=True)]
        tree_x = [t / f for t, f in zip(tree, low, strict=True)]
        print(
            f"{what}: tree / base {span(change, 'x', 3)}; against the floor: "
            f"base {span(base_x, 'x')}, tree {span(tree_x, 'x')}"
        )


def main() -> None:
    """Parse arguments; compare (as the parent) or run one part (as a child)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision (HEAD)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--what", default="manager,get", help="manager,get")
    parser.add_argument("--fast", action="store_true", help="uvloop + msgspec")
    parser.add_argument(
        "--ids", type=int, default=10_000, help="ids in the batch (10,000)"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import replipoll

        from bench_manager import poll_all

        part, base_url, path, count = args.child
        ids = Path(path).read_text().split()
        if part == "get":
            emit(asyncio.run(gets(base_url, ids, int(count))))
            return
        if part == "batch-fast":
            import uvloop

            figures = uvloop.run(poll_all(base_url, ids))
        else:
            figures = asyncio.run(poll_all(base_url, ids))
        emit({**figures, "replipoll": replipoll.__file__})
        return
    whats = [w for w in args.what.split(",") if w]
    unknown = set(whats) - {"manager", "get"}
    if unknown:
        parser.error(f"--what: unknown workload {', '.join(sorted(unknown))}")
    began = time.perf_counter()
    report(run(args.base, args.rounds, whats, fast=args.fast, ids=args.ids))
    print(f"({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
