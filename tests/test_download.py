"""save_outputs against files served by the fake server (and a recording one)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import replipoll
from aiohttp import web
from replipoll import DownloadError, Prediction, RetryPolicy, Timeouts, save_outputs
from replipoll._download import FLUSH_SIZE, output_names
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


class Recorder:
    """A file server that records request headers and can stall mid-body."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.stalled = asyncio.Event()

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


@pytest_asyncio.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, str]]:
    rec = Recorder()
    app = web.Application()
    app.router.add_get("/whole/{name}", rec.whole)
    app.router.add_get("/stall/{name}", rec.stall)
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
        with pytest.raises(replipoll.ConfigurationError, match="Authorization"):
            await save_outputs(succeeded("https://x/a.png"), tmp_path, session=session)


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


async def test_a_target_that_cannot_be_checked_is_reported_not_raised(
    server: FakeReplicate, tmp_path: Path
) -> None:
    """A file whose existence check fails (here a symlink loop: ELOOP; for
    another user, EACCES) is one DownloadError in the report: save_outputs
    does not raise, and the other files are still saved and reported."""
    pid = server.add_prediction(n_files=2)
    prediction = await fetch(server, pid)
    (tmp_path / pid).mkdir()
    (tmp_path / pid / "out-0.bin").symlink_to("out-0.bin")  # points at itself
    report = await save_outputs(prediction, tmp_path, retry=FAST)
    (error,) = report.errors
    assert error.url.endswith("/out-0.bin")
    assert "out-0.bin" in error.reason
    assert [f.path.name for f in report.files] == ["out-1.bin"]
    assert report.files[0].path.read_bytes() == server.file_content(pid, "out-1.bin")


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
