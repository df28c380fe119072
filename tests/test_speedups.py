"""The fast path (``replipoll[speed]``): the same records and errors, faster.

msgspec parses answers when it is installed. Every body here, the hostile
ones above all, is parsed by both loaders: the value (types, key order, the
sign of a zero, NaN) or the error must be exactly what ``json.loads`` gives,
at the loader, at :func:`parse_json` and through a real request to the fake
server. The command line runs on uvloop when installed, and
``REPLIPOLL_NO_SPEEDUPS`` turns the whole fast path off.

Tests that need msgspec or uvloop are skipped without the extra; the suite's
second run (``nox -s tests-speed``, CI) has it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replipoll import Client, Prediction, ReplipollError, RetryPolicy, _speedups
from replipoll._cli._common import run_async
from replipoll._sansio import NOT_JSON, parse_json
from replipoll._speedups import DEEP, Loader, msgspec_loads, stdlib_loads
from replipoll.testing import FakeReplicate, Fault

HAS_MSGSPEC = _speedups.HAS_MSGSPEC
needs_msgspec = pytest.mark.skipif(not HAS_MSGSPEC, reason="needs replipoll[speed]")
needs_uvloop = pytest.mark.skipif(
    _speedups.loop_factory({}) is None, reason="needs replipoll[speed] (uvloop)"
)

LOADERS: dict[str, Loader] = {"json": stdlib_loads}
if HAS_MSGSPEC:
    LOADERS["msgspec"] = msgspec_loads

RECORD = (
    b'{"id": "p1", "status": "succeeded", "output": ["https://x.test/a.png"], '
    b'"metrics": {"predict_time": 1.5}, "logs": "step [1/2]\\nstep [2/2]\\n"}'
)


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    """``depth`` levels of lists and objects, alternately, around ``leaf``."""
    opening = b"".join(b"[" if i % 2 else b'{"k":' for i in range(depth))
    closing = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(depth)))
    return opening + leaf + closing


#: Bodies json.loads accepts and msgspec refuses (each goes to json.loads),
#: bodies neither accepts, and bodies both read alike. Each must come out the
#: same from both loaders.
HOSTILE: dict[str, bytes] = {
    "a plain record": RECORD,
    "NaN": b'{"id": "p1", "status": "processing", "metrics": {"t": NaN}}',
    "Infinity": b'{"metrics": {"t": Infinity, "u": -Infinity}}',
    "beyond a float's range": b"[1e400, -1e400, 1e-400, -1e-400]",
    "integers beyond 64 bits": b"[18446744073709551616, -9223372036854775809, "
    b"123456789012345678901234567890]",
    "64-bit edges": b"[18446744073709551615, -9223372036854775808, -0]",
    "the longest integer allowed": b"[" + b"7" * 4300 + b"]",
    "an integer too long": b"[" + b"7" * 4301 + b"]",
    "floats hard to round": b"[2.2250738585072011e-308, 5e-324, 0.1, 2.675, "
    b"1.7976931348623157e308, 9007199254740993.0, -0.0, 1E2, 0e0]",
    "an escaped lone surrogate": b'{"logs": "\\ud800 and \\udfff"}',
    "a raw lone surrogate": b'{"logs": "\xed\xa0\x80"}',
    "an escaped pair": b'{"logs": "\\ud83d\\ude00"}',
    "a UTF-8 BOM": b'\xef\xbb\xbf{"id": "p1", "status": "succeeded"}',
    "UTF-16": '{"id": "p1", "status": "succeeded"}'.encode("utf-16"),
    "UTF-16-BE": '{"id": "p1"}'.encode("utf-16-be"),
    "UTF-32": '{"id": "p1", "status": "succeeded"}'.encode("utf-32"),
    "invalid UTF-8": b'{"logs": "\xff\xfe"}',
    "an overlong encoding": b'{"logs": "\xc0\xaf"}',
    "duplicate keys": b'{"a": 1, "b": 2, "a": 3}',
    "control characters in a string": b'{"logs": "a\x01b"}',
    "DEL and U+2028 in a string": '{"logs": "a\x7fb\u2028"}'.encode(),
    "escaped NUL": b'{"logs": "\\u0000"}',
    "truncated": RECORD[:-7],
    "trailing garbage": RECORD + b" x",
    "trailing NUL": RECORD + b"\x00",
    "a form feed around": b"\x0c" + RECORD,
    "empty": b"",
    "blanks only": b" \r\n\t",
    "a bare string": b'"succeeded"',
    "true, not True": b"True",
    "a trailing comma": b"[1, 2,]",
    "single quotes": b"{'id': 'p1'}",
    "leading zeros": b"[01]",
    "an HTML page": b"<!DOCTYPE html><html><title>502</title></html>",
    f"nested {DEEP - 1} deep": nested(DEEP - 1),
    f"nested {DEEP} deep": nested(DEEP),
    "nested 990 deep": nested(990),
    "nested 5000 deep": nested(5000),
    f"{DEEP} brackets in a string, shallow": b'{"logs": "' + b"[" * DEEP * 2 + b'"}',
}


def outcome(loader: Loader, body: bytes) -> tuple[str, str]:
    """What ``loader(body)`` gives: its value, exactly, or its error.

    ``repr`` tells ``1`` from ``1.0`` and ``True``, ``-0.0`` from ``0.0``,
    shows NaN, and keeps the order of keys. A structure too deep for
    ``repr`` is compared through ``json.dumps`` on a deep stack of its own.
    """
    try:
        value = loader(body)
    except Exception as exc:
        return f"error {type(exc).__name__}", str(exc)
    try:
        return "value", repr(value)
    except RecursionError:
        return "value", _dumps_deep(value)


def _dumps_deep(value: Any) -> str:
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(limit + 20_000)
    try:
        return json.dumps(value)
    finally:
        sys.setrecursionlimit(limit)


@needs_msgspec
@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_msgspec_gives_what_json_loads_gives(body: bytes) -> None:
    assert outcome(msgspec_loads, body) == outcome(stdlib_loads, body)


@pytest.fixture(params=LOADERS)
def loader(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each loader in turn, as the one replipoll uses."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_speedups, "loads", LOADERS[request.param])
        yield request.param


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
def test_parse_json_is_json_loads_or_not_json(loader: str, body: bytes) -> None:
    expected = outcome(stdlib_loads, body)
    parsed = parse_json(body)
    if expected[0].startswith("error"):
        assert parsed is NOT_JSON
    else:
        assert outcome(lambda _: parsed, body) == expected


@needs_msgspec
def test_the_integer_digit_limit_is_honoured_alike() -> None:
    """``sys.set_int_max_str_digits`` moves both loaders' limit together."""
    long_int = b"[" + b"7" * 700 + b"]"
    longer = b"[" + b"7" * 5000 + b"]"
    before = sys.get_int_max_str_digits()
    try:
        for limit in (640, 0, 4300):
            sys.set_int_max_str_digits(limit)
            for body in (long_int, longer):
                assert outcome(msgspec_loads, body) == outcome(stdlib_loads, body)
    finally:
        sys.set_int_max_str_digits(before)


@needs_msgspec
def test_nesting_at_the_recursion_limit_ends_alike() -> None:
    """Where json.loads runs out of stack, msgspec's answer is not used.

    msgspec alone reaches a few levels deeper than json.loads from the same
    place; around the limit every depth must end the same way.
    """
    ends = set()
    for depth in range(900, 1000):
        body = nested(depth)
        expected = outcome(stdlib_loads, body)
        assert outcome(msgspec_loads, body) == expected, depth
        ends.add(expected[0])
    assert ends == {"value", "error RecursionError"}  # the limit was crossed


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.floats()
    | st.text(st.characters(codec=None, exclude_categories=())),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=16,
)


@needs_msgspec
@settings(max_examples=400, deadline=None)
@given(
    value=json_values,
    ensure_ascii=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
    indent=st.sampled_from([None, 0, 2]),
)
def test_any_json_text_parses_alike(
    value: Any, ensure_ascii: bool, encoding: str, indent: int | None
) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii, indent=indent)
    body = text.encode(encoding, "surrogatepass")
    assert outcome(msgspec_loads, body) == outcome(stdlib_loads, body)


#: Pieces of JSON and of what breaks it, spliced into bodies at random.
PIECES = [
    *(bytes([b]) for b in b'{}[],:"\\ .-+eE0129'),
    b"NaN",
    b"Infinity",
    b"true",
    b"null",
    b'"\\u',
    b"d800",
    b"\\",
    b"\x00",
    b"\x0c",
    b"\x7f",
    b"\xff",
    b"\xc3\xa9",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"9" * 25,
    b"1e400",
]


@needs_msgspec
@settings(max_examples=500, deadline=None)
@given(
    value=json_values,
    edits=st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(PIECES), st.booleans()),
        max_size=3,
    ),
)
def test_broken_json_parses_or_fails_alike(
    value: Any, edits: list[tuple[int, bytes, bool]]
) -> None:
    body = bytearray(json.dumps(value).encode("utf-8", "surrogatepass"))
    for at, piece, replace in edits:
        at = min(at, len(body))
        body[at : at + (len(piece) if replace else 0)] = piece
    assert outcome(msgspec_loads, bytes(body)) == outcome(stdlib_loads, bytes(body))


@needs_msgspec
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_any_bytes_parse_or_fail_alike(body: bytes) -> None:
    assert outcome(msgspec_loads, body) == outcome(stdlib_loads, body)


# -- through a real request ----------------------------------------------------

#: 200 answers, each a hostile version of prediction "@"'s record, and the
#: encoding it is sent in.
ANSWERS: dict[str, tuple[str, str]] = {
    "NaN and Infinity in metrics": (
        '{"id": "@", "status": "succeeded", '
        '"metrics": {"predict_time": NaN, "total_time": Infinity}}',
        "utf-8",
    ),
    "big numbers in output": (
        '{"id": "@", "status": "succeeded", '
        '"output": [123456789012345678901234567890, 1e400]}',
        "utf-8",
    ),
    "lone surrogates in logs": (
        '{"id": "@", "status": "processing", "logs": "\\udfff\\ud800"}',
        "utf-8",
    ),
    "duplicate keys, in UTF-16": (
        '{"id": "@", "status": "processing", "status": "succeeded"}',
        "utf-16",
    ),
    "a BOM": ('\ufeff{"id": "@", "status": "succeeded"}', "utf-8"),
    "truncated": ('{"id": "@", "status": "succ', "utf-8"),
    "a gateway's error": ('{"success": false, "message": "quota exhausted"}', "utf-8"),
    "a deep output": (
        '{"id": "@", "status": "succeeded", "output": '
        + nested(DEEP + 10).decode()
        + "}",
        "utf-8",
    ),
}


async def _fetch(server: FakeReplicate, pid: str) -> tuple[str, str]:
    async with Client(
        base_url=server.base_url(),
        api_key=server.api_key,
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        try:
            record: Prediction = await client.get(pid)
        except ReplipollError as exc:
            text = str(exc)  # each request has its own id: not compared
            request_id = getattr(exc, "request_id", None)
            return type(exc).__name__, text.replace(request_id or "\0", "<id>")
    return "record", repr(record)


@pytest.mark.parametrize("name", ANSWERS)
async def test_a_hostile_answer_ends_the_same_with_either_loader(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with FakeReplicate() as server:
        [pid] = server.add_predictions(1)
        ends = {}
        for loader_name, loader_func in LOADERS.items():
            monkeypatch.setattr(_speedups, "loads", loader_func)
            template, encoding = ANSWERS[name]
            body = template.replace("@", pid).encode(encoding)
            server.add_fault(
                Fault.status(200, body, content_type="application/json"),
                prediction_id=pid,
            )
            ends[loader_name] = await _fetch(server, pid)
    assert len(set(ends.values())) == 1, ends
    if name == "truncated":
        assert ends["json"][0] == "DecodeError"
    elif name == "a gateway's error":
        assert ends["json"][0] == "GatewayError"
    else:
        assert ends["json"][0] == "record"


# -- which loader, which loop ----------------------------------------------------


def _python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "REPLIPOLL_NO_SPEEDUPS"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**environ, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def test_the_loader_is_chosen_on_import() -> None:
    """msgspec when installed; REPLIPOLL_NO_SPEEDUPS=1 keeps json.loads."""
    code = "from replipoll import _speedups; print(_speedups.JSON_LOADER)"
    assert _python(code) == ("msgspec" if HAS_MSGSPEC else "json")
    assert _python(code, REPLIPOLL_NO_SPEEDUPS="1") == "json"


def test_the_switch_turns_the_event_loop_off_too() -> None:
    assert _speedups.loop_factory({"REPLIPOLL_NO_SPEEDUPS": "1"}) is None
    assert _speedups.disabled({"REPLIPOLL_NO_SPEEDUPS": "0"})  # any value
    assert not _speedups.disabled({"REPLIPOLL_NO_SPEEDUPS": ""})


@needs_uvloop
def test_the_command_line_runs_on_uvloop() -> None:
    import uvloop

    async def running_loop() -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    loop = run_async(running_loop())
    assert isinstance(loop, uvloop.Loop)


def test_version_says_what_the_fast_path_is() -> None:
    """``replipoll --version`` tells whether the extra is installed and used."""
    code = "import sys; from replipoll._cli import main; sys.exit(main(['--version']))"
    said = _python(code)
    assert said.splitlines()[0].startswith("replipoll, version ")
    if HAS_MSGSPEC:
        assert "msgspec (JSON)" in said
    else:
        assert "not installed (pip install 'replipoll[speed]')" in said
    if _speedups.loop_factory({}) is not None:
        assert "uvloop (command line)" in said
    off = _python(code, REPLIPOLL_NO_SPEEDUPS="1")
    assert off.splitlines()[1] == "fast path: off (REPLIPOLL_NO_SPEEDUPS is set)"


async def test_the_fast_run_is_on_the_fast_path() -> None:
    """Under REPLIPOLL_TEST_FAST_PATH, every test loop is uvloop's, JSON msgspec's."""
    if not os.environ.get("REPLIPOLL_TEST_FAST_PATH"):
        pytest.skip("not the fast run (REPLIPOLL_TEST_FAST_PATH)")
    import uvloop

    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert _speedups.JSON_LOADER == "msgspec"
    with contextlib.closing(asyncio.new_event_loop()) as other:
        assert isinstance(other, uvloop.Loop)  # asyncio.run()'s, threads' loops
