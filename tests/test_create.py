"""Client.create: the three endpoints, sync mode, and never a prediction twice.

Creating is not idempotent. These tests prove that a create is retried only
where the request provably never reached the server (refused, throttled),
and that every other failure is a PredictionMayExistError, with the server
counting one POST: nothing is created twice.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
import replipoll
from aiohttp import web
from replipoll import (
    BadRequestError,
    Client,
    ConfigurationError,
    ConnectError,
    PredictionMayExistError,
    RateLimitedError,
    RetryPolicy,
)
from replipoll._create import cancel_after_header, create_limit, create_request
from replipoll.testing import FakeReplicate

from .conftest import SECRET_KEY

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)

Behaviour = Callable[[web.Request, int], Awaitable[web.StreamResponse]]
Start = Callable[[Behaviour], Awaitable[tuple[str, "Recorder"]]]


def _record(pid: str = "p1", status: str = "starting") -> dict[str, Any]:
    return {"id": pid, "status": status, "model": "acme/echo", "input": {}}


class Recorder:
    """A real aiohttp server that counts POSTs and answers as told."""

    def __init__(self, behave: Behaviour) -> None:
        self.behave = behave
        self.posts: list[tuple[str, dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.posts.append((request.path, dict(request.headers), body))
        return await self.behave(request, len(self.posts))


@pytest_asyncio.fixture
async def recorder_url() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []

    async def start(behave: Behaviour) -> tuple[str, Recorder]:
        recorder = Recorder(behave)
        app = web.Application()
        app.router.add_post("/v1/{tail:.*}", recorder.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/v1", recorder

    yield start
    for runner in runners:
        await runner.cleanup()


# -- the request, built before anything is sent -------------------------------


@pytest.mark.parametrize(
    ("kwargs", "path", "body"),
    [
        ({"model": "acme/echo"}, "models/acme/echo/predictions", {"input": {"a": 1}}),
        (
            {"model": "acme/echo:5c7d5dc6"},
            "predictions",
            {"version": "5c7d5dc6", "input": {"a": 1}},
        ),
        (
            {"version": "5c7d5dc6"},
            "predictions",
            {"version": "5c7d5dc6", "input": {"a": 1}},
        ),
        (
            {"deployment": "acme/prod"},
            "deployments/acme/prod/predictions",
            {"input": {"a": 1}},
        ),
    ],
)
def test_each_target_has_its_endpoint(
    kwargs: dict[str, str], path: str, body: object
) -> None:
    request = create_request(input={"a": 1}, **kwargs)
    assert (request.method, request.path) == ("POST", path)
    assert request.body is not None
    assert json.loads(request.body) == body
    assert ("Content-Type", "application/json") in request.headers


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({}, "model"),
        ({"model": "a/b", "version": "v"}, "model"),
        ({"model": "acme"}, "model"),
        ({"model": "acme/../x"}, "model"),
        ({"model": "a/b/c"}, "model"),
        ({"deployment": "nope"}, "deployment"),
        ({"version": "has space"}, "version"),
        ({"model": "a/b", "input": {"f": object()}}, "input"),
        ({"model": "a/b", "input": {"nan": float("nan")}}, "input"),
        ({"model": "a/b", "input": ["not", "a", "mapping"]}, "input"),
        ({"model": "a/b", "webhook": "ftp://x/y"}, "webhook"),
        (
            {"model": "a/b", "webhook_events_filter": ["completed"]},
            "webhook_events_filter",
        ),
        (
            {
                "model": "a/b",
                "webhook": "https://x/h",
                "webhook_events_filter": ["done"],
            },
            "webhook_events_filter",
        ),
        ({"model": "a/b", "wait": 61}, "wait"),
        ({"model": "a/b", "wait": 0}, "wait"),
        ({"model": "a/b", "cancel_after": -1}, "cancel_after"),
        ({"model": "a/b", "cancel_after": "soon"}, "cancel_after"),
        ({"model": "a/b", "cancel_after": "0s"}, "cancel_after"),
    ],
)
def test_a_bad_argument_names_itself_before_anything_is_sent(
    kwargs: dict[str, Any], option: str
) -> None:
    kwargs.setdefault("input", {})
    with pytest.raises(ConfigurationError) as caught:
        create_request(**kwargs)
    assert caught.value.option == option


def test_sync_mode_and_deadline_headers() -> None:
    request = create_request(
        "a/b",
        input={},
        wait=True,
        cancel_after=90.5,
        webhook="https://example.com/hook",
        webhook_events_filter=["completed", "start", "completed"],
    )
    headers = dict(request.headers)
    assert headers["Prefer"] == "wait=60"
    assert headers["Cancel-After"] == "91s"
    assert request.body is not None
    body = json.loads(request.body)
    assert body["webhook_events_filter"] == ["start", "completed"]
    assert cancel_after_header("1h30m") == "1h30m"


def test_a_reduced_create_limit_is_read_from_the_429_message() -> None:
    message = (
        "Request was throttled. Your rate limit for creating predictions is "
        "reduced to 6 requests per minute with a burst of 1 while you have "
        "less than $5.0 in credit. Your rate limit resets in ~10s."
    )
    assert create_limit(message) == (0.1, 1)
    assert create_limit("12 requests per second") == (12.0, 1)
    assert create_limit("Request was throttled.") is None


# -- against the fake server ---------------------------------------------------


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
async def test_create_by_model_then_wait(prefix: str) -> None:
    async with (
        FakeReplicate() as server,
        Client(base_url=server.base_url(prefix), api_key=server.api_key) as client,
    ):
        made = await client.create(
            "acme/echo", input={"prompt": "hi", "replipoll_duration": 0.1}
        )
        assert made.model == "acme/echo"
        assert made.input == {"prompt": "hi", "replipoll_duration": 0.1}
        done = await client.wait(made.id, timeout=10)
    assert done.status == "succeeded"


async def test_create_by_version_and_by_deployment(
    fake_replicate: FakeReplicate,
) -> None:
    async with Client(
        base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
    ) as client:
        by_version = await client.create(version="acme/echo:abc", input={"x": 1})
        by_deployment = await client.create(deployment="acme/prod", input={"x": 2})
    assert by_version.id != by_deployment.id
    assert by_deployment.deployment == "acme/prod"


async def test_sync_mode_answers_with_the_finished_record(
    fake_replicate: FakeReplicate,
) -> None:
    async with Client(
        base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
    ) as client:
        made = await client.create(
            "acme/echo", input={"replipoll_duration": 0.2}, wait=5
        )
    assert made.status == "succeeded"


async def test_a_refused_input_is_not_retried(fake_replicate: FakeReplicate) -> None:
    async with Client(
        base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key, retry=FAST
    ) as client:
        with pytest.raises(BadRequestError) as caught:
            await client.create("acme/echo", input={"replipoll_duration": "long"})
    assert caught.value.status == 422
    assert caught.value.attempts == 1


# -- never twice -----------------------------------------------------------------


async def test_a_refused_connection_is_retried_it_never_left() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with Client(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="k", retry=FAST
    ) as client:
        with pytest.raises(ConnectError) as caught:
            await client.create("a/b", input={})
    assert caught.value.sent is False
    assert caught.value.attempts == FAST.max_attempts


async def test_a_429_is_retried_after_its_retry_after_and_creates_once(
    recorder_url: Start,
) -> None:
    async def behave(request: web.Request, n: int) -> web.StreamResponse:
        if n == 1:
            return web.json_response(
                {"detail": "Request was throttled. Your rate limit resets in ~1s."},
                status=429,
                headers={"Retry-After": "0.2"},
            )
        return web.json_response(_record("made"), status=201)

    url, recorder = await recorder_url(behave)
    async with Client(base_url=url, api_key="k", retry=FAST) as client:
        started = asyncio.get_running_loop().time()
        made = await client.create("a/b", input={"n": 1})
        waited = asyncio.get_running_loop().time() - started
    assert made.id == "made"
    assert len(recorder.posts) == 2
    assert waited >= 0.19  # the Retry-After, not the tiny backoff


async def test_a_throttle_stating_a_reduced_limit_slows_the_create_budget(
    recorder_url: Start,
) -> None:
    async def behave(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(
            {
                "detail": "Your rate limit for creating predictions is reduced to "
                "6 requests per minute with a burst of 1 while you have less than "
                "$5.0 in credit. Your rate limit resets in ~10s.",
                "status": 429,
            },
            status=429,
            headers={"Retry-After": "10"},
        )

    url, recorder = await recorder_url(behave)
    policy = RetryPolicy(max_attempts=1)
    async with Client(base_url=url, api_key="k", retry=policy) as client:
        with pytest.raises(RateLimitedError):
            await client.create("a/b", input={})
        assert client.create_budget.rate == pytest.approx(0.1)
        assert client.create_budget.burst == 1
        assert client.budget.rate is None  # polling keeps its own budget
        assert client.budget.paused_until == float("-inf")
    assert len(recorder.posts) == 1


@pytest.mark.parametrize(
    "failure",
    ["reset", "500", "502-html", "truncated", "slow"],
)
async def test_a_failure_after_the_request_arrived_is_never_retried(
    recorder_url: Start, failure: str
) -> None:
    """The server got the POST (it counts one) and may have created it."""

    async def behave(request: web.Request, n: int) -> web.StreamResponse:
        if failure == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if failure == "500":
            return web.json_response({"detail": "oops"}, status=500)
        if failure == "502-html":
            return web.Response(
                text="<html><title>502 Bad Gateway</title></html>",
                status=502,
                content_type="text/html",
                headers={"X-Request-Id": "req-502"},
            )
        if failure == "truncated":
            response = web.StreamResponse(
                status=201,
                headers={"Content-Length": "500", "Content-Type": "application/json"},
            )
            await response.prepare(request)
            await response.write(b'{"id": "made", "sta')
            assert request.transport is not None
            request.transport.close()
            return response
        await asyncio.sleep(5)  # "slow": longer than the client's timeout
        return web.json_response(_record("made"), status=201)

    url, recorder = await recorder_url(behave)
    timeouts = replipoll.Timeouts(total=0.5, connect=1.0)
    async with Client(
        base_url=url, api_key=SECRET_KEY, retry=FAST, timeouts=timeouts
    ) as client:
        with pytest.raises(PredictionMayExistError) as caught:
            await client.create("a/b", input={"n": 1})
    error = caught.value
    assert len(recorder.posts) == 1
    assert error.attempts == 1
    assert isinstance(error.reason, replipoll.RequestError)
    assert error.sent_at > 0
    assert "may exist" in str(error)
    if failure == "502-html":
        assert (error.status, error.request_id) == (502, "req-502")
    for text in (str(error), repr(error), repr(error.reason)):
        assert SECRET_KEY not in text


async def test_the_key_and_headers_reach_the_server(
    recorder_url: Start,
) -> None:
    async def behave(request: web.Request, n: int) -> web.StreamResponse:
        return web.json_response(_record("made", "succeeded"), status=201)

    url, recorder = await recorder_url(behave)
    async with Client(base_url=url, api_key="k") as client:
        await client.create("a/b", input={"x": [1, 2]}, wait=3, cancel_after="5m")
    path, headers, body = recorder.posts[0]
    assert path == "/v1/models/a/b/predictions"
    assert headers["Authorization"] == "Bearer k"
    assert headers["Prefer"] == "wait=3"
    assert headers["Cancel-After"] == "5m"
    assert body == {"input": {"x": [1, 2]}}


# -- chaos: the server counts what was created ----------------------------------


async def test_under_chaos_no_input_is_ever_created_twice() -> None:
    """Random faults on creates, before and after handling: each input's
    prediction exists at most once, every success names a real one, and
    every input that may exist was flagged, never silently lost."""
    from replipoll.testing import CHAOS_FAULTS, LOST_ANSWER_FAULTS

    async with FakeReplicate(seed=7) as server:
        server.set_chaos(
            0.5, [*CHAOS_FAULTS, *LOST_ANSWER_FAULTS], seed=11, creates=True
        )
        timeouts = replipoll.Timeouts(total=2.0, connect=1.0)
        async with Client(
            base_url=server.base_url(),
            api_key=server.api_key,
            retry=FAST,
            timeouts=timeouts,
        ) as client:
            outcomes = await asyncio.gather(
                *(client.create("acme/echo", input={"n": n}) for n in range(120)),
                return_exceptions=True,
            )
        created = server.created()
    by_input: dict[int, list[str]] = {}
    for record in created:
        by_input.setdefault(record.input["n"], []).append(record.id)
    assert all(len(ids) == 1 for ids in by_input.values()), "created twice"
    assert server.stats.creations == len(created) == len(by_input)
    uncertain = 0
    for n, outcome in enumerate(outcomes):
        if isinstance(outcome, replipoll.Prediction):
            assert by_input[n] == [outcome.id]
        elif isinstance(outcome, PredictionMayExistError):
            uncertain += 1
        else:
            # Refused or never sent (retries used up): nothing was created.
            assert isinstance(outcome, replipoll.RequestError), outcome
            assert n not in by_input, (n, outcome)
    # Every created input is accounted for: a success or a "may exist".
    successes = sum(isinstance(o, replipoll.Prediction) for o in outcomes)
    assert successes + uncertain >= len(by_input)
    assert successes > 0
    assert uncertain > 0  # the chaos did lose answers of created predictions
    assert server.stats.create_requests > len(outcomes)  # and some were retried
