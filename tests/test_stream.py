"""Client.stream on loopback: events in order, reconnects, errors, the key, closing.

Most tests stream from :class:`FakeReplicate` (``GET /stream/{id}``); the
tests of what a stream request carries, and of where the key goes, use a
second small server (:class:`Elsewhere`) that records each request and
answers from a script.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
import replipoll
from aiohttp import web
from replipoll import (
    AuthenticationError,
    Client,
    ConnectError,
    DecodeError,
    NoStreamError,
    NotFoundError,
    Prediction,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    StreamEvent,
    Timeouts,
)
from replipoll.testing import FakeReplicate, Fault

from .conftest import SECRET_KEY

#: Retries (and so reconnects) with tiny waits.
FAST = RetryPolicy(base_delay=0.01, max_delay=0.02)
TEXT = " ".join(f"word{i}" for i in range(40))


def ids_in_order(events: list[StreamEvent]) -> bool:
    return [event.id for event in events] == [str(i) for i in range(1, len(events) + 1)]


async def eventually(check: Callable[[], bool], within: float = 5.0) -> bool:
    """Whether ``check()`` comes true within ``within`` seconds (a generous bound)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(api_key=SECRET_KEY) as fake:
        yield fake


@pytest_asyncio.fixture
async def client(server: FakeReplicate) -> AsyncIterator[Client]:
    async with Client(base_url=server.base_url(), api_key=SECRET_KEY, retry=FAST) as c:
        yield c


# -- what arrives -------------------------------------------------------------


async def test_the_whole_output_arrives_in_order_then_done(
    server: FakeReplicate, client: Client
) -> None:
    """Logs and output tokens interleaved as they happen, ids 1, 2, 3..., the
    output pieces adding up to the record's output, ``done`` last."""
    pid = server.add_prediction(duration=0.5, output=TEXT, logs="loading\nready")
    events = [event async for event in client.stream(pid)]
    assert ids_in_order(events)
    assert [e.data for e in events if e.event == "logs"] == ["loading", "ready"]
    assert "".join(e.data for e in events if e.event == "output") == TEXT
    assert events[-1] == StreamEvent("done", "{}", str(len(events)))
    assert (await client.get(pid)).output == TEXT
    assert server.stats.stream_requests == 1


async def test_a_list_output_streams_an_item_per_event_from_a_record(
    server: FakeReplicate, client: Client
) -> None:
    """Given a record, no GET is made for it; each list item is one event."""
    pid = server.add_prediction(duration=0.2, output=["He", "llo", "\nworld"])
    record = await client.get(pid)
    assert record.urls is not None
    assert record.urls.stream == f"{server.url}/stream/{pid}"
    server.reset_stats()
    events = [event async for event in client.stream(record)]
    assert [e.data for e in events if e.event == "output"] == ["He", "llo", "\nworld"]
    assert server.stats.requests_per_id[pid] == 0
    assert server.stats.stream_requests == 1


async def test_a_failing_prediction_yields_its_error_then_ends(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(duration=0.1, outcome="failed", error="E1001 OOM")
    events = [event async for event in client.stream(pid)]
    assert [(e.event, e.data) for e in events] == [
        ("error", "E1001 OOM"),
        ("done", '{"reason":"error"}'),
    ]


async def test_a_prediction_canceled_mid_stream_ends_with_done_canceled(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(duration=30, output=TEXT)
    seen: list[StreamEvent] = []
    async for event in client.stream(pid):
        seen.append(event)
        if len(seen) == 1:
            await client.cancel(pid)
    assert seen[0].event == "output"
    assert seen[-1].event == "done"
    assert seen[-1].data == '{"reason":"canceled"}'


async def test_resuming_after_a_last_event_id_skips_what_was_handled(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(output=["a", "b", "c"])
    events = [event async for event in client.stream(pid, last_event_id="2")]
    assert [(e.id, e.data) for e in events] == [("3", "c"), ("4", "{}")]


# -- reconnecting -------------------------------------------------------------


async def test_cut_streams_resume_at_last_event_id_and_lose_or_repeat_nothing() -> None:
    """The fake drops each connection after 0.15 s, mid-event: every event
    still arrives once, in order."""
    async with FakeReplicate(api_key=SECRET_KEY, stream_cut_after=0.15) as fake:
        pid = fake.add_prediction(duration=1.0, output=TEXT, logs="a\nb\nc")
        async with Client(
            base_url=fake.base_url(), api_key=SECRET_KEY, retry=FAST
        ) as near:
            events = [event async for event in near.stream(pid)]
        assert fake.stats.stream_requests >= 4
    assert ids_in_order(events)
    assert "".join(e.data for e in events if e.event == "output") == TEXT
    assert [e.data for e in events if e.event == "logs"] == ["a", "b", "c"]
    assert events[-1].event == "done"


async def test_5xx_answers_are_retried_and_a_lasting_one_is_raised(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(output=["x"])
    record = await client.get(pid)
    server.add_fault(Fault.status(503), prediction_id=pid, times=2)
    events = [event async for event in client.stream(record)]
    assert [e.event for e in events] == ["output", "done"]
    assert server.stats.stream_requests == 3

    server.add_fault(Fault.status(502), prediction_id=pid, times=None)
    with pytest.raises(ServerError) as info:
        [event async for event in client.stream(record)]
    error = info.value
    assert (error.status, error.attempts) == (502, 5)
    assert error.request_id is not None
    assert error.url == f"{server.url}/stream/{pid}"


async def test_a_silent_stream_is_reopened_after_the_idle_timeout(
    server: FakeReplicate,
) -> None:
    """Nothing for longer than the read timeout: reconnect, and go on."""
    pid = server.add_prediction(queue=0.6, output=["late"])
    async with Client(
        base_url=server.base_url(),
        api_key=SECRET_KEY,
        retry=FAST,
        timeouts=Timeouts(total=None, read=0.2),
    ) as idle:
        events = [event async for event in idle.stream(pid)]
        assert [e.data for e in events] == ["late", "{}"]
        assert server.stats.stream_requests >= 2

        forever = server.add_prediction(queue=600)
        with pytest.raises(RequestTimeoutError, match="nothing received") as info:
            [event async for event in idle.stream(forever)]
        assert info.value.attempts == 5


# -- errors that are not worth another connection -----------------------------


async def test_401_and_404_raise_the_mapped_errors(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(output=["x"])
    record = await client.get(pid)
    async with Client(base_url=server.base_url(), api_key="r8_wrong-key") as wrong:
        with pytest.raises(AuthenticationError) as refused:
            [event async for event in wrong.stream(record)]
    assert (refused.value.status, refused.value.attempts) == (401, 1)
    assert refused.value.request_id is not None

    with pytest.raises(NotFoundError):  # from the GET that looks for the URL
        [event async for event in client.stream("nosuchprediction")]
    gone = Prediction.from_json(
        {
            "id": "x",
            "status": "processing",
            "urls": {"stream": f"{server.url}/stream/x"},
        }
    )
    with pytest.raises(NotFoundError) as missing:
        [event async for event in client.stream(gone)]
    assert missing.value.status == 404
    assert server.stats.stream_requests == 2


async def test_a_prediction_without_a_stream_url_raises_a_clear_error(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(extra={"urls": {"get": "https://x/p"}})
    with pytest.raises(NoStreamError, match="does not stream") as info:
        [event async for event in client.stream(pid)]
    assert "poll it instead" in str(info.value)
    assert isinstance(info.value, replipoll.ReplipollError)
    assert server.stats.stream_requests == 0


# -- another server: what a stream request carries, where the key goes --------


class Elsewhere:
    """A loopback server of event streams that records every request."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        #: The bodies of the next answers, in order (then: ``done``).
        self.bodies: list[bytes] = []
        self.content_type = "text/event-stream"
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        body = self.bodies.pop(0) if self.bodies else b"event: done\ndata: {}\n\n"
        return web.Response(body=body, headers={"Content-Type": self.content_type})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/stream/x"


@pytest_asyncio.fixture
async def elsewhere() -> AsyncIterator[Elsewhere]:
    other = Elsewhere()
    await other.start()
    yield other
    assert other.runner is not None
    await other.runner.cleanup()


def pointing_at(url: str) -> Prediction:
    return Prediction.from_json(
        {"id": "x", "status": "processing", "urls": {"stream": url}}
    )


async def test_a_stream_request_says_what_it_wants_and_resumes_where_it_broke(
    elsewhere: Elsewhere,
) -> None:
    """Accept, Cache-Control and the key on the base URL's origin; a body that
    ends before ``done`` is reopened with Last-Event-ID, after ``retry:``."""
    elsewhere.bodies = [
        b"retry: 10\nid: 1\nevent: output\ndata: a\n\nid: 2\nevent: out",
        b"id: 2\nevent: output\ndata: b\n\nid: 3\nevent: done\ndata: {}\n\n",
    ]
    base = f"http://127.0.0.1:{elsewhere.port}/v1"
    async with Client(base_url=base, api_key=SECRET_KEY, retry=FAST) as client:
        events = [event async for event in client.stream(pointing_at(elsewhere.url()))]
    assert [(e.id, e.data) for e in events] == [("1", "a"), ("2", "b"), ("3", "{}")]
    first, second = elsewhere.seen
    assert first["Accept"] == "text/event-stream"
    assert first["Cache-Control"] == "no-store"
    assert first["Authorization"] == f"Bearer {SECRET_KEY}"
    assert "Last-Event-ID" not in first
    assert second["Last-Event-ID"] == "1"


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
async def test_a_stream_url_on_another_host_gets_no_key(
    server: FakeReplicate, elsewhere: Elsewhere, host: str
) -> None:
    """A record (a gateway's echo, say) naming a stream on another host name,
    or another port of the same one: asked without the key."""
    pid = server.add_prediction(extra={"urls": {"stream": elsewhere.url(host)}})
    async with Client(base_url=server.base_url(), api_key=SECRET_KEY) as client:
        events = [event async for event in client.stream(pid)]
    assert [e.event for e in events] == ["done"]
    (seen,) = elsewhere.seen
    assert "Authorization" not in seen
    assert SECRET_KEY not in repr(seen)


async def test_the_fakes_own_stream_under_another_host_name_gets_no_key(
    server: FakeReplicate,
) -> None:
    """Same port, but ``localhost`` is not the configured ``127.0.0.1``: the
    key stays home, and the fake, which wants it, answers 401."""
    pid = server.add_prediction(output=["x"])
    url = f"http://localhost:{server.url.rsplit(':', 1)[1]}/stream/{pid}"
    async with Client(base_url=server.base_url(), api_key=SECRET_KEY) as client:
        with pytest.raises(AuthenticationError):
            [event async for event in client.stream(pointing_at(url))]


async def test_an_answer_that_is_not_an_event_stream_is_not_retried(
    elsewhere: Elsewhere,
) -> None:
    elsewhere.content_type = "text/html"
    base = f"http://127.0.0.1:{elsewhere.port}/v1"
    async with Client(base_url=base, api_key=SECRET_KEY, retry=FAST) as client:
        with pytest.raises(DecodeError, match="not text/event-stream"):
            [event async for event in client.stream(pointing_at(elsewhere.url()))]
    assert len(elsewhere.seen) == 1


async def test_a_stream_that_keeps_ending_early_gives_up_after_five_tries(
    elsewhere: Elsewhere,
) -> None:
    elsewhere.bodies = [b": nothing\n\n"] * 5
    base = f"http://127.0.0.1:{elsewhere.port}/v1"
    async with Client(base_url=base, api_key=SECRET_KEY, retry=FAST) as client:
        with pytest.raises(ConnectError, match="ended") as info:
            [event async for event in client.stream(pointing_at(elsewhere.url()))]
    assert (info.value.status, info.value.attempts) == (200, 5)


# -- closing ------------------------------------------------------------------


async def test_leaving_the_loop_early_closes_the_connection(
    server: FakeReplicate, client: Client
) -> None:
    """With aclosing at once; without it when the iterator is collected."""
    pid = server.add_prediction(duration=30, output=TEXT)
    async with contextlib.aclosing(client.stream(pid)) as events:
        async for _event in events:
            assert server.stats.streams_open == 1
            break
    assert await eventually(lambda: server.stats.streams_open == 0)

    async for _event in client.stream(pid):
        break
    gc.collect()
    assert await eventually(lambda: server.stats.streams_open == 0)
    assert server.stats.stream_requests == 2


async def test_cancelling_the_task_closes_the_connection_and_leaves_no_task(
    server: FakeReplicate, client: Client
) -> None:
    pid = server.add_prediction(duration=30, output=TEXT)
    first = asyncio.Event()
    before = asyncio.all_tasks()

    async def consume() -> None:
        async for _event in client.stream(pid):
            first.set()

    task = asyncio.create_task(consume())
    await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await eventually(lambda: server.stats.streams_open == 0)
    assert await eventually(
        lambda: {t for t in asyncio.all_tasks() if not t.done()} <= before
    )
