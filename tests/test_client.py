"""Client against the fake server over real loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest
import replipoll
from replipoll import (
    AuthenticationError,
    Client,
    ClientClosedError,
    ConfigurationError,
    ConnectError,
    DecodeError,
    InvalidPredictionIdError,
    MissingAPIKeyError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    RetryPolicy,
    ServerError,
    Status,
    Timeouts,
)
from replipoll.testing import FakeReplicate, Fault

from .conftest import SECRET_KEY


@pytest.mark.parametrize(
    ("provider", "base", "env"),
    [
        ("replicate", "https://api.replicate.com/v1", "REPLICATE_API_TOKEN"),
        ("deerapi", "https://api.deerapi.com/replicate/v1", "DEERAPI_KEY"),
        ("cometapi", "https://api.cometapi.com/replicate/v1", "COMETAPI_KEY"),
    ],
)
def test_provider_presets_set_base_url_and_key_variable(
    provider: str, base: str, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REPLICATE_API_TOKEN", "DEERAPI_KEY", "COMETAPI_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(MissingAPIKeyError, match=env):
        Client(provider)
    monkeypatch.setenv(env, SECRET_KEY)
    client = Client(provider)
    assert client.base_url == base
    assert SECRET_KEY not in repr(client)


def test_cometapi_timeout_allows_answers_far_beyond_45_seconds() -> None:
    client = Client("cometapi", api_key="k")
    assert client.timeouts.total is not None
    assert client.timeouts.total >= 90
    assert client.timeouts.read is None or client.timeouts.read > 45


def test_base_url_overrides_and_trailing_slash_is_dropped() -> None:
    client = Client(
        "cometapi", api_key="k", base_url="https://gw.example/replicate/v1/"
    )
    assert client.base_url == "https://gw.example/replicate/v1"


def test_unknown_provider_and_bad_key_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown provider"):
        Client("nope", api_key="k")
    with pytest.raises(ConfigurationError) as info:
        Client(api_key="abc\r\nX-Evil: 1")
    assert "abc" not in str(info.value)


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
async def test_get_fetches_a_typed_record_under_both_prefixes(
    fake_replicate: FakeReplicate, prefix: str
) -> None:
    pid = fake_replicate.add_prediction(output=["https://x/1.png"])
    async with Client(
        "cometapi",
        base_url=fake_replicate.base_url(prefix),
        api_key=fake_replicate.api_key,
    ) as client:
        p = await client.get(pid)
    assert p.id == pid
    assert p.status is Status.SUCCEEDED
    assert p.output == ["https://x/1.png"]
    assert p.created_at is not None
    assert p.created_at.tzinfo is not None


@pytest.mark.parametrize(
    ("outcome", "terminal"),
    [
        ("succeeded", True),
        ("failed", True),
        ("canceled", True),
        ("aborted", True),
        ("weird_new_status", False),
    ],
)
async def test_every_outcome_decodes(
    client: Client, fake_replicate: FakeReplicate, outcome: str, terminal: bool
) -> None:
    pid = fake_replicate.add_prediction(outcome=outcome)
    p = await client.get(pid)
    assert p.status == outcome
    assert p.is_terminal is terminal
    if outcome == "failed":
        assert p.error
    if outcome == "aborted":
        assert p.started_at is None


async def test_status_progresses_and_urls_are_built_from_the_base(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=0.3)
    first = await client.get(pid)
    assert first.status in {"starting", "processing"}
    # The gateway-style urls point at api.replicate.com; polling still works
    # because every request is built from the configured base.
    assert first.urls is not None
    assert first.urls.get is not None
    assert "api.replicate.com" in first.urls.get
    await asyncio.sleep(0.35)
    assert (await client.get(pid)).status == "succeeded"
    assert fake_replicate.stats.requests_per_id[pid] == 2


async def test_unknown_fields_are_kept(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(extra={"x_gateway": {"region": "eu"}})
    p = await client.get(pid)
    assert p.extra == {"x_gateway": {"region": "eu"}}


async def test_cancel_posts_and_returns_the_canceled_prediction(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    p = await client.cancel(pid)
    assert p.status == "canceled"
    assert (await client.get(pid)).status == "canceled"


@pytest.mark.parametrize("bad", ["", " ", "a/b", "..", "a\x00", "x" * 10_000, "a b"])
async def test_bad_ids_raise_before_any_request(
    client: Client, fake_replicate: FakeReplicate, bad: str
) -> None:
    with pytest.raises(InvalidPredictionIdError):
        await client.get(bad)
    with pytest.raises(InvalidPredictionIdError):
        await client.cancel(bad)
    assert fake_replicate.stats.total_requests == 0


async def test_escaped_ids_reach_the_server_as_one_segment(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    with pytest.raises(NotFoundError):
        await client.get("%2F..%2Fsecret")
    assert fake_replicate.stats.total_requests == 1


async def test_not_found_is_not_retried(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    with pytest.raises(NotFoundError) as info:
        await client.get("missing")
    assert info.value.status == 404
    assert info.value.request_id
    assert info.value.attempts == 1
    assert fake_replicate.stats.total_requests == 1


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
async def test_wrong_key_is_an_authentication_error_without_the_key(
    secret_server: FakeReplicate, prefix: str
) -> None:
    pid = secret_server.add_prediction()
    async with Client(
        base_url=secret_server.base_url(prefix), api_key="wrong-key"
    ) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.get(pid)
    assert info.value.status == 401
    assert info.value.request_id
    assert info.value.attempts == 1
    assert "wrong-key" not in str(info.value)
    assert "wrong-key" not in repr(info.value)


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        (Fault.rate_limited(0.05), 429),
        (Fault.server_error(), 500),
        (Fault.bad_gateway_html(), 502),
        (Fault.unavailable_comet(), 503),
        (Fault.gateway_timeout_empty(), 504),
        (Fault.cloudflare_timeout(), 524),
        (Fault.reset(), None),
        (Fault.truncated_json(), 200),
        (Fault.truncated_body(), None),
        (Fault.status(408, '{"detail": "timeout"}'), 408),
        (Fault.status(520, "<html><title>520</title></html>"), 520),
        (Fault.status(529, ""), 529),
        (Fault.status(503, "", headers={"Retry-After": "0.05"}), 503),
    ],
)
async def test_each_transient_fault_is_retried_then_succeeds(
    client: Client,
    fake_replicate: FakeReplicate,
    fault: Fault,
    status: int | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(fault, prediction_id=pid, times=2)
    with caplog.at_level(logging.WARNING, logger="replipoll"):
        p = await client.get(pid)
    assert p.status == "succeeded"
    if status is None:  # aiohttp itself retries a reused connection once
        assert 3 <= fake_replicate.stats.requests_per_id[pid] <= 5
    else:
        assert fake_replicate.stats.requests_per_id[pid] == 3
    retries = [r for r in caplog.records if r.name == "replipoll"]
    assert len(retries) == 2 if status is not None else 1 <= len(retries) <= 2
    assert all(r.levelno == logging.WARNING for r in retries)
    if status is not None:
        assert f"status {status}" in retries[0].getMessage()
        assert "request id" in retries[0].getMessage()


@pytest.mark.parametrize(
    ("fault", "error", "status"),
    [
        (Fault.server_error(), ServerError, 500),
        (Fault.unavailable_comet(), ServerError, 503),
        (Fault.reset(), ConnectError, None),
        (Fault.truncated_json(), DecodeError, 200),
    ],
)
async def test_giving_up_raises_the_last_error_with_the_attempt_count(
    client: Client,
    fake_replicate: FakeReplicate,
    fault: Fault,
    error: type[Exception],
    status: int | None,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(fault, prediction_id=pid, times=None)
    with pytest.raises(error) as info:
        await client.get(pid)
    assert isinstance(info.value, replipoll.RequestError)
    assert info.value.attempts == 4
    assert info.value.status == status
    assert "after 4 attempts" in str(info.value)
    sent = fake_replicate.stats.requests_per_id[pid]
    assert sent == 4 if status is not None else 4 <= sent <= 8


async def test_comet_envelope_request_id_is_found_in_the_message(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.unavailable_comet(), prediction_id=pid, times=None)
    async with Client(
        base_url=fake_replicate.base_url("/replicate/v1"),
        api_key=fake_replicate.api_key,
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        with pytest.raises(ServerError) as info:
            await client.get(pid)
    assert info.value.request_id
    assert info.value.request_id in info.value.message


async def test_retry_after_is_honoured_and_pauses_the_whole_client(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    a = fake_replicate.add_prediction()
    b = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.rate_limited(0.3), prediction_id=a)
    start = time.monotonic()
    first = asyncio.create_task(client.get(a))
    await asyncio.sleep(0.05)  # a has been throttled by now
    await client.get(b)  # must wait for the pause too
    await first
    assert time.monotonic() - start >= 0.3
    assert fake_replicate.stats.early_requests == 0


async def test_retry_after_in_the_body_is_honoured(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(
        Fault.rate_limited(0.2, header=False, in_body=True), prediction_id=pid
    )
    start = time.monotonic()
    await client.get(pid)
    assert time.monotonic() - start >= 0.2
    assert fake_replicate.stats.early_requests == 0


async def test_retry_after_longer_than_the_cap_gives_up_at_once(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.rate_limited(3600), prediction_id=pid)
    async with Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        retry=RetryPolicy(max_retry_after=10),
    ) as client:
        with pytest.raises(RateLimitedError) as info:
            await client.get(pid)
    assert info.value.retry_after == 3600
    assert info.value.attempts == 1


async def test_slow_answer_beyond_the_timeout_is_a_timeout_error(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.slow(2.0), prediction_id=pid, times=None)
    async with Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        timeouts=Timeouts(total=0.2),
        retry=RetryPolicy(max_attempts=2, base_delay=0.01),
    ) as client:
        with pytest.raises(RequestTimeoutError) as info:
            await client.get(pid)
    assert info.value.attempts == 2


async def test_slow_answer_within_the_timeout_is_waited_for(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    fake_replicate.add_fault(Fault.slow(0.3), prediction_id=pid)
    async with Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        timeouts=Timeouts(total=2.0),
    ) as client:
        assert (await client.get(pid)).status == "succeeded"
    assert fake_replicate.stats.requests_per_id[pid] == 1


async def test_borrowed_session_is_used_and_never_closed(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction()
    async with aiohttp.ClientSession() as session:
        async with Client(
            base_url=fake_replicate.base_url(),
            api_key=fake_replicate.api_key,
            session=session,
        ) as client:
            await client.get(pid)
        assert not session.closed


async def test_one_connection_is_reused_for_many_requests(
    fake_replicate: FakeReplicate,
) -> None:
    created = 0

    async def on_create(*_: object) -> None:
        nonlocal created
        created += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    pid = fake_replicate.add_prediction()
    async with aiohttp.ClientSession(trace_configs=[trace]) as session:
        client = Client(
            base_url=fake_replicate.base_url(),
            api_key=fake_replicate.api_key,
            session=session,
        )
        for _ in range(20):
            await client.get(pid)
    assert created == 1


async def test_closed_client_refuses_requests(fake_replicate: FakeReplicate) -> None:
    client = Client(base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key)
    await client.get(fake_replicate.add_prediction())
    await client.close()
    await client.close()  # idempotent
    assert client.closed
    with pytest.raises(ClientClosedError):
        await client.get("abc")


async def test_connection_refused_is_a_connect_error() -> None:
    server = FakeReplicate()
    await server.start()
    base = server.base_url()
    await server.close()
    async with Client(
        base_url=base, api_key="k", retry=RetryPolicy(max_attempts=2, base_delay=0.01)
    ) as client:
        with pytest.raises(ConnectError) as info:
            await client.get("abc")
    assert info.value.status is None
    assert info.value.attempts == 2


async def test_rate_limit_spaces_requests(fake_replicate: FakeReplicate) -> None:
    pid = fake_replicate.add_prediction()
    async with Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        rate_limit=20,
        burst=1,
    ) as client:
        start = time.monotonic()
        await asyncio.gather(*(client.get(pid) for _ in range(6)))
    assert time.monotonic() - start >= 5 / 20 * 0.9


async def test_wait_returns_the_terminal_record(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=0.2, output="done")
    p = await client.wait(pid, timeout=10)
    assert p.output == "done"


async def test_wait_times_out_with_the_last_record(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    with pytest.raises(replipoll.PollTimeout) as info:
        await client.wait(pid, timeout=0.3)
    assert info.value.last is not None
    assert info.value.last.status == "processing"


def test_the_base_url_comes_from_the_argument_then_the_environment_then_the_preset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same variable the command line reads: REPLIPOLL_BASE_URL."""
    monkeypatch.delenv("REPLIPOLL_BASE_URL", raising=False)
    assert Client("cometapi", api_key="k" * 10).base_url == (
        "https://api.cometapi.com/replicate/v1"
    )
    monkeypatch.setenv("REPLIPOLL_BASE_URL", "https://gw.example/replicate/v1/")
    assert Client(api_key="k" * 10).base_url == "https://gw.example/replicate/v1"
    explicit = Client(api_key="k" * 10, base_url="https://other.example/v1")
    assert explicit.base_url == "https://other.example/v1"
    monkeypatch.setenv("REPLIPOLL_BASE_URL", "ftp://nope")
    with pytest.raises(ConfigurationError) as info:
        Client(api_key="k" * 10)
    assert info.value.option == "base_url"
