"""The CLI's pure parts: the crash-safe results file, id parsing, the tally."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from replipoll import (
    ConfigurationError,
    InvalidPredictionIdError,
    NotFoundError,
    PollResult,
    PollTimeout,
    Prediction,
)
from replipoll._cli._common import printable
from replipoll._cli._ids import decode_lines, gather_ids, id_from, parse_ids
from replipoll._cli._resultlog import (
    ForeignFileError,
    ResultLog,
    dumps,
    finite,
    read_log,
    record_for,
    same_file,
)
from replipoll._cli._ui import Tally, allocate
from replipoll._sansio import validate_prediction_id


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


def inputs(**files: bytes) -> tuple[Callable[[str], bytes], Callable[[str], bool]]:
    """``read`` and ``is_file`` for gather_ids, over named bytes ("stdin": "-")."""
    named = {("-" if name == "stdin" else name): data for name, data in files.items()}
    return named.__getitem__, lambda name: name in named and name != "-"


def test_ids_come_from_arguments_a_file_and_stdin_in_order_once_each() -> None:
    """Blank lines and # comments are skipped; duplicates collapse; order is kept."""
    read, is_file = inputs(
        **{"ids.txt": b"b\n# comment\n\n  c  \na\n"}, stdin=b"d\nb\n"
    )
    assert gather_ids(["a", "-"], "ids.txt", read, is_file) == ["a", "b", "c", "d"]
    assert parse_ids(["#x", " y "]) == ["y"]


@pytest.mark.parametrize(
    "text",
    [
        "https://replicate.com/p/{id}",
        "http://replicate.com/p/{id}/",
        "HTTPS://REPLICATE.COM/P/{id}?utm=x#top",
        "https://mirror.example:8443/p/{id}",
        "https://api.replicate.com/v1/predictions/{id}",
        "https://api.replicate.com/v1/predictions/{id}/",
        "https://api.replicate.com/v1/predictions/{id}/cancel",
        "https://api.replicate.com/v1/predictions/{id}/stream?x=1",
        "http://127.0.0.1:8181/replicate/v1/Predictions/{id}/Cancel/#f",
        "https://gateway.example/predictions/{id}?a=1&b=2",
    ],
)
def test_page_and_api_urls_give_their_id(text: str) -> None:
    """Any host, http or https, any case, /cancel or /stream, query, fragment,
    trailing slash: the id, with its own case, is what is polled."""
    pid = "57l4sqxxk3SLjddbebv6v33k22"
    assert id_from(text.format(id=pid)) == pid


def test_the_id_in_a_url_is_percent_decoded_then_checked() -> None:
    """%2D is "-"; an escaped "/" or non-UTF-8 bytes are still refused."""
    assert id_from("https://replicate.com/p/a%2Db") == "a-b"
    with pytest.raises(InvalidPredictionIdError, match="contains '/'"):
        id_from("https://replicate.com/p/a%2Fb")
    with pytest.raises(InvalidPredictionIdError, match="not UTF-8"):
        id_from("https://replicate.com/p/a%FFb")


@pytest.mark.parametrize(
    "text",
    [
        "a/b",
        "./ids.txt",
        "https://replicate.com/acme/flux",
        "https://replicate.com/p/",
        "https://api.replicate.com/v1/predictions",
        "ftp://replicate.com/p/abc",
        "replicate.com/p/abc",
    ],
)
def test_a_slash_outside_an_understood_url_is_refused_with_the_forms(
    text: str,
) -> None:
    """The library's message, plus which URL forms are understood."""
    with pytest.raises(InvalidPredictionIdError) as caught:
        id_from(text)
    message = str(caught.value)
    assert "contains '/'" in message
    assert "https://replicate.com/p/ID" in message
    assert ".../predictions/ID" in message


def test_a_bom_crlf_blank_lines_and_comments_are_skipped() -> None:
    """BOM at the start, CRLF ends, blank and # lines, comments after
    whitespace (a space or a tab)."""
    data = b"\xef\xbb\xbfabc  # first\r\n\r\n# note\r\n  def\t# tab\r\nghi\r\n"
    assert parse_ids(decode_lines(data, "ids.txt"), "ids.txt") == ["abc", "def", "ghi"]


def test_a_hash_inside_an_id_is_part_of_it_and_refused() -> None:
    """No whitespace before #: not a comment, so the id check refuses it,
    naming the line."""
    with pytest.raises(ConfigurationError) as caught:
        parse_ids(["abc", "", "ab#c"], "ids.txt")
    assert str(caught.value) == (
        "ids.txt line 3: invalid prediction id 'ab#c': contains '#'"
    )


@pytest.mark.parametrize(
    "lines",
    [
        ['["abc", "def", {"id": "ghi", "x": 1}]'],
        ["[", '  "abc",', '  "def",', '  {"id": "ghi"}', "]"],
        ["# exported", "", "  [ ", '"abc", "def"', ',{"id":"ghi"}]  ', ""],
        ["\ufeff[", '"abc",', '"https://replicate.com/p/def",', '{"id": "ghi"}]'],
    ],
)
def test_a_json_array_in_any_layout(lines: list[str]) -> None:
    """One line or pretty-printed, of ids (or URLs) and of objects with an id."""
    assert parse_ids(lines) == ["abc", "def", "ghi"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["[", '  "abc",', "  42", "]"], "ids.txt line 3 is neither an id nor"),
        (["[", '  "abc",', '  {"x": 1}', "]"], "ids.txt line 3 is a JSON object"),
        (["[", '  "abc",', '  "a b"', "]"], "ids.txt line 3: invalid prediction id"),
        (["[", '  "abc",', '  "def"'], "ids.txt line 3 is not a valid JSON array"),
        (["[", '  "abc",', "]"], "ids.txt line 3 is not a valid JSON array"),
        (['["abc"]', '["def"]'], "ids.txt line 2 is not a valid JSON array"),
        (["[", '  ["abc"]', "]"], "ids.txt line 2 is an array in the array"),
    ],
)
def test_a_bad_json_array_is_refused_naming_the_line(
    lines: list[str], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        parse_ids(lines, "ids.txt")


def test_json_lines_give_their_ids_and_a_results_file_is_an_ids_file(
    tmp_path: Path,
) -> None:
    """A JSON object line contributes its "id"; replipoll's own results file
    (and a pretty-printed object, as `get --json` prints) works as an ids file."""
    path = tmp_path / "results.jsonl"
    with ResultLog(path) as log:
        log.append(record_for(PollResult("abc", pred("abc", "failed"))))
        log.append(record_for(PollResult("def", None, NotFoundError("gone"))))
    assert parse_ids(decode_lines(path.read_bytes(), "r")) == ["abc", "def"]
    mixed = ['{"id": "abc", "note": "see #3"}  # inline comment', '"def"', "ghi"]
    assert parse_ids(mixed) == ["abc", "def", "ghi"]
    assert parse_ids(["{", '  "id": "abc",', '  "status": "failed"', "}"]) == ["abc"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"result": "failed"}',
            'ids.txt line 2 is a JSON object without a string "id"',
        ),
        ('{"id": 42}', 'ids.txt line 2 is a JSON object without a string "id"'),
        ('{"id": "abc"', "ids.txt line 2 is not valid JSON"),
        ('"abc", "def"', "ids.txt line 2 is not valid JSON"),
    ],
)
def test_a_json_line_without_an_id_names_its_line(line: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_ids(["abc", line], "ids.txt")
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"abc\ndef\n\xffghi\n", 3),
        (b"abc\r\ndef\r\ngh\xc3i\r\n", 3),
        (b"\xfe\xffabc\n", 1),
        (b"abc\rdef\rghi\x80", 3),
    ],
)
def test_bytes_that_are_not_utf8_name_their_line(data: bytes, line: int) -> None:
    with pytest.raises(ConfigurationError) as caught:
        decode_lines(data, "ids.txt")
    assert str(caught.value) == f"ids.txt line {line} is not UTF-8 text"


def test_an_existing_file_given_as_an_id_asks_for_from() -> None:
    """`poll ids.txt` meant `--from ids.txt`; a file named like an id is an id."""
    read, is_file = inputs(**{"ids.txt": b"abc\n", "abc123": b"x\n"})
    with pytest.raises(ConfigurationError, match=r"did you mean --from FILE\?"):
        gather_ids(["ids.txt"], None, read, is_file)
    assert gather_ids(["abc123"], None, read, is_file) == ["abc123"]


def test_arguments_are_ids_or_urls_and_an_invalid_one_is_refused() -> None:
    read, is_file = inputs()
    assert gather_ids(
        ["https://replicate.com/p/abc", "abc", " def "], None, read, is_file
    ) == ["abc", "def"]
    with pytest.raises(ConfigurationError, match="contains whitespace"):
        gather_ids(["a b"], None, read, is_file)


#: How an id may be written on a line of an ids file.
FORMS = [
    "{id}",
    "  {id}  # a note",
    "https://replicate.com/p/{id}",
    "https://api.replicate.com/v1/predictions/{id}/cancel?x=1",
    '"{id}"',
    '{{"id": "{id}", "result": "succeeded"}}',
]


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"[a-z0-9][a-zA-Z0-9_-]{0,40}", fullmatch=True),
            st.sampled_from(FORMS),
            st.sampled_from(["", "# comment", "   "]),
        ),
        max_size=20,
    ),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_any_mix_of_forms_reads_back_every_id_in_order(
    entries: list[tuple[str, str, str]], newline: str, bom: bool
) -> None:
    """Ids written in any of the forms, between blank and comment lines, with
    LF or CRLF and maybe a BOM: every id comes back, in order, once each."""
    lines = []
    for pid, form, filler in entries:
        lines += [filler, form.format(id=pid)]
    data = ("\ufeff" if bom else "") + newline.join(lines) + newline
    read, is_file = inputs(stdin=data.encode())
    expected = list(dict.fromkeys(pid for pid, _, _ in entries))
    if not expected:
        return
    assert gather_ids(["-"], None, read, is_file) == expected


@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_no_ids_file_makes_anything_but_ids_or_a_configuration_error(
    data: bytes,
) -> None:
    """Whatever a file holds, reading it gives valid ids or a one-line
    ConfigurationError (exit 2), never another exception ("internal error")."""
    read, is_file = inputs(**{"ids.txt": data})
    try:
        ids = gather_ids([], "ids.txt", read, is_file)
    except ConfigurationError:
        return
    for pid in ids:
        assert validate_prediction_id(pid) == pid


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


# -- what is shown, and what is written --------------------------------------------

#: What must never reach a terminal: C0 controls but tab and newline, DEL, C1.
CONTROLS = {chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)]} - {"\t", "\n"}


@given(st.text(st.characters(exclude_categories=())))
def test_printable_text_always_encodes_and_holds_no_control_character(
    text: str,
) -> None:
    """Any code point, lone surrogates included: the result encodes as UTF-8
    and holds no control character but newline and tab; on one line, not
    even a newline."""
    shown = printable(text)
    shown.encode("utf-8")  # no lone surrogate left
    assert not set(shown) & CONTROLS
    one_line = printable(text, one_line=True)
    one_line.encode("utf-8")
    assert not set(one_line) & (CONTROLS | {"\n"})


@given(st.text(st.characters(exclude_categories=("Cs", "Cc"))))
def test_printable_keeps_text_without_controls_as_it_is(text: str) -> None:
    """Markup, emoji, any script: nothing but controls and surrogates changes."""
    assert printable(text + "[/bold]\n\t") == text + "[/bold]\n\t"


def test_printable_shows_controls_as_hex_escapes() -> None:
    assert printable("a\x1b[2Jb\x9b1m\x07\x7f\r") == "a\\x1b[2Jb\\x9b1m\\x07\\x7f\\x0d"
    assert printable("\ud800x\udfff") == "\ufffdx\ufffd"
    assert printable("one\ntwo", one_line=True) == "one\\ntwo"


def strict_loads(line: str | bytes) -> object:
    """json.loads that refuses NaN and infinities, as strict JSON readers do."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_nan_and_infinities_are_written_as_null_at_any_depth(tmp_path: Path) -> None:
    """A record with NaN, Infinity and -Infinity (as Python's json reads from a
    server) is written as strict JSON; other values are untouched."""
    prediction = Prediction.from_json(
        json.loads(
            '{"id": "a", "status": "succeeded", "output": [NaN, 1.5, {"x": -Infinity}],'
            ' "metrics": {"predict_time": Infinity}}'
        )
    )
    record = record_for(PollResult("a", prediction))
    assert record["prediction"]["output"] == [None, 1.5, {"x": None}]
    assert record["prediction"]["metrics"] == {"predict_time": None}
    assert math.isnan(prediction.to_json()["output"][0])  # the original is kept
    path = tmp_path / "r.jsonl"
    with ResultLog(path) as log:
        log.append({"id": "b", "result": "succeeded", "deep": [[[float("nan")]]]})
        log.append(record)
    first, second = (strict_loads(line) for line in path.read_bytes().splitlines())
    assert first == {"id": "b", "result": "succeeded", "deep": [[[None]]]}
    assert second == record
    assert strict_loads(dumps(float("-inf"), indent=2)) is None
    plain = {"a": [1, "x"]}
    assert finite(plain) is plain


#: Files that are not results files, each with what the refusal says.
FOREIGN = [
    (b'{"name": "my notes", "keep": true}', 'without a string "id" and "result"'),
    (b'{"id": "x"}\n', 'line 1 is a JSON object without a string "id" and "result"'),
    (b"abc123\ndef456\n", "line 1 looks like a prediction id"),
    (b'["abc", "def"]\n', "line 1 is JSON an array, not an object"),
    (b"[\n", "line 1 is not JSON"),
    (b'{"id":"a","result":"failed"}\nhello, world\n', "line 2 is not JSON"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "line 1 is not JSON"),
    (b"\n\nplain text without a newline", "line 3 is not JSON"),
]


@pytest.mark.parametrize(("data", "looks"), FOREIGN)
def test_a_file_that_is_not_a_results_file_is_refused_and_left_unchanged(
    tmp_path: Path, data: bytes, looks: str
) -> None:
    """Judged before anything is written or cut: the file keeps every byte."""
    path = tmp_path / "notes.json"
    path.write_bytes(data)
    with pytest.raises(ForeignFileError) as caught:
        ResultLog(path).open()
    assert looks in caught.value.looks
    assert str(caught.value).startswith(f"{path} is not a replipoll results file")
    assert path.read_bytes() == data
    with ResultLog(tmp_path / "other.jsonl"):  # and no lock was left behind
        pass
    with pytest.raises(ForeignFileError):
        ResultLog(path).open()


@pytest.mark.parametrize(
    ("data", "kept"),
    [
        (b"", b""),
        (b"\n\n", b"\n\n"),
        (b'{"id":"a","res', b""),  # killed during the first write
        (b'{"id', b""),
        (b'{"id":"a","result":"failed"}\n\n{"id":"b","result":"x', None),
        (b'{"id": "a", "result": "failed"}', b""),  # whole, but no newline
    ],
)
def test_a_results_file_is_opened_and_only_then_its_torn_line_cut(
    tmp_path: Path, data: bytes, kept: bytes | None
) -> None:
    """Empty, blank lines, records, a torn line of ours: a results file."""
    path = tmp_path / "r.jsonl"
    path.write_bytes(data)
    with ResultLog(path) as log:
        log.append({"id": "z", "result": "succeeded"})
    if kept is None:
        kept = data[: data.rindex(b"\n") + 1]
    assert path.read_bytes() == kept + b'{"id":"z","result":"succeeded"}\n'


def test_same_file_sees_through_spellings_and_links(tmp_path: Path) -> None:
    """The same file by another path, a symbolic or hard link; a file not yet
    created by its resolved path."""
    ids = tmp_path / "ids.txt"
    ids.write_text("abc\n")
    (tmp_path / "link.txt").symlink_to(ids)
    os.link(ids, tmp_path / "hard.txt")
    (tmp_path / "sub").mkdir()
    assert same_file(ids, tmp_path / "sub" / ".." / "ids.txt")
    assert same_file(tmp_path / "link.txt", ids)
    assert same_file(tmp_path / "hard.txt", ids)
    assert same_file(tmp_path / "new.txt", tmp_path / "sub" / ".." / "new.txt")
    assert not same_file(tmp_path / "new.txt", ids)
    other = tmp_path / "other.txt"
    other.write_text("abc\n")
    assert not same_file(other, ids)
