"""FakeReplicate's create side: deployments, sync mode, deadlines, webhooks, budget.

Every HTTP test talks to a real FakeReplicate on loopback through a real
aiohttp.ClientSession; the parsers, the budget and sync mode's wait are also
checked on their own.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from replipoll.testing import (
    LOST_ANSWER_FAULTS,
    CreateRecord,
    FakeClock,
    FakeReplicate,
    Fault,
)
from replipoll.testing._create import (
    CreateBudget,
    Invalid,
    hold,
    parse_duration,
    parse_wait,
    retry_after,
)
from replipoll.testing._records import Prediction

KEY = "k-create"
AUTH = {"Authorization": f"Bearer {KEY}"}
EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z at clock 0
PREFIXES = ["/v1", "/replicate/v1"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(KEY, clock=clock, epoch=EPOCH) as server:
        yield server


@pytest.fixture
async def live() -> AsyncIterator[FakeReplicate]:
    """A server on the real (monotonic) clock, for sync mode's real waits."""
    async with FakeReplicate(KEY) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: object,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST *body* as JSON; the status, headers and decoded JSON answer."""
    async with session.post(url, json=body, headers=headers) as response:
        return response.status, dict(response.headers), await response.json()


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200
        return await response.json()


def model_url(server: FakeReplicate, prefix: str = "/v1") -> str:
    return f"{server.base_url(prefix)}/models/acme/painter/predictions"


def script(**keys: object) -> dict[str, object]:
    """A create body whose input scripts the prediction."""
    return {
        "input": {"prompt": "a cat", **{f"replipoll_{k}": v for k, v in keys.items()}}
    }


# -- deployments -----------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_deployment_endpoint_creates_a_prediction_of_the_deployment(
    server: FakeReplicate, session: aiohttp.ClientSession, prefix: str
) -> None:
    """POST deployments/{owner}/{name}/predictions: 201, deployment and model set."""
    url = f"{server.base_url(prefix)}/deployments/acme/app/predictions"
    status, _, created = await post(session, url, {"input": {"x": 1}})
    fetched = await get(
        session, f"{server.base_url(prefix)}/predictions/{created['id']}"
    )
    assert status == 201
    assert created["deployment"] == fetched["deployment"] == "acme/app"
    assert created["model"] == "acme/app"
    assert created["input"] == {"x": 1}
    assert server.created()[0].deployment == "acme/app"


async def test_deployment_model_can_be_scripted_by_input(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """``replipoll_model`` names a deployment's model; models/ paths keep theirs."""
    deployment = f"{server.base_url()}/deployments/acme/app/predictions"
    _, _, created = await post(session, deployment, script(model="black/flux"))
    _, _, by_model = await post(session, model_url(server), script(model="black/flux"))
    _, _, bad = await post(session, deployment, script(model="flux"))
    assert (created["model"], created["deployment"]) == ("black/flux", "acme/app")
    assert by_model["model"] == "acme/painter"
    assert "deployment" not in by_model
    assert bad["status"] == 422


# -- sync mode (Prefer: wait) ----------------------------------------------


async def test_sync_mode_answers_a_fast_prediction_terminal(
    live: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Prefer: wait=N holds a 0.2 s prediction's answer until it succeeded."""
    started = time.monotonic()
    status, _, created = await post(
        session, model_url(live), script(duration=0.2), {"Prefer": "wait=10"}
    )
    assert status == 201
    assert created["status"] == "succeeded"
    assert created["output"]
    assert time.monotonic() - started < 8  # not held for the whole wait


async def test_sync_mode_answers_a_slow_prediction_as_it_stands_after_n_seconds(
    live: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A prediction longer than the wait: 201 after about N s, still processing."""
    started = time.monotonic()
    status, _, created = await post(
        session, model_url(live), script(duration=60), {"Prefer": "wait=1"}
    )
    waited = time.monotonic() - started
    assert (status, created["status"]) == (201, "processing")
    assert 0.9 <= waited < 10


async def test_sync_mode_ends_when_the_prediction_is_cancelled(
    live: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A cancel during the wait releases the held answer, which shows it canceled."""
    task = asyncio.create_task(
        post(session, model_url(live), script(duration=60), {"Prefer": "wait=30"})
    )
    for _ in range(1000):  # until the create arrived (it is being held)
        if live.created():
            break
        await asyncio.sleep(0.01)
    pid = live.created()[0].id
    async with session.post(f"{live.base_url()}/predictions/{pid}/cancel") as answer:
        assert answer.status == 200
    status, _, created = await asyncio.wait_for(task, 10)
    assert (status, created["status"]) == (201, "canceled")


async def test_sync_mode_with_an_unmoved_fake_clock_answers_at_once(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Nobody advances the FakeClock: ``Prefer: wait`` (60 s) answers right away."""
    started = time.monotonic()
    status, _, created = await post(
        session, model_url(server), script(queue=1), {"Prefer": "wait"}
    )
    assert (status, created["status"]) == (201, "starting")
    assert time.monotonic() - started < 5
    assert server.created()[0].wait == 60


async def test_hold_waits_on_the_server_clock_not_real_time() -> None:
    """A clock that runs 10 s a reading ends a 100 s run's wait in a few looks."""
    ticks = itertools.count()

    def fast_clock() -> float:
        return next(ticks) * 10.0

    p = Prediction(
        "p", 0.0, 0.0, 100.0, "succeeded", None, 0, 0, None, {}, "a/b", "", None
    )
    started = time.monotonic()
    await hold(p, fast_clock, 60 * 60)
    assert p.timeline(fast_clock())[0] == "succeeded"
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("wait", 60),
        ("wait=1", 1),
        ("wait=60", 60),
        ("WAIT = 5", 5),
        ("respond-async, wait=3", 3),
        ("respond-async", None),
        ("return=minimal", None),
    ],
)
def test_prefer_header_values(header: str | None, seconds: int | None) -> None:
    """``wait`` alone is 60, ``wait=N`` N; other preferences are ignored."""
    assert parse_wait(header) == seconds


@pytest.mark.parametrize(
    "header", ["wait=0", "wait=61", "wait=abc", "wait=", "wait=1.5"]
)
def test_prefer_header_bad_wait_is_invalid(header: str) -> None:
    """A wait that is not 1 to 60 whole seconds is refused (a 422)."""
    with pytest.raises(Invalid, match="Prefer"):
        parse_wait(header)


async def test_bad_prefer_is_a_422_and_creates_nothing(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Prefer: wait=120 is a problem+json 422 that names the header; no prediction."""
    status, headers, body = await post(
        session, model_url(server), script(), {"Prefer": "wait=120"}
    )
    assert status == 422
    assert headers["Content-Type"] == "application/problem+json"
    assert "Prefer" in body["detail"]
    assert (server.stats.create_requests, server.stats.creations) == (1, 0)


# -- Cancel-After -----------------------------------------------------------


async def test_cancel_after_aborts_a_prediction_still_queued(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Deadline before the start: aborted at the deadline, no predict_time."""
    status, _, created = await post(
        session, model_url(server), script(queue=10, duration=5), {"Cancel-After": "5s"}
    )
    clock.advance(6)
    later = await get(session, f"{server.base_url()}/predictions/{created['id']}")
    assert status == 201
    assert created["status"] == "starting"
    assert created["deadline"].startswith("2027-01-15T08:00:05.")
    assert later["status"] == "aborted"
    assert later["started_at"] is None
    assert later["completed_at"] == later["deadline"] == created["deadline"]
    assert "predict_time" not in later["metrics"]
    assert server.timeline(created["id"]).status == "aborted"


async def test_cancel_after_cancels_a_running_prediction(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Deadline while running: canceled at the deadline, charged for the run."""
    _, _, created = await post(
        session, model_url(server), script(queue=1, duration=60), {"Cancel-After": "1m"}
    )
    clock.advance(30)
    running = await get(session, f"{server.base_url()}/predictions/{created['id']}")
    clock.advance(31)
    later = await get(session, f"{server.base_url()}/predictions/{created['id']}")
    assert running["status"] == "processing"
    assert later["status"] == "canceled"
    assert later["completed_at"] == created["deadline"]
    assert later["metrics"]["predict_time"] == 59


async def test_cancel_after_leaves_a_prediction_done_in_time_alone(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """A prediction final before its deadline ends as scripted; a cancel beats it."""
    _, _, done = await post(
        session, model_url(server), script(duration=2), {"Cancel-After": "90"}
    )
    _, _, canceled = await post(
        session, model_url(server), script(queue=10), {"Cancel-After": "1h30m"}
    )
    clock.advance(1)
    cancel_url = f"{server.base_url()}/predictions/{canceled['id']}/cancel"
    async with session.post(cancel_url) as answer:
        assert answer.status == 200
    clock.advance(2 * 3600)
    assert server.prediction_state(done["id"])["status"] == "succeeded"
    assert server.prediction_state(canceled["id"])["status"] == "canceled"
    assert server.timeline(canceled["id"]).completed == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("0.5", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2m30s", 150),
        (" 10s ", 10),
    ],
)
def test_cancel_after_durations(text: str, seconds: float) -> None:
    """Replicate durations: plain seconds, or numbers with h, m, s units."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "0", "0s", "-5s", "1h 30m", "s"])
def test_cancel_after_bad_durations(text: str) -> None:
    """Anything but a positive duration is refused."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("prefix", PREFIXES)
async def test_bad_cancel_after_is_a_422_naming_the_header(
    server: FakeReplicate, session: aiohttp.ClientSession, prefix: str
) -> None:
    """Cancel-After: soon is a 422 (problem+json, or the gateway's envelope)."""
    status, _, body = await post(
        session, model_url(server, prefix), script(), {"Cancel-After": "soon"}
    )
    detail = body["detail"] if prefix == "/v1" else body["error"]["message"]
    assert status == 422
    assert "Cancel-After" in detail
    assert server.stats.creations == 0


# -- webhook fields ----------------------------------------------------------


async def test_webhook_fields_are_stored_with_all_events_by_default(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A webhook without a filter: all four events, in the record and created()."""
    hook = "https://example.test/hook"
    _, _, created = await post(
        session, model_url(server), {**script(), "webhook": hook}
    )
    events = ["start", "output", "logs", "completed"]
    assert created["webhook"] == hook
    assert created["webhook_events_filter"] == events
    assert server.prediction_state(created["id"])["webhook_events_filter"] == events
    record = server.created()[0]
    assert (record.webhook, record.webhook_events_filter) == (hook, tuple(events))


async def test_webhook_events_filter_is_kept_as_given(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """webhook_events_filter ["completed"] is stored as is; no webhook: no fields."""
    body = {
        **script(),
        "webhook": "http://127.0.0.1:9/h",
        "webhook_events_filter": ["completed"],
    }
    _, _, created = await post(session, model_url(server), body)
    _, _, plain = await post(session, model_url(server), script())
    assert created["webhook_events_filter"] == ["completed"]
    assert "webhook" not in plain
    assert server.created()[1].webhook_events_filter == ()


@pytest.mark.parametrize(
    "extra",
    [
        {"webhook": "https://x.test/h", "webhook_events_filter": "completed"},
        {"webhook": "https://x.test/h", "webhook_events_filter": ["done"]},
        {"webhook": "https://x.test/h", "webhook_events_filter": [1]},
        {"webhook": "ftp://x.test/h"},
        {"webhook": 3},
    ],
)
async def test_bad_webhook_fields_are_a_422(
    server: FakeReplicate, session: aiohttp.ClientSession, extra: dict[str, object]
) -> None:
    """A non-list filter, an unknown event or a non-URL webhook: 422, nothing made."""
    status, _, body = await post(session, model_url(server), {**script(), **extra})
    assert status == 422
    assert "webhook" in body["detail"]
    assert server.created() == []


# -- the create budget -------------------------------------------------------


async def test_create_budget_throttles_with_replicates_low_credit_429(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """6 a minute, burst 1: the 2nd create is a 429 that creates nothing; GETs go on."""
    async with FakeReplicate(
        KEY, clock=clock, create_rate_limit=0.1, create_burst=1
    ) as server:
        first, _, created = await post(session, model_url(server), script())
        status, headers, body = await post(session, model_url(server), script())
        await get(session, f"{server.base_url()}/predictions/{created['id']}")
        clock.advance(10)
        again, _, _ = await post(session, model_url(server), script())
        stats = server.stats

    assert (first, status, again) == (201, 429, 201)
    assert headers["Retry-After"] == "10"
    assert headers["Content-Type"] == "application/problem+json"
    assert body == {
        "detail": "Request was throttled. Your rate limit for creating predictions"
        " is reduced to 6 requests per minute with a burst of 1 while you have"
        " less than $5.0 in credit. Your rate limit resets in ~10s.",
        "status": 429,
        "title": "Request was throttled",
    }
    assert (stats.create_requests, stats.creations, stats.creates_throttled) == (
        3,
        2,
        1,
    )
    assert len(server.created()) == 2


def test_create_budget_allows_a_burst_then_refills_at_the_rate() -> None:
    """Burst 3 at 2/s: three at once, then one per 0.5 s."""
    budget = CreateBudget(2.0, 3)
    assert [budget.spend(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert budget.spend(0.0) == 0.5
    assert budget.spend(0.25) == 0.25
    assert budget.spend(0.5) == 0.0
    assert "120 requests per minute with a burst of 3" in budget.detail(0.25)
    assert "resets in ~1s" in budget.detail(0.25)


@pytest.mark.parametrize(
    ("wait", "header"),
    [(10.0, "10"), (0.25, "0.25"), (0.2000001, "0.201"), (1.5, "1.5")],
)
def test_retry_after_is_rounded_up_to_milliseconds(wait: float, header: str) -> None:
    """Retry-After never says less than the real wait."""
    assert retry_after(wait) == header


def test_create_budget_options_are_checked() -> None:
    """A rate must be > 0 and a burst >= 1."""
    with pytest.raises(ValueError, match="create_rate_limit"):
        FakeReplicate(create_rate_limit=0)
    with pytest.raises(ValueError, match="create_burst"):
        FakeReplicate(create_rate_limit=1, create_burst=0)


# -- counting creations -----------------------------------------------------


async def test_create_requests_count_every_post_and_creations_only_predictions(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Refused creates (401, 400, 422) count as requests, not creations; order kept."""
    base = server.base_url()
    ids = []
    for url in (
        model_url(server),
        f"{base}/deployments/a/b/predictions",
        f"{base}/predictions",
    ):
        _, _, created = await post(session, url, {**script(), "version": "x/y:1"})
        ids.append(created["id"])
    async with aiohttp.ClientSession() as anonymous:
        assert (await post(anonymous, model_url(server), script()))[0] == 401
    async with session.post(model_url(server), data=b"{") as answer:
        assert answer.status == 400
    assert (await post(session, model_url(server), {}))[0] == 422
    await get(session, f"{base}/predictions")

    assert (server.stats.create_requests, server.stats.creations) == (6, 3)
    records = server.created()
    assert [r.id for r in records] == ids
    assert all(isinstance(r, CreateRecord) for r in records)
    assert records[0].input == {"prompt": "a cat"}
    assert [r.model for r in records] == ["acme/painter", "a/b", "x/y"]
    assert len({r.request_id for r in records}) == 3


# -- faults on create -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault", [Fault.server_error(), Fault.rate_limited(0.1), Fault.bad_gateway_html()]
)
async def test_a_fault_before_handling_creates_nothing(
    server: FakeReplicate, session: aiohttp.ClientSession, fault: Fault
) -> None:
    """Canned answers strike before the handler: the request "never reached" it."""
    server.add_fault(fault, creates=True)
    async with session.post(model_url(server), json=script()) as answer:
        assert answer.status == fault.code
    assert (server.stats.create_requests, server.stats.creations) == (1, 0)
    assert server.created() == []


async def test_a_reset_before_handling_creates_nothing(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Fault.reset() on a create: the client sees a disconnect, no prediction exists."""
    server.add_fault(Fault.reset(), creates=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(session, model_url(server), script())
    assert (server.stats.creations, server.created()) == (0, [])


@pytest.mark.parametrize("fault", LOST_ANSWER_FAULTS, ids=lambda f: f.kind)
async def test_lost_after_create_makes_exactly_one_prediction(
    server: FakeReplicate, session: aiohttp.ClientSession, fault: Fault
) -> None:
    """The prediction is created, then the answer is lost: the client sees a failure."""
    server.add_fault(fault, creates=True)
    try:
        async with session.post(model_url(server), json=script()) as answer:
            status = answer.status
            await answer.json(content_type=None)
    except (aiohttp.ClientError, json.JSONDecodeError):
        status = 0
    assert status == 0 or status >= 500
    assert server.stats.creations == 1
    (record,) = server.created()
    assert (await get(session, f"{server.base_url()}/predictions/{record.id}"))["id"]


async def test_a_slow_answer_after_create_outlives_the_clients_timeout(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Fault.slow().after_handling(): created at once, answered too late."""
    server.add_fault(Fault.slow(5).after_handling(), creates=True)
    with pytest.raises(asyncio.TimeoutError):
        await post_with_timeout(session, model_url(server), 0.3)
    assert len(server.created()) == 1


async def post_with_timeout(
    session: aiohttp.ClientSession, url: str, seconds: float
) -> None:
    timeout = aiohttp.ClientTimeout(total=seconds)
    async with session.post(url, json=script(), timeout=timeout) as answer:
        await answer.read()


async def test_create_faults_spare_other_requests_and_others_hit_creates(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """creates=True skips GETs and lists; a fault for any request hits a create too."""
    pid = server.add_prediction()
    server.add_fault(Fault.server_error(), creates=True)
    await get(session, f"{server.base_url()}/predictions/{pid}")
    await get(session, f"{server.base_url()}/predictions")
    assert (await post(session, model_url(server), script()))[0] == 500
    server.add_fault(Fault.gateway_timeout_empty())
    async with session.post(model_url(server), json=script()) as answer:
        assert answer.status == 504
    assert server.stats.creations == 0


def test_create_faults_cannot_name_a_prediction_or_files() -> None:
    """A create names no prediction and is no download: such aims are refused."""
    server = FakeReplicate()
    pid = server.add_prediction()
    with pytest.raises(ValueError, match="creates"):
        server.add_fault(Fault.reset(), creates=True, prediction_id=pid)
    with pytest.raises(ValueError, match="creates"):
        server.add_fault(Fault.reset(), creates=True, files=True)


async def test_default_truncated_body_on_create_strikes_after_creation(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Faults that spoil the normal answer run the handler: the prediction exists."""
    server.add_fault(Fault.truncated_body(), creates=True)
    with pytest.raises(aiohttp.ClientPayloadError):
        await post(session, model_url(server), script())
    assert server.stats.creations == 1


async def test_chaos_hits_creates_only_when_asked(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """set_chaos(creates=True) draws faults for creates; by default they are spared."""
    server.set_chaos(1.0, [Fault.server_error()])
    assert (await post(session, model_url(server), script()))[0] == 201
    server.set_chaos(1.0, [Fault.server_error()], creates=True)
    assert (await post(session, model_url(server), script()))[0] == 500
    server.set_chaos(1.0, LOST_ANSWER_FAULTS[2:3], creates=True)
    async with session.post(model_url(server), json=script()) as answer:
        assert answer.status == 502
    assert server.stats.creations == 2
