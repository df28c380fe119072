"""Server-sent events without a network: the parser, the key rule, reconnecting.

The parser is checked against the WHATWG EventSource rules case by case, and
with Hypothesis against a reference written straight from the spec's text:
any body, split into chunks anywhere (inside a line, a ``\\r\\n`` or a UTF-8
character), gives the events the reference finds in the whole body.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st
from replipoll import (
    AuthenticationError,
    ConnectError,
    DecodeError,
    NoStreamError,
    Prediction,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    StreamEvent,
)
from replipoll._sse import (
    MAX_STREAM_FAILURES,
    Reconnects,
    SSEParser,
    stream_gets_key,
    stream_url_of,
)


def parse(*chunks: bytes) -> list[StreamEvent]:
    parser = SSEParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


# -- the parser, case by case -------------------------------------------------


def test_an_event_has_its_type_data_and_id() -> None:
    body = b"id: 7\nevent: output\ndata: Hello\n\n"
    assert parse(body) == [StreamEvent("output", "Hello", "7")]


def test_data_lines_are_joined_with_newlines_and_one_leading_space_is_dropped() -> None:
    body = b"event: logs\ndata: one\ndata:two\ndata:  three\ndata\n\n"
    assert parse(body) == [StreamEvent("logs", "one\ntwo\n three\n", None)]


def test_an_event_without_a_type_is_a_message() -> None:
    assert parse(b"data: x\n\n") == [StreamEvent("message", "x", None)]


def test_every_line_ending_works_and_they_may_be_mixed() -> None:
    body = b"event: a\rdata: 1\r\n\r\nevent: b\ndata: 2\r\rdata: 3\n\n"
    assert parse(body) == [
        StreamEvent("a", "1"),
        StreamEvent("b", "2"),
        StreamEvent("message", "3"),
    ]


def test_a_crlf_split_between_chunks_is_one_line_ending() -> None:
    """A ``\\r`` at a chunk's end, then ``\\n``: not a blank line in between."""
    assert parse(b"data: a\r", b"\ndata: b\r\n\r", b"\n") == [
        StreamEvent("message", "a\nb")
    ]


def test_comments_and_unknown_fields_are_ignored() -> None:
    body = b": keep-alive\nfoo: bar\ndata: x\n:\n\n"
    assert parse(body) == [StreamEvent("message", "x")]


def test_one_byte_order_mark_at_the_start_is_dropped() -> None:
    bom = "\ufeff".encode()
    assert parse(bom + b"data: x\n\n") == [StreamEvent("message", "x")]
    # Split inside the mark; a second mark is part of the first field name.
    assert parse(bom[:1], bom[1:] + bom + b"data: y\n\n") == []


def test_an_event_with_no_data_is_not_dispatched_but_its_id_counts() -> None:
    parser = SSEParser()
    assert parser.feed(b"event: output\nid: 4\n\n") == []
    assert parser.last_event_id == "4"
    assert parser.feed(b"data: x\n\n") == [StreamEvent("message", "x", "4")]


def test_an_empty_id_resets_the_last_event_id_and_one_with_nul_is_ignored() -> None:
    parser = SSEParser()
    events = parser.feed(b"id: 1\ndata: a\n\nid: 2\0\ndata: b\n\nid\ndata: c\n\n")
    assert [event.id for event in events] == ["1", "1", None]
    assert parser.last_event_id is None


def test_retry_takes_milliseconds_in_digits_only() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 1500\n")
    assert parser.retry == 1.5
    parser.feed(b"retry: soon\nretry: -1\nretry: 2.5\n")
    assert parser.retry == 1.5


def test_utf8_split_anywhere_decodes_and_bad_bytes_become_replacements() -> None:
    body = "data: héllo ✓\n\n".encode()
    assert parse(*(body[i : i + 1] for i in range(len(body)))) == [
        StreamEvent("message", "héllo ✓")
    ]
    assert parse(b"data: \xff\n\n") == [StreamEvent("message", "\ufffd")]


def test_an_event_cut_off_by_a_new_connection_is_discarded_with_its_id() -> None:
    """The id of an event that never ended is not the last event id: resuming
    after it would lose that event."""
    parser = SSEParser("3")
    assert parser.feed(b"id: 4\nevent: output\ndata: par") == []
    parser.restart()
    assert parser.last_event_id == "3"
    assert parser.feed(b"id: 4\nevent: output\ndata: whole\n\n") == [
        StreamEvent("output", "whole", "4")
    ]


def test_the_last_event_id_and_retry_outlive_a_connection() -> None:
    parser = SSEParser()
    parser.feed(b"retry: 10\nid: 9\ndata: a\n\n")
    parser.restart()
    assert (parser.last_event_id, parser.retry) == ("9", 0.01)
    assert parser.feed(b"data: b\n\n") == [StreamEvent("message", "b", "9")]


def test_buffered_counts_what_waits_for_its_end() -> None:
    parser = SSEParser()
    parser.feed(b"data: 12345\ndata: 678")
    assert parser.buffered == len("12345") + len("data: 678")
    parser.feed(b"\n\n")
    assert parser.buffered == 0


# -- the parser against the spec, on any body and any split -------------------


def reference(text: str) -> list[StreamEvent]:
    """The spec's algorithm, literally, on a whole decoded body."""
    if text.startswith("\ufeff"):
        text = text[1:]
    *lines, _unfinished = re.split(r"\r\n|\r|\n", text)
    events: list[StreamEvent] = []
    data, event_type, id_buffer, last_id = "", "", "", ""
    for line in lines:
        if line == "":
            last_id = id_buffer
            if data == "":
                event_type = ""
                continue
            if data.endswith("\n"):
                data = data[:-1]
            events.append(StreamEvent(event_type or "message", data, last_id or None))
            data, event_type = "", ""
            continue
        if line.startswith(":"):
            continue
        if ":" in line:
            field, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            field, value = line, ""
        if field == "event":
            event_type = value
        elif field == "data":
            data += value + "\n"
        elif field == "id" and "\0" not in value:
            id_buffer = value
    return events


FIELDS = st.sampled_from(
    [
        "data: ",
        "data:",
        "data",
        "event: ",
        "event:",
        "id: ",
        "id:",
        "id",
        "retry: ",
        ": ",
        ":",
        "",
        "\ufeff",
        "other: ",
    ]
)
VALUES = st.text(
    st.sampled_from(
        [
            *string.ascii_letters[:6],
            *string.digits[:4],
            " ",
            ":",
            "é",
            "✓",
            "\0",
            "\ufeff",
        ]
    ),
    max_size=6,
)
ENDINGS = st.sampled_from(["\n", "\r", "\r\n"])
LINES = st.tuples(FIELDS, VALUES, ENDINGS).map("".join)
#: Bodies of lines (blank ones often: they end events), the last maybe unfinished.
BODIES = st.tuples(st.lists(st.one_of(LINES, ENDINGS), max_size=30), VALUES).map(
    lambda parts: "".join(parts[0]) + parts[1]
)


@given(BODIES, st.lists(st.integers(min_value=0), max_size=12))
def test_any_split_of_any_body_gives_the_events_the_spec_gives(
    text: str, cuts: list[int]
) -> None:
    body = text.encode()
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    chunks = [
        body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)
    ]
    assert parse(*chunks) == reference(text)
    assert parse(body) == reference(text)


# -- which stream URL gets the key --------------------------------------------


@pytest.mark.parametrize(
    ("base", "stream", "sent"),
    [
        # The base URL's own origin.
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/stream/a", True),
        ("https://gw.example/replicate/v1", "https://GW.example./s/a", True),
        ("https://gw.example/replicate/v1", "https://gw.example:443/s/a", True),
        # Another port, host name or scheme is another host.
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/stream/a", False),
        ("http://127.0.0.1:8000/v1", "http://localhost:8000/stream/a", False),
        ("https://gw.example/v1", "http://gw.example/stream/a", False),
        # Replicate's stream hosts, from Replicate's base URL only, over https.
        ("https://api.replicate.com/v1", "https://stream.replicate.com/v1/a", True),
        ("https://api.replicate.com/v1", "https://a.b.replicate.delivery/x", True),
        ("https://api.replicate.com/v1", "https://replicate.net/x", True),
        ("https://api.replicate.com/v1", "http://stream.replicate.com/v1/a", False),
        ("https://api.replicate.com/v1", "https://replicate.com.evil.example/", False),
        ("https://api.replicate.com/v1", "https://evilreplicate.com/x", False),
        (
            "https://api.cometapi.com/replicate/v1",
            "https://stream.replicate.com/a",
            False,
        ),
        # Not a URL anyone may have the key at.
        ("https://api.replicate.com/v1", "ftp://stream.replicate.com/a", False),
        ("https://api.replicate.com/v1", "https://[::1/x", False),
        ("https://api.replicate.com/v1", "/relative/stream", False),
    ],
)
def test_the_key_goes_to_the_base_urls_origin_and_replicates_stream_hosts(
    base: str, stream: str, sent: bool
) -> None:
    assert stream_gets_key(base, stream) is sent


# -- the stream URL of a record -----------------------------------------------


def test_a_record_without_a_stream_url_says_it_does_not_stream() -> None:
    for data in (
        {"id": "a", "status": "starting"},
        {"id": "a", "status": "starting", "urls": {"get": "https://x/p/a"}},
        {"id": "a", "status": "starting", "urls": {"stream": ""}},
    ):
        with pytest.raises(NoStreamError, match="does not stream") as info:
            stream_url_of(Prediction.from_json(data))
        assert (info.value.prediction_id, info.value.url) == ("a", None)


def test_a_stream_url_that_is_not_http_is_refused_before_any_request() -> None:
    record = Prediction.from_json(
        {"id": "a", "status": "starting", "urls": {"stream": "file:///etc/passwd"}}
    )
    with pytest.raises(NoStreamError, match="not an http") as info:
        stream_url_of(record)
    assert info.value.url == "file:///etc/passwd"


# -- reconnecting -------------------------------------------------------------


def test_a_dropped_stream_is_reopened_after_the_servers_retry_delay() -> None:
    reconnects = Reconnects()
    assert reconnects.next_wait(ConnectError("cut"), retry=2.0) == 2.0
    assert reconnects.next_wait(ConnectError("cut"), retry=3600.0) == 30.0  # capped


def test_without_a_retry_delay_the_wait_is_a_jittered_backoff() -> None:
    reconnects = Reconnects(base_delay=1.0, max_delay=3.0)
    ceilings = [1.0, 2.0, 3.0, 3.0]
    for ceiling in ceilings:
        wait = reconnects.next_wait(RequestTimeoutError("idle"), retry=None)
        assert wait is not None
        assert 0.0 <= wait <= ceiling


def test_five_failures_in_a_row_end_the_stream_and_an_event_resets_the_count() -> None:
    reconnects = Reconnects()
    for _ in range(MAX_STREAM_FAILURES - 1):
        assert reconnects.next_wait(ServerError("down", status=503), retry=0) == 0
    reconnects.succeeded()
    for _ in range(MAX_STREAM_FAILURES - 1):
        assert reconnects.next_wait(ConnectError("cut"), retry=0) == 0
    last = ConnectError("cut")
    assert reconnects.next_wait(last, retry=0) is None
    assert last.attempts == MAX_STREAM_FAILURES


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("no", status=401),
        ServerError("not implemented", status=501),
        DecodeError("text/html, not text/event-stream", status=200),
    ],
    ids=lambda e: f"{type(e).__name__}-{e.status}",
)
def test_answers_that_would_be_the_same_next_time_are_not_retried(
    error: AuthenticationError,
) -> None:
    assert Reconnects().next_wait(error, retry=0.0) is None


def test_a_retry_after_is_waited_for_unless_it_is_too_long() -> None:
    reconnects = Reconnects()
    throttled = RateLimitedError("slow down", status=429, retry_after=7.0)
    assert reconnects.next_wait(throttled, retry=1.0) == 7.0
    too_long = RateLimitedError("slow down", status=429, retry_after=3600.0)
    assert reconnects.next_wait(too_long, retry=1.0) is None
