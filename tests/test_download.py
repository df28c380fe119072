"""save_outputs against files served by the fake server (and a recording one)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gzip
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import replipoll
from aiohttp import web
from aiohttp.typedefs import Handler
from replipoll import (
    DownloadError,
    Prediction,
    RetryPolicy,
    Timeouts,
    _download,
    save_outputs,
)
from replipoll._download import (
    DEFAULT_MAX_SIZE,
    DEFAULT_TIMEOUTS,
    FLUSH_SIZE,
    INLINE_DECODE,
    output_names,
)
from replipoll.testing import FakeReplicate, Fault

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)


def succeeded(output: object, pid: str = "p1") -> Prediction:
    return Prediction.from_json({"id": pid, "status": "succeeded", "output": output})


def file_requests(server: FakeReplicate, pid: str) -> list[str]:
    return [
        r.path for r in server.stats.request_log if r.path.startswith(f"/files/{pid}/")
    ]


def entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def leftovers(directory: Path) -> list[str]:
    return [name for name in entries(directory) if name.endswith(".part")]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate() as fake:
        yield fake


async def fetch(server: FakeReplicate, pid: str) -> Prediction:
    async with replipoll.Client(
        base_url=server.base_url(), api_key=server.api_key
    ) as client:
        return await client.get(pid)


# -- naming (pure) -------------------------------------------------------------


def test_output_names_dedupe_collisions_with_an_index() -> None:
    """Same basenames get -0, -1; unique names are kept; unsafe characters go."""
    names = output_names(
        [
            "https://x/a/out.png",
            "https://x/b/OUT.png",  # collides on case-insensitive file systems
            "https://x/c/My%20Cat%3F.jpg",
            "https://x/d/",
            "https://x/e/..",
            "https://x/f/con.txt",
        ]
    )
    assert names == ["out-0.png", "OUT-1.png", "My_Cat.jpg", "d", "output", "_con.txt"]


def test_output_names_avoid_an_existing_indexed_name() -> None:
    """``out-0.png`` already taken by another URL: the duplicates skip it."""
    names = output_names(
        ["https://x/out-0.png", "https://x/a/out.png", "https://x/b/out.png"]
    )
    assert names == ["out-0.png", "out-1.png", "out-2.png"]
    assert len({n.lower() for n in names}) == len(names)


def test_output_names_are_bounded_in_length() -> None:
    """A huge basename is cut, its extension kept."""
    (name,) = output_names([f"https://x/{'a' * 500}.webp"])
    assert len(name) <= 120
    assert name.endswith(".webp")


# -- saving --------------------------------------------------------------------


async def test_saves_every_file_of_a_list_output(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """Files land in DEST/ID/ under their URL names, byte for byte."""
    pid = server.add_prediction(n_files=3, file_size=200_000)
    report = await save_outputs(await fetch(server, pid), tmp_path)
    assert report.ok
    assert report.directory == tmp_path / pid
    assert [f.path.name for f in report.saved] == [
        "out-0.bin",
        "out-1.bin",
        "out-2.bin",
    ]
    for saved in report.files:
        assert saved.path.read_bytes() == server.file_content(pid, saved.path.name)
        assert saved.size == 200_000
        assert not saved.skipped
    assert leftovers(report.directory) == []


async def test_one_url_and_nested_outputs_are_found_and_duplicates_saved_once(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """A single URL string works; so do URLs nested in objects, each saved once."""
    pid = server.add_prediction(n_files=3)
    base = f"{server.url}/files/{pid}"
    single = await save_outputs(succeeded(f"{base}/out-1.bin", "single"), tmp_path)
    assert [f.path.name for f in single.files] == ["out-1.bin"]
    nested = {
        "images": [f"{base}/out-0.bin", f"{base}/out-1.bin"],
        "meta": {"thumbnail": f"{base}/out-2.bin", "caption": "a cat"},
        "again": f"{base}/out-0.bin",
    }
    report = await save_outputs(succeeded(nested, "nested"), tmp_path)
    assert report.ok
    assert [f.path.name for f in report.files] == [
        "out-0.bin",
        "out-1.bin",
        "out-2.bin",
    ]
    assert file_requests(server, pid).count(f"/files/{pid}/out-0.bin") == 1


async def test_colliding_names_from_different_urls_get_distinct_files(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """Two URLs ending in the same name are both kept, as NAME-0 and NAME-1."""
    a = server.add_prediction(n_files=1)
    b = server.add_prediction(n_files=1)
    urls = [f"{server.url}/files/{a}/out-0.bin", f"{server.url}/files/{b}/out-0.bin"]
    report = await save_outputs(succeeded(urls), tmp_path)
    assert [f.path.name for f in report.files] == ["out-0-0.bin", "out-0-1.bin"]
    assert report.files[1].path.read_bytes() == server.file_content(b, "out-0.bin")


async def test_files_already_present_are_skipped_unless_overwrite(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """An existing file is neither fetched nor touched; overwrite=True replaces it."""
    pid = server.add_prediction(n_files=2)
    prediction = await fetch(server, pid)
    (tmp_path / pid).mkdir()
    (tmp_path / pid / "out-0.bin").write_bytes(b"mine")
    report = await save_outputs(prediction, tmp_path)
    assert [(f.path.name, f.skipped, f.size) for f in report.files] == [
        ("out-0.bin", True, 4),
        ("out-1.bin", False, 1024),
    ]
    assert (tmp_path / pid / "out-0.bin").read_bytes() == b"mine"
    assert file_requests(server, pid) == [f"/files/{pid}/out-1.bin"]

    again = await save_outputs(prediction, tmp_path, overwrite=True)
    assert not again.skipped
    assert (tmp_path / pid / "out-0.bin").read_bytes() == server.file_content(
        pid, "out-0.bin"
    )


async def test_partial_failure_saves_the_rest_and_reports_the_failure(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """A 404 (expired URL) is not retried; the other files are still saved."""
    pid = server.add_prediction(n_files=3)
    prediction = await fetch(server, pid)
    server.add_fault(Fault.status(404, "gone"), prediction_id=pid, files=True)
    report = await save_outputs(prediction, tmp_path, concurrency=1, retry=FAST)
    assert not report.ok
    (error,) = report.errors
    assert isinstance(error, DownloadError)
    assert error.status == 404
    assert error.url.endswith("/out-0.bin")
    assert [f.path.name for f in report.files] == ["out-1.bin", "out-2.bin"]
    assert file_requests(server, pid).count(f"/files/{pid}/out-0.bin") == 1
    assert not (report.directory / "out-0.bin").exists()
    with pytest.raises(DownloadError, match="404"):
        report.raise_for_errors()


@pytest.mark.parametrize(
    "fault",
    [Fault.server_error(), Fault.truncated_body(), Fault.reset()],
    ids=lambda fault: fault.kind,
)
async def test_transient_failures_are_retried(
    server: FakeReplicate, tmp_path: Path, fault: Fault
) -> None:
    """5xx, a body cut short and a reset are retried, then the file is whole."""
    pid = server.add_prediction(n_files=1, file_size=50_000)
    prediction = await fetch(server, pid)
    server.add_fault(fault, prediction_id=pid, files=True, times=2)
    report = await save_outputs(prediction, tmp_path, retry=FAST)
    assert report.ok, report.errors
    assert report.files[0].path.read_bytes() == server.file_content(pid, "out-0.bin")
    assert len(file_requests(server, pid)) == 3
    assert leftovers(report.directory) == []


async def test_a_body_cut_short_every_time_leaves_no_file_at_all(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """Atomicity: after the last failed attempt there is neither a file nor a .part."""
    pid = server.add_prediction(n_files=1, file_size=100_000)
    prediction = await fetch(server, pid)
    server.add_fault(Fault.truncated_body(), prediction_id=pid, files=True, times=None)
    report = await save_outputs(prediction, tmp_path, retry=FAST)
    (error,) = report.errors
    assert "cut off" in error.reason
    assert entries(report.directory) == []


async def test_no_urls_means_an_empty_successful_report(tmp_path: Path) -> None:
    """Text output, null output (data removed): nothing to save, nothing created."""
    for output in ("just text", None, {"n": 1}):
        report = await save_outputs(succeeded(output), tmp_path)
        assert report.ok
        assert report.files == ()
    assert entries(tmp_path) == []


async def test_an_unwritable_destination_is_reported_per_file(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """DEST is a regular file: every URL fails with a DownloadError; nothing raises."""
    pid = server.add_prediction(n_files=2)
    blocker = tmp_path / "dest"
    blocker.write_text("not a directory")
    report = await save_outputs(await fetch(server, pid), blocker)
    assert len(report.errors) == 2
    assert all("cannot create" in e.reason for e in report.errors)


# -- the key stays home; cancellation cleans up ----------------------------------


@functools.cache
def gzip_bomb() -> bytes:
    """64 MiB of zeros, gzipped: about 64 kB on the wire."""
    return gzip.compress(bytes(64 * 1024 * 1024))


class Recorder:
    """A file server that records requests and misbehaves on demand."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.stalled = asyncio.Event()
        self.halfway = asyncio.Event()
        self.release = asyncio.Event()
        self.trickled = 0

    @web.middleware
    async def record(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        self.paths.append(request.path)
        return await handler(request)

    async def whole(self, request: web.Request) -> web.Response:
        self.headers.append(dict(request.headers))
        return web.Response(body=b"x" * 10_000)

    async def stall(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 1_000_000
        await response.prepare(request)
        await response.write(b"y" * 200_000)
        self.stalled.set()
        await asyncio.sleep(30)
        return response

    async def gzipped(self, request: web.Request) -> web.Response:
        """A gzip bomb, announced as ``Content-Encoding: gzip``."""
        return web.Response(
            body=gzip_bomb(),
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def sized(self, request: web.Request) -> web.Response:
        """``/sized/N/name``: N bytes, with a Content-Length."""
        return web.Response(body=b"s" * int(request.match_info["n"]))

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        """``/chunked/N/name``: N bytes in 1000-byte chunks, no Content-Length."""
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the client hung up
            for _ in range(int(request.match_info["n"]) // 1000):
                await response.write(b"c" * 1000)
                await asyncio.sleep(0)
            await response.write_eof()
        return response

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        """A byte every 0.2 s: never silent long enough for a read timeout."""
        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the client hung up
            for _ in range(100):
                await response.write(b"t")
                self.trickled += 1
                await asyncio.sleep(0.2)
        return response

    async def gated(self, request: web.Request) -> web.StreamResponse:
        """Half the body, then the rest once :attr:`release` is set."""
        response = web.StreamResponse()
        response.content_length = 20_000
        await response.prepare(request)
        await response.write(b"g" * 10_000)
        self.halfway.set()
        await self.release.wait()
        await response.write(b"g" * 10_000)
        return response


@pytest_asyncio.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application(middlewares=[rec.record])
    app.router.add_get("/whole/{name}", rec.whole)
    app.router.add_get("/stall/{name}", rec.stall)
    app.router.add_get("/gzip/{name}", rec.gzipped)
    app.router.add_get("/sized/{n}/{name}", rec.sized)
    app.router.add_get("/chunked/{n}/{name}", rec.chunked)
    app.router.add_get("/trickle/{name}", rec.trickle)
    app.router.add_get("/gated/{name}", rec.gated)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield rec, f"http://{host}:{port}"
    await runner.cleanup()


async def test_output_urls_are_fetched_without_any_authorization(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """No Authorization header reaches the host serving output files."""
    rec, url = recorder
    report = await save_outputs(
        succeeded([f"{url}/whole/a.png", f"{url}/whole/b.png"]), tmp_path
    )
    assert report.ok
    assert len(rec.headers) == 2
    assert all("Authorization" not in h for h in rec.headers)


async def test_a_session_that_sends_a_key_is_refused(tmp_path: Path) -> None:
    """Passing a session with an Authorization header is a ConfigurationError."""
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer k"}) as session:
        with pytest.raises(replipoll.ConfigurationError, match="Authorization") as info:
            await save_outputs(succeeded("https://x/a.png"), tmp_path, session=session)
    assert info.value.option == "session"
    assert entries(tmp_path) == []


async def test_a_borrowed_session_is_used_and_left_open(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """session= is borrowed: used for the downloads, never closed."""
    _, url = recorder
    async with aiohttp.ClientSession() as session:
        report = await save_outputs(
            succeeded(f"{url}/whole/a.png"), tmp_path, session=session
        )
        assert report.ok
        assert not session.closed


async def test_cancelling_mid_download_leaves_no_partial_file(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """Cancelled while bytes arrive: no final file, and the .part file is gone."""
    rec, url = recorder
    task = asyncio.create_task(
        save_outputs(succeeded(f"{url}/stall/big.bin"), tmp_path)
    )
    await asyncio.wait_for(rec.stalled.wait(), 5)
    await asyncio.sleep(0.05)  # let the client receive and buffer some bytes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert entries(tmp_path / "p1") == []


async def test_misuse_is_rejected() -> None:
    """concurrency below 1 raises before anything is fetched."""
    with pytest.raises(replipoll.ConfigurationError):
        await save_outputs(succeeded("https://x/a.png"), ".", concurrency=0)


async def test_a_symlink_loop_at_a_file_name_is_replaced_by_the_file(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """A link that points at itself where a file goes is not followed (no
    ELOOP, no failure): it is not "present", and the download replaces the
    link itself with the real file."""
    pid = server.add_prediction(n_files=2)
    prediction = await fetch(server, pid)
    (tmp_path / pid).mkdir()
    loop = tmp_path / pid / "out-0.bin"
    loop.symlink_to("out-0.bin")  # points at itself
    report = await save_outputs(prediction, tmp_path, retry=FAST)
    assert report.ok, report.errors
    assert [f.path.name for f in report.saved] == ["out-0.bin", "out-1.bin"]
    assert not loop.is_symlink()
    assert loop.read_bytes() == server.file_content(pid, "out-0.bin")


async def test_a_file_larger_than_the_write_buffer_is_saved_whole(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """Bytes flushed to disk in several batches arrive complete and in order."""
    size = 2 * FLUSH_SIZE + 12_345
    pid = server.add_prediction(n_files=1, file_size=size)
    report = await save_outputs(await fetch(server, pid), tmp_path)
    report.raise_for_errors()  # nothing failed: returns quietly
    (saved,) = report.saved
    assert saved.size == size
    assert saved.path.read_bytes() == server.file_content(pid, "out-0.bin")


async def test_a_download_that_goes_silent_times_out_and_leaves_nothing(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """timeouts= apply per download: a stalled body is a DownloadError saying it
    timed out, and neither the file nor its .part stays behind."""
    rec, url = recorder
    report = await save_outputs(
        succeeded(f"{url}/stall/big.bin"),
        tmp_path,
        retry=RetryPolicy(max_attempts=1),
        timeouts=Timeouts(total=None, read=0.2),
    )
    (error,) = report.errors
    assert error.reason == "timed out: nothing received for 0.2s"
    assert error.status is None
    assert rec.stalled.is_set()  # it did time out mid-body, not before
    assert entries(tmp_path / "p1") == []


async def test_an_output_url_without_a_host_fails_once_and_alone(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """A malformed URL is not retried, and does not stop the good one."""
    rec, url = recorder
    report = await save_outputs(
        succeeded(["http:///no-host.png", f"{url}/whole/ok.png"]),
        tmp_path,
        retry=FAST,
    )
    (error,) = report.errors
    assert error.url == "http:///no-host.png"
    assert error.reason == "not a valid URL"
    assert [f.path.name for f in report.files] == ["ok.png"]
    assert len(rec.headers) == 1


async def test_a_directory_in_the_way_is_a_write_error_for_that_file(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """A directory sits where a file must go: that file fails with "cannot write"
    after one attempt (a local error is not retried), its .part file is removed,
    and the directory is left as it was."""
    pid = server.add_prediction(n_files=2)
    prediction = await fetch(server, pid)
    blocker = tmp_path / pid / "out-0.bin"
    blocker.mkdir(parents=True)
    report = await save_outputs(prediction, tmp_path, retry=FAST)
    (error,) = report.errors
    assert error.reason.startswith(f"cannot write {blocker}")
    assert blocker.is_dir()
    assert [f.path.name for f in report.files] == ["out-1.bin"]
    assert leftovers(tmp_path / pid) == []
    assert file_requests(server, pid).count(f"/files/{pid}/out-0.bin") == 1


# -- stored as served; a size cap; a deadline per file ---------------------------


async def test_a_gzip_encoded_file_is_saved_as_served_never_unpacked(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """A gzip bomb (64 kB on the wire, 64 MiB unpacked) with Content-Encoding:
    gzip is saved as the compressed bytes: the disk gets what was served."""
    _, url = recorder
    report = await save_outputs(succeeded(f"{url}/gzip/bomb.txt"), tmp_path)
    assert report.ok, report.errors
    (saved,) = report.saved
    assert saved.size == len(gzip_bomb()) < 1024 * 1024
    assert saved.path.stat().st_size == len(gzip_bomb())
    assert saved.path.read_bytes() == gzip_bomb()


@pytest.mark.parametrize("kind", ["sized", "chunked"], ids=["announced", "chunked"])
async def test_a_file_over_max_size_fails_alone_once_and_leaves_nothing(
    recorder: tuple[Recorder, str], tmp_path: Path, kind: str
) -> None:
    """Over max_size, whether its Content-Length says so or its chunked body
    grows past it: a DownloadError naming the limit and the option, one request
    (never retried), no file nor .part; the other file is still saved."""
    rec, url = recorder
    big = f"{url}/{kind}/20000/big.bin"
    report = await save_outputs(
        succeeded([big, f"{url}/whole/ok.png"]), tmp_path, max_size=10_000, retry=FAST
    )
    (error,) = report.errors
    assert error.url == big
    assert "10000 bytes" in error.reason
    assert "max_size" in error.reason
    assert rec.paths.count(f"/{kind}/20000/big.bin") == 1
    assert [f.path.name for f in report.files] == ["ok.png"]
    assert entries(tmp_path / "p1") == ["ok.png"]


async def test_a_file_of_exactly_max_size_and_no_limit_at_all_are_saved(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """The limit is inclusive; max_size=None saves anything."""
    _, url = recorder
    exact = await save_outputs(
        succeeded(f"{url}/chunked/5000/a.bin"), tmp_path, max_size=5000
    )
    assert [f.size for f in exact.files] == [5000]
    unlimited = await save_outputs(
        succeeded(f"{url}/sized/20000/b.bin"), tmp_path, max_size=None
    )
    assert [f.size for f in unlimited.files] == [20000]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
async def test_a_max_size_below_one_or_not_an_integer_is_refused(
    tmp_path: Path, bad: object
) -> None:
    """max_size is an integer of at least 1, or None: a ConfigurationError
    naming it, before anything is created."""
    with pytest.raises(replipoll.ConfigurationError) as info:
        await save_outputs(succeeded("https://x/a.png"), tmp_path, max_size=bad)  # type: ignore[arg-type]
    assert info.value.option == "max_size"
    assert entries(tmp_path) == []


def test_the_defaults_bound_every_file() -> None:
    """10 GiB at most, an hour in all, 10 s to connect, 60 s of silence."""
    assert DEFAULT_MAX_SIZE == 10 * 1024**3
    assert Timeouts(total=3600.0, connect=10.0, read=60.0) == DEFAULT_TIMEOUTS


async def test_a_trickling_host_is_cut_off_by_the_total_timeout(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """A byte every 0.2 s never trips a 5 s read timeout, but the 0.5 s total
    does: a DownloadError saying it timed out, soon, and nothing on disk."""
    rec, url = recorder
    started = time.monotonic()
    report = await save_outputs(
        succeeded(f"{url}/trickle/slow.bin"),
        tmp_path,
        retry=RetryPolicy(max_attempts=1),
        timeouts=Timeouts(total=0.5, read=5),
    )
    elapsed = time.monotonic() - started
    (error,) = report.errors
    assert error.reason == "timed out: no answer within 0.5s"
    assert rec.trickled >= 1  # cut off mid-body
    assert elapsed < 3  # about 0.5 s; generous for a slow machine
    assert entries(tmp_path / "p1") == []


@pytest.mark.parametrize("scheme", ["HTTP", "Http"])
async def test_a_url_scheme_in_any_case_is_downloaded(
    recorder: tuple[Recorder, str], tmp_path: Path, scheme: str
) -> None:
    """``HTTP://host/x.png`` is an output like ``http://``: fetched and saved."""
    rec, url = recorder
    shouting = scheme + url.removeprefix("http")
    report = await save_outputs(succeeded(f"{shouting}/whole/x.png"), tmp_path)
    assert report.ok, report.errors
    assert [f.path.name for f in report.saved] == ["x.png"]
    assert report.files[0].path.read_bytes() == b"x" * 10_000
    assert rec.paths == ["/whole/x.png"]


# -- data: outputs ---------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(100)


def data_uri(media_type: str, data: bytes) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def test_output_names_give_data_uris_output_and_an_extension() -> None:
    """A data URI is named output + the extension of its media type (preferred
    ones first, Python's table next, .bin when unknown), then de-duplicated
    like URLs; malformed ones still get a name."""
    names = output_names(
        [
            data_uri("image/png", b"1"),
            data_uri("IMAGE/PNG", b"2"),
            "data:image/jpeg;base64,/9j/",
            "DATA:audio/wav;base64,UklGRg==",
            "data:application/pdf;base64,JVBERi0=",
            "data:video/mp4;base64,AAAA",
            "data:application/x-never-heard-of;base64,AAAA",
            "data:,plain%20text",
            "data:;charset=utf-8,plain",
            "data:image/png",  # no comma: malformed, named anyway
        ]
    )
    assert names == [
        "output-0.png",
        "output-1.png",
        "output.jpg",
        "output.wav",
        "output.pdf",
        "output.mp4",
        "output-0.bin",
        "output-0.txt",
        "output-1.txt",
        "output-1.bin",
    ]


async def test_data_outputs_are_decoded_and_saved_without_a_request(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """base64 and percent-encoded data URIs are saved decoded, named by
    output_names(), beside a URL; only the URL is requested."""
    rec, url = recorder
    outputs = [
        data_uri("image/png", PNG),
        f"{url}/whole/photo.png",
        data_uri("image/png", PNG[::-1]),
        "data:,Hello%2C%20World%21",
        data_uri("image/webp", WEBP).replace("base64", "BASE64"),
    ]
    report = await save_outputs(succeeded({"images": outputs}), tmp_path)
    assert report.ok, report.errors
    got = {f.path.name: f.path.read_bytes() for f in report.saved}
    assert got == {
        "output-0.png": PNG,
        "photo.png": b"x" * 10_000,
        "output-1.png": PNG[::-1],
        "output.txt": b"Hello, World!",
        "output.webp": WEBP,
    }
    assert [f.size for f in report.files] == [len(v) for v in got.values()]
    assert [f.url for f in report.files] == outputs
    assert rec.paths == ["/whole/photo.png"]
    assert leftovers(tmp_path / "p1") == []


async def test_a_malformed_data_uri_is_a_download_error_not_an_exception(
    tmp_path: Path,
) -> None:
    """Bad base64 and a missing comma are DownloadErrors in the report, saying
    why; nothing of them is written, and a good data output is still saved."""
    bad_base64 = "data:image/png;base64,iVBO@@@@"
    no_comma = "data:image/png;base64"
    good = data_uri("image/png", PNG)
    report = await save_outputs(succeeded([bad_base64, no_comma, good]), tmp_path)
    assert [(e.url, e.status) for e in report.errors] == [
        (bad_base64, None),
        (no_comma, None),
    ]
    assert "base64" in report.errors[0].reason
    assert "comma" in report.errors[1].reason
    assert [f.path.name for f in report.files] == ["output-1.png"]
    assert entries(tmp_path / "p1") == ["output-1.png"]


async def test_a_data_output_over_max_size_is_refused_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """max_size counts the decoded bytes of a data URI too."""
    report = await save_outputs(
        succeeded(data_uri("image/png", PNG)), tmp_path, max_size=len(PNG) - 1
    )
    (error,) = report.errors
    assert f"{len(PNG) - 1} bytes (max_size)" in error.reason
    assert entries(tmp_path / "p1") == []


async def test_a_data_output_already_present_is_skipped_unless_overwrite(
    tmp_path: Path,
) -> None:
    """Like a URL: present under its name, it is left alone; overwrite=True
    writes it again."""
    prediction = succeeded([data_uri("image/png", PNG)])
    (tmp_path / "p1").mkdir()
    (tmp_path / "p1" / "output.png").write_bytes(b"mine")
    report = await save_outputs(prediction, tmp_path)
    assert [(f.path.name, f.skipped, f.size) for f in report.files] == [
        ("output.png", True, 4)
    ]
    assert (tmp_path / "p1" / "output.png").read_bytes() == b"mine"
    again = await save_outputs(prediction, tmp_path, overwrite=True)
    assert [f.skipped for f in again.files] == [False]
    assert (tmp_path / "p1" / "output.png").read_bytes() == PNG


async def test_a_large_data_output_is_saved_whole(tmp_path: Path) -> None:
    """A data URI above INLINE_DECODE (decoded in a worker thread), wrapped
    in lines as some encoders do and with its padding left out, arrives whole."""
    blob = os.urandom(INLINE_DECODE + 1000)
    encoded = base64.encodebytes(blob).decode().rstrip("=\n")
    uri = f"data:application/octet-stream;base64,{encoded}"
    assert len(uri) > INLINE_DECODE
    report = await save_outputs(succeeded(uri), tmp_path)
    assert report.ok, report.errors
    assert report.files[0].path.read_bytes() == blob


async def test_a_long_data_uri_is_kept_whole_in_the_error_but_cut_in_its_message(
    tmp_path: Path,
) -> None:
    """error.url is the output itself; str(error) stays readable in a log."""
    uri = "data:image/png;base64," + "A" * 100_000 + "@"
    (error,) = (await save_outputs(succeeded(uri), tmp_path)).errors
    assert error.url == uri
    assert len(str(error)) < 300
    assert "100023 characters" in str(error)


# -- nothing under the destination is followed ------------------------------------


@pytest.fixture(params=[True, False], ids=["dir_fd", "paths"])
def dir_fd(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways to write: relative to a directory descriptor, and the
    path-based fallback (with lstat checks) for platforms without dir_fd."""
    if request.param and not _download._DIR_FD:
        pytest.skip("no dir_fd support on this platform")
    monkeypatch.setattr(_download, "_DIR_FD", request.param)
    return bool(request.param)


async def test_a_symlinked_prediction_directory_is_refused_and_nothing_written(
    recorder: tuple[Recorder, str], tmp_path: Path, dir_fd: bool
) -> None:
    """DEST/ID planted as a link to another directory: every output (URL or
    data) fails saying so, nothing is requested, the link's target stays empty."""
    rec, url = recorder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "p1").symlink_to(elsewhere, target_is_directory=True)
    outputs = [f"{url}/whole/a.png", data_uri("image/png", PNG)]
    report = await save_outputs(succeeded(outputs), dest)
    assert [e.url for e in report.errors] == outputs
    assert all("is a symbolic link" in e.reason for e in report.errors)
    assert report.files == ()
    assert entries(elsewhere) == []
    assert rec.paths == []


async def test_a_file_where_the_prediction_directory_goes_is_refused(
    tmp_path: Path, dir_fd: bool
) -> None:
    """DEST/ID is a regular file: each output fails saying it is not a
    directory; the file is left as it was."""
    (tmp_path / "p1").write_bytes(b"mine")
    report = await save_outputs(succeeded([data_uri("image/png", PNG)]), tmp_path)
    (error,) = report.errors
    assert "not a directory" in error.reason
    assert (tmp_path / "p1").read_bytes() == b"mine"


async def test_a_symlink_at_a_file_name_is_replaced_and_its_target_untouched(
    recorder: tuple[Recorder, str], tmp_path: Path, dir_fd: bool
) -> None:
    """A link planted where a file goes is not "present" (no skip reporting
    the other file's size) and is not written through: the download replaces
    the link itself, and the file it pointed to keeps its bytes."""
    _, url = recorder
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"do not touch")
    (tmp_path / "dest" / "p1").mkdir(parents=True)
    for name in ("a.png", "output.png"):
        (tmp_path / "dest" / "p1" / name).symlink_to(secret)
    outputs = [f"{url}/whole/a.png", data_uri("image/png", PNG)]
    report = await save_outputs(succeeded(outputs), tmp_path / "dest")
    assert report.ok, report.errors
    assert [(f.path.name, f.skipped) for f in report.files] == [
        ("a.png", False),
        ("output.png", False),
    ]
    for saved, content in zip(report.files, [b"x" * 10_000, PNG], strict=True):
        assert not saved.path.is_symlink()
        assert saved.path.read_bytes() == content
    assert secret.read_bytes() == b"do not touch"


async def test_a_symlink_swapped_in_mid_download_cannot_redirect_the_write(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """DEST/ID is moved away and replaced by a link while a file downloads:
    the file still lands in the directory that was checked (held open), never
    in the link's target."""
    if not _download._DIR_FD:
        pytest.skip("no dir_fd support on this platform")
    rec, url = recorder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    dest = tmp_path / "dest"
    task = asyncio.create_task(save_outputs(succeeded(f"{url}/gated/a.bin"), dest))
    await asyncio.wait_for(rec.halfway.wait(), 5)
    (dest / "p1").rename(dest / "moved")
    (dest / "p1").symlink_to(elsewhere, target_is_directory=True)
    rec.release.set()
    report = await task
    assert report.ok, report.errors
    assert entries(elsewhere) == []
    assert (dest / "moved" / "a.bin").read_bytes() == b"g" * 20_000


async def test_a_dest_dir_that_is_itself_a_symlink_is_used(
    recorder: tuple[Recorder, str], tmp_path: Path
) -> None:
    """Only what is under dest_dir is protected: a dest_dir the user made a
    link is followed, and the files land in its target."""
    _, url = recorder
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    report = await save_outputs(succeeded(f"{url}/whole/a.png"), tmp_path / "link")
    assert report.ok, report.errors
    assert (real / "p1" / "a.png").read_bytes() == b"x" * 10_000
