"""Turn the benchmarks' results into docs/benchmarks.md and its plot.

``render(results)`` returns the page (MyST Markdown) and ``plot(results, path)``
draws requests per prediction against detection delay (matplotlib, Agg).
``python bench/run_all.py`` calls both; nothing here measures anything.
Sections whose results are missing (``--only``) are left out.
"""

# The page is prose for people: the multiplication sign in it is meant.
# ruff: noqa: RUF001

from __future__ import annotations

import math
import re
import statistics
from itertools import pairwise
from pathlib import Path
from typing import Any

PLOT_NAME = "bench-schedule.png"

#: Targets from issue 6, checked against the figures.
GET_FLOOR_TARGET = 1.3
GET_OFFICIAL_TARGET = 10.0
MANAGER_FLOOR_TARGET = 1.5
MEMORY_TARGET = 1024
FLAT_TARGET = 1.25  # "flat": largest size within 25% of the smallest
RATE_TARGET = 0.95
REQUESTS_TARGET = 1 / 3
DELAY_TARGET = 1.0
#: Targets from issue 15 for the fast path (``replipoll[speed]``), against
#: the default floor (asyncio's own loop, the standard library's JSON).
FAST_GET_TARGET = 0.8
FAST_MANAGER_TARGET = 1.0
FAST = "replipoll-fast"


def _yes(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _spread(rounds: list[float] | None) -> str:
    """The lowest and highest of the rounds' ratios, joined by a dash (or nothing)."""
    if not rounds or len(rounds) < 2:
        return ""
    return f"{min(rounds):.2f}–{max(rounds):.2f}"


def _with_spread(x: float, rounds: list[float] | None) -> str:
    spread = _spread(rounds)
    return f"{x:.2f}× (rounds {spread})" if spread else f"{x:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join("---" for _ in header) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> list[list[str]]:
    """One row per target of the issue: what, the figure, met or missed."""
    rows: list[list[str]] = []
    if "get" in results:
        v = results["get"]["variants"]
        x = v["replipoll"]["x_floor"]
        leaner = results["get"]["official_over_replipoll"]
        rows.append(
            [
                "`Client.get` CPU ≤ 1.3× the floor",
                f"{x:.2f}×",
                _yes(x <= GET_FLOOR_TARGET),
            ]
        )
        rows.append(
            [
                "≥ 10× leaner than the official client",
                f"{leaner:.1f}× leaner",
                _yes(leaner >= GET_OFFICIAL_TARGET),
            ]
        )
    if "get" in results and FAST in results["get"]["variants"]:
        fast = results["get"]["variants"][FAST]
        rows.append(
            [
                "fast path: `Client.get` CPU ≤ 0.8× the default floor",
                _with_spread(fast["x_floor"], fast.get("x_floor_rounds")),
                _yes(fast["x_floor"] <= FAST_GET_TARGET),
            ]
        )
    if "manager" in results and "x_fast_saturated_floor" in results["manager"]:
        m = results["manager"]
        worst = max(m["x_fast_saturated_floor"], m["x_fast_replayed_floor"])
        rows.append(
            [
                "fast path: PollManager CPU per request ≤ 1.0× the default floor",
                _with_spread(
                    m["x_fast_saturated_floor"], m.get("x_fast_saturated_floor_rounds")
                )
                + f" the saturated floor ({m['x_fast_replayed_floor']:.2f}× the "
                "replayed one)",
                _yes(worst <= FAST_MANAGER_TARGET),
            ]
        )
    if "manager" in results:
        m = results["manager"]
        rows.append(
            [
                "PollManager CPU per request ≤ 1.5× the floor",
                f"{m['x_saturated_floor']:.2f}× the saturated floor "
                f"({m['x_replayed_floor']:.2f}× the replayed one)",
                _yes(
                    max(m["x_saturated_floor"], m["x_replayed_floor"])
                    <= MANAGER_FLOOR_TARGET
                ),
            ]
        )
    if "manager" in results:
        m = results["manager"]
        rows.append(
            [
                "PollManager CPU per request ≤ 1.3× the saturated floor (default loop)",
                _with_spread(m["x_saturated_floor"], m.get("x_saturated_floor_rounds")),
                _yes(m["x_saturated_floor"] <= MANAGER_METAL_TARGET),
            ]
        )
    if "scale" in results and "million" in results["scale"]:
        mil = results["scale"]["million"]
        rec = mil["recipe"]
        rows.extend(
            [
                [
                    f"{mil['ids']:,} ids: peak RSS of the process ≤ 1 GiB",
                    f"{rec['peak_rss_mib']:.0f} MiB",
                    _yes(rec["peak_rss_mib"] <= MILLION_RSS_MIB),
                ],
                [
                    f"{mil['ids']:,} ids: no event-loop stall over 100 ms "
                    "(submitting and polling)",
                    f"longest {rec['worst_stall_ms']:.0f} ms with the "
                    f"`gc.freeze()` recipe ({mil['plain']['worst_stall_ms']:.0f} ms "
                    "without it)",
                    _yes(rec["worst_stall_ms"] <= MILLION_STALL_MS),
                ],
                [
                    f"{mil['ids']:,} ids: CPU per request ≤ 1.1× that at 10,000",
                    f"{rec['x_10k']:.2f}× ({rec['us_per_request']:.0f} µs against "
                    f"{mil['ten_thousand']['us_per_request']:.0f} µs)",
                    _yes(rec["x_10k"] <= MILLION_CPU_TARGET),
                ],
            ]
        )
    if "scale" in results:
        s = results["scale"]
        largest = s["memory"][-1]
        per_id = largest["scheduled_bytes_per_id"]
        rows.append(
            [
                f"≤ 1 KiB per tracked id at {largest['ids']:,} ids",
                f"{per_id:.0f} B",
                _yes(per_id <= MEMORY_TARGET),
            ]
        )
        stub = s["stub"]
        step = _after_step(stub)
        if "real" in s:
            growth = s["real"][-1]["x_smallest"]
            measured = (
                f"{growth:.2f}× with aiohttp and the server; the manager alone "
                + (
                    f"{stub[-1]['x_smallest']:.2f}×, of which {step}"
                    if _stepped(stub)
                    else step
                )
            )
        else:
            growth = stub[-1]["x_smallest"]
            measured = f"{growth:.2f}× (the manager alone)"
        rows.append(
            [
                f"CPU per request flat from 1,000 to {stub[-1]['ids']:,} ids",
                measured,
                _yes(growth <= FLAT_TARGET),
            ]
        )
    if "rate" in results:
        rows_r = results["rate"]["limits"]
        worst = min(r["ratio"] for r in rows_r)
        own = sum(r["client_over_limit"] for r in rows_r)
        limits = sorted({r["limit"] for r in rows_r})
        rows.append(
            [
                "achieved rate ≥ 95% of R, no 429 caused by replipoll",
                f"≥ {worst:.1%} of R; {own} requests sent over the limit "
                f"(R = {', '.join(f'{x:g}' for x in limits)}/s)",
                _yes(worst >= RATE_TARGET and own == 0),
            ]
        )
    if "schedule" in results:
        sim = results["schedule"]["simulation"]["schedules"]
        for name, f in sim.items():
            # The default, and a proposal while there is one; the fixed
            # intervals and earlier defaults are compared in section 5.
            if not name.startswith(("replipoll default", "proposed")):
                continue
            ok = _meets(f)
            rows.append(
                [
                    f"≤ 1/3 of the requests at ≤ 1 s mean delay: {name}",
                    f"{f['requests_ratio']:.2f}× the requests, "
                    f"{f['mean_delay']:.2f} s mean delay",
                    _yes(ok),
                ]
            )
    rows.extend(_learned_targets(results.get("learned")))
    rows.extend(_sweep_targets(results.get("sweep")))
    rows.extend(_webhook_targets(results.get("webhooks")))
    rows.extend(_redis_targets(results))
    return rows


#: Targets of the manager close to the metal (saturated floor, default loop),
#: and of a million ids in one process.
MANAGER_METAL_TARGET = 1.3
MILLION_RSS_MIB = 1024.0
MILLION_STALL_MS = 100.0
MILLION_CPU_TARGET = 1.1


#: A step of the manager-alone curve smaller than this is noise, not a step.
STEP = 1.10


def _stepped(stub: list[dict[str, Any]]) -> bool:
    """Whether the manager-alone curve has one step worth explaining.

    A step is a rise of at least ``STEP`` between two sizes after which at
    least two sizes stay above every size before it: a level that moved,
    not one noisy point.
    """
    costs = [row["us_per_request"] for row in stub]
    for i in range(len(costs) - 1):
        before, after = costs[: i + 1], costs[i + 1 :]
        if (
            costs[i + 1] / costs[i] >= STEP
            and len(after) >= 2
            and min(after) > max(before)
        ):
            return True
    return False


def _after_step(stub: list[dict[str, Any]]) -> str:
    """Describe the manager-alone curve: its largest step and growth after it,
    or, without a real step, its growth end to end."""
    ratios = [b["us_per_request"] / a["us_per_request"] for a, b in pairwise(stub)]
    i = max(range(len(ratios)), key=ratios.__getitem__)
    if ratios[i] < STEP:
        return (
            f"{stub[-1]['x_smallest']:.2f}× from {stub[0]['ids']:,} to "
            f"{stub[-1]['ids']:,} ids, no step above {ratios[i]:.2f}×"
        )
    if not _stepped(stub):
        xs = [row["x_smallest"] for row in stub]
        return (
            f"{stub[-1]['x_smallest']:.2f}× from {stub[0]['ids']:,} to "
            f"{stub[-1]['ids']:,} ids, between {min(xs):.2f}× and "
            f"{max(xs):.2f}× on the way, up and down"
        )
    after = stub[-1]["us_per_request"] / stub[i + 1]["us_per_request"]
    return (
        f"{ratios[i]:.2f}× in one step from {stub[i]['ids']:,} to "
        f"{stub[i + 1]['ids']:,} ids, then {after:.2f}× to {stub[-1]['ids']:,}"
    )


def _machine(results: dict[str, Any]) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    load = " / ".join(str(x) for x in m["load_average"])
    runs = results.get("runs") or {}
    commits = {run["commit"] for run in runs.values()} or {results.get("commit")}
    if len(commits) == 1:
        commit = f"replipoll at commit `{commits.pop() or 'unknown'}`"
    else:
        commit = "replipoll at commits " + ", ".join(
            f"`{run['commit']}` ({name})" for name, run in runs.items()
        )
    return f"""- CPU: {m["cpu_model"]}, {m["nproc"]} cores, shared with other work
  (load average {load} at the start)
- OS: {m["os"]}; Python: {m["python"]}
- Packages: {versions}
- {commit}; run on {m["when"]}, {results["seconds"]:.0f} s in all
"""


def _get(r: dict[str, Any]) -> str:
    rows = [
        [
            f["label"],
            f"{f['us_per_get']:.0f}",
            f"{f['us_per_get_min']:.0f}",
            f"{f['x_floor']:.2f}×",
            _spread(f.get("x_floor_rounds")) or "–",
            f"{f['gets_per_s']}",
        ]
        for f in r["variants"].values()
    ]
    if FAST in r["variants"]:
        fast_note = (
            """
The row *fast path* is replipoll with the speed extra
(`pip install 'replipoll[speed]'`): its batches run on a uvloop event loop of
their own and its answers are parsed by msgspec. The row *on uvloop* is the
floor's client on that loop (aiohttp's `json()` stays the standard
library's). Every other row runs on asyncio's own loop with the standard
library's `json`, and every ratio is to that default floor. The two rows on
uvloop come from interpreters of their own (one a round), where they take
turns with the default floor and replipoll's default path only: beside the
official client, whose batches are long and allocate much, both measured
about a fifth higher, and the clients on asyncio's loop did not. In those
interpreters replipoll's default path cost """
            + (
                f"{r['fast_path_default']['x_floor']:.2f}× the floor, and the fast "
                f"path {r['fast_over_default']:.2f}× the default path."
                if "fast_path_default" in r
                else "(not recorded)."
            )
            + "\n"
        )
    else:
        fast_note = """
The fast path (`replipoll[speed]`) was not measured in this run: the speed
extra was not installed.
"""
    return f"""## 1. CPU per GET

Every client fetches the same 200 prediction ids (records that do not
change: finished, failed, or running), {r["concurrency"]} requests in flight.
One interpreter holds all {
        len(r["variants"])
    } clients, warms each up, then times batches of
{r["gets_per_batch"]} GETs with its own CPU clock, the clients taking turns
in an order that rotates every cycle, so that a burst of other work on the
machine lands on all of them alike (before each batch, garbage is collected
and a few untimed GETs warm the client up again, so that none pays for the
client before it); {r["batches"]} batches per client over
{r["rounds"]} fresh interpreters. A ratio is the median of the ratios between
batches of the same cycle; *rounds* gives the lowest and the highest of the
{r["rounds"]} interpreters' own ratios.

{
        _table(
            ["client", "µs CPU/GET (median)", "min", "× floor", "rounds", "GET/s"],
            rows,
        )
    }
{fast_note}
The official client is
**{r["official_over_replipoll"]:.1f}× more CPU per GET** than replipoll. Its
default connection pool keeps 20 connections alive, fewer than the
{r["concurrency"]} in flight; the row "keep-alive pool raised to 100" shows
the pool is not what makes it slow.
"""


def _manager(r: dict[str, Any]) -> str:
    return f"""## 2. PollManager end to end

{r["ids"]:,} ids ({r["durations"]}), mostly successes, some failures and
cancellations, submitted to one `PollManager` (default schedule,
`max_concurrency={r["max_concurrency"]}`) and polled to the end;
{r["rounds"]} rounds, each with a fresh server. CPU counts everything from
`poll_many` to the last result: submission, scheduling, requests, decoding.

Two floors, each from a fresh interpreter on the same server:

- *replayed*: the server logged when each of the manager's requests arrived;
  the barest poller (one coroutine sleeping until the next moment, 32 workers
  doing aiohttp GET + `json()`) sends the same requests at the same moments.
  This is the like-for-like floor.
- *saturated*: GET + `json()` back to back, 32 at a time, as in section 1. A
  loop kept busy serves many sockets per wake-up, so no polling pattern can
  be this cheap per request.

The same batch also runs on a fresh server with `coalesce=0` (due times not
gathered onto the manager's grid), to show what coalescing saves.
{_fast_manager_note(r)}
{
        _table(
            ["figure", "value"],
            [
                ["client CPU per request", f"{r['us_per_request']:.0f} µs"],
                [
                    "replayed floor",
                    f"{r['replayed_floor_us']:.0f} µs "
                    f"(replipoll {r['x_replayed_floor']:.2f}×)",
                ],
                [
                    "saturated floor",
                    f"{r['saturated_floor_us']:.0f} µs "
                    f"(replipoll {r['x_saturated_floor']:.2f}×)",
                ],
                [
                    "replipoll with `coalesce=0`",
                    f"{r['uncoalesced_us']:.0f} µs "
                    f"(coalescing costs {r['x_uncoalesced']:.2f}× of that)",
                ],
                *_fast_manager_rows(r),
                ["wall time", f"{r['wall_seconds']:.1f} s"],
                ["requests per id", f"{r['requests_per_id']:.2f}"],
                [
                    "peak requests in flight",
                    f"{r['peak_in_flight']} (max_concurrency {r['max_concurrency']})",
                ],
                ["every id finished", "yes" if r["all_finished"] else "**no**"],
            ],
        )
    }

Each round (the figures above are medians; the ratio is the median of the
rounds' ratios):

{
        _table(
            [
                "round",
                "replipoll",
                "replayed floor",
                "ratio",
                "saturated",
                "ratio",
                "`coalesce=0`",
                *(["fast path (× saturated)"] if "x_fast_saturated_floor" in r else []),
            ],
            [
                [
                    str(i + 1),
                    f"{s['us_per_request']:.0f} µs",
                    f"{s['replayed_floor_us']:.0f} µs",
                    f"{s['x_replayed_floor']:.2f}×",
                    f"{s['saturated_floor_us']:.0f} µs",
                    f"{s['x_saturated_floor']:.2f}×",
                    f"{s['uncoalesced_us']:.0f} µs",
                    *(
                        [f"{s['fast_us']:.0f} µs ({s['x_fast_saturated_floor']:.2f}×)"]
                        if "fast_us" in s
                        else []
                    ),
                ]
                for i, s in enumerate(r["samples"])
            ],
        )
    }
"""


def _fast_manager_note(r: dict[str, Any]) -> str:
    if "x_fast_saturated_floor" not in r:
        return """
The fast path (`replipoll[speed]`) was not measured in this run: the speed
extra was not installed.
"""
    return """
Those runs and both floors use asyncio's own event loop and the standard
library's `json` (`REPLIPOLL_NO_SPEEDUPS=1`), as replipoll does without the
speed extra. The same batch runs once more on a fresh server on the *fast
path*: `uvloop.run(...)`, answers parsed by msgspec. It is compared with the
same default floors.
"""


def _fast_manager_rows(r: dict[str, Any]) -> list[list[str]]:
    """The fast path's row of the manager's table, if it was measured."""
    if "x_fast_saturated_floor" not in r:
        return []
    saturated = _with_spread(
        r["x_fast_saturated_floor"], r.get("x_fast_saturated_floor_rounds")
    )
    return [
        [
            "fast path (uvloop + msgspec)",
            f"{r['fast_us_per_request']:.0f} µs ({saturated} the saturated "
            f"floor, {r['x_fast_replayed_floor']:.2f}× the replayed one)",
        ]
    ]


def _scale(r: dict[str, Any], l2_bytes: int | None = None) -> str:
    mem_rows = [
        [
            f"{m['ids']:,}",
            f"{m['queued_bytes_per_id']:.0f} B",
            f"{m['scheduled_bytes_per_id']:.0f} B",
        ]
        for m in r["memory"]
    ]
    top_rows = [
        [f"{t['bytes_per_id']:.0f} B", f"`{t['where']}`", f"`{t.get('code', '')}`"]
        for t in r["memory"][-1]["top"]
    ]
    cpu_rows = []
    real = {row["ids"]: row for row in r.get("real", [])}
    for row in r["stub"]:
        cells = [
            f"{row['ids']:,}",
            f"{row['us_per_request']:.1f} µs ({row['x_smallest']:.2f}×)",
        ]
        if real:
            other = real.get(row["ids"])
            cells.append(
                f"{other['us_per_request']:.0f} µs ({other['x_smallest']:.2f}×)"
                if other
                else "–"
            )
        cpu_rows.append(cells)
    l2 = f" ({l2_bytes / 2**20:g} MiB here)" if l2_bytes else ""
    header = ["ids tracked", f"manager alone, {r['stub_rate']:g} requests/s"]
    if "real" in r:
        header.append(f"with aiohttp and the server, {r['real_rate']:g} requests/s")
    return f"""## 3. Scale

**Memory.** `tracemalloc` in a fresh interpreter. The ids are made before
tracing starts (they are the caller's), and the client is a stub whose
`send` yields to the loop and answers one shared, pre-built `processing`
record: nothing goes over the network and no record is allocated per id, so
what is traced is the manager's own overhead. *Queued* is right after
`submit` of every id; *scheduled* is after every id's first answer, each
waiting for its next poll (in a bucket of the due polls, one per point of
the coalescing grid) and for its deadline (in a heap): the steady state.

{_table(["ids", "queued, per id", "scheduled, per id"], mem_rows)}

Where the bytes go at {r["memory"][-1]["ids"]:,} ids (the largest sites):

{_table(["per id", "allocated at", "code"], top_rows)}

Records are extra: with `keep_last=True` (the default) each running id
keeps its latest record, whose size is the provider's JSON decoded (1–2 KiB
for a running prediction); `keep_last=False` keeps only its status name. A
finished id's record is never kept by the manager: it goes to the id's
future.
{_million(r)}
**CPU per request as ids grow.** `N` ids, a rate budget of `R` requests/s and
`PollPolicy.fixed(0.5 × N / R)`: the ids ask more than `R`, so the budget
paces every round at `R` requests/s of the same `N` ids, which wait in the
due polls in between.
After one round of warm-up, CPU and requests are read over a window.

{_table(header, cpu_rows)}

{_scale_story(r, l2)}
"""


_MILLION_HEADER = [
    "",
    "CPU per request",
    "peak RSS while polling",
    "peak RSS with the close",
    "longest stall",
    "longest full collection",
]

#: What each cause of a stall means on the page.
_CAUSES = {
    "gc": "the garbage collector",
    "process": "the whole process held up",
    "loop": "the event loop's own work",
}


def _causes(counts: dict[str, int]) -> str:
    """``{"gc": 2}`` as "2 (the garbage collector)"; "none" if empty."""
    if not counts:
        return "none"
    return ", ".join(
        f"{n} ({_CAUSES.get(cause, cause)})" for cause, n in sorted(counts.items())
    )


def _million(r: dict[str, Any]) -> str:
    if "million" not in r:
        return ""
    m = r["million"]
    rows = [
        [
            label,
            f"{row['us_per_request']:.1f} µs ({row['x_10k']:.2f}×; "
            f"{', '.join(f'{x:g}' for x in row['samples_us'])})",
            f"{row.get('peak_rss_polling_mib', math.nan):.0f} MiB",
            f"{row['peak_rss_mib']:.0f} MiB",
            f"{row['worst_stall_ms']:.0f} ms",
            f"{row['longest_collection_ms']:.0f} ms",
        ]
        for label, row in (
            ("10,000 ids", m["ten_thousand"]),
            (f"{m['ids']:,} ids, `gc.freeze()` recipe", m["recipe"]),
            (f"{m['ids']:,} ids, no recipe (one run)", m["plain"]),
        )
    ]
    return f"""
**A million ids in one process.** `{m["ids"]:,}` running ids in one
`PollManager` (`keep_last=False`, no deadline), submitted 2,048 per turn of
the event loop; a stub client answers each poll with a fresh record of its
id, parsed and structured as a real answer is (about 1.1 KB of JSON), so
the garbage collector sees what a real batch makes. A rate budget of
{m["rate"]:,.0f} requests/s paces the polls. Measured on the whole process
(the caller's ids and futures included): the peak RSS (while polling, and
over the whole run, closing included), the longest the event loop took to
come back to a 5 ms sleep (from the first submit to the close), the longest
full collection of the garbage collector, and CPU per request over 8 s
after every id's first poll, against the same at 10,000 ids. The *recipe*
is the batch how-to's: the collector off while the ids go in, then
`gc.freeze()`. Median of {m["rounds"]} rounds (the samples in brackets).

{_table(_MILLION_HEADER, rows)}

Without the recipe, each full collection walks every tracked id; with it,
they are out of its sight, and what remains is the submitting itself.
{_million_memory(m)}{_million_stalls(m)}{_closing(m)}"""


def _million_memory(m: dict[str, Any]) -> str:
    phases = m["recipe"].get("rss_mib")
    if not phases:
        return ""
    return f"""
Where the memory goes (RSS, median of the recipe's rounds): {phases["start"]} MiB
before the first submit (the interpreter, its imports and the caller's
{m["ids"]:,} ids), {phases["submitted"]} MiB once every id is submitted (a
track, which is also the id's future, and an entry in the work queue each),
{phases["first_round"]} MiB after every id's first poll (each id then waits
in a bucket of the due polls, one bucket per point of the coalescing grid),
{phases["polling"]} MiB while polling.
"""


def _million_stalls(m: dict[str, Any]) -> str:
    rec = m["recipe"]
    if "stall_causes" not in rec:
        return ""
    return f"""
Each stall over 50 ms is put down to one cause: the garbage collector (its
collections took over half of the stall), the whole process (a thread that
sleeps 5 ms at a time woke as late: the machine, or a long call that kept
the GIL), or else the event loop's own work. Over the recipe's rounds, while
submitting and polling: {_causes(rec["stall_causes"])}; without the recipe:
{_causes(m["plain"]["stall_causes"])}.
"""


def _closing(m: dict[str, Any]) -> str:
    rec = m["recipe"]
    if "close_seconds" not in rec:
        return ""
    causes = rec.get("close_stall_causes")
    return f"""
Closing the manager with all {m["ids"]:,} ids still running is measured
apart: it ends each with `ManagerClosedError`, 2,048 per turn of the loop,
in {rec["close_seconds"]:.1f} s. Meanwhile the longest stall was
{rec["close_worst_stall_ms"]:.0f} ms (stalls over 50 ms, over the rounds:
{_causes(causes or {})}): a million new exceptions are a million new objects
for the collector's full collections to walk, and they end up in the peak
RSS with the close.
"""


def _million_finding(r: dict[str, Any]) -> str:
    if "million" not in r:
        return ""
    m = r["million"]
    rec, plain = m["recipe"], m["plain"]
    return f""" A million running ids fit in one process:
{rec["peak_rss_mib"]:.0f} MiB at the peak, CPU per request
{rec["x_10k"]:.2f}× that at 10,000 ids. The event loop's longest stall was
{rec["worst_stall_ms"]:.0f} ms with the batch how-to's `gc.freeze()` recipe,
{plain["worst_stall_ms"]:.0f} ms without it: CPython's full collections walk
every tracked id (the longest took {plain["longest_collection_ms"]:.0f} ms),
which is why the recipe exists. Since commit e6a6a02 polling an id again
makes no object: the due polls sit in buckets, one per point of the
coalescing grid. Before, each poll made a heap entry and freed the one of
the round before, so CPython's youngest generation, collected only once
allocations outnumber deallocations by 700, grew to some 400,000 entries,
and collecting it stalled the loop for 80 to 100 ms even with the recipe
(111 ms in the run before this one). Closing the manager made a million
errors of about 450 bytes each (the message, its tuple, a `__dict__`): that
run peaked at 1,045 MiB. A `ManagerClosedError` now holds only its id, and
writes its message when shown: {rec["peak_rss_mib"]:.0f} MiB with the
close.{_million_pace(m, rec)}"""


def _million_pace(m: dict[str, Any], rec: dict[str, Any]) -> str:
    """What a machine too slow for the budget's pace does to the million's figures."""
    load = rec["us_per_request"] * m["rate"] / 1e6
    if load <= 1.0:
        return ""
    achieved = rec.get("achieved_rate")
    made = f" (it made {achieved:,} a second)" if achieved else ""
    return f""" At {rec["us_per_request"]:.0f} µs a request, the {m["rate"]:,.0f}
requests a second the budget allows would take {load:.2f} s of CPU a second,
more than the one core an event loop runs on: this machine could not keep
that pace{made}. Every id is still polled, each round a little later."""


def _scale_story(r: dict[str, Any], l2: str) -> str:
    if not _stepped(r["stub"]):
        return f"""The manager alone costs {_after_step(r["stub"])}: flat within
the noise of this machine. A heap grows by log N, and nothing else the
manager does per request depends on how many ids it tracks."""
    return f"""The manager alone costs {_after_step(r["stub"])}. A single step
rather than a steady climb points at the memory hierarchy, not at an
algorithm (a heap grows by log N): with about
{r["memory"][-1]["scheduled_bytes_per_id"]:.0f} bytes touched per id, a few
thousand ids fit in a core's L2 cache{l2}, and ten thousand do not. Behind a
real request (the last column) the difference is lost in the noise."""


def _rate(r: dict[str, Any]) -> str:
    rows = [
        [
            f"{row['limit']:g}/s",
            f"{row['client_burst']}",
            f"{row['achieved']:.1f}/s ({row['ratio']:.1%})",
            f"{row['server_429s']}",
            f"{row['client_over_limit']} of {row['requests']:,}",
        ]
        for row in r["limits"]
    ]
    return f"""## 4. Rate budget

The fake server enforces `R` requests/s per API key with bursts of
{r["burst"]} (GCRA; over the limit: 429 with `Retry-After`). A `PollManager`
gets `rate_limit=R` and far more demand than that: {r["ids"]:,} predictions
that never finish, polled every 0.5 s. The achieved rate is what the server
let through over {r["window_seconds"]:g} s after the first second.

Which 429s did replipoll cause? The client notes when it hands each request
to aiohttp, and the server's GCRA is replayed on those times: a request over
the limit *as sent* is replipoll's doing. The others are made on the way: a
stall of either process delays some requests and bunches the next ones, and
with the client at exactly `R` and a burst as large as the server's there is
no slack left to absorb that.

{
        _table(
            [
                "limit R",
                "manager burst",
                "achieved",
                "429s at the server",
                "sent over the limit by replipoll",
            ],
            rows,
        )
    }
"""


def _schedule(r: dict[str, Any]) -> str:
    sim = r["simulation"]
    rows = [
        [
            name,
            f"{f['requests_per_prediction']:.1f}",
            f"{f['requests_ratio']:.2f}×",
            f"{f['mean_delay']:.2f} s",
            f"{f['p95_delay']:.2f} s",
        ]
        for name, f in sim["schedules"].items()
    ]
    other_rows = [
        [workload, name, f"{f['requests_ratio']:.2f}×", f"{f['mean_delay']:.2f} s"]
        for workload, by_name in sim["other_workloads"].items()
        for name, f in by_name.items()
        if not name.startswith("fixed 0.5")
    ]
    names = list(sim["schedules"])
    single_rows = [
        [duration]
        + [f"{by_name[n]['requests']} req, {by_name[n]['delay']:.2f} s" for n in names]
        for duration, by_name in sim["single_predictions"].items()
    ]
    parts = [
        f"""## 5. Schedule efficiency

A prediction costs requests until one of them sees it finished; the *delay*
is the time from its completion on the server to that answer. The
simulation replays {{class}}`~replipoll.PollPolicy`, which is pure, on a
virtual clock exactly as the `PollManager` uses it (poll at once on
submission, then `next_delay(age)` after each answer that is not terminal,
jitter seeded), over {sim["predictions"]:,} predictions drawn from a
lognormal with median {sim["workload"]["median"]:g} s and sigma
{sim["workload"]["sigma"]:g} (mean {sim["durations"]["mean"]:g} s, p95
{sim["durations"]["p95"]:g} s, longest {sim["durations"]["max"]:g} s). Answers
are taken as instant: add your round trip to every delay, whatever the
schedule.

{
            _table(
                [
                    "schedule",
                    "requests/prediction",
                    "vs fixed 0.5 s",
                    "mean delay",
                    "p95 delay",
                ],
                rows,
            )
        }

![Requests per prediction against mean detection delay]({"_static/" + PLOT_NAME})

Each curve is one kind of schedule made faster or slower (fixed intervals
from 0.25 s to 4 s; the adaptive shapes with both intervals scaled from ⅓× to
2×); lower and further left is better. The shaded corner is the target.

Predictions of one length (spread over ±10% so that a fixed interval's phase
does not decide): requests, and mean delay.

{_table(["duration", *names], single_rows)}

Other workloads, to show what the shape buys elsewhere:

{_table(["workload", "schedule", "vs fixed 0.5 s", "mean delay"], other_rows)}
"""
    ]
    found = sim.get("search") or []
    if found:
        search_rows = [
            [
                f"{row['min_interval']:g} s",
                f"{row['age_factor']:g}",
                f"{row['max_interval']:g} s",
                f"{row['requests_ratio']:.3f}×",
                f"{row['mean_delay']:.2f} s",
                f"{row['p95_delay']:.2f} s",
            ]
            for row in found
        ]
        half = sim.get("search_min_interval_0.5") or []
        best_half = (
            f"{half[0]['requests_ratio']:.3f}× at {half[0]['mean_delay']:.2f} s"
            if half
            else "none under the delay bound"
        )
        parts.append(f"""**Where the defaults come from.** A grid over `min_interval`,
`age_factor` and `max_interval` (jitter 0.1), on 5,000 of these
predictions, keeping the settings whose mean delay stays under 0.95 s, fewest
requests first:

{
            _table(
                [
                    "min_interval",
                    "age_factor",
                    "max_interval",
                    "requests",
                    "mean delay",
                    "p95 delay",
                ],
                search_rows,
            )
        }

The frontier is flat: about 0.3× the requests at 0.9 s is what a schedule of
this shape can do on this workload, and it needs a first interval of about
1.5 s. With `min_interval` kept at 0.5 s the best is {best_half}.
""")
    if "real" in r:
        real = r["real"]
        real_rows = [
            [
                name,
                f"{pair['real']['requests_per_prediction']:.1f}",
                f"{pair['simulated']['requests_per_prediction']:.1f}",
                f"{pair['real']['mean_delay']:.2f} s",
                f"{pair['simulated']['mean_delay']:.2f} s",
                f"{pair['real']['p95_delay']:.2f} s",
            ]
            for name, pair in real["schedules"].items()
        ]
        parts.append(f"""**Against the fake server.** {
            real["predictions"]
        } predictions with
durations from the same distribution (capped at {real["cap"]:g} s), created with
`POST /predictions` and submitted at once, everything scaled by
{real["scale"]:g} (durations and the schedules' intervals; that leaves the
requests per prediction unchanged and multiplies delays by the scale, which
are scaled back here). The schedules run side by side, one `PollManager`
each; requests are counted per id, delays from the record's `completed_at`
to the moment the future resolved. The simulated column replays the same
durations with the round trip measured in this run.

{
            _table(
                [
                    "schedule",
                    "requests (real)",
                    "requests (simulated)",
                    "mean delay (real)",
                    "mean delay (simulated)",
                    "p95 delay (real)",
                ],
                real_rows,
            )
        }

The real runs send a little fewer requests and notice ends 0.1 to 0.2 s
later than the simulation says: on this loaded machine asyncio's timers fire
a millisecond or two late, and at a scale of {real["scale"]:g} each
millisecond counts {1 / real["scale"]:g} times. The order and the ratios
between the schedules hold.
""")
    return "\n".join(parts)


def findings(results: dict[str, Any]) -> str:
    """What the figures say, what was changed because of them, what remains."""
    parts = ["## What the figures say"]
    if "get" in results:
        v = results["get"]["variants"]
        parts.append(f"""**Requests.** A `Client.get` costs
{v["replipoll"]["x_floor"]:.2f}× a bare aiohttp GET + `json()`; the official
client costs {v["replicate"]["x_floor"]:.1f}× (httpx, then a pydantic
model). Profiling `Client.get` (cProfile, against the bare GET) showed that
most of the difference is decoding the body into a typed, frozen
`Prediction` (three timestamps, two nested records): replipoll's own layers
(id check, URL, budget, retry wrapper) are under ten microseconds. The decoder
was then made cheaper (commit 7c16bae: the field hooks are called directly,
and nanosecond timestamps are detected without scanning; 18.8 → 14.3 µs per
record in a tight loop, and about three times that inside a real request
loop, where caches are cold). What remains is the price of typed records.""")
    if "manager" in results:
        m = results["manager"]
        parts.append(f"""**Polling many.** Per request, the `PollManager` costs
{m["x_saturated_floor"]:.2f}× back-to-back bare GETs, and
{m["x_replayed_floor"]:.2f}× the same requests sent at the same moments by the
barest poller. An earlier version cost 1.69× the saturated floor (1.20× the
replayed one): profiling it (py-spy) showed the manager's own work (queue,
heap, timer, bookkeeping) at a few percent, and the gap in the event loop
itself, woken up for one or two sockets at a time because every id fell due
at its own moment. Due times now go to the nearest point of a 0.2 s grid
(`PollManager(coalesce=0.2)`), so ids due in the same window share one
wake-up and their requests and answers travel together, and the process
works in fewer, longer bursts; with `coalesce=0` the same batch costs
{m["uncoalesced_us"]:.0f} µs per request, so coalescing costs
{m["x_uncoalesced"]:.2f}× of that. A poll moves earlier only within its
policy's jitter, so on average it is not later than its schedule says
(section 5 includes the grid).

Since commit b26ac54 an answer byte for byte the same as the id's previous
one (a prediction still queued, or running without new logs: most polls) is
neither parsed nor decoded again; side by side with the commit before it
(`bench/compare.py`, 4 rounds) a managed request cost 0.83× (rounds
0.77–1.00) as much. What remains, by a py-spy profile of this batch at
commit e6a6a02 (one batch, 200 samples a second, the time each function
spent itself): aiohttp 46% of the client's CPU, the event loop (asyncio)
24%, URLs (yarl) 6%, JSON under 1%, and replipoll's own code 21%: the
manager's queue, timers and bookkeeping 8% (the buckets of due polls 2% of
it), the transport's frames around each aiohttp call 6% (most of it on the
line of the `async with` around aiohttp's request and the `await` of it:
entering and leaving them, aiohttp's objects freed as they end), the learned
schedule 4%, reading the server's hints 1%, decoding records 1%. (After
b26ac54 the same profile gave aiohttp 51%, asyncio 15%, replipoll 22%.) The
floors spend the same aiohttp, loop and URL work per request; what
separates the manager from the saturated one is that 21%, and the loop
waking for fewer
sockets at a time when polls fall due at their own moments: the replayed
floor (the same requests at the same moments) itself costs
{m["replayed_floor_us"] / m["saturated_floor_us"]:.2f}× the saturated one.

The ratio to the saturated floor is only as steady as that floor, and as
the batch's pace. In this run the floor measured
{m["saturated_floor_us"]:.0f} µs per request and the manager
{m["us_per_request"]:.0f} µs ({m["x_saturated_floor"]:.2f}×, rounds
{_spread(m.get("x_saturated_floor_rounds"))}), at {m["requests_per_id"]:.1f}
requests per id. In the full run before it (28 November, commit b26ac54)
the floor measured 180 µs and the manager 224 µs (1.20×, rounds
1.12–1.76), at 11.2 requests per id. The same schedule made fewer requests
then: the batch had less of the machine and polled later than its schedule,
so in bigger bunches, which likely cost less per request (not measured
apart). Side by side with the commit before this run's
changes (`bench/compare.py --base bbaed99`, 4 rounds, the same morning), the
manager cost 0.94× its CPU per request (rounds 0.88–1.21): no change made
it dearer. The targets against the saturated floor (1.5× and 1.3×) held in
the run before, not in this one; against the replayed floor, the same
requests at the same moments, the manager costs
{m["x_replayed_floor"]:.2f}× (rounds {_spread(m.get("x_replayed_floor_rounds"))}).""")
    fast = _fast_findings(results)
    if fast:
        parts.append(fast)
    if "scale" in results:
        sc = results["scale"]
        per_id = sc["memory"][-1]["scheduled_bytes_per_id"]
        parts.append(f"""**Scale.** About {per_id:.0f} bytes of the manager's own per
tracked id, the largest part the id's `asyncio.Future` (which carries the
id's bookkeeping: one object per id) and its timer entries. CPU per
request does not grow with the ids tracked once a request is involved; the
manager alone costs {_after_step(sc["stub"])}{
            ": the working set leaving the L2 cache, not an algorithm"
            if _stepped(sc["stub"])
            else ""
        } (section 3).{_million_finding(sc)}""")
    if "rate" in results:
        limits = results["rate"]["limits"]
        own = sum(r["client_over_limit"] for r in limits)
        sent = (
            "replipoll never sent a request over it"
            if own == 0
            else f"replipoll sent {own} requests over it (see below)"
        )
        worst = min(r["ratio"] for r in limits)
        full = results["rate"]["burst"]
        same = sum(r["server_429s"] for r in limits if r["client_burst"] >= full)
        lower = sum(r["server_429s"] for r in limits if r["client_burst"] < full)
        slack = (
            "With a burst below the provider's (half of it here), that slack "
            "absorbed them: no 429 at all."
            if lower == 0
            else "With a burst below the provider's (half of it here) the server "
            f"counted {lower}: a stall longer than that slack bunches requests "
            "past it too."
        )
        parts.append(f"""**Rate budget.** The achieved rate is at least {worst:.1%}
of the limit, and {sent}. The server still counted a few 429s
({same} in all) when the manager's burst equalled the server's: at exactly
`R` with the same burst there is no slack, and a stall of either process on
this loaded machine bunches requests on the way. {slack}

An earlier budget booked each request a slot ahead and let it sleep until
then; when the event loop stalled, the overdue sleepers woke together and
2 to 6 requests left over the limit at 500 requests/s. Now a slot is taken
when the request leaves: waiters queue first-in first-out behind one timer,
which wakes as many as may leave at that moment, and times the next turn
only once they have (see
{{doc}}`/explanation/schedule-and-budget`).""")
    if "schedule" in results:
        parts.append(_schedule_findings(results["schedule"]["simulation"]))
    if "learned" in results:
        parts.append(_learned_findings(results["learned"]))
    if "sweep" in results:
        parts.append(_sweep_findings(results["sweep"]))
    return "\n\n".join(parts)


def _fast_findings(results: dict[str, Any]) -> str:
    """The fast path's paragraph: both ratios to the default floor, the targets."""
    get = results.get("get", {}).get("variants", {}).get(FAST)
    manager = results.get("manager", {})
    if get is None and "x_fast_saturated_floor" not in manager:
        return ""
    said = []
    if get is not None:
        default = (
            results["get"]
            .get("fast_path_default", {})
            .get("x_floor", results["get"]["variants"]["replipoll"]["x_floor"])
        )
        ratio = _with_spread(get["x_floor"], get.get("x_floor_rounds"))
        said.append(
            f"a `Client.get` costs {ratio} the default floor (without it: "
            f"{default:.2f}×; target ≤ {FAST_GET_TARGET:g}×: "
            f"{_yes(get['x_floor'] <= FAST_GET_TARGET)})"
        )
    if "x_fast_saturated_floor" in manager:
        m = manager
        worst = max(m["x_fast_saturated_floor"], m["x_fast_replayed_floor"])
        said.append(
            "a `PollManager` request "
            + _with_spread(
                m["x_fast_saturated_floor"], m.get("x_fast_saturated_floor_rounds")
            )
            + f" the saturated floor and {m['x_fast_replayed_floor']:.2f}× the "
            f"replayed one (without it: {m['x_saturated_floor']:.2f}× and "
            f"{m['x_replayed_floor']:.2f}×; target ≤ {FAST_MANAGER_TARGET:.1f}×: "
            f"{_yes(worst <= FAST_MANAGER_TARGET)})"
        )
    uvloop_floor = results.get("get", {}).get("variants", {}).get("floor-uvloop")
    if uvloop_floor is not None:
        said.append(
            f"the bare GET itself costs {uvloop_floor['x_floor']:.2f}× the "
            "default floor on uvloop, the least a client on that loop could "
            "spend"
        )
    remains = ""
    if get is not None and uvloop_floor is not None:
        bare = uvloop_floor["x_floor"]
        remains = (
            f" What remains: on uvloop, `Client.get` costs "
            f"{get['x_floor'] / bare:.2f}× the bare GET on the same loop, the "
            "part of it that is replipoll's (decoding the typed record, above "
            "all)."
        )
        if bare >= FAST_GET_TARGET:
            remains += (
                f" The {FAST_GET_TARGET:g}× target is below what the bare GET "
                f"itself costs on uvloop ({bare:.2f}×): no client on aiohttp "
                "and uvloop could meet it."
            )
    return f"""**The fast path.** With `pip install 'replipoll[speed]'`
(uvloop's event loop, msgspec parsing the answers), against the same default
floor (asyncio's own loop, the standard library's `json`): {"; ".join(said)}.
msgspec parses a prediction's record (under 1 KB) in about 1 µs where
`json.loads` takes 4 to 5, to the same values; the rest of the saving is the
event loop's.{remains}"""


def _schedule_findings(sim: dict[str, Any]) -> str:
    """The schedule paragraphs: the first defaults, the current ones, the trade."""

    def find(prefix: str) -> tuple[str, dict[str, Any]] | None:
        return next(
            ((n, f) for n, f in sim["schedules"].items() if n.startswith(prefix)),
            None,
        )

    def single(duration: str, name: str) -> dict[str, Any]:
        return dict(sim["single_predictions"].get(duration, {}).get(name, {}))

    official_name = next(n for n in sim["schedules"] if n.startswith("fixed 0.5"))
    default_name, default = find("replipoll default") or ("", {})
    previous, proposed = find("previous default"), find("proposed default")
    paragraphs = []
    if previous is not None:
        prev = previous[1]
        paragraphs.append(f"""**Schedule.** replipoll's first defaults
(`min_interval=0.5`, `age_factor=0.15`, `max_interval=2`: "previous default" in
the tables) spend {prev["requests_ratio"]:.2f}× the official client's
requests at {prev["mean_delay"]:.2f} s mean delay: the target of ⅓ at ≤ 1 s
is {_yes(_meets(prev))}. Polling every half second for the first seconds is
the cost: few predictions end that early, so those polls mostly find nothing.
The plot shows more: on *mean* delay, a fixed interval does as well as any
schedule of this shape. What a growing interval buys is fewer requests on
long predictions, at a delay that stays a small fraction of their age (see
the one-prediction table).""")
    ten_now = single("about 600 s", default_name).get("requests")
    ten_official = single("about 600 s", official_name).get("requests")
    ten_minutes = (
        f" A ten-minute prediction costs about {ten_now:,} requests (the "
        f"official client: {ten_official:,})."
        if ten_now and ten_official
        else ""
    )
    lead = (
        "The defaults are now"
        if previous is not None
        else "**Schedule.** The defaults are"
    )
    params = _policy_params(default_name)
    described = (
        _describe(*params)
        if params
        else f"`{default_name.removeprefix('replipoll default ')}`."
    )
    frontier = (
        " No setting in the grid search below is both cheaper and quicker."
        if params and _on_search_frontier(sim.get("search") or [], params)
        else ""
    )
    paragraphs.append(f"""{lead} {described} They spend
{default.get("requests_ratio", 0):.2f}× the official client's requests at
{default.get("mean_delay", 0):.2f} s mean delay: the target is
{_yes(_meets(default))}.{frontier}{ten_minutes}""")
    if previous is not None:
        prev_name, prev = previous
        more_delay = default["mean_delay"] - prev["mean_delay"]
        fewer = 1 - default["requests_ratio"] / prev["requests_ratio"]
        by_length = [
            f"{duration}, {now['delay']:.2f} s instead of {then['delay']:.2f} s "
            f"({now['requests']} requests instead of {then['requests']})"
            for duration in sim["single_predictions"]
            if (now := single(duration, default_name))
            and (then := single(duration, prev_name))
        ]
        trade = (
            f"Against the first defaults, the trade is {more_delay:.2f} s more "
            f"delay on average for {fewer:.0%} fewer requests."
        )
        if by_length:
            trade += (
                " By length (the one-prediction table), the delay after the"
                " end: "
                + "; ".join(by_length)
                + ". Where a quick answer matters more than requests, a smaller"
                " `min_interval` buys it back."
            )
        paragraphs.append(trade)
    if proposed is not None:
        prop_name, prop = proposed
        paragraphs.append(
            f"The proposed defaults {prop_name.removeprefix('proposed default ')} "
            f"spend {prop['requests_ratio']:.2f}× at {prop['mean_delay']:.2f} s "
            f"(target {_yes(_meets(prop))}); they are not applied."
        )
    return "\n\n".join(paragraphs)


def _policy_params(name: str) -> tuple[float, float, float] | None:
    """``(min_interval, age_factor, max_interval)`` from a schedule's name."""
    found = re.search(r"\(([\d.]+) s, x([\d.]+), ([\d.]+) s\)", name)
    if found is None:
        return None
    low, factor, high = (float(x) for x in found.groups())
    return low, factor, high


def _describe(low: float, factor: float, high: float) -> str:
    """A schedule as code and in words (its first poll is always at once)."""
    code = (
        f"`PollPolicy(min_interval={low:g}, age_factor={factor:g}, "
        f"max_interval={high:g})`"
    )
    if not factor or low >= high:
        return f"{code}: a poll at once, then every {low:g} s."
    return (
        f"{code}: a poll at once, then every {low:g} s for the first "
        f"{low / factor:.3g} s, then every {factor:.0%} of the age, up to every "
        f"{high:g} s from {high / factor:.3g} s on."
    )


def _on_search_frontier(
    found: list[dict[str, float]], params: tuple[float, float, float]
) -> bool:
    """Whether the search found ``params``, and no row beats it on both counts."""
    keys = ("min_interval", "age_factor", "max_interval")
    row = next((r for r in found if tuple(r[k] for k in keys) == params), None)
    return row is not None and not any(
        other["requests_ratio"] < row["requests_ratio"]
        and other["mean_delay"] < row["mean_delay"]
        for other in found
    )


def _meets(figures: dict[str, Any]) -> bool:
    """Whether a schedule's figures meet issue 6's target."""
    return bool(figures) and (
        figures["requests_ratio"] <= REQUESTS_TARGET
        and figures["mean_delay"] <= DELAY_TARGET
    )


def render(results: dict[str, Any], *, findings: str = "") -> str:
    """The whole of docs/benchmarks.md, from ``results`` (and extra prose)."""
    sections = [
        """# Benchmarks

How much CPU, memory and how many requests replipoll spends, measured against
the floor (the least any Python client on aiohttp could spend) and against
what a user would otherwise pick (the official `replicate` client, version
1.0.7), in the same run, on the same machine. Every figure on this page comes
from one command, which also rewrites this page and its plot:

```console
$ pip install -e '.[bench]'   # or: nox -s bench
$ python bench/run_all.py     # about three quarters of an hour; --quick: a few minutes
```

Each script in `bench/` also runs alone and prints its figures
(`python bench/bench_get.py --quick`, ...); the raw results are in
`bench/results/latest.json`. The fake server always runs in a separate
process (`bench/fake_server.py`, a {class}`~replipoll.testing.FakeReplicate`
with a per-key rate limiter and counters), and CPU time is that of the client
process alone (`time.process_time`: user + system). The machine is small and
shared with other work, so single figures are noisy: runs are repeated and
the tables give medians, and ratios between clients measured in the same run
matter more than absolute microseconds.
""",
        "## The machine\n\n" + _machine(results),
        "## The targets\n\n"
        + _table(
            [
                "target (issue 6; the fast path: issue 15; the learned schedule "
                "and sweeps: issue 14; webhooks: issue 16; Redis: issue 17)",
                "measured",
                "",
            ],
            targets(results),
        ),
    ]
    if findings:
        sections.append(findings)
    l2_bytes = results["machine"].get("l2_cache_bytes")
    for key, section in (
        ("get", _get),
        ("manager", _manager),
        ("scale", lambda r: _scale(r, l2_bytes)),
        ("rate", _rate),
        ("schedule", _schedule),
        ("learned", _learned),
        ("sweep", _sweep),
        ("webhooks", _webhooks),
    ):
        if key in results:
            sections.append(section(results[key]))
    if "redis_budget" in results or "redis_batch" in results:
        sections.append(_redis(results))
    return "\n\n".join(s.strip() for s in sections) + "\n"


#: Targets from issue 14: the learned schedule, and sweeps.
LEARNED_TODAY_TARGET = 0.45
LEARNED_OFFICIAL_TARGET = 0.12
LEARNED_DELAY_TARGET = 1.0
SWEEP_P95_TARGETS = {"5000": 5.0, "100000": 60.0}


def _mid(s: dict[str, Any], unit: str = "", digits: int = 2) -> str:
    """A median with its spread over the rounds: ``1.23 s (1.10-1.31)``."""
    text = f"{s['median']:.{digits}f}{unit}"
    if s["min"] != s["max"]:
        text += f" ({s['min']:.{digits}f}–{s['max']:.{digits}f})"
    return text


def _learned_targets(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return []
    today, official = r["targets"]
    return [
        [
            f"`LearnedPolicy()` ≤ {today['ratio_limit']:g}× the requests of "
            "`PollPolicy()` at no worse mean delay (mixed workload)",
            f"{_mid(r['ratios']['learned_over_today'], '×', 3)}, "
            f"{today['mean_delay']:.2f} s mean delay against "
            f"{today['reference_delay']:.2f} s",
            _yes(today["met"]),
        ],
        [
            f"`LearnedPolicy()` ≤ {official['ratio_limit']:g}× the requests of "
            f"fixed 0.5 s at ≤ {official['delay_limit']:g} s mean delay",
            f"{_mid(r['ratios']['learned_over_official'], '×', 3)}, "
            f"{official['mean_delay']:.2f} s mean delay",
            _yes(official["met"]),
        ],
    ]


def _sweep_targets(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return []
    rows = []
    for ids, c in r["cases"].items():
        if c["target_p95"] is None:
            continue
        sweep, per_id = c["modes"]["sweep"], c["modes"]["per-id"]
        measured = f"{_bounded(sweep, 'p95')} with the defaults"
        verdict = _yes(bool(c["met"]))
        items = c["modes"].get("sweep-list-items")
        if items is not None:
            measured += f", {_bounded(items, 'p95')} with `full_records=False`"
            met = c.get("met_by_mode", {}).get("sweep-list-items")
            verdict += f" (`full_records=False`: {_yes(bool(met))})"
        rows.append(
            [
                f"{int(ids):,} ids, {c['rate_limit']:g} requests/s: sweeps' p95 "
                f"detection delay ≤ {c['target_p95']:g} s",
                f"{measured} (per-id polling: {_bounded(per_id, 'p95')})",
                verdict,
            ]
        )
    return rows


def _bounded(m: dict[str, Any], what: str) -> str:
    """A delay figure, or a lower bound when undetected predictions reach it."""
    s = m[f"{what}_delay"]
    prefix = "> " if m[f"{what}_bound"] else ""
    return prefix + _mid(s, " s", 1 if s["median"] >= 10 else 2)


def _model_name(model: str) -> str:
    return f"`{model}`"


def _learned(r: dict[str, Any]) -> str:
    size = r["size"]
    n, over = size["n"], size["over"]
    measured = r["rounds"][0]["measured"]
    cold = [round_["cold_starts"] for round_ in r["rounds"]]
    model_rows = [
        [
            _model_name(m["model"]),
            f"{m['weight'] / sum(x['weight'] for x in r['models']):.0%}",
            f"{m['median']:g} s",
            f"{m['sigma']:g}",
            f"{m['progress_steps']} steps" if m["progress_steps"] else "none",
        ]
        for m in r["models"]
    ]
    policies = r["policies"]
    official_name = next(iter(policies))
    today_name = next(name for name in policies if name.startswith("PollPolicy()"))

    def ratio(name: str, to: str) -> float:
        """The median over the rounds of each round's ratio of requests."""
        ratios: list[float] = [
            x["policies"][name]["requests_per_prediction"]
            / x["policies"][to]["requests_per_prediction"]
            for x in r["rounds"]
        ]
        return statistics.median(ratios)

    rows = [
        [
            name,
            _mid(f["requests_per_prediction"], "", 1),
            f"{ratio(name, official_name):.3f}×",
            f"{ratio(name, today_name):.2f}×",
            _mid(f["mean_delay"], " s"),
            _mid(f["p95_delay"], " s"),
        ]
        for name, f in policies.items()
    ]
    middle = next(x for x in r["rounds"] if x["seed"] == r["median_round"])
    models = list(next(iter(middle["policies"].values()))["by_model"])
    counts = next(iter(middle["policies"].values()))["by_model"]
    by_model_rows = [
        [name]
        + [
            f"{f['by_model'][m]['requests_per_prediction']:.1f} req, "
            f"{f['by_model'][m]['mean_delay']:.2f} s"
            for m in models
        ]
        for name, f in middle["policies"].items()
    ]
    scaled = (
        f" Every time of the workload is scaled by {size['scale']:g} in this run "
        "(a quick run): its figures are rough."
        if size["scale"] != 1
        else ""
    )
    return f"""## 6. Learned schedule

{{class}}`~replipoll.LearnedPolicy` (the `PollManager`'s default) learns
each model's run and queue times from the predictions that finish, and
reads the tqdm progress bar in the logs. Here it polls a realistic mix
(`replipoll.testing.add_workload`) beside three other schedules:

{_table(["model", "share", "median run", "sigma", "progress bar"], model_rows)}

Each prediction queues 0.1–1 s, or on a cold start (20% of them; in these
rounds {min(cold):.0%}–{max(cold):.0%}) 20–90 s. {n} predictions *arrive*
over {over:g} s at a steady rate, and each id is submitted to the managers
when it is created, so the learned schedules learn online, as they would in
an app. The first {r["warmup"]:.0%} of arrivals are a warm-up; the
{measured} after them are measured: the requests the server received for
each, and its detection delay, from its completion on the server
(`FakeReplicate.timeline`, on `time.monotonic`) to its future being
resolved (`loop.time()` in a done callback, the same clock).{scaled}

The four schedules run at once in one event loop, each in its own
`PollManager` (`sweep=False`: one GET per id and poll; this is about the
schedule) against its own `FakeReplicate` in the same process, holding the
identical workload (same seed: the same ids and timelines, checked).
*fixed 0.5 s* is the official client's schedule (`REPLICATE_POLL_INTERVAL`),
run as `PollPolicy.fixed(0.5)` in a `PollManager` with `coalesce=0` (no
grid): the official client itself is not run here (its cost per request is
section 1). {len(r["rounds"])} rounds (seeds 1 to {len(r["rounds"])}), each in
a process of its own, side by side; medians, with the lowest and highest
round in brackets (a ratio is the median of the rounds' own ratios).

{
        _table(
            [
                "schedule",
                "requests/prediction",
                "vs fixed 0.5 s",
                "vs `PollPolicy()`",
                "mean delay",
                "p95 delay",
            ],
            rows,
        )
    }

By model, in the median round (seed {middle["seed"]}; requests per prediction
and mean delay):

{
        _table(
            [
                "schedule",
                *(f"{_model_name(m)} ({counts[m]['predictions']})" for m in models),
            ],
            by_model_rows,
        )
    }
{_by_start(middle)}"""


def _by_start(middle: dict[str, Any]) -> str:
    """The median round's predictions with and without a cold start."""
    first = next(iter(middle["policies"].values()))
    labels = list(first.get("by_start", {}))
    if not labels:
        return ""
    rows = [
        [name]
        + [
            f"{f['by_start'][label]['requests_per_prediction']:.1f} req, "
            f"{f['by_start'][label]['mean_delay']:.2f} s"
            for label in labels
        ]
        for name, f in middle["policies"].items()
    ]
    header = [
        "schedule",
        *(f"{label} ({first['by_start'][label]['predictions']})" for label in labels),
    ]
    return f"""
The same round, split by queueing: a *cold start* spent 20 s or more in
`starting` (the shortest cold start), *warm* the others:

{_table(header, rows)}
"""


def _learned_findings(r: dict[str, Any]) -> str:
    """Whether the learned schedule's targets are met, and why not when not."""
    policies = r["policies"]
    names = list(policies)
    learned = policies[names[-1]]
    middle = next(x for x in r["rounds"] if x["seed"] == r["median_round"])
    mine = middle["policies"][names[-1]]["by_model"]
    spent = {
        model: m["requests_per_prediction"] * m["predictions"]
        for model, m in mine.items()
    }
    total = sum(spent.values())
    shares = ", ".join(
        f"{_model_name(model)} {share / total:.0%}" for model, share in spent.items()
    )
    said = []
    for t, against in zip(r["targets"], ("`PollPolicy()`", "fixed 0.5 s"), strict=True):
        head = f"Against {against} it spends {t['requests_ratio']:.3f}× the requests"
        if t["met"]:
            said.append(f"{head} (target ≤ {t['ratio_limit']:g}×): met.")
            continue
        why = []
        limit, bound = t["ratio_limit"], t["delay_limit"]
        if t["requests_ratio"] > limit:
            why.append(
                f"the target is ≤ {limit:g}×: that is "
                f"{t['requests_ratio'] / limit:.2f} times as many as it allows"
            )
        if t["mean_delay"] > bound:
            why.append(
                f"its mean delay of {t['mean_delay']:.2f} s is over the "
                f"{bound:.2f} s allowed, by {t['mean_delay'] - bound:.2f} s"
            )
        said.append(f"{head}: **missed**: " + "; ".join(why) + ".")
    today = middle["policies"][names[1]]["by_model"]
    against = ", ".join(
        f"{_model_name(model)} {m['requests_per_prediction']:.1f} against "
        f"{today[model]['requests_per_prediction']:.1f}"
        for model, m in mine.items()
    )
    worst = max(
        mine,
        key=lambda model: (
            mine[model]["requests_per_prediction"]
            / today[model]["requests_per_prediction"]
        ),
    )
    profile = next((m for m in r["models"] if m["model"] == worst), None)
    least = ""
    if profile is not None:
        saved = (
            mine[worst]["requests_per_prediction"]
            / today[worst]["requests_per_prediction"]
        )
        least = (
            f" It saves least on {_model_name(worst)} ({saved:.2f}× "
            f"`PollPolicy()`'s requests): "
            + (
                "no progress bar, and "
                if not profile["progress_steps"]
                else "a progress bar, but "
            )
            + f"run times spread with sigma {profile['sigma']:g}, so the learnt "
            "times say little about when one run ends."
        )
    starts = middle["policies"][names[-1]].get("by_start", {})
    cold_share = ""
    if "cold start" in starts:
        spent_cold = (
            starts["cold start"]["requests_per_prediction"]
            * starts["cold start"]["predictions"]
        )
        count = sum(m["predictions"] for m in starts.values())
        cold_share = (
            f" The {starts['cold start']['predictions'] / count:.0%} of predictions "
            f"with a cold start took {spent_cold / total:.0%} of them "
            f"({starts['cold start']['requests_per_prediction']:.1f} requests each, "
            f"against {starts['warm']['requests_per_prediction']:.1f} for a warm "
            "one): a cold start's length (20 to 90 s) is learnt only as a range, "
            "which is polled at the model's pace."
            if "warm" in starts
            else ""
        )
    return (
        "**Learned schedule.** On the mixed workload (section 6), "
        f"`LearnedPolicy()` spends {_mid(learned['requests_per_prediction'], '', 1)} "
        f"requests per prediction at {_mid(learned['mean_delay'], ' s')} mean delay. "
        + " ".join(said)
        + (
            " Its mean delay is within both targets' bounds: what misses is the "
            "number of requests."
            if all(t["mean_delay"] <= t["delay_limit"] for t in r["targets"])
            and not all(t["met"] for t in r["targets"])
            else ""
        )
        + f" Of its requests in the median round, by model: {shares}; per "
        f"prediction, against `PollPolicy()`'s: {against}.{least}{cold_share}"
    )


#: How the sweep benchmark's modes are named on the page.
SWEEP_MODES = {
    "sweep": "sweeps (`sweep=True`)",
    "sweep-list-items": "sweeps, `full_records=False`",
    "per-id": "per id (`sweep=False`)",
}


def _full_sweep(c: dict[str, Any]) -> float:
    """Pages of a sweep over the whole window: every prediction in it, 100 a page."""
    ids: int = c["case"]["ids"]
    untracked: int = c["case"]["untracked"]
    return math.ceil(ids * (1 + untracked) / 100)


def _sweep(r: dict[str, Any]) -> str:
    cases = r["cases"]
    first = next(iter(cases.values()))
    case = first["case"]
    rate, burst = first["rate_limit"], first["burst"]
    rows = []
    for ids, c in cases.items():
        for mode, m in c["modes"].items():
            rows.append(
                [
                    f"{int(ids):,}",
                    SWEEP_MODES.get(mode, mode),
                    f"{m['detected']['median']:,.0f}",
                    _bounded(m, "mean"),
                    _bounded(m, "p95"),
                    _mid(m["requests_per_prediction"], "", 2),
                    f"{m['list_requests']['median']:,.0f}",
                    f"{m['gets']['median']:,.0f}"
                    + (
                        f" ({m['gets_running']['median']:,.0f})"
                        if "gets_running" in m
                        else ""
                    ),
                ]
            )
    runs = ", ".join(
        f"{int(ids):,} ids: {len(c['rounds'])} "
        f"{'rounds' if len(c['rounds']) > 1 else 'round'} ({c['wall_seconds']:.0f} s)"
        for ids, c in cases.items()
    )
    pages = "; ".join(
        f"at {int(ids):,} ids, {full:,.0f} pages a sweep ({full / rate:.0f} s of "
        f"the budget; sweeps finished in the window of the first round: "
        f"{c['rounds'][0]['modes']['sweep']['sweeps']})"
        for ids, c in cases.items()
        if (full := _full_sweep(c))
    )
    low, high = case["finish"]
    return f"""## 7. Sweeps

A `PollManager(client, rate_limit={rate:g}, burst={burst})` (default
policy) tracks `N` live ids on an account that also holds
{case["untracked"]}× as many predictions it does not track, all created over
the {case["created_over"]:g} s before the manager starts, tracked and
untracked interleaved at random. Each prediction completes at a time drawn
uniformly from {low:g} to {high:g} s after the manager starts; none is
finished when it starts, and every id is submitted at once. The manager runs
for a window of {case["window"]:g} s. The detection delay runs from a
prediction's completion on the server to its future being resolved (both on
`time.monotonic`). A prediction not detected within the window has a delay
longer than the window's end less its completion: it is counted at that
bound, and a figure such bounds reach is a lower bound, shown "> x".
Requests are counted by the server, list pages and GETs apart (in brackets:
GETs of a prediction not finished yet when asked); requests per prediction
are both, over the `N` tracked ids, within the window. A mode that spends
the whole budget sends `{rate:g} × {case["window"]:g} / N` requests per
prediction: what differs is what its requests find.

The same workload runs three times at once, each on its own server
(`bench/fake_server.py` in a process of its own, so that rendering 100-item
pages does not take the client's CPU), one manager each:

- *sweeps*: `sweep=True`, pages of `GET /predictions` (newest first, 100 a
  page) over the tracked ids' creation window. List items lack `logs` (as
  on Replicate), so each id seen finished still gets one GET for its whole
  record.
- *sweeps, `full_records=False`*: the same, but an id a page shows
  finished is resolved with the list item itself (its `logs` are `None`),
  without that GET.
- *per id*: `sweep=False`, one GET per id and poll.

Rounds: {runs}; medians, with the lowest and highest round in brackets.

{
        _table(
            [
                "ids",
                "mode",
                "detected in the window",
                "mean delay",
                "p95 delay",
                "requests/prediction",
                "list pages",
                "GETs (of unfinished)",
            ],
            rows,
        )
    }

A sweep reads every prediction of the account created in the tracked ids'
window, tracked or not: {pages or "no sweep finished"}. Per id, the budget
polls each id once every `N / {rate:g}` s at best.
"""


def _sweep_findings(r: dict[str, Any]) -> str:
    """The sweeps' targets, met or missed, and why."""
    said = []
    for ids, c in r["cases"].items():
        n = int(ids)
        rate = c["rate_limit"]
        low, high = c["case"]["finish"]
        modes = c["modes"]
        sweep, per_id = modes["sweep"], modes["per-id"]
        line = (
            f"At {n:,} ids the sweeps' p95 delay is {_bounded(sweep, 'p95')}, "
            f"{sweep['detected']['median']:,.0f} of {n:,} ends detected in the "
            f"window (per id: {_bounded(per_id, 'p95')}, "
            f"{per_id['detected']['median']:,.0f} detected)"
        )
        items = modes.get("sweep-list-items")
        if items is not None:
            line += (
                f"; with `full_records=False` {_bounded(items, 'p95')}, "
                f"{items['detected']['median']:,.0f} detected"
            )
        if c["target_p95"] is not None:
            line += (
                f". The target of ≤ {c['target_p95']:g} s is "
                f"{_yes(bool(c['met']))} with the defaults"
            )
            if items is not None:
                met = c.get("met_by_mode", {}).get("sweep-list-items")
                line += f" and {_yes(bool(met))} with `full_records=False`"
        if not c["met"]:
            per = _full_sweep(c)
            finishing = n / (high - low)
            share = finishing / rate
            reasons = [
                f"the tracked predictions end at {finishing:,.0f} a second, and "
                "by default each costs a GET for its whole record once a page "
                "shows it finished (list items lack `logs`): those GETs alone "
                "would take "
                + (
                    f"{share:.0%} of {rate:g} requests/s"
                    if share < 1
                    else f"{share:.0f} times the {rate:g} requests/s"
                )
            ]
            if per / rate > (c["target_p95"] or math.inf):
                reasons.append(
                    f"and a sweep over the window is {per:,.0f} pages (every "
                    "prediction of the account created in it, 100 a page), "
                    f"{per / rate:.0f} s of the budget, and in "
                    f"{c['target_p95']:g} s the budget reads "
                    f"{rate * c['target_p95']:,.0f} of them: an end waits for the "
                    "next pass over its page, so the target is out of reach at "
                    f"{rate:g} requests/s on this account, whatever the client"
                )
            running = sweep.get("gets_running", {}).get("median")
            # A worker's worth of first GETs give the sweeps their window;
            # more went to ids the sweeps could have reported.
            if running and running > 2 * 32:
                window = c["case"]["window"]
                reasons.append(
                    f"besides, {running:,.0f} GETs "
                    f"({running / (window * rate):.0%} of the window's budget) "
                    "went to ids not finished yet: each id's first GET, sent "
                    "while the first sweep was still running (new ids join the "
                    "sweeps without a GET only once a sweep has finished)"
                )
            line += ": " + "; ".join(reasons)
        said.append(line + ".")
    return "**Sweeps.** " + " ".join(said)


def plot(results: dict[str, Any], path: Path) -> None:
    """Draw requests per prediction against mean delay, per schedule, to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = results["schedule"]["simulation"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    for (label, points), marker in zip(
        sim["frontier"].items(), ("o", "s", "^", "D"), strict=False
    ):
        ax.plot(
            [p["mean_delay"] for p in points],
            [p["requests_per_prediction"] for p in points],
            marker=marker,
            markersize=3.5,
            linewidth=1.2,
            label=label,
        )
    official = next(f for n, f in sim["schedules"].items() if n.startswith("fixed"))
    ceiling = official["requests_per_prediction"] * REQUESTS_TARGET
    ax.fill_between(
        [0, DELAY_TARGET], 0, ceiling, color="tab:green", alpha=0.12, linewidth=0
    )
    ax.text(0.03, ceiling * 0.5, "target", color="tab:green", fontsize=8)
    by_delay = sorted(sim["schedules"].items(), key=lambda item: item[1]["mean_delay"])
    top = official["requests_per_prediction"] * 1.12
    step = official["requests_per_prediction"] * 0.12
    for i, (name, f) in enumerate(by_delay):
        point = (f["mean_delay"], f["requests_per_prediction"])
        ax.plot(*point, "k*", markersize=9)
        # The points crowd each other and the curves: their names go in a
        # column in the empty upper right, each with a line to its point.
        ax.annotate(
            name,
            point,
            xytext=(1.12, top - i * step),
            textcoords="data",
            fontsize=7.5,
            va="center",
            arrowprops={"arrowstyle": "-", "color": "0.45", "linewidth": 0.7},
        )
    ax.set_xlabel("mean delay between completion and detection (s)")
    ax.set_ylabel("requests per prediction")
    ax.set_title(
        f"Poll schedules on {sim['predictions']:,} simulated predictions "
        f"(lognormal, median {sim['workload']['median']:g} s)",
        fontsize=10,
    )
    ax.set_xlim(0, 2.2)
    ax.set_ylim(0, official["requests_per_prediction"] * 1.6)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


#: The scenarios of bench_webhooks.py, in its order.
WEBHOOK_SCENARIOS = (
    "webhooks",
    "webhooks, 10% lost",
    "polling (the default schedule)",
    "fixed 0.5 s (official client)",
)


def _rounds(r: dict[str, Any], name: str, key: str) -> list[float]:
    return [x[key] for x in r["scenarios"][name] if x.get(key) is not None]


def _span_of(values: list[float], unit: str = "", digits: int = 2) -> str:
    """Median of the rounds, with the lowest and highest in brackets."""
    import statistics

    med = statistics.median(values)
    text = f"{med:.{digits}f}{unit}"
    if min(values) != max(values):
        text += f" ({min(values):.{digits}f}–{max(values):.{digits}f})"
    return text


def _webhook_targets(r: dict[str, Any] | None) -> list[list[str]]:
    if r is None:
        return []
    targets = r["targets"]
    hooks, lossy = WEBHOOK_SCENARIOS[0], WEBHOOK_SCENARIOS[1]
    requests = _rounds(r, hooks, "requests_per_prediction")
    overhead = [o * 1000 for o in _rounds(r, hooks, "overhead")]
    latency = [x * 1000 for x in _rounds(r, hooks, "mean_webhook_latency")]
    worst = _rounds(r, lossy, "max_lost_delay")
    resolved = all(x["n"] == r["n"] for x in r["scenarios"][lossy])
    bound = targets["safety_interval"]
    return [
        [
            f"webhooks on, {r['n']:,} predictions: ≤ "
            f"{targets['requests_per_prediction']:g} requests per prediction",
            _span_of(requests, "", 3),
            _yes(max(requests) <= targets["requests_per_prediction"]),
        ],
        [
            "webhooks on: mean detection delay ≤ webhook latency + "
            f"{targets['overhead'] * 1000:.0f} ms",
            f"latency {_span_of(latency, ' ms', 1)}, plus "
            f"{_span_of(overhead, ' ms', 1)}",
            _yes(max(overhead) <= targets["overhead"] * 1000),
        ],
        [
            "10% of webhooks lost: every prediction resolves, within the "
            f"safety net's bound ({bound:g} s after its end while its model is "
            "new)",
            f"all resolved: {'yes' if resolved else 'no'}; worst "
            f"{_span_of(worst, ' s', 1)}",
            _yes(resolved and max(worst) <= bound + 0.5),
        ],
    ]


def _webhooks(r: dict[str, Any]) -> str:
    rows = []
    for name in WEBHOOK_SCENARIOS:
        rows.append(
            [
                name,
                _span_of(_rounds(r, name, "requests_per_prediction"), "", 3),
                _span_of(_rounds(r, name, "mean_delay"), " s", 3),
                _span_of(_rounds(r, name, "p95_delay"), " s", 3),
                _span_of(_rounds(r, name, "max_delay"), " s", 2),
            ]
        )
    hooks, lossy, polling, fixed = WEBHOOK_SCENARIOS
    requests = _rounds(r, hooks, "requests_per_prediction")
    ratio_polling = [
        a / b
        for a, b in zip(
            requests, _rounds(r, polling, "requests_per_prediction"), strict=True
        )
    ]
    ratio_fixed = [
        a / b
        for a, b in zip(
            requests, _rounds(r, fixed, "requests_per_prediction"), strict=True
        )
    ]
    lost = _rounds(r, lossy, "lost_found")
    targets = r["targets"]
    return f"""## 8. Create and push (webhooks)

One workload, four ways of learning that each prediction ended. A round
creates {r["n"]:,} predictions at once with `PollManager.run_many` against a
`FakeReplicate` in the same process (seeded run times of 1 to 6 s, queue
times up to 0.5 s) and waits for all of them:

- *webhooks*: each prediction is created with a `webhook` (its `completed`
  event only) pointing at a loopback aiohttp app serving
  `replipoll.webhook_handler`, which verifies each signed delivery and
  pushes the record to the manager; polls are only the safety net (the
  defaults: `webhook_grace={targets["webhook_grace"]:g}`,
  `safety_interval={targets["safety_interval"]:g}`);
- *webhooks, 10% lost*: the same, with the fake server dropping 10% of the
  deliveries;
- *polling*: no webhook, the manager's defaults (learned schedule, sweeps);
- *fixed 0.5 s*: no webhook, every id polled every 0.5 s, the official
  client's schedule.

Requests per prediction count its create and every `GET` of it (list pages,
shared, as pages over {r["n"]:,}). The detection delay runs from a
prediction's completion on the server to its result in the `run_many` loop
(both on `time.monotonic`). {r["rounds"]} rounds, each scenario in a process
of its own; medians, with the lowest and highest round in brackets.

{
        _table(
            [
                "scenario",
                "requests / prediction",
                "mean delay",
                "p95 delay",
                "worst delay",
            ],
            rows,
        )
    }

With webhooks, a prediction costs its create and nothing else:
{_span_of(ratio_polling, "×", 3)} the requests of polling with the default
schedule and {_span_of(ratio_fixed, "×", 3)} those of the official client's
schedule, and its result reaches the caller
{_span_of([o * 1000 for o in _rounds(r, hooks, "overhead")], " ms", 1)} after
the webhook reached the app (the webhook itself took
{_span_of([x * 1000 for x in _rounds(r, hooks, "mean_webhook_latency")], " ms", 1)}
on loopback). With 10% lost, {_span_of(lost, "", 0)} predictions a round
were found by the safety polls, the worst
{_span_of(_rounds(r, lossy, "max_lost_delay"), " s", 1)} after it ended. Every
prediction here was created at once, before the model had been seen
finishing, so each first safety poll was set {targets["safety_interval"]:g} s
after its create; the webhooks that did arrive taught the model within
seconds, and the safety polls moved to each prediction's expected finish
plus {targets["webhook_grace"]:g} s.
"""


#: Targets from issue 17: one key's budget across processes, a batch across
#: workers.
REDIS_RATE_SHARE_TARGET = 0.95


def _redis_targets(results: dict[str, Any]) -> list[list[str]]:
    rows: list[list[str]] = []
    r = results.get("redis_budget")
    if r and r.get("shared"):
        shared, rate, burst = r["shared"], r["rate"], r["burst"]
        windows = [x["max_1s_window"] for x in shared]
        share = [x["achieved_ratio"] * 100 for x in shared]
        during = [x["during_pause"] for x in shared]
        rows += [
            [
                f"{r['processes']} processes on one `RedisBudget`, R = {rate:g}/s: "
                f"never over R + burst ({rate + burst:g}) in any 1-s window",
                _span_of(windows, "", 0),
                _yes(max(windows) <= rate + burst),
            ],
            [
                f"… and at ≥ {REDIS_RATE_SHARE_TARGET:.0%} of R",
                _span_of(share, " %", 1),
                _yes(min(share) >= REDIS_RATE_SHARE_TARGET * 100),
            ],
            [
                "… and one 429 with `Retry-After` pauses all of them: 0 requests "
                "before it expires",
                _span_of(during, "", 0),
                _yes(max(during) == 0),
            ],
        ]
    b = results.get("redis_batch")
    if b:
        rows += _redis_batch_targets(b)
    return rows


def _redis(results: dict[str, Any]) -> str:
    parts = ["## 9. Past one process (Redis)"]
    r = results.get("redis_budget")
    if r:
        parts.append(_redis_budget(r))
    b = results.get("redis_batch")
    if b:
        parts.append(_redis_batch(b))
    return "\n\n".join(parts)


def _redis_budget(r: dict[str, Any]) -> str:
    text = ""
    if r.get("shared"):
        shared, rate, burst = r["shared"], r["rate"], r["burst"]

        def span(key: str, unit: str = "", digits: int = 0, k: float = 1) -> str:
            return _span_of([x[key] * k for x in shared], unit, digits)

        text += f"""### One key's budget, four processes

{r["processes"]} processes, each with its own `Client`, `PollManager` and
`RedisBudget` (its own connection) on one key at R = {rate:g} requests a
second, bursts of {burst}, poll ids on one `FakeReplicate`, which logs when
each request arrives; then the server answers one request with a 429 and
`Retry-After: {r["retry_after"]:g}`. {len(shared)} rounds; medians, with the
lowest and highest round in brackets.

{
            _table(
                ["figure", "measured", "target"],
                [
                    [
                        "most requests in any 1-s window, as they arrived",
                        span("max_1s_window"),
                        f"≤ R + burst = {rate + burst:g}",
                    ],
                    [
                        "… as they were sent (handed to aiohttp)",
                        span("max_1s_window_sent"),
                        "",
                    ],
                    [
                        "rate reached",
                        span("achieved_ratio", " %", 1, 100),
                        f"≥ {REDIS_RATE_SHARE_TARGET:.0%} of R",
                    ],
                    [
                        "requests from any process during the pause",
                        span("during_pause"),
                        "0",
                    ],
                    [
                        "… already in flight when the 429 left",
                        span("in_flight_at_429"),
                        "",
                    ],
                    [
                        "first request after the 429",
                        span("first_after_pause", " s", 3),
                        f"≥ {r['retry_after']:g} s",
                    ],
                ],
            )
        }
"""
    cost = r.get("cost")
    if cost:

        def of(variant: str, key: str) -> list[float]:
            return [x[key] for x in cost[variant]]

        def ratio(a: str, b: str, key: str) -> str:
            return _span_of(
                [x / y for x, y in zip(of(a, key), of(b, key), strict=True)], "×"
            )

        rows = [
            [
                label,
                _span_of(of(variant, "cpu_us"), " µs", 0),
                _span_of(of(variant, "latency_us"), " µs", 0),
                ratio(variant, "floor", "cpu_us"),
            ]
            for variant, label in (
                ("floor", "aiohttp `GET` + `json()` (the floor)"),
                ("local", "`Client.get`, a local `RateBudget`"),
                ("redis", "`Client.get`, a `RedisBudget`"),
            )
        ]
        added_cpu = [
            x - y
            for x, y in zip(of("redis", "cpu_us"), of("local", "cpu_us"), strict=True)
        ]
        added_wall = [
            x - y
            for x, y in zip(
                of("redis", "latency_us"), of("local", "latency_us"), strict=True
            )
        ]
        text += f"""
### What Redis costs a request

{r["gets"]:,} `GET`s one after another, each variant in a fresh interpreter
(the order rotating by round), CPU of the client process; a rate high enough
that no request waits, so the figure is the script's round trip itself.

{_table(["client", "CPU / request", "latency / request", "CPU ÷ floor"], rows)}

A `RedisBudget` costs a request {_span_of(added_cpu, " µs", 0)} of CPU and
{_span_of(added_wall, " µs", 0)} of latency more than a local budget
({ratio("redis", "local", "cpu_us")} its CPU): one `EVALSHA` through
redis-py. Requests waiting in one process queue locally and only the first
asks Redis, so the cost is per request sent, not per waiter; where it
matters, it buys a limit that four processes cannot spend four times.
"""
    return text


def _redis_batch_targets(b: dict[str, Any]) -> list[list[str]]:
    rounds = b["rounds"]
    first = rounds[0]
    lost = [r["lost"] for r in rounds]
    duplicated = [r["duplicated"] for r in rounds]
    reclaim = [r["reclaim_seconds"] for r in rounds if r["reclaim_seconds"]]
    bound = first["reclaim_after"] * 1.25 + 1
    return [
        [
            f"a {first['ids']:,}-id batch across {first['workers']} workers, one "
            "killed with `kill -9`: 0 lost, 0 duplicated",
            f"lost {_span_of(lost, '', 0)}, duplicated {_span_of(duplicated, '', 0)}",
            _yes(max(lost) == 0 and max(duplicated) == 0),
        ],
        [
            f"… the dead worker's ids taken over within `reclaim_after` "
            f"({first['reclaim_after']:g} s) and a quarter",
            _span_of(reclaim, " s", 1) if reclaim else "never",
            _yes(len(reclaim) == len(rounds) and max(reclaim) <= bound),
        ],
    ]


def _redis_batch(b: dict[str, Any]) -> str:
    rounds = b["rounds"]
    first = rounds[0]

    def span(key: str, unit: str = "", digits: int = 1) -> str:
        return _span_of([r[key] for r in rounds if r[key] is not None], unit, digits)

    rows = [
        ["ids with no result (lost)", span("lost", "", 0), "0"],
        ["ids with more than one result (duplicated)", span("duplicated", "", 0), "0"],
        ["ids the killed worker held", span("killed_held", "", 0), ""],
        [
            "from the kill to all of them taken over",
            span("reclaim_seconds", " s"),
            f"≤ {first['reclaim_after'] * 1.25:g} s",
        ],
        ["the whole batch", span("total_seconds", " s"), ""],
        ["ids a second", span("ids_per_second", "", 0), ""],
        ["requests per id", span("requests_per_id", "", 3), ""],
    ]
    return f"""### A batch across workers, one killed

{first["ids"]:,} ids on the benchmarks' fake server (each prediction finishes
1 to 2 s after the server starts, so the figures are the batch's own
overhead, not a poll schedule's), {first["workers"]} worker processes of
`replipoll poll --redis URL --batch NAME --from ids.txt`, each given the
whole file (the load is shared too: the union is loaded once), on a
`redis-server` of the round's own. When half the batch is done, one worker
is killed with `SIGKILL` while it holds ids; the others take them over after
`--reclaim-after` ({first["reclaim_after"]:g} s, the default) and exit once
the batch is done. The results stream is then read back raw (not through
`replipoll batch export`, which would hide a duplicate). {len(rounds)}
rounds; medians, with the lowest and highest round in brackets.

{_table(["figure", "measured", "target"], rows)}

Results are written once each by a Lua script that adds the id to the
batch's done set, appends the result and acknowledges the entry in one
atomic step: a worker killed at any moment has done all three for an id, or
none. The entries it held stay pending in the consumer group until a
survivor claims them (`XAUTOCLAIM`). The take-over time is the setting, not a cost:
a shorter `--reclaim-after` takes over sooner, at the price of more
heartbeats (each worker touches its pending entries every quarter of it).
"""
