"""``replipoll run``, end to end against a real FakeReplicate on loopback.

The fake runs on its own event loop in a thread (``ServerThread``), so tests
read what it created (``created()``, ``stats.creations``) while the CLI runs
in this process (``invoke``) or in a subprocess (killed, interrupted). Every
run checks that the API key appears in neither output.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from replipoll import Prediction, Status
from replipoll._cli import main
from replipoll._cli._inputs import MAX_FILE_SIZE, input_digest, parse_input
from replipoll._cli._runone import OneRun
from replipoll.testing import FakeReplicate, Fault

from .test_cli import CLI, SECRET, ServerThread, env, lines_of

Invoke = Callable[..., tuple[int, str, str]]
MODEL = "acme/echo"
#: Lines that are not an input's outcome.
STEPS = {"creating", "created"}


@pytest.fixture
def fake() -> Iterator[ServerThread]:
    """A fresh server per test, so that its count of creates is the test's."""
    with ServerThread(FakeReplicate(api_key=SECRET)) as server:
        yield server


@pytest.fixture
def invoke(
    fake: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Invoke:
    """Run ``replipoll run ...`` in this process against ``fake``."""

    def call(*args: str, **extra: str) -> tuple[int, str, str]:
        for key, value in env(**extra).items():
            monkeypatch.setenv(key, value)
        code = main(["run", *args, "--base-url", fake.base_url])
        out, err = capsys.readouterr()
        assert SECRET not in out + err
        assert "Traceback" not in err
        return code, out, err

    return call


def creations(fake: ServerThread) -> int:
    return fake.call(lambda: fake.server.stats.creations)


def created_inputs(fake: ServerThread) -> list[dict[str, Any]]:
    return [dict(r.input) for r in fake.call(fake.server.created)]


def outcomes(path: Path) -> list[dict[str, Any]]:
    """The outcome lines of a results file (not its creating/created steps)."""
    return [r for r in lines_of(path) if r["result"] not in STEPS]


def write_inputs(path: Path, inputs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(one) + "\n" for one in inputs))
    return path


def spawn(fake: ServerThread, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CLI, "run", *args, "--base-url", fake.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(),
    )


def wait_for(
    path: Path, needle: bytes, count: int, proc: subprocess.Popen[bytes]
) -> None:
    """Wait until ``path`` holds ``needle`` ``count`` times (whole lines)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(needle) >= count:
            return
        assert proc.poll() is None, "the CLI ended too early"
        time.sleep(0.02)
    raise AssertionError(f"{path} never held {count} x {needle!r}")


def test_run_answers_help_with_the_input_forms(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`replipoll run --help`: exit 0, the -i forms, the shared API options."""
    assert main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: replipoll run")
    for text in ("key:=JSON", "key=@path", "--inputs", "--recreate-uncertain"):
        assert text in out
    assert "--api-key-env" in out


# -- inputs --------------------------------------------------------------------


def test_input_forms_parse_like_httpie(tmp_path: Path) -> None:
    """key=value is a string, key:=JSON a JSON value, key=@path a data URI,
    key=\\@x the string @x; only the first = splits."""
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG")
    assert parse_input("prompt=a=b") == ("prompt", "a=b")
    assert parse_input("n:=3") == ("n", 3)
    assert parse_input("x:=[true, null]") == ("x", [True, None])
    assert parse_input("handle=\\@me") == ("handle", "@me")
    assert parse_input(f"image=@{image}") == ("image", "data:image/png;base64,iVBORw==")


# -- one prediction --------------------------------------------------------------


def test_one_prediction_prints_its_output_and_exits_0(
    fake: ServerThread, invoke: Invoke
) -> None:
    """The output (a list of URLs) is printed one a line; one create."""
    code, out, err = invoke(MODEL, "-i", "prompt=hi", "-i", "replipoll_duration:=0.2")
    assert code == 0, err
    (made,) = fake.call(fake.server.created)
    assert out.splitlines() == [
        f"{fake.base_url.removesuffix('/v1')}/files/{made.id}/out-0.bin"
    ]
    assert made.input == {"prompt": "hi", "replipoll_duration": 0.2}
    assert f"created {made.id}" in err


def test_json_and_file_inputs_reach_the_server_and_json_prints_the_record(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """:= sends numbers, lists and booleans as JSON; @file a data: URI with the
    file's mime type; --json prints the whole record of what was created."""
    image = tmp_path / "tiny.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    code, out, err = invoke(
        MODEL,
        "-i",
        "steps:=30",
        "-i",
        "flags:=[true, null, 1.5]",
        "-i",
        f"image=@{image}",
        "-i",
        "replipoll_duration:=0",
        "--json",
    )
    assert code == 0, err
    record = json.loads(out)
    (sent,) = created_inputs(fake)
    assert sent == {
        "steps": 30,
        "flags": [True, None, 1.5],
        "image": "data:image/png;base64,iVBORw0KGgo=",
        "replipoll_duration": 0,
    }
    assert record["input"] == sent
    assert record["status"] == "succeeded"


def test_a_failed_prediction_exits_1_and_says_its_error(
    fake: ServerThread, invoke: Invoke
) -> None:
    """failed: exit 1, the prediction's error on stderr, nothing on stdout."""
    code, out, err = invoke(
        MODEL, "-i", "replipoll_outcome=failed", "-i", "replipoll_duration:=0"
    )
    assert code == 1
    assert out == ""
    assert "failed: E1001 Model Out of Memory" in err


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["-i", "prompt"], "key:=JSON"),
        (["-i", "=x"], "key=value"),
        (["-i", "n:=twelve"], "is not JSON"),
        (["-i", "n:=NaN"], "is not JSON"),
        (["-i", "a=1", "-i", "a=2"], "given twice"),
        (["-i", "f=@/no/such/file"], "cannot read /no/such/file"),
        (["--cancel-after", "soon"], "cancel_after"),
        (["--out", "x.jsonl"], "--out is for a batch"),
    ],
)
def test_bad_usage_exits_2_before_anything_is_created(
    fake: ServerThread, invoke: Invoke, args: list[str], says: str
) -> None:
    """A malformed -i (the message says the forms), a bad value, a batch option
    without --inputs: usage error, exit 2, no create sent."""
    code, _, err = invoke(MODEL, *args)
    assert code == 2
    assert says in err
    assert creations(fake) == 0


def test_model_version_and_deployment_are_exclusive(
    fake: ServerThread, invoke: Invoke
) -> None:
    """Neither, or two of them: exit 2 naming the three forms."""
    for args in ([], [MODEL, "--deployment", "acme/prod"]):
        code, _, err = invoke(*args, "-i", "a=b")
        assert code == 2
        assert "exactly one of MODEL" in err
    assert creations(fake) == 0


def test_a_file_too_big_to_send_inline_is_refused(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """Over the inline limit: exit 2, upload it and pass a URL; nothing sent."""
    big = tmp_path / "big.bin"
    with big.open("wb") as file:
        file.truncate(MAX_FILE_SIZE + 1)
    code, _, err = invoke(MODEL, "-i", f"f=@{big}")
    assert code == 2
    assert "pass its URL" in err
    assert creations(fake) == 0


def test_a_create_whose_answer_is_lost_is_not_retried_and_says_what_to_do(
    fake: ServerThread, invoke: Invoke
) -> None:
    """The server creates the prediction and the answer is lost (a reset): exit
    1, "may exist" with the request time and what to do; created exactly once."""
    fake.call(fake.server.add_fault, Fault.reset().after_handling(), creates=True)
    code, out, err = invoke(MODEL, "-i", "replipoll_duration:=0")
    assert code == 1
    assert out == ""
    assert "the prediction may exist" in err
    assert "sent at" in err
    assert "Look for it" in err
    assert creations(fake) == 1
    assert fake.call(lambda: fake.server.stats.create_requests) == 1


def test_save_downloads_the_output_files_and_prints_their_paths(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """--save DIR: files under DIR/ID/, their paths on stdout."""
    code, out, err = invoke(
        MODEL, "-i", "replipoll_duration:=0", "--save", str(tmp_path)
    )
    assert code == 0, err
    (made,) = fake.call(fake.server.created)
    (path,) = out.splitlines()
    assert Path(path) == tmp_path / made.id / "out-0.bin"
    assert Path(path).stat().st_size == 1024


def test_the_status_line_shows_the_progress_bar_of_the_logs() -> None:
    """Id, status and the percentage of the last tqdm bar in the logs."""
    line = OneRun("acme/echo", live=True)
    assert line.text().startswith("creating a prediction of acme/echo")
    logs = "loading\n 45%|████▌     | 9/20 [00:05<00:06, 1.2it/s]"
    line.update(Prediction(id="p1", status=Status.PROCESSING, logs=logs))
    assert line.text().startswith("p1 processing 45%")


def test_ctrl_c_after_the_create_says_the_prediction_goes_on(
    fake: ServerThread,
) -> None:
    """SIGINT while waiting: exit 130, the id, and how to follow it."""
    proc = spawn(fake, MODEL, "-i", "replipoll_duration:=60")
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # "replipoll: created ID"
    pid = line.split()[-1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert f"prediction {pid} goes on running".encode() in err
    assert f"replipoll poll {pid}".encode() in err


def test_ctrl_c_during_the_create_says_it_may_exist(fake: ServerThread) -> None:
    """SIGINT while the create's answer is held back (the prediction exists):
    exit 130, and the command says it may have been created."""
    fake.call(fake.server.add_fault, Fault.slow(30).after_handling(), creates=True)
    proc = spawn(fake, MODEL, "-i", "replipoll_duration:=0")
    deadline = time.monotonic() + 10
    while creations(fake) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert b"interrupted while creating: the prediction may have been created" in err


# -- batches -----------------------------------------------------------------------


def test_a_batch_writes_one_outcome_line_per_input(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """Five inputs: five creates; each input's created line, then one outcome
    line with its input_index, the failure recorded as failed; exit 1."""
    inputs = [{"n": n, "replipoll_duration": 0.1 * n} for n in range(5)]
    inputs[3]["replipoll_outcome"] = "failed"
    out = tmp_path / "results.jsonl"
    code, stdout, err = invoke(
        MODEL,
        "--inputs",
        str(write_inputs(tmp_path / "in.jsonl", inputs)),
        "--out",
        str(out),
    )
    assert code == 1
    assert stdout == ""
    assert "5 inputs: 4 succeeded, 1 failed; 5 created" in err
    assert creations(fake) == 5
    lines = lines_of(out)
    ends = outcomes(out)
    assert sorted(r["input_index"] for r in ends) == [0, 1, 2, 3, 4]
    for record in ends:
        index = record["input_index"]
        assert record["prediction"]["input"] == inputs[index]
        assert record["result"] == ("failed" if index == 3 else "succeeded")
        created = next(
            r for r in lines if r["result"] == "created" and r["input_index"] == index
        )
        assert created["id"] == record["id"]
        assert lines.index(created) < lines.index(record)


def test_a_batch_without_out_prints_outcome_lines_and_adds_i_to_each(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """Without --out: only outcome lines, on stdout; -i adds to every line's
    inputs, and a line's own value wins."""
    inputs = [{"n": 0}, {"n": 1, "replipoll_duration": 0.2}]
    code, stdout, err = invoke(
        MODEL,
        "--inputs",
        str(write_inputs(tmp_path / "in.jsonl", inputs)),
        "-i",
        "replipoll_duration:=0",
    )
    assert code == 0, err
    records = [json.loads(line) for line in stdout.splitlines()]
    assert sorted(r["input_index"] for r in records) == [0, 1]
    sent = sorted(created_inputs(fake), key=lambda i: i["n"])
    assert sent == [
        {"replipoll_duration": 0, "n": 0},
        {"replipoll_duration": 0.2, "n": 1},
    ]


def test_a_bad_inputs_line_is_named_and_nothing_is_created(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """A line that is not a JSON object: one line naming it, exit 2, no create."""
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"n": 0}\n\n[1, 2]\n{"n": 3}\n')
    code, _, err = invoke(MODEL, "--inputs", str(inputs))
    assert code == 2
    assert f"{inputs} line 3: a JSON array, not an object of inputs" in err
    assert creations(fake) == 0


def test_a_killed_batch_resumes_by_polling_what_it_had_created(
    fake: ServerThread, tmp_path: Path
) -> None:
    """kill -9 once every prediction is created, none finished: the rerun polls
    them by id and creates nothing; five inputs, five predictions in all."""
    inputs = write_inputs(
        tmp_path / "in.jsonl", [{"n": n, "replipoll_duration": 1.5} for n in range(5)]
    )
    out = tmp_path / "results.jsonl"
    args = [MODEL, "--inputs", str(inputs), "--out", str(out)]
    proc = spawn(fake, *args)
    wait_for(out, b'"result":"created"', 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    before = lines_of(out)
    assert outcomes(out) == []  # killed before any finished
    ids = {r["input_index"]: r["id"] for r in before if r["result"] == "created"}

    proc = spawn(fake, *args)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert SECRET.encode() not in err
    assert b"5 polled from earlier runs" in err
    assert creations(fake) == 5
    ends = [r for r in lines_of(out)[len(before) :] if r["result"] not in STEPS]
    assert {r["input_index"]: r["id"] for r in ends} == ids
    assert {r["result"] for r in ends} == {"succeeded"}


def test_created_lines_left_by_a_crash_are_polled_not_created_again(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """A results file as a crash leaves it, with only created lines for inputs 0
    and 2: those are polled; the other three are created."""
    inputs = [{"n": n, "replipoll_duration": 0.2} for n in range(5)]
    pids = {
        i: fake.call(
            fake.server.add_prediction, duration=0.2, input=inputs[i], model=MODEL
        )
        for i in (0, 2)
    }
    out = tmp_path / "results.jsonl"
    out.write_text(
        "".join(
            json.dumps(
                {
                    "id": pid,
                    "result": "created",
                    "input_index": i,
                    "input_digest": input_digest(MODEL, inputs[i]),
                }
            )
            + "\n"
            for i, pid in pids.items()
        )
    )
    code, _, err = invoke(
        MODEL,
        "--inputs",
        str(write_inputs(tmp_path / "in.jsonl", inputs)),
        "--out",
        str(out),
    )
    assert code == 0, err
    assert creations(fake) == 3
    assert sorted(i["n"] for i in created_inputs(fake)) == [1, 3, 4]
    ends = {r["input_index"]: r for r in outcomes(out)}
    assert sorted(ends) == [0, 1, 2, 3, 4]
    assert {i: ends[i]["id"] for i in pids} == pids


def test_an_uncertain_input_is_created_again_only_when_asked(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """One create loses its answer: that input is recorded "uncertain" with its
    sent_at and request id, exit 1; a rerun does not create it again (and says
    why); --recreate-uncertain does."""
    fake.call(fake.server.add_fault, Fault.reset().after_handling(), creates=True)
    inputs = write_inputs(
        tmp_path / "in.jsonl", [{"n": n, "replipoll_duration": 0} for n in range(3)]
    )
    out = tmp_path / "results.jsonl"
    args = [MODEL, "--inputs", str(inputs), "--out", str(out)]
    code, _, err = invoke(*args)
    assert code == 1
    assert creations(fake) == 3  # the lost answer's prediction exists
    (uncertain,) = [r for r in outcomes(out) if r["result"] == "uncertain"]
    assert uncertain["id"].startswith("#input-")
    assert uncertain["sent_at"] == uncertain["error"]["sent_at"] > 0
    assert uncertain["error"]["type"] == "PredictionMayExistError"
    assert "request_id" in uncertain["error"]
    assert "--recreate-uncertain" in err

    code, _, err = invoke(*args)
    assert code == 1
    assert creations(fake) == 3
    assert "1 input uncertain" in err
    assert "--recreate-uncertain" in err

    code, _, err = invoke(*args, "--recreate-uncertain")
    assert code == 0, err
    assert creations(fake) == 4
    last = {r["input_index"]: r["result"] for r in outcomes(out)}
    assert last == {0: "succeeded", 1: "succeeded", 2: "succeeded"}


def test_a_refused_create_is_recorded_and_created_again_on_rerun(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """A 422 before anything is created: an error line with a placeholder id;
    the rerun creates that input (and only it)."""
    fake.call(
        fake.server.add_fault,
        Fault.status(422, '{"detail": "bad input"}'),
        creates=True,
    )
    inputs = write_inputs(
        tmp_path / "in.jsonl", [{"n": n, "replipoll_duration": 0} for n in range(3)]
    )
    out = tmp_path / "results.jsonl"
    args = [MODEL, "--inputs", str(inputs), "--out", str(out)]
    code, _, err = invoke(*args)
    assert code == 1
    (refused,) = [r for r in outcomes(out) if r["result"] == "error"]
    assert refused["id"] == f"#input-{refused['input_index']}"
    assert refused["error"]["status"] == 422
    assert creations(fake) == 2
    code, _, err = invoke(*args)
    assert code == 0, err
    assert creations(fake) == 3
    assert "1 created" in err


def test_ctrl_c_during_a_create_leaves_it_uncertain(
    fake: ServerThread, tmp_path: Path
) -> None:
    """SIGINT while a create's answer is held back (the prediction exists): exit
    130, the input's creating line stays, so the rerun leaves it alone."""
    fake.call(fake.server.add_fault, Fault.slow(30).after_handling(), creates=True)
    inputs = write_inputs(tmp_path / "in.jsonl", [{"replipoll_duration": 0}])
    out = tmp_path / "results.jsonl"
    args = [MODEL, "--inputs", str(inputs), "--out", str(out)]
    proc = spawn(fake, *args)
    wait_for(out, b'"result":"creating"', 1, proc)
    deadline = time.monotonic() + 10
    while creations(fake) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 130
    assert b"1 create in flight when interrupted" in err
    assert b"run the same command again to resume" in err
    assert [r["result"] for r in lines_of(out)] == ["creating"]

    proc = spawn(fake, *args)
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 1
    assert b"1 input uncertain" in err
    assert creations(fake) == 1


def test_a_refused_key_stops_the_batch_after_three_creates(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """401 for the first three creates: the batch stops (exit 2) and says so;
    the rest are not sent (a create or two may have had their turn while the
    third refusal was being recorded: a refused create makes nothing); with
    the right key the rerun creates them all."""
    inputs = write_inputs(
        tmp_path / "in.jsonl", [{"n": n, "replipoll_duration": 0} for n in range(20)]
    )
    out = tmp_path / "results.jsonl"
    args = [MODEL, "--inputs", str(inputs), "--out", str(out), "--concurrency", "1"]
    code, _, err = invoke(*args, REPLICATE_API_TOKEN="r8_wrong-key-for-test")
    assert code == 2
    assert "the first 3 creates failed" in err
    sent = fake.call(lambda: fake.server.stats.create_requests)
    assert 3 <= sent <= 10
    assert f"{20 - sent} inputs not created" in err
    assert "r8_wrong-key-for-test" not in err
    code, _, err = invoke(*args)
    assert code == 0, err
    assert creations(fake) == 20


def test_a_changed_inputs_file_is_not_taken_for_the_recorded_one(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """Rerun after editing an input: exit 2 naming the line; nothing created."""
    inputs = [{"n": n, "replipoll_duration": 0} for n in range(2)]
    path = write_inputs(tmp_path / "in.jsonl", inputs)
    out = tmp_path / "results.jsonl"
    assert invoke(MODEL, "--inputs", str(path), "--out", str(out))[0] == 0
    inputs[1]["n"] = 7
    write_inputs(path, inputs)
    code, _, err = invoke(MODEL, "--inputs", str(path), "--out", str(out))
    assert code == 2
    assert "was the inputs file changed?" in err
    assert creations(fake) == 2


def test_a_batch_with_a_progress_bar_ends_with_a_table(
    fake: ServerThread, invoke: Invoke, tmp_path: Path
) -> None:
    """--progress: the bar runs, and a summary table counts the creates."""
    inputs = write_inputs(
        tmp_path / "in.jsonl", [{"n": n, "replipoll_duration": 0.1} for n in range(4)]
    )
    out = tmp_path / "results.jsonl"
    code, stdout, err = invoke(
        MODEL, "--inputs", str(inputs), "--out", str(out), "--progress"
    )
    assert code == 0, err
    assert "predictions created" in stdout
    assert "running" in err
