"""Hostile faults of the fake server, seen by a plain aiohttp client.

Each test proves, byte for byte where it matters, what a client receives when
one of :data:`replipoll.testing.HOSTILE_FAULTS` hits an API request or a
download (``files=True``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from replipoll.testing import (
    ANSWER_FAULTS,
    CHAOS_FAULTS,
    HOSTILE_FAULTS,
    FakeReplicate,
    Fault,
)

pytest_plugins = ["replipoll.testing.pytest_plugin"]

KEY = "test-key"  # the key of the fake_replicate fixture
AUTH = {"Authorization": f"Bearer {KEY}"}
MiB = 1 << 20
ID = re.compile(r"[a-z2-7]{26}")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # auto_decompress=False: gzip bombs are unpacked by the tests, counted.
    async with aiohttp.ClientSession(headers=AUTH, auto_decompress=False) as session:
        yield session


@pytest.fixture
def quiet(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture everything the server logs, to prove it logged no error."""
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_nothing_logged(caplog: pytest.LogCaptureFixture) -> None:
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


async def fetch(
    session: aiohttp.ClientSession, url: str, **kwargs: Any
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with session.get(url, **kwargs) as response:
        return response.status, response.headers, await response.read()


def prediction_url(server: FakeReplicate, pid: str, prefix: str = "/v1") -> str:
    return f"{server.base_url(prefix)}/predictions/{pid}"


async def normal_record(
    session: aiohttp.ClientSession, server: FakeReplicate, pid: str
) -> dict[str, Any]:
    status, _, body = await fetch(session, prediction_url(server, pid))
    assert status == 200
    record: dict[str, Any] = json.loads(body)
    return record


def record_head(normal: dict[str, Any]) -> bytes:
    """The bytes of *normal*'s JSON up to its output string's first character."""
    items = list(normal.items())
    before = dict(items[: list(normal).index("output")])
    return json.dumps(before, separators=(",", ":")).encode()[:-1] + b',"output":"'


async def settled(server: FakeReplicate) -> None:
    """Wait until every request's handler has returned (and was counted)."""
    stats = server.stats
    for _ in range(500):
        answered = sum(stats.responses_by_status.values())
        if answered == stats.total_requests and stats.in_flight == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"handlers still running: {stats}")


class PaddedJson:
    """Checks a body ``head + b"x" * n + tail`` fed piece by piece, in memory
    holding only the head and the tail."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.seen = b""
        self.padding = 0
        self.tail = b""
        self.total = 0

    def feed(self, piece: bytes) -> None:
        self.total += len(piece)
        if len(self.seen) < len(self.head):
            want = len(self.head) - len(self.seen)
            self.seen += piece[:want]
            piece = piece[want:]
            assert self.head.startswith(self.seen), self.seen
        if self.tail:
            self.tail += piece
            assert len(self.tail) < 64 * 1024, "the tail never ends"
            return
        stripped = piece.lstrip(b"x")
        self.padding += len(piece) - len(stripped)
        self.tail = stripped

    def record(self) -> dict[str, Any]:
        """The JSON object the body is, its padding output replaced by ""."""
        assert self.seen == self.head
        record: dict[str, Any] = json.loads(self.head + self.tail)
        return record


def unpack(raw: bytes, into: PaddedJson | None = None) -> int:
    """Unpack one gzip member 1 MiB at a time; return its unpacked size."""
    unpacker = zlib.decompressobj(31)
    total = 0
    data = raw
    while not unpacker.eof:
        out = unpacker.decompress(data, MiB)
        data = unpacker.unconsumed_tail
        if not (out or data):
            break  # the input ran out before the member's end
        total += len(out)
        if into is not None:
            into.feed(out)
        elif out.strip(b"x"):
            raise AssertionError("a file bomb unpacks to x only")
    assert unpacker.eof
    assert unpacker.unused_data == b""  # one member, nothing after it
    return total


# -- the constants --------------------------------------------------------


def test_hostile_faults_hold_one_of_each_and_stay_out_of_chaos() -> None:
    """HOSTILE_FAULTS has one fault of each new kind, with test-sized defaults,
    and neither it nor html_200 is part of ANSWER_FAULTS or CHAOS_FAULTS."""
    kinds = [fault.kind for fault in HOSTILE_FAULTS]
    assert kinds == [
        "huge_body",
        "gzip_bomb",
        "endless_body",
        "trickle",
        "mismatched_id",
        "echoed_key",
    ]
    huge, bomb, _, trickle, mismatched, echoed = HOSTILE_FAULTS
    assert (huge.size, bomb.size) == (32 * MiB, 64 * MiB)
    assert (trickle.delay, trickle.chunk) == (0.05, 1)
    assert mismatched.other is None
    assert (echoed.code, echoed.offset, echoed.where) == (401, 0, "detail")
    mixes = {fault.kind for fault in (*ANSWER_FAULTS, *CHAOS_FAULTS)}
    assert not mixes & {*kinds, "html_200"}
    assert Fault.html_200().code == 200  # still there, just not in the mixes


@pytest.mark.parametrize(
    "build",
    [
        lambda: Fault.huge_body(-1),
        lambda: Fault.gzip_bomb(-1),
        lambda: Fault.gzip_bomb(1.5),  # type: ignore[arg-type]
        lambda: Fault.trickle(-0.1),
        lambda: Fault.trickle(float("inf")),
        lambda: Fault.trickle(0.1, chunk=0),
        lambda: Fault.mismatched_id(""),
        lambda: Fault.mismatched_id("a/b"),
        lambda: Fault.echoed_key(where="body"),
        lambda: Fault.echoed_key(offset=-1),
        lambda: Fault.echoed_key(99),
        lambda: Fault.echoed_key(304),
    ],
)
def test_hostile_constructors_reject_bad_arguments(build: Any) -> None:
    """Negative sizes, offsets and intervals, a zero chunk, an unusable id, an
    unknown `where` or a status without a body are ValueErrors."""
    with pytest.raises(ValueError):  # noqa: PT011 - messages vary
        build()


async def test_api_only_faults_refuse_files_and_other_must_exist(
    fake_replicate: FakeReplicate,
) -> None:
    """mismatched_id and echoed_key cannot be armed for downloads, and
    mismatched_id(other) needs `other` to be a prediction of the server."""
    pid = fake_replicate.add_prediction()
    for fault in (Fault.mismatched_id(), Fault.echoed_key()):
        with pytest.raises(ValueError, match="not files"):
            fake_replicate.add_fault(fault, files=True)
    with pytest.raises(ValueError, match="no prediction 'nope'"):
        fake_replicate.add_fault(Fault.mismatched_id("nope"))
    with pytest.raises(ValueError, match="no prediction 'nope'"):
        fake_replicate.set_chaos(0.5, [Fault.mismatched_id("nope")])
    fake_replicate.add_fault(Fault.mismatched_id(pid))  # an existing one is fine


# -- huge_body ------------------------------------------------------------


async def test_huge_body_is_the_record_padded_to_exactly_size_bytes(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """huge_body(size): 200 JSON, Content-Length == size == bytes received; the
    normal record, keys in order, output one string of x."""
    pid = fake_replicate.add_prediction(input={"prompt": "cat"})
    normal = await normal_record(session, fake_replicate, pid)
    size = 8 * MiB + 7
    fake_replicate.add_fault(Fault.huge_body(size), prediction_id=pid)
    async with session.get(prediction_url(fake_replicate, pid)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.content_length == size
        checker = PaddedJson(record_head(normal))
        async for piece in response.content.iter_chunked(MiB):
            checker.feed(piece)
    record = checker.record()
    assert checker.total == size
    assert list(record) == list(normal)
    assert record == {**normal, "output": ""}
    padded = json.loads(checker.head + b"x" * checker.padding + checker.tail)
    assert padded["output"] == "x" * checker.padding
    assert fake_replicate.stats.faults_injected == {"huge_body": 1}


async def test_huge_body_of_96_mib_arrives_whole_with_its_length_announced(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A 96 MiB body (streamed by the server) arrives in full, its
    Content-Length sent up front."""
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.huge_body(96 * MiB))
    received = 0
    async with session.get(prediction_url(fake_replicate, pid)) as response:
        assert response.content_length == 96 * MiB
        async for piece in response.content.iter_chunked(MiB):
            received += len(piece)
    assert received == 96 * MiB


async def test_huge_body_too_small_for_the_record_sends_it_with_empty_output(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A size below the record's own: the record with output "" (and that
    length), as close to the size as JSON allows."""
    pid = fake_replicate.add_prediction()
    normal = await normal_record(session, fake_replicate, pid)
    fake_replicate.add_fault(Fault.huge_body(10))
    status, headers, body = await fetch(session, prediction_url(fake_replicate, pid))
    assert status == 200
    assert int(headers["Content-Length"]) == len(body) > 10
    assert json.loads(body) == {**normal, "output": ""}


async def test_huge_body_pads_a_create_and_leaves_errors_alone(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A create keeps its 201 and is padded; a 404 for an unknown id and a
    401 for a wrong key are sent unchanged (the fault is still counted)."""
    fake_replicate.add_fault(Fault.huge_body(MiB), times=3)
    create = f"{fake_replicate.base_url()}/models/a/b/predictions"
    async with session.post(create, json={"input": {}}) as response:
        created = await response.read()
        assert (response.status, response.content_length) == (201, MiB)
    record = json.loads(created)
    assert len(created) == MiB
    assert not record["output"].strip("x")
    assert fake_replicate.prediction_state(record["id"])["model"] == "a/b"
    missing, _, body = await fetch(session, prediction_url(fake_replicate, "nope"))
    assert (missing, json.loads(body)) == (404, {"detail": "Not found.", "status": 404})
    wrong, _, _ = await fetch(
        session,
        prediction_url(fake_replicate, "nope"),
        headers={"Authorization": "Bearer wrong"},
    )
    assert wrong == 401
    assert fake_replicate.stats.faults_injected == {"huge_body": 3}


async def test_huge_body_on_a_file_is_size_bytes_of_x(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """files=True: the download is 200 octet-stream, Content-Length size, all x;
    the next download is the normal file again."""
    pid = fake_replicate.add_prediction()
    size = 3 * MiB + 1
    fake_replicate.add_fault(Fault.huge_body(size), prediction_id=pid, files=True)
    url = f"{fake_replicate.url}/files/{pid}/out-0.bin"
    received = 0
    async with session.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/octet-stream"
        assert response.content_length == size
        async for piece in response.content.iter_chunked(MiB):
            assert not piece.strip(b"x")
            received += len(piece)
    assert received == size
    _, _, normal = await fetch(session, url)
    assert normal == fake_replicate.file_content(pid, "out-0.bin")


# -- gzip_bomb ------------------------------------------------------------


async def test_gzip_bomb_is_small_and_unpacks_to_exactly_the_promised_json(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """gzip_bomb(n): 200, Content-Encoding gzip, a body about n/1000 bytes that
    is one gzip member unpacking to n bytes: the record, output first, x's."""
    pid = fake_replicate.add_prediction(model="acme/painter")
    normal = await normal_record(session, fake_replicate, pid)
    unpacked = 16 * MiB + 5
    fake_replicate.add_fault(Fault.gzip_bomb(unpacked), prediction_id=pid)
    status, headers, raw = await fetch(session, prediction_url(fake_replicate, pid))
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(raw) < unpacked // 500
    checker = PaddedJson(b'{"output":"')
    assert unpack(raw, checker) == unpacked
    assert checker.total == unpacked
    assert checker.record() == {**normal, "output": ""}
    assert len(checker.head) + checker.padding + len(checker.tail) == unpacked


async def test_gzip_bomb_is_cached_per_size_yet_names_each_prediction(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """The padding is packed once per size: a second bomb of that size comes
    several times faster than the first, and carries the id of its own
    prediction (not that of the first); both are byte for byte what they
    should be."""
    first, second = fake_replicate.add_prediction(), fake_replicate.add_prediction()
    unpacked = 48 * MiB + 1  # a size no other test uses: not cached yet
    times = []
    for pid in (first, second):
        fake_replicate.add_fault(Fault.gzip_bomb(unpacked), prediction_id=pid)
        started = time.perf_counter()
        _, _, raw = await fetch(session, prediction_url(fake_replicate, pid))
        times.append(time.perf_counter() - started)
        checker = PaddedJson(b'{"output":"')
        assert unpack(raw, checker) == unpacked
        assert checker.record()["id"] == pid
    assert times[1] < times[0] / 4, times
    assert fake_replicate.stats.faults_injected == {"gzip_bomb": 2}


async def test_gzip_bomb_on_a_file_unpacks_to_x_only(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """files=True: 200 octet-stream with Content-Encoding gzip, unpacking to
    exactly n bytes of x."""
    pid = fake_replicate.add_prediction()
    unpacked = 8 * MiB + 3
    fake_replicate.add_fault(Fault.gzip_bomb(unpacked), prediction_id=pid, files=True)
    status, headers, raw = await fetch(
        session, f"{fake_replicate.url}/files/{pid}/out-0.bin"
    )
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"] == "application/octet-stream"
    assert int(headers["Content-Length"]) == len(raw) < unpacked // 500
    assert unpack(raw) == unpacked


# -- endless_body ---------------------------------------------------------


async def test_endless_body_keeps_coming_and_ends_quietly_when_the_client_leaves(
    fake_replicate: FakeReplicate,
    session: aiohttp.ClientSession,
    quiet: pytest.LogCaptureFixture,
) -> None:
    """endless_body: 200 chunked JSON, no Content-Length: the record's JSON up
    to `"output":"`, then only x, past 32 MiB; once the client hangs up the
    handler ends, nothing is logged and the next request is answered."""
    pid = fake_replicate.add_prediction()
    normal = await normal_record(session, fake_replicate, pid)
    fake_replicate.add_fault(Fault.endless_body(), prediction_id=pid)
    checker = PaddedJson(record_head(normal))
    async with session.get(prediction_url(fake_replicate, pid)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        assert response.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Length" not in response.headers
        async for piece in response.content.iter_chunked(MiB):
            checker.feed(piece)
            if checker.total > 32 * MiB:
                break
    assert checker.seen == checker.head
    assert not checker.tail  # nothing but x after the head
    assert checker.padding > 32 * MiB - len(checker.head)
    await settled(fake_replicate)
    assert fake_replicate.stats.in_flight == 0
    assert (await normal_record(session, fake_replicate, pid))["id"] == pid
    assert fake_replicate.stats.faults_injected == {"endless_body": 1}
    assert_nothing_logged(quiet)


async def test_endless_body_on_a_file_never_ends_either(
    fake_replicate: FakeReplicate,
    session: aiohttp.ClientSession,
    quiet: pytest.LogCaptureFixture,
) -> None:
    """files=True: a chunked download of x past 16 MiB; the server shrugs off
    the hang-up and serves the file normally next."""
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.endless_body(), prediction_id=pid, files=True)
    url = f"{fake_replicate.url}/files/{pid}/out-0.bin"
    received = 0
    async with session.get(url) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        async for piece in response.content.iter_chunked(MiB):
            assert not piece.strip(b"x")
            received += len(piece)
            if received > 16 * MiB:
                break
    await settled(fake_replicate)
    _, _, body = await fetch(session, url)
    assert body == fake_replicate.file_content(pid, "out-0.bin")
    assert_nothing_logged(quiet)


@pytest.mark.parametrize(
    "fault", [Fault.endless_body(), Fault.huge_body(256 * MiB)], ids=lambda f: f.kind
)
async def test_streamed_bodies_survive_a_reset_while_the_server_waits_to_write(
    fake_replicate: FakeReplicate, quiet: pytest.LogCaptureFixture, fault: Fault
) -> None:
    """A client that stops reading (the server blocks on a full socket) and
    then resets the connection (RST, not FIN): the handler ends, nothing is
    logged."""
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(fault, files=True)
    host, port = fake_replicate.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET /files/{pid}/out-0.bin HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await asyncio.wait_for(reader.readexactly(100_000), 5)
    await asyncio.sleep(0.2)  # the buffers fill up; the server waits in drain
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await settled(fake_replicate)
    assert_nothing_logged(quiet)


# -- trickle --------------------------------------------------------------


async def read_timed(
    session: aiohttp.ClientSession, url: str
) -> tuple[int, CIMultiDictProxy[str], bytes, float]:
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
    return response.status, response.headers, body, time.perf_counter() - started


async def test_trickle_sends_the_normal_answer_slowly_while_others_go_on(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """trickle(0.1, chunk=100): the normal JSON with its Content-Length, taking
    (pieces - 1) * 0.1 s; a request sent meanwhile is answered at once."""
    slow, fast = fake_replicate.add_prediction(), fake_replicate.add_prediction()
    normal = await normal_record(session, fake_replicate, slow)
    fake_replicate.add_fault(Fault.trickle(0.1, chunk=100), prediction_id=slow)
    trickled = asyncio.create_task(
        read_timed(session, prediction_url(fake_replicate, slow))
    )
    await asyncio.sleep(0.05)
    other = await read_timed(session, prediction_url(fake_replicate, fast))
    status, headers, body, elapsed = await trickled
    pieces = -(-len(body) // 100)
    assert status == 200
    assert int(headers["Content-Length"]) == len(body)
    assert json.loads(body) == normal
    assert pieces >= 5
    assert (pieces - 1) * 0.1 * 0.9 <= elapsed < (pieces - 1) * 0.1 + 5
    assert other[0] == 200
    assert other[3] < elapsed / 2
    assert fake_replicate.stats.faults_injected == {"trickle": 1}


async def test_trickle_arrives_in_pieces(fake_replicate: FakeReplicate) -> None:
    """The bytes really come chunk by chunk: a raw socket sees the first piece
    (with the headers) at once and the last one only after the intervals."""
    pid = fake_replicate.add_prediction()
    interval = 0.25
    fake_replicate.add_fault(Fault.trickle(interval, chunk=1), files=True)
    host, port = fake_replicate.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = f"GET /files/{pid}/out-0.bin HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request.encode())
        started = time.perf_counter()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        first = await asyncio.wait_for(reader.readexactly(1), 5)
        first_at = time.perf_counter() - started
        rest = await asyncio.wait_for(reader.readexactly(3), 5)
        done_at = time.perf_counter() - started
    finally:
        writer.close()
    # file_size defaults to 1024: only 4 bytes are read, then we hang up.
    assert b"Content-Length: 1024\r\n" in head
    assert first + rest == fake_replicate.file_content(pid, "out-0.bin")[:4]
    assert first_at < interval * 0.8
    assert done_at >= 3 * interval * 0.9
    await settled(fake_replicate)


async def test_trickle_on_a_file_delivers_it_whole(
    fake_replicate: FakeReplicate,
    session: aiohttp.ClientSession,
    quiet: pytest.LogCaptureFixture,
) -> None:
    """files=True: the normal file bytes and Content-Length, 8 bytes per 0.05 s;
    a trickled answer the client walked away from leaves no error behind."""
    pid = fake_replicate.add_prediction(file_size=40)
    fake_replicate.add_fault(Fault.trickle(0.05, chunk=8), files=True, times=1)
    url = f"{fake_replicate.url}/files/{pid}/out-0.bin"
    status, headers, body, elapsed = await read_timed(session, url)
    assert status == 200
    assert int(headers["Content-Length"]) == 40
    assert body == fake_replicate.file_content(pid, "out-0.bin")
    assert 4 * 0.05 * 0.9 <= elapsed < 5
    await settled(fake_replicate)
    assert_nothing_logged(quiet)


# -- mismatched_id --------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
async def test_mismatched_id_answers_the_current_record_of_another_prediction(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession, prefix: str
) -> None:
    """mismatched_id(other): asking for A gives 200 and exactly B's record
    (as B's own GET under that prefix answers it)."""
    asked = fake_replicate.add_prediction(model="acme/a")
    other = fake_replicate.add_prediction(model="acme/b", outcome="failed")
    fake_replicate.add_fault(Fault.mismatched_id(other), prediction_id=asked)
    status, headers, body = await fetch(
        session, prediction_url(fake_replicate, asked, prefix)
    )
    _, _, own = await fetch(session, prediction_url(fake_replicate, other, prefix))
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert json.loads(body) == json.loads(own)
    assert json.loads(body)["id"] == other
    assert fake_replicate.stats.faults_injected == {"mismatched_id": 1}


async def test_mismatched_id_without_other_makes_up_an_id_that_exists_nowhere(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """mismatched_id(): a well-formed record like the one asked for, under a
    made-up Replicate-like id that the server does not know (its GET is 404,
    its output file too)."""
    pid = fake_replicate.add_prediction(input={"prompt": "cat"})
    normal = await normal_record(session, fake_replicate, pid)
    fake_replicate.add_fault(Fault.mismatched_id(), prediction_id=pid)
    status, _, body = await fetch(session, prediction_url(fake_replicate, pid))
    record = json.loads(body)
    fake = record["id"]
    assert status == 200
    assert ID.fullmatch(fake)
    assert fake != pid
    assert set(record) == set(normal)
    for key in ("model", "version", "input", "status", "metrics"):
        assert record[key] == normal[key], key
    # The same instant, though the precision may differ (it follows the id).
    assert record["created_at"][:23] == normal["created_at"][:23]
    assert record["urls"]["get"].endswith(f"/predictions/{fake}")
    missing, _, _ = await fetch(session, prediction_url(fake_replicate, fake))
    file_missing, _, _ = await fetch(session, record["output"][0])
    assert (missing, file_missing) == (404, 404)


async def test_mismatched_id_on_a_create_or_list_is_a_record_of_nobody(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A create gets 201 and the new prediction's record under a made-up id; a
    list request (naming no prediction) a fresh succeeded record, null output."""
    fake_replicate.add_fault(Fault.mismatched_id(), times=2)
    create = f"{fake_replicate.base_url()}/models/acme/x/predictions"
    async with session.post(create, json={"input": {"p": 1}}) as response:
        created = await response.json()
        assert response.status == 201
    status, _, body = await fetch(session, f"{fake_replicate.base_url()}/predictions")
    fresh = json.loads(body)
    assert (created["model"], created["input"]) == ("acme/x", {"p": 1})
    assert status == 200
    assert (fresh["status"], fresh["output"]) == ("succeeded", None)
    for record in (created, fresh):
        assert ID.fullmatch(record["id"])
        missing, _, _ = await fetch(
            session, prediction_url(fake_replicate, record["id"])
        )
        assert missing == 404


# -- echoed_key -----------------------------------------------------------

SECRET = "r8_EcHoMe-0123456789abcdef"


def echoed_text(where: str, status: int, headers: Any, body: bytes) -> str:
    """The text holding the key, as each `where` carries it."""
    if where == "detail":
        assert headers["Content-Type"] == "application/problem+json"
        problem = json.loads(body)
        assert set(problem) == {"detail"}
        return str(problem["detail"])
    if where == "comet":
        assert headers["Content-Type"] == "application/json"
        error = json.loads(body)["error"]
        assert (error["type"], error["param"], error["code"]) == (
            "comet_api_error",
            "",
            "",
        )
        text, _, rest = error["message"].partition(" (request id: ")
        assert re.fullmatch(r"req_[0-9a-f]{10}\)", rest), rest
        return str(text)
    if where == "header":
        assert headers["Content-Type"] == "application/problem+json"
        assert json.loads(body)["status"] == status
        assert SECRET.encode() not in body
        return str(headers["X-Request-Id"])
    assert where == "html"
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    title = re.search(rb"<title>(.*)</title>", body)
    assert title is not None
    return title[1].decode()


@pytest.mark.parametrize("offset", [0, 37, 300])
@pytest.mark.parametrize("where", ["detail", "comet", "header", "html"])
async def test_echoed_key_puts_the_key_exactly_at_the_offset(
    fake_replicate: FakeReplicate, where: str, offset: int
) -> None:
    """echoed_key(code, offset=, where=): status code, and the text is offset
    x's, the key sent (a wrong one here), then 40 x's (10 in the header)."""
    fake_replicate.add_fault(Fault.echoed_key(403, offset=offset, where=where))
    headers = {"Authorization": f"Bearer {SECRET}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        status, got, body = await fetch(session, prediction_url(fake_replicate, "x"))
    text = echoed_text(where, status, got, body)
    trailer = 10 if where == "header" else 40
    assert status == 403
    assert text.index(SECRET) == offset
    assert text == "x" * offset + SECRET + "x" * trailer
    assert fake_replicate.stats.faults_injected == {"echoed_key": 1}


async def test_echoed_key_defaults_to_a_401_detail_and_echoes_nothing_unsent(
    fake_replicate: FakeReplicate,
) -> None:
    """echoed_key(): 401 {"detail": key + 40 x}; with no Authorization header
    the echoed key is the empty string."""
    fake_replicate.add_fault(Fault.echoed_key(), times=2)
    url = prediction_url(fake_replicate, "x")
    async with aiohttp.ClientSession(headers=AUTH) as session:
        status, _, body = await fetch(session, url)
    async with aiohttp.ClientSession() as anonymous:
        bare, _, bare_body = await fetch(anonymous, url)
    assert (status, json.loads(body)) == (401, {"detail": f"{KEY}{'x' * 40}"})
    assert (bare, json.loads(bare_body)) == (401, {"detail": "x" * 40})


async def test_echoed_key_in_the_status_of_a_normal_record(
    fake_replicate: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """where="status": 200 and the normal record, but its status is the text
    (offset x's, the key, 40 x's): an undocumented status echoing the key."""
    pid = fake_replicate.add_prediction()
    normal = await normal_record(session, fake_replicate, pid)
    fake_replicate.add_fault(Fault.echoed_key(offset=5, where="status"))
    status, headers, body = await fetch(session, prediction_url(fake_replicate, pid))
    record = json.loads(body)
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert record["status"].index(KEY) == 5
    assert record == {**normal, "status": f"xxxxx{KEY}{'x' * 40}"}
