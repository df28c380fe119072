"""The ``replipoll`` command line, end to end: subprocesses against a fake server.

The fake server runs in this process, on its own event loop in a thread, so
tests can script predictions and read its counters while the CLI, a separate
process, talks to it over loopback.
"""

from __future__ import annotations

import io
import json
import os
import pty
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from replipoll import ConfigurationError
from replipoll._cli import main
from replipoll._cli._resultlog import read_log
from replipoll.testing import FakeReplicate, Fault

from tests.server_thread import ServerThread
from tests.terminal import read_terminal

#: The key the CLI gets from the environment; it must never be printed.
SECRET = "r8_CliSecret-never-print-4b1d"
CLI = [
    sys.executable,
    "-c",
    "import sys; from replipoll._cli import main; sys.exit(main())",
]


@pytest.fixture(scope="module")
def fake() -> Iterator[ServerThread]:
    with ServerThread(FakeReplicate(api_key=SECRET)) as server:
        yield server


def env(**extra: str) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REPLIPOLL_")
        and k not in {"REPLICATE_API_TOKEN", "COLUMNS"}
    }
    return {**base, "REPLICATE_API_TOKEN": SECRET, **extra}


def run(
    *args: str, input: str | None = None, timeout: float = 30, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI to the end; check the key leaked nowhere."""
    done = subprocess.run(
        [*CLI, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env(**extra),
    )
    assert SECRET not in done.stdout
    assert SECRET not in done.stderr
    assert "Traceback" not in done.stderr
    return done


@pytest.fixture
def invoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run the CLI in this process (faster than a subprocess) for simple cases."""

    def call(*args: str, **extra: str) -> tuple[int, str, str]:
        for key, value in env(**extra).items():
            monkeypatch.setenv(key, value)
        code = main(list(args))
        out, err = capsys.readouterr()
        assert SECRET not in out + err
        assert "Traceback" not in err
        return code, out, err

    return call


def lines_of(path: Path) -> list[dict[str, Any]]:
    """Parse a results file strictly: every line whole JSON, newline-terminated."""
    data = path.read_bytes()
    assert data.endswith(b"\n") or not data
    return [json.loads(line) for line in data.splitlines()]


def wait_for_lines(
    path: Path, n: int, proc: subprocess.Popen[bytes], limit: float = 15
) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, "the CLI ended before writing enough lines"
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} lines in {path} after {limit}s")


# -- the package and --help --------------------------------------------------------


def test_import_replipoll_does_not_import_click_or_rich() -> None:
    """The CLI's dependencies stay out of the library's import path."""
    code = (
        "import sys, replipoll; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'click', 'rich'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "command", [[], ["demo"], ["get"], ["poll"], ["download"], ["fake-server"]]
)
def test_help_everywhere(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every command answers --help with usage and exit status 0."""
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: replipoll")
    if command in (["get"], ["poll"], ["download"]):
        assert "--provider" in out
        assert "--api-key-env" in out


# -- configuration errors: exit 2, one line -------------------------------------------


@pytest.mark.parametrize(
    ("args", "extra_env", "message"),
    [
        (["get", "abc"], {"REPLICATE_API_TOKEN": ""}, "set the REPLICATE_API_TOKEN"),
        (["get", "abc", "--api-key-env", "NOPE_KEY"], {}, "set the NOPE_KEY"),
        (["get", "abc", "--provider", "deerapi"], {}, "DEERAPI_KEY"),
        (["get", "abc", "--base-url", "ftp://x"], {}, "base_url"),
        (["poll"], {}, "no prediction ids"),
        (["poll", "--from", "/no/such/file"], {}, "cannot read ids"),
        (["get", "abc", "--provider", "nope"], {}, "Invalid value"),
    ],
)
def test_configuration_errors_exit_2_with_one_line(
    args: list[str],
    extra_env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Missing key, bad URL, no ids, unknown provider: status 2, nothing sent."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", SECRET)
    monkeypatch.delenv("DEERAPI_KEY", raising=False)
    monkeypatch.delenv("NOPE_KEY", raising=False)
    for key, value in extra_env.items():
        monkeypatch.setenv(key, value)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err
    assert SECRET not in err


# -- get -------------------------------------------------------------------------


def test_get_shows_a_prediction_and_prints_json(
    fake: ServerThread, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """Human-readable by default, the provider's JSON with --json; exit 0."""
    (pid,) = fake.add(1, n_files=2)
    code, out, _ = invoke("get", pid, "--base-url", fake.base_url)
    assert code == 0
    assert "succeeded" in out
    assert f"/files/{pid}/out-1.bin" in out
    code, out, _ = invoke("get", pid, "--json", "--base-url", fake.base_url)
    assert code == 0
    record = json.loads(out)
    assert record["id"] == pid
    assert record["status"] == "succeeded"


def test_get_through_a_gateway_with_another_key_variable(
    fake: ServerThread, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """--provider cometapi with --api-key-env: gateway paths, key from NAME."""
    (pid,) = fake.add(1)
    gateway = fake.base_url.replace("/v1", "/replicate/v1")
    code, out, err = invoke(
        "get",
        pid,
        "--json",
        "--provider",
        "cometapi",
        "--base-url",
        gateway,
        "--api-key-env",
        "MY_KEY",
        MY_KEY=SECRET,
        REPLICATE_API_TOKEN="",
    )
    assert code == 0, err
    assert json.loads(out)["version"] == "hidden"


def test_a_wrong_key_is_reported_without_echoing_either_key(
    fake: ServerThread, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """401: exit 1, the message names the problem, no key appears."""
    code, out, err = invoke(
        "get", "abc", "--base-url", fake.base_url, REPLICATE_API_TOKEN="r8_wrong-key"
    )
    assert code == 1
    assert "status 401" in err
    assert "r8_wrong-key" not in out + err


def test_get_unknown_id_is_one_line_with_the_request_id(fake: ServerThread) -> None:
    """Through the console script: a 404 exits 1 with one line naming status and
    request id, and no traceback."""
    script = Path(sys.executable).with_name("replipoll")
    command = [str(script)] if script.exists() else CLI  # installed, or not
    done = subprocess.run(
        [*command, "get", "no-such-prediction", "--base-url", fake.base_url],
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
    )
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "status 404" in line
    assert "request id req_" in line
    assert SECRET not in done.stdout + done.stderr


# -- poll ------------------------------------------------------------------------


def test_poll_streams_json_lines_and_exits_0_when_all_succeeded(
    fake: ServerThread, tmp_path: Path
) -> None:
    """Ids from arguments, a file and stdin; one line per id; quiet when piped."""
    a, b, c, d = fake.add(4, duration=0.2)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"# a comment\n{b}\n\n{c}\n{a}\n")
    done = run(
        "poll",
        a,
        "-",
        "--from",
        str(ids_file),
        "--base-url",
        fake.base_url,
        input=f"{d}\n",
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted([a, b, c, d])
    assert {r["result"] for r in records} == {"succeeded"}
    assert all(r["prediction"]["output"] for r in records)
    # Piped: no progress bar, no colours; one summary line.
    (summary,) = done.stderr.splitlines()
    assert "4 succeeded" in summary
    assert "\x1b[" not in done.stderr
    quiet = run("poll", a, "-q", "--base-url", fake.base_url)
    assert quiet.returncode == 0
    assert quiet.stderr == ""


def test_poll_sweeps_the_list_and_can_keep_its_items(
    fake: ServerThread, tmp_path: Path
) -> None:
    """--sweep on --list-records: pages of the list report the ids; a finished
    id's line holds its list item (no logs); the summary counts the sweeps."""
    # Still running when the command starts (it takes a second): a sweep, not
    # the first GETs, sees them finish.
    ids = fake.add(30, duration=4.0)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids))
    done = run(
        "poll",
        "--from",
        str(ids_file),
        "--sweep",
        "on",
        "--list-records",
        "--base-url",
        fake.base_url,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert {r["result"] for r in records} == {"succeeded"}
    assert any("logs" not in r["prediction"] for r in records)
    off = run("poll", ids[0], "--sweep", "off", "--base-url", fake.base_url)
    assert off.returncode == 0, off.stderr
    assert "logs" in json.loads(off.stdout)["prediction"]


def test_poll_exits_1_when_some_failed_or_erred(
    fake: ServerThread, tmp_path: Path
) -> None:
    """A failed prediction and an unknown id: exit 1, each with its own line."""
    (ok,) = fake.add(1)
    (failed,) = fake.add(1, outcome="failed")
    out = tmp_path / "results.jsonl"
    done = run(
        "poll", ok, failed, "ghost-id", "--out", str(out), "--base-url", fake.base_url
    )
    assert done.returncode == 1
    by_id = {r["id"]: r for r in lines_of(out)}
    assert by_id[ok]["result"] == "succeeded"
    assert by_id[failed]["result"] == "failed"
    assert by_id[failed]["prediction"]["error"]
    ghost = by_id["ghost-id"]
    assert ghost["result"] == "error"
    assert ghost["error"]["type"] == "NotFoundError"
    assert ghost["error"]["status"] == 404
    assert ghost["error"]["request_id"].startswith("req_")


def test_rerun_with_the_same_out_skips_finished_ids(
    fake: ServerThread, tmp_path: Path
) -> None:
    """Finished ids are not polled again; errored ones are; each id has one line."""
    done_ids = fake.add(3)
    out = tmp_path / "results.jsonl"
    first = run(
        "poll", *done_ids, "ghost-2", "--out", str(out), "--base-url", fake.base_url
    )
    assert first.returncode == 1
    before = {pid: fake.requests_for(pid) for pid in [*done_ids, "ghost-2"]}
    (late,) = fake.add(1)
    second = run(
        "poll",
        *done_ids,
        late,
        "ghost-2",
        "--out",
        str(out),
        "--base-url",
        fake.base_url,
    )
    assert second.returncode == 1  # the ghost still errs
    assert "3 from earlier runs" in second.stderr
    for pid in done_ids:
        assert fake.requests_for(pid) == before[pid]
    assert fake.requests_for("ghost-2") > before["ghost-2"]
    records = lines_of(out)
    assert [r["id"] for r in records].count(late) == 1
    assert {r["id"] for r in records} == {*done_ids, late, "ghost-2"}


def test_sigkill_mid_run_loses_nothing_and_the_rerun_finishes_each_id_once(
    fake: ServerThread, tmp_path: Path
) -> None:
    """Kill -9 after some lines, tear the last line by hand: the rerun repairs it,
    polls only what is missing, and every id ends with exactly one whole line."""
    ids = [
        fake.call(fake.server.add_prediction, duration=0.1 + 0.15 * i)
        for i in range(24)
    ]
    out = tmp_path / "results.jsonl"
    args = ["poll", "--from", "-", "--out", str(out), "--base-url", fake.base_url]
    proc = subprocess.Popen(
        [*CLI, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    assert proc.stdin is not None
    proc.stdin.write("\n".join(ids).encode() + b"\n")
    proc.stdin.close()
    wait_for_lines(out, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    before = lines_of(out)  # every line written before the kill is whole
    assert 5 <= len(before) < len(ids)
    polled = {r["id"]: fake.requests_for(r["id"]) for r in before}
    with out.open("ab") as file:  # what a write cut by a crash would leave
        file.write(b'{"id":"' + ids[-1].encode() + b'","result":"succ')

    done = run(*args, input="\n".join(ids) + "\n")
    assert done.returncode == 0, done.stderr
    records = lines_of(out)
    assert records[: len(before)] == before
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert {r["result"] for r in records} == {"succeeded"}
    for pid, count in polled.items():  # finished before the kill: not polled again
        assert fake.requests_for(pid) == count
    assert f"{len(before)} from earlier runs" in done.stderr


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(
    fake: ServerThread, tmp_path: Path
) -> None:
    """SIGINT: exit 130, one message with the resume hint, whole lines only."""
    quick = fake.add(2)
    slow = fake.add(3, duration=60)
    out = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [*CLI, "poll", *quick, *slow, "--out", str(out), "--base-url", fake.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    wait_for_lines(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 130
    text = stderr.decode()
    assert "Traceback" not in text
    assert "interrupted" in text
    assert "run the same command again to resume" in text
    assert {r["id"] for r in lines_of(out)} == set(quick)


def test_a_second_writer_to_the_same_out_is_refused(
    fake: ServerThread, tmp_path: Path
) -> None:
    """Two polls appending to one file would interleave: the second exits 2."""
    (slow,) = fake.add(1, duration=60)
    out = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [*CLI, "poll", slow, "--out", str(out), "--base-url", fake.base_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 10
        while fake.requests_for(slow) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        second = run("poll", slow, "--out", str(out), "--base-url", fake.base_url)
        assert second.returncode == 2
        assert "in use by another replipoll process" in second.stderr
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)


def run_on_terminal(*args: str, stream: str = "stderr") -> tuple[int, str]:
    """Run the CLI with standard error (or ``stream="stdout"``: standard output)
    on a pseudo-terminal; return what the terminal received."""
    controller, terminal = pty.openpty()
    on_terminal = {stream: terminal}
    proc = subprocess.Popen(
        [*CLI, *args],
        stdout=on_terminal.get("stdout", subprocess.DEVNULL),
        stderr=on_terminal.get("stderr", subprocess.DEVNULL),
        env=env(COLUMNS="100", TERM="xterm-256color"),
    )
    os.close(terminal)
    screen = read_terminal(controller, proc)
    return proc.wait(10), screen


def test_progress_bar_on_a_terminal(fake: ServerThread) -> None:
    """On a terminal: a live bar by status, then the summary table."""
    ids = fake.add(5, duration=0.5)
    code, screen = run_on_terminal("poll", *ids, "--base-url", fake.base_url)
    assert code == 0
    assert "━" in screen  # the bar
    assert "\x1b[" in screen  # drawn with terminal escapes
    assert "succeeded 5" in screen  # the legend under the bar
    assert "429s honoured" in screen  # the summary table
    assert SECRET not in screen


# -- demo, download, fake-server --------------------------------------------------


def test_demo_runs_offline_and_ends_with_a_summary() -> None:
    """The README's command: scripted batch on loopback, summary table, exit 0."""
    done = run(
        "demo",
        "--predictions",
        "40",
        "--time-scale",
        "0.15",
        "--no-progress",
        REPLICATE_API_TOKEN="",
    )
    assert done.returncode == 0, done.stderr
    for expected in (
        "succeeded",
        "failed",
        "aborted",
        "error",
        "requests sent",
        "429s honoured",
        "wall time",
    ):
        assert expected in done.stdout


async def test_demo_script_has_every_outcome_and_survives_its_faults() -> None:
    """In-process: each outcome appears, the 404s are the only errors, and the
    429 storm and the sprinkled faults were met and retried."""
    from replipoll._cli._demo import run_demo
    from rich.console import Console

    screen = io.StringIO()
    result = await run_demo(
        predictions=40,
        seed=3,
        scale=0.1,
        concurrency=8,
        console=Console(file=screen, force_terminal=True, width=100),
        progress=True,
    )
    outcomes = dict(result.outcomes)
    assert sum(outcomes.values()) == 42
    assert outcomes["error"] == 2  # the two ids nobody created
    assert outcomes["aborted"] == 1
    assert outcomes["failed"] == 4
    assert outcomes["canceled"] == 2
    assert int(result.figures["429s honoured"]) > 0
    assert int(result.figures["retries"]) > 0
    assert "━" in screen.getvalue()


def test_download_saves_outputs_and_exits_1_for_a_failed_prediction(
    fake: ServerThread, tmp_path: Path, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """Files land under DEST/ID/; a rerun finds them present; failures exit 1."""
    (pid,) = fake.add(1, n_files=2)
    done = run("download", pid, "--dest", str(tmp_path), "--base-url", fake.base_url)
    assert done.returncode == 0, done.stderr
    for name in ("out-0.bin", "out-1.bin"):
        saved = tmp_path / pid / name
        assert saved.read_bytes() == fake.call(fake.server.file_content, pid, name)
        assert str(saved) in done.stdout
    code, out, _ = invoke(
        "download", pid, "--dest", str(tmp_path), "--base-url", fake.base_url
    )
    assert code == 0
    assert out.count("present") == 2

    (failed,) = fake.add(1, outcome="failed")
    (running,) = fake.add(1, duration=60)
    code, _, err = invoke(
        "download",
        failed,
        running,
        "--dest",
        str(tmp_path),
        "--base-url",
        fake.base_url,
    )
    assert code == 1
    assert f"{failed} failed" in err
    assert f"{running} is still" in err
    assert "--wait" in err


def test_fake_server_command_serves_until_interrupted(tmp_path: Path) -> None:
    """`replipoll fake-server` prints its URL, answers the test key, stops on ^C."""
    ids_file = tmp_path / "ids.txt"
    proc = subprocess.Popen(
        [
            *CLI,
            "fake-server",
            "--scenario",
            "demo",
            "--predictions",
            "3",
            "--ids-file",
            str(ids_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        base_url = first.split()[4]
        assert base_url.startswith("http://127.0.0.1:")
        while "written to" not in proc.stdout.readline():  # the ids file is ready
            pass
        pid = ids_file.read_text().split()[0]
        request = urllib.request.Request(
            f"{base_url}/predictions/{pid}",
            headers={"Authorization": "Bearer test-key"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response)["id"] == pid
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "Traceback" not in stderr


# -- what the commands show, and how they fail ----------------------------------


def test_get_shows_text_output_a_running_prediction_and_removed_data(
    fake: ServerThread, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """Output that is not a file is shown as JSON; a running prediction has no
    predict time yet; data the provider removed is said to be removed."""
    (text,) = fake.add(1, output={"caption": "a cat"})
    (running,) = fake.add(1, duration=60)
    (removed,) = fake.add(1, extra={"data_removed": True, "output": None})
    code, out, _ = invoke("get", text, "--base-url", fake.base_url)
    assert code == 0
    assert '{"caption": "a cat"}' in out
    assert "predict time" in out
    code, out, _ = invoke("get", running, "--base-url", fake.base_url)
    assert code == 0
    assert "processing" in out
    assert "predict time" not in out
    code, out, _ = invoke("get", removed, "--base-url", fake.base_url)
    assert code == 0
    assert "removed by the provider" in out


def test_download_of_a_text_output_saves_nothing_and_says_so(
    fake: ServerThread, tmp_path: Path, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    (pid,) = fake.add(1, output="just text")
    code, out, _ = invoke(
        "download", pid, "--dest", str(tmp_path), "--base-url", fake.base_url
    )
    assert code == 0
    assert f"{pid}: no output files" in out
    assert list(tmp_path.iterdir()) == []


def test_download_reports_every_problem_on_its_own_line_and_exits_1(
    fake: ServerThread, tmp_path: Path, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """An unknown id, outputs the provider removed, and an expired file URL:
    one error line each, the good file of the same prediction still saved."""
    (removed,) = fake.add(1, extra={"data_removed": True, "output": None})
    (expired,) = fake.add(1, n_files=2)
    fake.call(
        fake.server.add_fault,
        Fault.status(404, "gone"),
        prediction_id=expired,
        files=True,
    )
    code, out, err = invoke(
        "download",
        "ghost-id",
        removed,
        expired,
        "--dest",
        str(tmp_path),
        "--concurrency",
        "1",
        "--base-url",
        fake.base_url,
    )
    assert code == 1
    *errors, summary = err.splitlines()
    assert len(errors) == 3, err
    assert summary.startswith("replipoll: 3 predictions: 2 succeeded, 1 error;")
    assert "1 files saved" in summary
    assert "1 failed" in summary
    assert any("status 404" in line and "ghost-id" in line for line in errors)
    assert (
        f"replipoll: error: {removed}: the provider removed its outputs (data_removed)"
        in errors
    )
    assert any(
        f"/files/{expired}/out-0.bin (404)" in line and "gone" in line
        for line in errors
    )
    assert (tmp_path / expired / "out-1.bin").exists()
    assert not (tmp_path / expired / "out-0.bin").exists()
    assert "out-1.bin" in out


def test_get_says_each_retry_so_it_is_never_silent_while_it_waits(
    fake: ServerThread, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """A single call says each retry as one line (a refused connection once
    kept ``get`` silent for 6 s); -v logs them, richer, instead."""
    (pid,) = fake.add(1)
    fake.call(fake.server.add_fault, Fault.server_error(), prediction_id=pid)
    code, _, err = invoke("-v", "get", pid, "--json", "--base-url", fake.base_url)
    assert code == 0
    assert "retrying" in err
    assert "status 500" in err
    fake.call(fake.server.add_fault, Fault.server_error(), prediction_id=pid)
    code, _, err = invoke("get", pid, "--json", "--base-url", fake.base_url)
    assert code == 0
    (line,) = err.splitlines()
    assert line.startswith(f"replipoll: retrying {pid} in ")
    assert "status 500" in line
    code, _, err = invoke("get", pid, "--json", "--base-url", fake.base_url)
    assert err == ""  # nothing to say when nothing went wrong


def test_replipoll_debug_raises_instead_of_one_line(
    invoke: Callable[..., tuple[int, str, str]],
) -> None:
    """REPLIPOLL_DEBUG=1 (docs/cli.md) lets the exception out, for its traceback."""
    with pytest.raises(ConfigurationError, match="base_url"):
        invoke("get", "abc", "--base-url", "ftp://x", REPLIPOLL_DEBUG="1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope"], "known: demo, chaos, empty"),
        (["--predictions", "3"], "--predictions needs --scenario demo or chaos"),
    ],
)
def test_fake_server_refuses_bad_options_before_listening(
    args: list[str], message: str, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    code, out, err = invoke("fake-server", *args)
    assert code == 2
    assert message in err
    assert out == ""


def test_poll_with_an_out_file_that_cannot_be_opened_exits_2(
    tmp_path: Path, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """Checked before anything is polled: exit 2, one line naming the file."""
    out = tmp_path / "missing-dir" / "results.jsonl"
    code, _, err = invoke("poll", "abc", "--out", str(out))
    assert code == 2
    (line,) = err.splitlines()
    assert f"cannot open {out}" in line


def test_poll_with_an_out_that_is_not_a_regular_file_exits_2(
    invoke: Callable[..., tuple[int, str, str]],
) -> None:
    """/dev/zero would be read forever while looking for finished ids."""
    code, _, err = invoke("poll", "abc", "--out", "/dev/zero")
    assert code == 2
    (line,) = err.splitlines()
    assert "cannot open /dev/zero: not a regular file" in line


def test_poll_with_progress_resumes_and_prints_the_summary_table(
    fake: ServerThread, tmp_path: Path, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """--progress: a rerun says how many ids were already finished, and the
    summary table goes to standard output when the results go to --out."""
    first, second = fake.add(2)
    out = tmp_path / "results.jsonl"
    code, _, _ = invoke(
        "poll", first, "-q", "--out", str(out), "--base-url", fake.base_url
    )
    assert code == 0
    code, stdout, stderr = invoke(
        "poll",
        first,
        second,
        "--progress",
        "--out",
        str(out),
        "--base-url",
        fake.base_url,
    )
    assert code == 0
    assert f"resuming: 1 of 2 ids already finished in {out}" in stderr
    assert "succeeded" in stdout
    assert "429s honoured" in stdout
    assert {r["id"] for r in lines_of(out)} == {first, second}


def test_ctrl_c_during_download_wait_exits_130_quietly(fake: ServerThread) -> None:
    """download --wait on a long prediction: SIGINT stops it with status 130 and
    one line, no traceback."""
    (pid,) = fake.add(1, duration=60)
    proc = subprocess.Popen(
        [
            *CLI,
            "download",
            pid,
            "--wait",
            "--dest",
            "unused",
            "--base-url",
            fake.base_url,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 15
        while fake.requests_for(pid) == 0 and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert stderr.decode().splitlines() == ["replipoll: interrupted"]
    assert stdout == b""


@pytest.mark.parametrize(("where", "offset"), [("detail", 270), ("header", 180)])
def test_a_key_echoed_near_a_cut_reaches_neither_output_nor_results(
    fake: ServerThread, tmp_path: Path, where: str, offset: int
) -> None:
    """A gateway echoing the key right where replipoll shortens its words:
    no 8 characters of it in stdout, stderr or the results file."""
    pid = fake.add(1, duration=0.0)[0]
    fake.call(
        fake.server.add_fault,
        Fault.echoed_key(401, offset=offset, where=where),
        prediction_id=pid,
        times=None,
    )
    out = tmp_path / "results.jsonl"
    done = run("-v", "poll", pid, "--out", str(out), "--base-url", fake.base_url)
    got = run("get", pid, "--base-url", fake.base_url)
    assert done.returncode == got.returncode == 1
    pieces = {SECRET[i : i + 8] for i in range(len(SECRET) - 7)}
    texts = [done.stdout, done.stderr, got.stdout, got.stderr, out.read_text()]
    assert "401" in done.stderr + out.read_text()
    for text in texts:
        assert not [piece for piece in pieces if piece in text], text


# -- forgiving input: URLs, JSON, JSON Lines, comments ---------------------------


def test_poll_reads_urls_json_arrays_and_json_lines_from_arguments_files_and_stdin(
    fake: ServerThread, tmp_path: Path
) -> None:
    """Page and API URLs as arguments, a pretty-printed JSON array with a BOM
    and CRLF ends as --from, JSON Lines with comments on stdin: each id is
    polled once, and nothing else reaches the server."""
    a, b, c, d, e, f = fake.add(6)
    ids_file = tmp_path / "ids.json"
    array = f'[\r\n  "{b}",\r\n  {{"id": "{c}"}},\r\n  "{a}"\r\n]\r\n'
    ids_file.write_bytes(b"\xef\xbb\xbf" + array.encode())
    stdin = (
        f"# exported from the dashboard\n"
        f'{{"id": "{d}", "status": "succeeded"}}\n'
        f"\n"
        f"{e}   # the retry\n"
        f"https://api.replicate.com/v1/predictions/{f}/cancel?x=1\n"
    )
    done = run(
        "poll",
        f"https://replicate.com/p/{a}",
        f"HTTP://127.0.0.1:1/v1/predictions/{b}/",
        "-",
        "--from",
        str(ids_file),
        "--base-url",
        fake.base_url,
        input=stdin,
    )
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == sorted([a, b, c, d, e, f])
    for pid in (a, b, c, d, e, f):
        assert fake.requests_for(pid) == 1
    for junk in ("[", "]", f'"{b}",', "#"):
        assert fake.requests_for(junk) == 0


def test_a_results_file_works_as_an_ids_file(
    fake: ServerThread, tmp_path: Path
) -> None:
    """`--from results.jsonl` polls the ids of a results file (JSON Lines)."""
    ids = fake.add(3)
    first = tmp_path / "first.jsonl"
    assert (
        run("poll", *ids, "--out", str(first), "--base-url", fake.base_url).returncode
        == 0
    )
    second = tmp_path / "second.jsonl"
    done = run(
        "poll", "--from", str(first), "--out", str(second), "--base-url", fake.base_url
    )
    assert done.returncode == 0, done.stderr
    assert sorted(r["id"] for r in lines_of(second)) == sorted(ids)


def test_a_file_given_as_an_id_exits_2_and_asks_for_from(
    fake: ServerThread, tmp_path: Path
) -> None:
    """`replipoll poll ids.txt`: one line, exit 2, the file name never polled."""
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("file-id-1\n")
    done = run("poll", str(ids_file), "--base-url", fake.base_url)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"replipoll: error: {ids_file} is a file, not a prediction id: "
        "did you mean --from FILE?"
    ]
    assert done.stdout == ""
    assert fake.requests_for(str(ids_file)) == fake.requests_for("file-id-1") == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"first-ok\r\ndef\r\n\xff\xfeghi\r\n", "{file} line 3 is not UTF-8 text"),
        (
            b"first-ok\nnot/an id\n",
            "{file} line 2: invalid prediction id 'not/an id': contains '/'; "
            "an id is understood bare, in a page URL (https://replicate.com/p/ID) "
            "or in an API URL (.../predictions/ID)",
        ),
        (
            b"first-ok\n\n  ab#c\n",
            "{file} line 3: invalid prediction id 'ab#c': contains '#'",
        ),
        (
            b'{"id": "first-ok"}\n{"result": "failed"}\n',
            '{file} line 2 is a JSON object without a string "id"',
        ),
        (
            b'[\n  "first-ok",\n  "a b"\n]\n',
            "{file} line 3: invalid prediction id 'a b': contains whitespace",
        ),
    ],
)
def test_an_ids_file_that_cannot_be_read_exits_2_with_one_line_naming_the_line(
    fake: ServerThread,
    tmp_path: Path,
    invoke: Callable[..., tuple[int, str, str]],
    content: bytes,
    message: str,
) -> None:
    """Not UTF-8, an invalid id, a JSON object without an id: exit 2 before
    anything is polled, one line, no "internal error"."""
    ids_file = tmp_path / "ids.txt"
    ids_file.write_bytes(content)
    code, out, err = invoke(
        "poll", "--from", str(ids_file), "--base-url", fake.base_url
    )
    assert code == 2
    assert err.splitlines() == [f"replipoll: error: {message.format(file=ids_file)}"]
    assert out == ""
    assert fake.requests_for("first-ok") == 0


@pytest.mark.parametrize(
    "arg", ["a/b", "https://replicate.com/acme/flux", "replicate.com/p/abc"]
)
def test_a_slash_in_an_argument_is_refused_with_the_forms_understood(
    arg: str, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    code, _, err = invoke("poll", arg)
    assert code == 2
    (line,) = err.splitlines()
    assert f"invalid prediction id '{arg}': contains '/'" in line
    assert "https://replicate.com/p/ID" in line


def test_download_reads_ids_the_same_way(
    fake: ServerThread, tmp_path: Path, invoke: Callable[..., tuple[int, str, str]]
) -> None:
    """The same reader serves `download`: a page URL works, a file is refused."""
    (pid,) = fake.add(1, n_files=1)
    code, _, err = invoke(
        "download",
        f"https://replicate.com/p/{pid}",
        "--dest",
        str(tmp_path / "outputs"),
        "--base-url",
        fake.base_url,
    )
    assert code == 0, err
    assert (tmp_path / "outputs" / pid / "out-0.bin").exists()
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text(f"{pid}\n")
    code, _, err = invoke("download", str(ids_file), "--dest", str(tmp_path))
    assert code == 2
    assert "did you mean --from FILE?" in err


# -- --out is only ever a results file -------------------------------------------


@pytest.mark.parametrize(
    ("content", "looks"),
    [
        (b'{"model": "flux", "note": "keep me"}', "line 1 is a JSON object without"),
        (b"abc123\ndef456\n", "line 1 looks like a prediction id"),
        (b'[\n  "abc123"\n]\n', "line 1 is not JSON"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "line 1 is not JSON"),
    ],
)
def test_an_out_file_that_is_not_a_results_file_is_refused_byte_for_byte_unchanged(
    fake: ServerThread, tmp_path: Path, content: bytes, looks: str
) -> None:
    """A one-line JSON file without a newline, an ids file, a JSON array, a
    binary file: exit 2 with one line, the file keeps every byte, nothing is
    polled."""
    (pid,) = fake.add(1)
    out = tmp_path / "mine.json"
    out.write_bytes(content)
    before = out.stat()
    done = run("poll", pid, "--out", str(out), "--base-url", fake.base_url)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        f"replipoll: error: {out} is not a replipoll results file ({looks}"
    )
    assert line.endswith("); choose another --out, or delete it if it is yours")
    assert out.read_bytes() == content
    assert out.stat().st_mtime_ns == before.st_mtime_ns
    assert fake.requests_for(pid) == 0


@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_out_that_is_the_from_file_is_refused(
    fake: ServerThread, tmp_path: Path, spelling: str
) -> None:
    """`--from same.txt --out same.txt`, however spelled: exit 2, the ids
    file unchanged."""
    (pid,) = fake.add(1)
    ids_file = tmp_path / "same.txt"
    ids_file.write_text(f"{pid}\n")
    (tmp_path / "sub").mkdir()
    out = {
        "same": ids_file,
        "dotted": tmp_path / "sub" / ".." / "same.txt",
        "symlink": tmp_path / "link.txt",
    }[spelling]
    if spelling == "symlink":
        out.symlink_to(ids_file)
    done = run(
        "poll", "--from", str(ids_file), "--out", str(out), "--base-url", fake.base_url
    )
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert f"--out {out} is the --from file" in line
    assert ids_file.read_text() == f"{pid}\n"
    assert fake.requests_for(pid) == 0


def test_out_with_ids_from_stdin_is_not_compared_with_a_file(
    fake: ServerThread, tmp_path: Path
) -> None:
    """`--from -` names no file: a results file named "-" is fine."""
    (pid,) = fake.add(1)
    out = tmp_path / "-"
    done = run(
        "poll",
        "--from",
        "-",
        "--out",
        str(out),
        "--base-url",
        fake.base_url,
        input=f"{pid}\n",
    )
    assert done.returncode == 0, done.stderr
    assert [r["id"] for r in lines_of(out)] == [pid]


# -- what comes from a server is shown as text, and written as strict JSON ------------

HOSTILE = [
    "[/bold]",
    "[link=https://x]hidden[/link]",
    "clear \\u001b[2J, \\u001b]8;;https://evil\\u0007link\\u001b]8;;\\u0007 \\u009b1m",
    "lone \\ud800 surrogate",
]


def serve_json(fake: ServerThread, pid: str, body: str, status: int = 200) -> None:
    """Answer every request for ``pid`` with ``body`` as JSON, verbatim."""
    fake.call(
        fake.server.add_fault,
        Fault.status(status, body, content_type="application/json"),
        prediction_id=pid,
        times=None,
    )


@pytest.mark.parametrize("error", HOSTILE)
def test_get_shows_server_text_literally_and_sends_no_escape_of_its_own(
    fake: ServerThread, error: str
) -> None:
    """Markup is not interpreted, controls are shown as \\xNN, a lone surrogate
    is replaced: exit 0, and not one escape byte in the output."""
    pid = f"hostile{HOSTILE.index(error)}"
    body = (
        f'{{"id": "{pid}", "status": "failed", "model": "[b]m[/b]\\u001b[31m",'
        f' "error": "{error}"}}'
    )
    serve_json(fake, pid, body)
    done = run("get", pid, "--base-url", fake.base_url)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    assert "\x9b" not in done.stdout
    expected = (
        json.loads(f'"{error}"')
        .replace("\x1b", "\\x1b")
        .replace("\x07", "\\x07")
        .replace("\x9b", "\\x9b")
        .replace("\ud800", "\ufffd")
    )
    assert expected in done.stdout
    assert "[b]m[/b]\\x1b[31m" in done.stdout
    as_json = run("get", pid, "--json", "--base-url", fake.base_url)
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout)["error"] == json.loads(f'"{error}"')


def test_on_a_terminal_server_escapes_are_shown_never_sent(
    fake: ServerThread,
) -> None:
    """With standard output on a terminal (where rich styles its text), the
    server's clear-screen and hyperlink sequences arrive as visible text."""
    pid = "hostile-terminal"
    body = (
        f'{{"id": "{pid}", "status": "failed", "error": "[/bold] \\u001b[2J'
        f' \\u001b]8;;https://evil\\u0007click\\u001b]8;;\\u0007 \\ud800"}}'
    )
    serve_json(fake, pid, body)
    code, screen = run_on_terminal(
        "get", pid, "--base-url", fake.base_url, stream="stdout"
    )
    assert code == 0, screen
    assert "\x1b[2J" not in screen
    assert "\x1b]8;;" not in screen
    assert "[/bold] \\x1b[2J \\x1b]8;;https://evil\\x07click" in screen
    assert "\ufffd" in screen
    assert "internal error" not in screen


def test_a_one_line_error_with_server_controls_stays_one_plain_line(
    fake: ServerThread,
) -> None:
    """A 404 whose message holds an escape sequence and a newline: one line on
    standard error, the sequence shown, not sent."""
    pid = "hostile-404"
    serve_json(
        fake, pid, '{"detail": "gone \\u001b[2J[/bold]\\nsecond line"}', status=404
    )
    done = run("get", pid, "--base-url", fake.base_url)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "\x1b" not in line
    assert "gone \\x1b[2J[/bold]" in line


def strict_loads(text: str) -> Any:
    """json.loads that refuses NaN and infinities, as strict JSON readers do."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_from_a_server_are_written_as_null(
    fake: ServerThread, tmp_path: Path
) -> None:
    """The results file, the lines on standard output and `get --json` are
    strict JSON: NaN and Infinity become null."""
    pid = "nan-record"
    body = (
        f'{{"id": "{pid}", "status": "succeeded", "output": NaN,'
        ' "metrics": {"predict_time": Infinity, "other": -Infinity}}'
    )
    serve_json(fake, pid, body)
    out = tmp_path / "results.jsonl"
    done = run("poll", pid, "--out", str(out), "--base-url", fake.base_url)
    assert done.returncode == 0, done.stderr
    (line,) = out.read_text().splitlines()
    record = strict_loads(line)
    assert record["prediction"]["output"] is None
    assert record["prediction"]["metrics"] == {"predict_time": None, "other": None}
    streamed = run("poll", pid, "--base-url", fake.base_url)
    assert strict_loads(streamed.stdout) == record
    shown = run("get", pid, "--json", "--base-url", fake.base_url)
    assert shown.returncode == 0
    assert strict_loads(shown.stdout)["metrics"]["predict_time"] is None


# -- the first hour: a batch that fails for one reason, causes, progress -------


def _server_requests(fake: ServerThread) -> int:
    return fake.call(lambda: fake.server.stats.total_requests)


def test_a_wrong_key_stops_the_batch_with_one_line_and_exit_2(
    fake: ServerThread, tmp_path: Path
) -> None:
    """400 ids with a wrong key: a handful of requests, not 400; one line
    naming the host, the 401 and the variable to check; ids not polled are
    not written, so the rerun with the right key polls every one."""
    ids = fake.add(400)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids))
    out = tmp_path / "results.jsonl"
    before = _server_requests(fake)
    done = run(
        "poll", "--from", str(ids_file), "--out", str(out), "--base-url",
        fake.base_url, REPLICATE_API_TOKEN="r8_wrong-key-0000",
    )  # fmt: skip
    assert done.returncode == 2
    assert _server_requests(fake) - before < 40
    (line,) = done.stderr.splitlines()
    assert line.startswith("replipoll: error: the key was refused by 127.0.0.1:")
    assert "401" in line
    assert "check REPLICATE_API_TOKEN" in line
    assert "ids not polled; fix it and run the same command again" in line
    assert len(out.read_text().splitlines()) < 40
    again = run("poll", "--from", str(ids_file), "--out", str(out), "-q",
                "--base-url", fake.base_url)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert len(read_log(out).finished()) == 400


def test_a_custom_key_variable_is_the_one_named(fake: ServerThread) -> None:
    ids = fake.add(5)
    done = run(
        "poll", *ids, "--api-key-env", "MY_KEY", "--base-url", fake.base_url,
        MY_KEY="r8_wrong-key-0000",
    )  # fmt: skip
    assert done.returncode == 2
    assert "check MY_KEY" in done.stderr


@pytest.mark.parametrize(
    ("base", "code", "says"),
    [
        ("{origin}", 2, "is the base URL right? It usually ends in /v1"),
        ("{origin}/v1/predictions", 2, "is the base URL right?"),
        ("http://127.0.0.1:9/v1", 1, "could not connect to 127.0.0.1:9: "),
    ],
    ids=["without /v1", "ending in /predictions", "a closed port"],
)
def test_a_wrong_base_url_or_a_closed_port_says_so_in_one_line(
    fake: ServerThread, base: str, code: int, says: str
) -> None:
    ids = fake.add(30)
    origin = fake.base_url.removesuffix("/v1")
    done = run("poll", *ids, "--base-url", base.format(origin=origin), timeout=60)
    assert done.returncode == code, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("replipoll: error: ")
    assert says in line
    assert "ssl:default" not in line


def test_the_summary_counts_error_causes_and_verbose_says_each(
    fake: ServerThread,
) -> None:
    good = fake.add(3)
    ghosts = ["ghost-a", "ghost-b"]
    done = run("poll", *good, *ghosts, "--base-url", fake.base_url)
    assert done.returncode == 1
    assert "[404 NotFoundError x 2]" in done.stderr
    loud = run("-v", "poll", *good, *ghosts, "--base-url", fake.base_url)
    for ghost in ghosts:
        assert f"{ghost}: Not found." in loud.stderr


def test_get_takes_a_page_url(fake: ServerThread) -> None:
    (pid,) = fake.add(1)
    done = run("get", f"https://replicate.com/p/{pid}", "--base-url", fake.base_url)
    assert done.returncode == 0, done.stderr
    assert pid in done.stdout


def test_progress_shows_rate_time_left_and_a_paused_countdown(
    fake: ServerThread,
) -> None:
    """During a Retry-After the bar says it is paused and when it resumes,
    instead of sitting still as if hung."""
    ids = fake.add(20, duration=0.2)
    fake.call(fake.server.add_fault, Fault.rate_limited(3.0), prediction_id=ids[0])
    code, screen = run_on_terminal("poll", *ids, "--base-url", fake.base_url)
    assert code == 0
    assert "paused by the provider (Retry-After), resuming in" in screen
    assert "/s" in screen  # the rate
    assert "eta" in screen


def test_a_resumed_batch_counts_the_earlier_runs_and_says_so(
    fake: ServerThread, tmp_path: Path
) -> None:
    done_ids = fake.add(4)
    more = fake.add(2, duration=0.3)
    out = tmp_path / "results.jsonl"
    assert run("poll", *done_ids, "--out", str(out), "-q",
               "--base-url", fake.base_url).returncode == 0  # fmt: skip
    code, screen = run_on_terminal(
        "poll", *done_ids, *more, "--out", str(out), "--base-url", fake.base_url
    )
    assert code == 0
    assert "(4 done in earlier runs)" in screen
    assert "6/6" in screen  # the bar counts the whole batch


def test_download_shows_a_progress_bar_and_a_summary_table(
    fake: ServerThread, tmp_path: Path
) -> None:
    ids = fake.add(6, duration=0.3, n_files=3)
    code, screen = run_on_terminal(
        "download", *ids, "--wait", "--dest", str(tmp_path), "--base-url",
        fake.base_url,
    )  # fmt: skip
    assert code == 0
    assert "waiting and saving" in screen
    assert "files saved" in screen
    assert "18" in screen
    assert str(tmp_path) not in screen  # no line per file scrolling past
    assert len(list(tmp_path.glob("*/*.bin"))) == 18
