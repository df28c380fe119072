"""Shared by the benchmark scripts: the server process, child runs, statistics.

Every benchmark talks to a fake server running in *another* process
(``bench/fake_server.py``), so the CPU time a benchmark reads with
:func:`time.process_time` (user + system, all threads) is the client's alone.
Only the standard library is imported here, so that ``bench_schedule`` (and
the smoke test that imports it) needs nothing beyond replipoll.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
API_KEY = "test-key"  # FakeReplicate's default key

#: One scripted prediction: seconds in ``processing`` from the server's start,
#: and the final status; optionally a third number, its creation time in
#: seconds from the server's start (see ``fake_server.py``).
Script = Sequence[tuple[float, str] | tuple[float, str, float]]

FOREVER = 1e9  # a duration that outlasts any benchmark: "processing" throughout


@dataclass(frozen=True)
class Server:
    """A running ``bench/fake_server.py``."""

    base_url: str  # .../v1
    ids: list[str]
    pid: int

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``, the base URL the official client wants."""
        return self.base_url.removesuffix("/v1")

    def stats(self) -> dict[str, Any]:
        """The server's counters (``GET /_bench/stats``)."""
        with urllib.request.urlopen(f"{self.origin}/_bench/stats") as answer:
            data: dict[str, Any] = json.load(answer)
        return data

    def arrivals(self) -> list[tuple[float, str]]:
        """When each API request for a prediction arrived (``--log-arrivals``)."""
        with urllib.request.urlopen(f"{self.origin}/_bench/arrivals") as answer:
            return [(float(t), str(pid)) for t, pid in json.load(answer)]

    def reset_stats(self) -> None:
        """Zero the server's counters."""
        request = urllib.request.Request(f"{self.origin}/_bench/reset", method="POST")
        with urllib.request.urlopen(request):
            pass


@contextlib.contextmanager
def fake_server(
    script: Script,
    *,
    rate_limit: float | None = None,
    burst: int = 10,
    seed: int = 0,
    log_arrivals: bool = False,
) -> Iterator[Server]:
    """Run ``bench/fake_server.py`` with ``script`` in a child process."""
    with tempfile.TemporaryDirectory(prefix="replipoll-bench-") as tmp:
        script_file, ids_file = Path(tmp, "script.json"), Path(tmp, "ids.txt")
        script_file.write_text(json.dumps([list(entry) for entry in script]))
        args = [
            sys.executable,
            str(BENCH / "fake_server.py"),
            "--script",
            str(script_file),
            "--ids-file",
            str(ids_file),
            "--burst",
            str(burst),
            "--seed",
            str(seed),
        ]
        if rate_limit is not None:
            args += ["--rate-limit", str(rate_limit)]
        if log_arrivals:
            args.append("--log-arrivals")
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if " on " not in line:
                raise RuntimeError(f"the fake server did not start: {line!r}")
            base_url = line.split(" on ", 1)[1].split()[0]
            ids = ids_file.read_text().split()
            yield Server(base_url, ids, proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


@contextlib.contextmanager
def ids_file(ids: Sequence[str]) -> Iterator[str]:
    """A temporary file of ``ids``, one a line, for child processes to read."""
    with tempfile.TemporaryDirectory(prefix="replipoll-ids-") as tmp:
        path = Path(tmp, "ids.txt")
        path.write_text("\n".join(ids))
        yield str(path)


def run_child(
    script: str,
    *args: str,
    timeout: float = 900,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``bench/<script> --child ...`` in a fresh interpreter; parse its JSON line.

    A fresh process per measurement keeps one client's imports, caches and
    garbage from weighing on the next one's CPU time. ``env`` is added to
    this process's environment (``""`` removes a variable).
    """
    environ = dict(os.environ)
    for name, value in (env or {}).items():
        if value:
            environ[name] = value
        else:
            environ.pop(name, None)
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--child", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
    )
    if done.returncode:
        sys.stderr.write(done.stderr[-4000:])
        done.check_returncode()
    out = done.stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def fast_path_installed() -> bool:
    """Whether the speed extra is installed: msgspec and uvloop."""
    return all(find_spec(name) is not None for name in ("msgspec", "uvloop"))


def cpu() -> float:
    """CPU seconds used by this process so far: user + system, all threads."""
    return time.process_time()


def median(values: Sequence[float]) -> float:
    """The median (of a non-empty sequence)."""
    return statistics.median(values)


def span(values: Sequence[float], unit: str = "", digits: int = 2) -> str:
    """Median and spread of a figure's rounds, e.g. ``1.02 (1.01-1.04)``."""
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}{unit}"
    return f"{med:.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def machine() -> dict[str, Any]:
    """What ran the benchmarks: CPU, cores, load, Python and library versions."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in (
        "replipoll",
        "aiohttp",
        "attrs",
        "cattrs",
        "python-backoff",
        "uvloop",
        "msgspec",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    for package in ("replicate", "httpx", "matplotlib"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "l2_cache_bytes": _l2_cache_bytes(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def _l2_cache_bytes() -> int | None:
    """The size of one core's L2 cache (Linux sysfs), or None if unknown."""
    with contextlib.suppress(OSError, ValueError):
        for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
            if (index / "level").read_text().strip() == "2":
                size = (index / "size").read_text().strip().upper()
                scale = {"K": 2**10, "M": 2**20}.get(size[-1:], 1)
                return int(size.rstrip("KM")) * scale
    return None


def git_commit() -> str | None:
    """The commit being measured (``+dirty`` if the work tree has changes)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "replipoll"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}+dirty" if dirty else commit


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as indented JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def emit(data: object) -> None:
    """Print one JSON line: how a ``--child`` run hands its figures back."""
    print(json.dumps(data), flush=True)
