"""The stall watcher and the reruns of ``tests/stalls.py``, on a real stall.

The process stops itself (``SIGSTOP``, a helper sends ``SIGCONT`` 0.3 s
later): to every clock that is a stall of the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.stalls import TICK, WATCH

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="stops itself with SIGSTOP"
)

ROOT = Path(__file__).resolve().parent.parent
STOP = 0.3


def stand_still(seconds: float = STOP) -> None:
    """Stop this process for ``seconds``, as an unscheduled VM would."""
    pid = os.getpid()
    subprocess.run(
        ["sh", "-c", f"kill -STOP {pid}; sleep {seconds}; kill -CONT {pid}"],
        check=True,
    )
    # The watcher notes the stall when it wakes up: let it (this thread may
    # have been scheduled first).
    time.sleep(3 * TICK)


def test_the_watcher_sees_a_stop_and_ran_leaves_it_out() -> None:
    start = time.monotonic()
    stand_still()
    end = time.monotonic()
    stalled = WATCH.stalled(start, end)
    assert STOP - 0.1 <= stalled <= end - start
    assert WATCH.ran(start, end) == pytest.approx(end - start - stalled)
    assert WATCH.stalled(end + 1, end + 2) == 0.0  # not yet happened


def test_a_rerun_waits_for_calm_after_a_stall() -> None:
    stand_still()
    assert WATCH.wait_calm(0.5, limit=5.0) >= 0.2
    assert WATCH.wait_calm(0.0, limit=5.0) == pytest.approx(0.0, abs=0.05)


def run_pytest(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run pytest on one test file in a fresh interpreter, with the plugin."""
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REPLIPOLL_TEST_RERUNS": "1"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.stalls",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


INNER = """
    import os, subprocess
    from pathlib import Path

    RUNS = Path(__file__).with_name("runs")

    def count() -> int:
        runs = int(RUNS.read_text()) if RUNS.exists() else 0
        RUNS.write_text(str(runs + 1))
        return runs

    def test_inner() -> None:
        runs = count()
        {body}
"""


def test_a_test_failing_in_a_stall_runs_again_and_its_rerun_is_the_verdict(
    tmp_path: Path,
) -> None:
    stop = f"kill -STOP {{os.getpid()}}; sleep {STOP}; kill -CONT {{os.getpid()}}"
    body = f"""if runs == 0:
            subprocess.run(["sh", "-c", f"{stop}"], check=True)
            assert False, "failed in a stall"
    """
    done = run_pytest(tmp_path, INNER.format(body=body))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "runs").read_text() == "2"
    assert "run again after the machine stood still" in done.stdout
    assert "test_inner.py::test_inner: 1 more run(s)" in done.stdout


def test_a_test_failing_without_a_stall_fails_at_once(tmp_path: Path) -> None:
    done = run_pytest(tmp_path, INNER.format(body='assert False, "plain failure"'))
    assert done.returncode == 1, done.stdout + done.stderr
    assert (tmp_path / "runs").read_text() == "1"
    assert "plain failure" in done.stdout
    assert "run again" not in done.stdout
