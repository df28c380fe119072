"""The one way to the network: where the key goes, and one retry engine for all.

A second loopback server, the *decoy*, stands for every other host a
prediction can name: its ``urls.get``/``urls.cancel``, its output files, the
target of a redirect. Through every public entry point (client, manager,
downloader, command line) the key must reach the configured base URL and
nothing else. And one :class:`RetryPolicy` must make the same attempts
wherever it applies.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
import replipoll
from aiohttp import web
from replipoll import (
    Client,
    ConfigurationError,
    PollManager,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    save_outputs,
)
from replipoll.testing import FakeReplicate, Fault

from .test_cli import ServerThread, env

KEY = "r8_TransportSeam-key-9d2e"


class Decoy:
    """A loopback server that records every request and serves any file."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str | None]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            (request.method, request.path, request.headers.get("Authorization"))
        )
        if request.path.startswith("/fail/"):
            return web.Response(status=503, text="busy")
        return web.Response(body=b"x" * 64)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    def keys_seen(self) -> list[str]:
        return [auth for _, _, auth in self.seen if auth is not None]


@pytest_asyncio.fixture
async def decoy() -> AsyncIterator[Decoy]:
    server = Decoy()
    await server.start()
    yield server
    await server.close()


def lure(server: FakeReplicate, decoy: Decoy, **kwargs: object) -> str:
    """A prediction whose urls and outputs all point at the decoy."""
    return server.add_prediction(
        output=[f"{decoy.url}/out/a.png", f"{decoy.url}/out/b.png"],
        extra={
            "urls": {
                "get": f"{decoy.url}/v1/predictions/x",
                "cancel": f"{decoy.url}/v1/predictions/x/cancel",
                "stream": f"{decoy.url}/stream/x",
            }
        },
        **kwargs,  # type: ignore[arg-type]
    )


async def test_the_key_reaches_no_host_but_the_configured_one(
    decoy: Decoy, tmp_path: Path
) -> None:
    """Client, manager and downloader, with urls, outputs and a redirect all
    pointing elsewhere: the decoy sees requests (the downloads), never a key."""
    async with FakeReplicate(api_key=KEY) as server:
        done = lure(server, decoy)
        running = lure(server, decoy, duration=0.3)
        redirected = server.add_prediction()
        server.add_fault(
            Fault.status(302, headers={"Location": f"{decoy.url}/v1/predictions/r"}),
            prediction_id=redirected,
            times=None,
        )
        async with Client(base_url=server.base_url(), api_key=KEY) as client:
            record = await client.get(done)
            await client.wait(running)
            await client.cancel(running)
            with pytest.raises(replipoll.BadRequestError, match="redirect"):
                await client.get(redirected)
            async with PollManager(client) as manager:
                results = await manager.poll_many([done, running, redirected])
                await manager.cancel(done, remote=True)
            assert [r.is_terminal for r in results] == [True, True, False]
        report = await save_outputs(record, tmp_path)
        assert report.ok
        # A borrowed session that would add credentials of its own is refused.
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {KEY}"}
        ) as leaky:
            with pytest.raises(ConfigurationError) as info:
                await save_outputs(record, tmp_path, session=leaky)
            assert info.value.option == "session"
        with warnings.catch_warnings():  # auth= is deprecated in aiohttp 3.14
            warnings.simplefilter("ignore", DeprecationWarning)
            leaky = aiohttp.ClientSession(auth=aiohttp.BasicAuth("u", KEY))
        async with leaky:
            with pytest.raises(ConfigurationError):
                await save_outputs(record, tmp_path, session=leaky, overwrite=True)
        assert server.stats.total_requests >= 8
    assert sorted(path for _, path, _ in decoy.seen) == ["/out/a.png", "/out/b.png"]
    assert decoy.keys_seen() == []


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ServerThread]:
    with ServerThread(FakeReplicate(api_key=KEY)) as server:
        yield server


def test_the_command_line_sends_the_key_nowhere_else(
    threaded_server: ServerThread, tmp_path: Path
) -> None:
    """get, poll and download, run as a user would, with outputs elsewhere."""
    decoy = Decoy()
    loop = asyncio.new_event_loop()
    loop.run_until_complete(decoy.start())

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        pid = threaded_server.call(lure, threaded_server.server, decoy)
        base = ["--base-url", threaded_server.base_url]
        for args in (
            ["get", pid, *base],
            ["poll", pid, *base],
            ["download", pid, "--dest", str(tmp_path), *base],
        ):
            done = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from replipoll._cli import main; sys.exit(main())",
                    *args,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env(REPLICATE_API_TOKEN=KEY),
            )
            assert done.returncode == 0, (args, done.stderr)
            assert KEY not in done.stdout + done.stderr
    finally:
        asyncio.run_coroutine_threadsafe(decoy.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert len(decoy.seen) == 2  # the two output files, once
    assert decoy.keys_seen() == []


# -- one retry engine ----------------------------------------------------------

POLICY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01)


async def test_the_same_policy_makes_the_same_attempts_everywhere(
    decoy: Decoy, tmp_path: Path
) -> None:
    """get, the manager and the downloader: 3 attempts each, attempts == 3."""
    async with FakeReplicate() as server:
        get_id, managed_id = server.add_prediction(), server.add_prediction()
        for pid in (get_id, managed_id):
            server.add_fault(Fault.server_error(), prediction_id=pid, times=None)
        async with Client(
            base_url=server.base_url(), api_key=server.api_key, retry=POLICY
        ) as client:
            with pytest.raises(ServerError) as got:
                await client.get(get_id)
            async with PollManager(client) as manager:
                (result,) = await manager.poll_many([managed_id])
        output = replipoll.Prediction.from_json(
            {"id": "p", "status": "succeeded", "output": f"{decoy.url}/fail/x.bin"}
        )
        report = await save_outputs(output, tmp_path, retry=POLICY)
        assert server.stats.requests_per_id[get_id] == 3
        assert server.stats.requests_per_id[managed_id] == 3
    assert got.value.attempts == 3
    assert isinstance(result.error, ServerError)
    assert result.error.attempts == 3
    assert [path for _, path, _ in decoy.seen] == ["/fail/x.bin"] * 3
    assert not report.ok


async def test_a_passed_policy_replaces_the_clients_in_the_manager() -> None:
    """PollManager(retry=...) is read at every failure: 2 attempts, not 3."""
    async with FakeReplicate() as server:
        pid = server.add_prediction()
        server.add_fault(Fault.server_error(), prediction_id=pid, times=None)
        async with (
            Client(
                base_url=server.base_url(), api_key=server.api_key, retry=POLICY
            ) as client,
            PollManager(
                client, retry=RetryPolicy(max_attempts=2, base_delay=0)
            ) as manager,
        ):
            (result,) = await manager.poll_many([pid])
        assert server.stats.requests_per_id[pid] == 2
    assert isinstance(result.error, ServerError)
    assert result.error.attempts == 2


async def test_the_policy_timeout_stops_a_call_whatever_attempts_remain() -> None:
    """1,000 attempts allowed, a 0.5 s timeout: get gives up within about 0.5 s,
    and an answer still running at the timeout is cut short."""
    patient = RetryPolicy(
        max_attempts=1000, base_delay=0.05, max_delay=0.05, timeout=0.5
    )
    async with FakeReplicate() as server:
        failing, slow = server.add_prediction(), server.add_prediction()
        server.add_fault(Fault.server_error(), prediction_id=failing, times=None)
        server.add_fault(Fault.slow(5.0), prediction_id=slow, times=None)
        async with Client(
            base_url=server.base_url(), api_key=server.api_key, retry=patient
        ) as client:
            start = time.monotonic()
            with pytest.raises(ServerError) as failed:
                await client.get(failing)
            middle = time.monotonic()
            with pytest.raises(RequestTimeoutError) as cut:
                await client.get(slow)
            end = time.monotonic()
            async with PollManager(client) as manager:
                (result,) = await manager.poll_many([failing])
            managed = time.monotonic() - end
    assert 2 <= failed.value.attempts < 1000
    assert middle - start < 1.5
    assert cut.value.attempts == 1
    assert end - middle < 1.5
    assert isinstance(result.error, ServerError)
    assert result.error.attempts < 1000
    assert managed < 2.0


@pytest.mark.parametrize("caller", ["client", "manager"])
async def test_a_retry_cut_short_by_the_policy_timeout_ends_with_what_asked_for_it(
    caller: str,
) -> None:
    """A 500, then a retry still running at the timeout: the 500 is the answer."""
    patient = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=0.05, timeout=0.4)
    async with FakeReplicate() as server:
        pid = server.add_prediction()
        server.add_fault(Fault.server_error(), prediction_id=pid, times=1)
        server.add_fault(Fault.slow(5.0), prediction_id=pid, times=None)
        async with Client(
            base_url=server.base_url(), api_key=server.api_key, retry=patient
        ) as client:
            start = time.monotonic()
            if caller == "client":
                with pytest.raises(ServerError) as failed:
                    await client.get(pid)
                error: BaseException | None = failed.value
            else:
                async with PollManager(client) as manager:
                    (result,) = await manager.poll_many([pid])
                error = result.error
            spent = time.monotonic() - start
    assert isinstance(error, ServerError)
    assert error.attempts == 2
    assert spent < 2.0


async def test_on_retry_reports_every_retry_of_every_caller(tmp_path: Path) -> None:
    seen: list[tuple[int, str]] = []
    policy = RetryPolicy(
        max_attempts=2,
        base_delay=0,
        on_retry=lambda n, error, wait: seen.append((n, type(error).__name__)),
    )
    async with FakeReplicate() as server:
        pid = server.add_prediction()
        server.add_fault(Fault.server_error(), prediction_id=pid, times=1)
        async with Client(
            base_url=server.base_url(), api_key=server.api_key, retry=policy
        ) as client:
            await client.get(pid)
            async with PollManager(client) as manager:
                server.add_fault(Fault.server_error(), prediction_id=pid, times=1)
                await manager.poll_many([pid])
    assert seen == [(1, "ServerError"), (1, "ServerError")]


async def test_client_options_are_read_only(fake_replicate: FakeReplicate) -> None:
    """Nothing set at construction can go stale: the options cannot be reassigned."""
    client = Client(base_url=fake_replicate.base_url(), api_key="k")
    for option in ("retry", "timeouts", "budget", "base_url", "provider"):
        with pytest.raises(AttributeError):
            setattr(client, option, None)


async def test_requests_say_who_sends_them(fake_replicate: FakeReplicate) -> None:
    """The User-Agent carries the version, read once from the package metadata."""
    from importlib.metadata import version

    assert replipoll.__version__ == version("replipoll")
    seen: list[str] = []

    async def note(
        _: object, __: object, params: aiohttp.TraceRequestStartParams
    ) -> None:
        seen.append(params.headers["User-Agent"])

    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(note)
    pid = fake_replicate.add_prediction()
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        Client(
            base_url=fake_replicate.base_url(),
            api_key=fake_replicate.api_key,
            session=session,
        ) as client,
    ):
        await client.get(pid)
    assert seen == [f"replipoll/{replipoll.__version__}"]


# -- one table of translations ---------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "becomes", "says"),
    [
        (aiohttp.ClientPayloadError("cut"), replipoll.ConnectError, "answer cut off"),
        (
            aiohttp.ServerDisconnectedError(),
            replipoll.ConnectError,
            "connection failed",
        ),
        (aiohttp.ClientError("odd"), replipoll.TransportError, "request failed: odd"),
        (aiohttp.InvalidURL("http:///x"), replipoll.RequestError, "not a valid URL"),
        (TimeoutError(), RequestTimeoutError, "no answer within 60s"),
        (aiohttp.SocketTimeoutError(), RequestTimeoutError, "nothing received for 5s"),
        (
            aiohttp.ConnectionTimeoutError(),
            RequestTimeoutError,
            "no connection within 10s",
        ),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else "",
)
def test_aiohttp_exceptions_translate_the_same_for_every_request(
    raised: BaseException, becomes: type[replipoll.RequestError], says: str
) -> None:
    """One table serves API requests and downloads: a generic aiohttp error is a
    TransportError (retried), an invalid URL a plain RequestError (not)."""
    from replipoll._transport import translate

    timeouts = replipoll.Timeouts(total=60, connect=10, read=5)
    error = translate(
        raised, method="GET", url="https://x/y", timeouts=timeouts, total=60
    )
    assert type(error) is becomes
    assert says in error.message
    assert error.url == "https://x/y"
    assert RetryPolicy().is_retryable(error) is (becomes is not replipoll.RequestError)


async def test_a_refused_connection_names_host_port_and_why() -> None:
    """Not aiohttp's 'Cannot connect to host ... ssl:default' on an http URL."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens
    async with Client(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=KEY,
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        with pytest.raises(replipoll.ConnectError) as info:
            await client.get("abc")
    assert info.value.message == (
        f"could not connect to 127.0.0.1:{port}: Connection refused"
    )
    assert "ssl" not in str(info.value)
