"""Time the machine did not run the tests: a watcher of host stalls.

A shared virtual machine is sometimes not scheduled at all for a while (a
second or more, seen on 2-core CI machines): every clock jumps, and a test
that bounds how long something took fails although the code did nothing
wrong. :data:`WATCH` is a thread that sleeps a few milliseconds at a time
and notes every wake-up that came much later than asked: those gaps are
time nobody in the process could run. A timing bound then reads

    assert WATCH.ran(start, time.monotonic()) < 1.0

which is the wall time minus the stalls seen in between. A hang still
fails: a loop that waits is scheduled, and its waiting counts.

This module is also a pytest plugin (see the root ``conftest.py``): a test
that fails while the machine stands still runs again (see below).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Any

import pytest
from _pytest.runner import runtestprotocol

#: How long the watcher sleeps between looks (seconds): 50 wake-ups a second.
TICK = 0.02
#: A wake-up this much later than asked is a stall of the machine.
#: (Above the interpreter's 5 ms switch interval, well below a test's bound.)
THRESHOLD = 0.05


class StallWatch:
    """Gaps in which this process did not run, from a sleeping thread's view."""

    def __init__(self) -> None:
        self._starts: list[float] = []
        self._ends: list[float] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (once; later calls do nothing)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="stall-watch", daemon=True
                )
                self._thread.start()

    def _watch(self) -> None:
        while True:
            before = time.monotonic()
            time.sleep(TICK)
            after = time.monotonic()
            if after - before - TICK > THRESHOLD:
                with self._lock:
                    self._starts.append(before + TICK)
                    self._ends.append(after)

    def stalled(self, start: float, end: float) -> float:
        """Seconds of stalls seen between ``start`` and ``end`` (monotonic)."""
        with self._lock:
            first = bisect.bisect_right(self._ends, start)
            total = 0.0
            for began, ended in zip(
                self._starts[first:], self._ends[first:], strict=True
            ):
                if began >= end:
                    break
                total += min(ended, end) - max(began, start)
            return total

    def ran(self, start: float, end: float) -> float:
        """``end - start``, without the stalls seen in between."""
        return end - start - self.stalled(start, end)

    def wait_calm(self, quiet: float, limit: float) -> float:
        """Block until no stall was seen for ``quiet`` seconds; at most ``limit``.

        Returns the seconds waited. A rerun that starts right after a stall
        often meets the next one: stalls come in bursts.
        """
        began = time.monotonic()
        while True:
            now = time.monotonic()
            with self._lock:
                last = self._ends[-1] if self._ends else began - quiet
            if now - last >= quiet or now - began >= limit:
                return now - began
            time.sleep(min(0.1, quiet - (now - last)))


#: The watcher of this test session (started by :func:`pytest_configure`).
WATCH = StallWatch()


# -- a failed test that the machine stood still in runs again --------------------
#
# A test that failed while the machine stood still for STALLED seconds or
# more runs again, up to RERUNS times, once the machine has run CALM seconds
# without a stall (waiting CALM_WAIT at most); its last run is its verdict.
# A test that fails without a stall fails at once, as does one that fails
# every run. REPLIPOLL_TEST_RERUNS=0 turns this off. The summary at the end lists
# every test run again, with the stalls it saw.

#: Stalls (in all) during a failed run that make it run again.
STALLED = 0.1
#: Runs again at most.
RERUNS = 3
#: A rerun waits for this long a time without stalls (seconds) ...
CALM = 2.0
#: ... but no longer than this.
CALM_WAIT = 30.0

_reruns: list[tuple[str, list[float]]] = []


def _enabled() -> bool:
    """Whether failed tests may run again (``REPLIPOLL_TEST_RERUNS``)."""
    return os.environ.get("REPLIPOLL_TEST_RERUNS", "1") != "0"


def pytest_configure(config: pytest.Config) -> None:
    """Start the watcher with the session: it sees every test whole."""
    WATCH.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> bool | None:
    """Run ``item``; again while it fails with the machine standing still."""
    if not _enabled():
        return None
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    stalls: list[float] = []
    for attempt in range(RERUNS + 1):
        start = time.monotonic()
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        failed = any(report.failed for report in reports)
        if not failed or attempt == RERUNS or item.session.shouldstop:
            break
        end = time.monotonic()
        # The watcher notes a stall when it wakes up after it; this thread
        # may have woken first. Give it a tick or two to catch up.
        time.sleep(3 * TICK)
        stalled = WATCH.stalled(start, end)
        if stalled < STALLED:
            break
        stalls.append(stalled)
        _forget_failures(item)
        WATCH.wait_calm(CALM, CALM_WAIT)
    if stalls:
        _reruns.append((item.nodeid, stalls))
        for report in reports:
            report.sections.append(
                (
                    "reruns",
                    f"run {len(stalls) + 1} times: the machine stood still for "
                    + ", ".join(f"{s:.2f} s" for s in stalls)
                    + " in the failed runs",
                )
            )
    for report in reports:
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _forget_failures(item: pytest.Item) -> None:
    """Let a failed fixture or setup be tried again, not replayed from a cache."""
    info = getattr(item, "_fixtureinfo", None)
    for definitions in getattr(info, "name2fixturedefs", {}).values():
        for definition in definitions:
            cached = getattr(definition, "cached_result", None)
            if cached is not None and cached[2] is not None:
                definition.cached_result = None
    stack = item.session._setupstate.stack
    for node, (finalizers, error) in list(stack.items()):
        if error is not None:
            stack[node] = (finalizers, None)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name every test run again, and the stalls that made it."""
    if not _reruns:
        return
    terminalreporter.section("run again after the machine stood still")
    for nodeid, stalls in _reruns:
        terminalreporter.line(
            f"{nodeid}: {len(stalls)} more run(s); stalls in the failed runs: "
            + ", ".join(f"{s:.2f} s" for s in stalls)
        )
