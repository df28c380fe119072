"""The CLI's pure parts: the crash-safe results file, id parsing, the tally."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from replipoll import NotFoundError, PollResult, PollTimeout, Prediction
from replipoll._cli._poll import gather_ids, parse_ids
from replipoll._cli._resultlog import ResultLog, read_log, record_for
from replipoll._cli._ui import Tally, allocate


def pred(pid: str, status: str) -> Prediction:
    return Prediction.from_json({"id": pid, "status": status})


# -- the results file ----------------------------------------------------------------


def test_each_record_is_one_whole_ascii_line(tmp_path: Path) -> None:
    """append writes exactly one newline-terminated JSON line per record."""
    path = tmp_path / "r.jsonl"
    with ResultLog(path) as log:
        log.append({"id": "a", "result": "succeeded", "text": "é\n\u2028"})
        log.append({"id": "b", "result": "failed"})
        assert log.written == 2
    data = path.read_bytes()
    assert data.isascii()
    assert data.count(b"\n") == 2
    assert [json.loads(line)["id"] for line in data.splitlines()] == ["a", "b"]
    assert json.loads(data.splitlines()[0])["text"] == "é\n\u2028"


def test_a_torn_last_line_is_cut_off_and_the_next_line_starts_clean(
    tmp_path: Path,
) -> None:
    """What a crash mid-write leaves is dropped on open; nothing else is lost."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"id":"a","result":"succeeded"}\n{"id":"b","resu')
    with ResultLog(path) as log:
        assert log.contents.results == {"a": "succeeded"}
        assert log.contents.torn_bytes == len(b'{"id":"b","resu')
        log.append({"id": "b", "result": "succeeded"})
    lines = path.read_bytes().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]


def test_read_log_never_changes_the_file_and_skips_junk(tmp_path: Path) -> None:
    """Garbage, non-objects and id-less lines are counted; the last line per id wins."""
    path = tmp_path / "r.jsonl"
    raw = (
        b'{"id":"a","result":"error"}\n'
        b"not json\n"
        b"[1, 2]\n"
        b'{"result":"succeeded"}\n'
        b"\n"
        b'{"id":"a","result":"succeeded"}\n'
        b'{"id":"c","result":"processing"}\n'
        b'{"id":"d"'
    )
    path.write_bytes(raw)
    contents = read_log(path)
    assert contents.results == {"a": "succeeded", "c": "processing"}
    assert contents.bad_lines == 3
    assert contents.torn_bytes == len(b'{"id":"d"')
    assert contents.finished() == {"a"}
    assert path.read_bytes() == raw
    assert read_log(tmp_path / "missing.jsonl").results == {}


def test_only_final_statuses_count_as_finished(tmp_path: Path) -> None:
    """Errors and unfinished statuses are polled again on the next run."""
    path = tmp_path / "r.jsonl"
    results = ["succeeded", "failed", "canceled", "aborted", "error", "processing"]
    path.write_text("".join(json.dumps({"id": r, "result": r}) + "\n" for r in results))
    assert read_log(path).finished() == {"succeeded", "failed", "canceled", "aborted"}


def test_a_second_writer_is_locked_out(tmp_path: Path) -> None:
    """Two writers would interleave lines: a second open fails while one is open."""
    path = tmp_path / "r.jsonl"
    with ResultLog(path), pytest.raises(BlockingIOError):
        ResultLog(path).open()
    with ResultLog(path) as again:
        again.append({"id": "x", "result": "failed"})


def test_appending_to_a_closed_log_is_an_error(tmp_path: Path) -> None:
    log = ResultLog(tmp_path / "r.jsonl")
    with pytest.raises(ValueError, match="not open"):
        log.append({"id": "x"})
    log.close()  # idempotent, even when never opened


def test_records_say_how_each_id_ended() -> None:
    """A final status, a timeout with its last record, an HTTP error with its id."""
    ok = record_for(PollResult("a", pred("a", "succeeded")))
    assert ok["result"] == ok["status"] == "succeeded"
    assert ok["prediction"]["id"] == "a"
    assert ok["error"] is None

    last = pred("b", "processing")
    timed_out = record_for(PollResult("b", last, PollTimeout("b", 5.0, last)))
    assert timed_out["result"] == "error"
    assert timed_out["status"] == "processing"
    assert timed_out["error"]["type"] == "PollTimeout"
    assert timed_out["error"]["timeout"] == 5.0

    missing = NotFoundError("Not found.", status=404, request_id="req_1", url="u")
    gone = record_for(PollResult("c", None, missing))
    assert gone["result"] == "error"
    assert gone["prediction"] is None
    assert gone["error"]["request_id"] == "req_1"
    assert gone["error"]["status"] == 404
    json.dumps(gone)  # JSON-ready


def test_an_unexpected_error_is_recorded_by_type_and_message_only() -> None:
    """An error that is neither an HTTP error nor a timeout (say, from a bug in an
    on_update callback) still gets a JSON-ready line: its type and message."""
    record = record_for(PollResult("d", None, RuntimeError("callback broke")))
    assert record["result"] == "error"
    assert record["error"] == {"type": "RuntimeError", "message": "callback broke"}
    json.dumps(record)


# -- ids --------------------------------------------------------------------------


def test_ids_come_from_arguments_a_file_and_stdin_in_order_once_each(
    tmp_path: Path,
) -> None:
    """Blank lines and # comments are skipped; duplicates collapse; order is kept."""
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("b\n# comment\n\n  c  \na\n")
    stdin = io.StringIO("d\nb\n")
    assert gather_ids(["a", "-"], str(ids_file), stdin) == ["a", "b", "c", "d"]
    assert parse_ids(["#x", " y "]) == ["y"]


# -- the tally behind the progress bar ------------------------------------------


def test_tally_follows_each_id_to_its_outcome() -> None:
    """queued -> statuses seen -> outcome; errors land in their own bucket."""
    tally = Tally(3)
    tally.update(pred("a", "starting"))
    tally.update(pred("a", "processing"))
    tally.update(pred("b", "processing"))
    assert tally.snapshot() == {"processing": 2, "queued": 1}
    tally.update(pred("a", "succeeded"))
    assert tally.finish(PollResult("a", pred("a", "succeeded"))) == "succeeded"
    assert tally.finish(PollResult("b", None, NotFoundError("x"))) == "error"
    assert tally.snapshot() == {"succeeded": 1, "error": 1, "queued": 1}
    assert tally.finished == 2


@given(
    st.dictionaries(st.text(max_size=5), st.integers(0, 10_000)), st.integers(0, 200)
)
def test_bar_segments_always_fill_the_width_exactly(
    counts: dict[str, int], width: int
) -> None:
    """Largest-remainder allocation: no cell lost or added, none negative."""
    cells = allocate(counts, width)
    assert set(cells) == set(counts)
    assert all(n >= 0 for n in cells.values())
    expected = width if sum(counts.values()) > 0 else 0
    assert sum(cells.values()) == expected


@pytest.mark.parametrize("kind", ["fifo", "endless device"])
def test_a_results_file_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    # Resuming reads the file to its end: /dev/zero has none, and a FIFO
    # would wait for a writer forever.
    if kind == "fifo":
        path = tmp_path / "results.jsonl"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    with pytest.raises(OSError, match="not a regular file"):
        ResultLog(path).open()
