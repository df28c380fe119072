"""replipoll.testing: the fake Replicate server, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import replipoll.testing
from aiohttp import web
from multidict import CIMultiDictProxy
from replipoll.testing import (
    CHAOS_FAULTS,
    SCENARIOS,
    FakeClock,
    FakeReplicate,
    Fault,
    load_scenario,
    main,
    run_server,
)

pytest_plugins = ["replipoll.testing.pytest_plugin"]

KEY = "k-123"
AUTH = {"Authorization": f"Bearer {KEY}"}
EPOCH = 1_700_000_000.25  # 2023-11-14T22:13:20.25Z
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.(\d{3}|\d{6}|\d{9})Z$")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(KEY, clock=clock, epoch=EPOCH) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def fetch(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with session.request(method, url, **kwargs) as response:
        return response.status, response.headers, await response.read()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    status, _, body = await fetch(session, "GET", url)
    assert status == 200, body
    return json.loads(body)


def prediction_url(server: FakeReplicate, pid: str, prefix: str = "/v1") -> str:
    return f"{server.base_url(prefix)}/predictions/{pid}"


# -- the prediction record ------------------------------------------------


async def test_get_under_v1_serves_the_replicate_schema(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """A finished prediction carries every documented field, Replicate-style."""
    pid = server.add_prediction(
        duration=2, input={"prompt": "cat"}, model="acme/painter", logs="done\n"
    )
    clock.advance(5)

    status, headers, body = await fetch(session, "GET", prediction_url(server, pid))
    record = json.loads(body)

    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert headers["X-Request-Id"].startswith("req_")
    assert record["id"] == pid
    assert record["model"] == "acme/painter"
    assert re.fullmatch(r"[0-9a-f]{64}", record["version"])
    assert record["input"] == {"prompt": "cat"}
    assert (record["status"], record["error"], record["logs"]) == (
        "succeeded",
        None,
        "done\n",
    )
    assert record["data_removed"] is False
    assert record["source"] == "api"
    assert record["output"] == [f"{server.url}/files/{pid}/out-0.bin"]
    assert record["metrics"] == {
        "predict_time": 2.0,
        "total_time": 2.0,
        "image_count": 1,
    }
    api = f"https://api.replicate.com/v1/predictions/{pid}"
    assert record["urls"]["get"] == api
    assert record["urls"]["cancel"] == f"{api}/cancel"
    assert set(record["urls"]) == {"get", "cancel", "stream", "web"}
    for key in ("created_at", "started_at", "completed_at"):
        assert TIMESTAMP.match(record[key]), record[key]
    assert record["created_at"].startswith("2023-11-14T22:13:20.25")


async def test_gateway_prefix_hides_the_version(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Under /replicate/v1 the record says version "hidden", as gateways do."""
    pid = server.add_prediction()
    record = await get_json(session, prediction_url(server, pid, "/replicate/v1"))
    assert record["version"] == "hidden"
    assert record["urls"]["get"].startswith("https://api.replicate.com/v1/")


async def test_status_follows_the_injected_clock(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """starting during the queue, processing during the run, then the outcome."""
    pid = server.add_prediction(queue=1, duration=2)
    url = prediction_url(server, pid)
    seen = []
    for step in (0.5, 1.0, 2.0):
        record = await get_json(session, url)
        seen.append((record["status"], record["started_at"] is not None))
        assert record["output"] is None
        assert record["completed_at"] is None
        assert record["metrics"] == {}
        clock.advance(step)
    final = await get_json(session, url)

    assert seen == [("starting", False), ("starting", False), ("processing", True)]
    assert final["status"] == "succeeded"
    assert final["metrics"]["predict_time"] == 2.0
    assert final["metrics"]["total_time"] == 3.0


async def test_aborted_prediction_never_starts(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """aborted: starting for queue+duration, then aborted with no start, no output."""
    pid = server.add_prediction(queue=1, duration=1, outcome="aborted")
    clock.advance(1.5)
    assert (await get_json(session, prediction_url(server, pid)))[
        "status"
    ] == "starting"
    clock.advance(1)
    record = await get_json(session, prediction_url(server, pid))
    assert record["status"] == "aborted"
    assert record["started_at"] is None
    assert record["completed_at"] is not None
    assert record["output"] is None
    assert "predict_time" not in record["metrics"]
    assert record["metrics"]["total_time"] == 2.0


async def test_undocumented_outcome_is_served_as_final_status(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Any other outcome string becomes the status for ever, with null output."""
    pid = server.add_prediction(duration=1, outcome="timed_out")
    for _ in range(2):
        clock.advance(10)
        record = await get_json(session, prediction_url(server, pid))
        assert (record["status"], record["output"]) == ("timed_out", None)


async def test_failed_prediction_has_an_error_and_no_output(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """failed: E1001-like error by default, or the given one; output null."""
    default = server.add_prediction(outcome="failed")
    custom = server.add_prediction(outcome="failed", error="boom")
    first = await get_json(session, prediction_url(server, default))
    second = await get_json(session, prediction_url(server, custom))
    assert first["error"].startswith("E1001 Model Out of Memory")
    assert (first["output"], second["error"]) == (None, "boom")


async def test_custom_output_and_unknown_top_level_fields(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """output may be any JSON; extra= adds fields a client does not know."""
    pid = server.add_prediction(output={"text": "hi"}, extra={"x_gateway": {"a": 1}})
    record = await get_json(session, prediction_url(server, pid))
    assert record["output"] == {"text": "hi"}
    assert record["x_gateway"] == {"a": 1}
    assert "image_count" not in record["metrics"]


async def test_retention_removes_input_output_and_logs(
    session: aiohttp.ClientSession,
) -> None:
    """retention=: after it, data_removed is true and the data is gone."""
    clock = FakeClock()
    async with FakeReplicate(KEY, clock=clock, retention=3600) as server:
        pid = server.add_prediction(duration=1, input={"p": 1}, logs="hi")
        clock.advance(3600)
        kept = await get_json(session, prediction_url(server, pid))
        clock.advance(1)
        removed = await get_json(session, prediction_url(server, pid))
    assert (kept["data_removed"], kept["input"], kept["logs"]) == (
        False,
        {"p": 1},
        "hi",
    )
    assert kept["output"]
    assert removed["data_removed"] is True
    assert (removed["input"], removed["output"], removed["logs"]) == ({}, None, "")
    assert removed["status"] == "succeeded"


async def test_timestamps_use_all_three_precisions(server: FakeReplicate) -> None:
    """Each prediction picks one of Replicate's precisions (ms, us, ns)."""
    ids = server.add_predictions(30)
    widths = {
        len(server.prediction_state(pid)["created_at"].split(".")[1]) for pid in ids
    }
    assert widths == {4, 7, 10}  # digits plus the "Z"


# -- cancel, create, list -------------------------------------------------


async def test_cancel_stops_a_running_prediction_only(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Cancel answers the prediction, canceled if it was running; final ones stay."""
    running = server.add_prediction(duration=10)
    done = server.add_prediction()
    clock.advance(1)

    status, _, body = await fetch(
        session, "POST", f"{prediction_url(server, running)}/cancel"
    )
    canceled = json.loads(body)
    later = await get_json(session, prediction_url(server, running))
    _, _, done_body = await fetch(
        session, "POST", f"{prediction_url(server, done)}/cancel"
    )
    missing, _, _ = await fetch(
        session, "POST", f"{prediction_url(server, 'nope')}/cancel"
    )

    assert status == 200
    assert canceled["status"] == later["status"] == "canceled"
    assert canceled["completed_at"] is not None
    assert canceled["output"] is None
    assert json.loads(done_body)["status"] == "succeeded"
    assert missing == 404
    assert server.stats.cancel_requests == {running: 1, done: 1, "nope": 1}


@pytest.mark.parametrize("prefix", ["/v1", "/replicate/v1"])
async def test_create_through_models_endpoint_scripts_from_input(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession, prefix: str
) -> None:
    """POST models/{owner}/{name}/predictions: 201, input scripts the run."""
    url = f"{server.base_url(prefix)}/models/acme/painter/predictions"
    body = {
        "input": {"prompt": "x", "replipoll_duration": 2, "replipoll_outcome": "failed"}
    }

    status, _, raw = await fetch(
        session, "POST", url, json=body, headers={"Prefer": "wait=60"}
    )
    created = json.loads(raw)
    clock.advance(2)
    final = await get_json(session, prediction_url(server, created["id"], prefix))

    assert (status, created["status"], created["model"]) == (
        201,
        "processing",
        "acme/painter",
    )
    assert created["input"] == body["input"]
    assert final["status"] == "failed"


async def test_create_through_versions_endpoint(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """POST /predictions with version: defaults to a 1 s success."""
    url = f"{server.base_url()}/predictions"
    body = {"version": "acme/painter:abc", "input": {}}
    status, _, raw = await fetch(session, "POST", url, json=body)
    created = json.loads(raw)
    clock.advance(1)
    final = await get_json(session, prediction_url(server, created["id"]))
    assert (status, created["model"], final["status"]) == (
        201,
        "acme/painter",
        "succeeded",
    )


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        (b"{not json", 400),
        (b'{"version": "v"}', 422),
        (b'{"input": {}}', 422),
        (b'{"version": "v", "input": {"replipoll_duration": -1}}', 422),
        (b'{"version": "v", "input": {"replipoll_outcome": 3}}', 422),
        (b'{"version": "v", "input": {"replipoll_queue": "soon"}}', 422),
        (b'{"version": "v", "input": {"replipoll_duration": true}}', 422),
    ],
)
async def test_create_rejects_bad_bodies(
    server: FakeReplicate, session: aiohttp.ClientSession, payload: bytes, status: int
) -> None:
    """Bad JSON is 400, missing input/version or bad scripting is 422."""
    answer, headers, body = await fetch(
        session, "POST", f"{server.base_url()}/predictions", data=payload
    )
    assert answer == status
    assert headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["status"] == status


async def test_list_pages_newest_first_with_working_links(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """GET /predictions: 100 a page, newest first, next/previous URLs that work."""
    ids = server.add_predictions(150)
    first = await get_json(session, f"{server.base_url()}/predictions")
    second = await get_json(session, first["next"])
    back = await get_json(session, second["previous"])

    assert first["previous"] is None
    assert [r["id"] for r in first["results"]] == ids[::-1][:100]
    assert [r["id"] for r in second["results"]] == ids[::-1][100:]
    assert second["next"] is None
    assert back == first


@pytest.mark.parametrize(
    "cursor",
    [
        "-1",
        "two",
        "1e3",
        "0",
        # Replicate's own cursors name a date, which the fake's do not.
        "cD0yMDIyLTAxLTIxKzIzJTNBMTglM0EyNC41MzAzNTclMkIwMCUzQTAw",
    ],
)
async def test_list_refuses_a_cursor_it_did_not_make(
    server: FakeReplicate, session: aiohttp.ClientSession, cursor: str
) -> None:
    """A hand-made cursor (an offset, a date) is a 400, not a 500."""
    server.add_predictions(3)
    status, headers, body = await fetch(
        session, "GET", f"{server.base_url()}/predictions", params={"cursor": cursor}
    )
    assert status == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert json.loads(body)["detail"] == "Invalid cursor."


# -- errors and auth ------------------------------------------------------


async def test_unknown_id_is_404_problem_json_under_v1(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Replicate style: application/problem+json {"detail": "Not found."}."""
    status, headers, body = await fetch(session, "GET", prediction_url(server, "nope"))
    assert (status, headers["Content-Type"]) == (404, "application/problem+json")
    assert json.loads(body) == {"detail": "Not found.", "status": 404}


async def test_gateway_errors_are_comet_envelopes_carrying_the_request_id(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Under /replicate/v1: {"error": {...}} whose message names X-Request-Id."""
    url = prediction_url(server, "nope", "/replicate/v1")
    status, headers, body = await fetch(session, "GET", url)
    error = json.loads(body)["error"]
    assert status == 404
    assert error["type"] == "comet_api_error"
    assert (error["param"], error["code"]) == ("", "")
    assert error["message"].endswith(f"(request id: {headers['X-Request-Id']})")


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Token {KEY}", KEY])
async def test_missing_or_wrong_key_is_401(
    server: FakeReplicate, auth: str | None
) -> None:
    """No key, a wrong key or a wrong scheme: 401 before anything else."""
    pid = server.add_prediction()
    headers = {} if auth is None else {"Authorization": auth}
    async with aiohttp.ClientSession(headers=headers) as anonymous:
        status, _, body = await fetch(anonymous, "GET", prediction_url(server, pid))
        gateway, _, gbody = await fetch(
            anonymous, "GET", prediction_url(server, pid, "/replicate/v1")
        )
    assert (status, gateway) == (401, 401)
    assert json.loads(body) == {
        "title": "Unauthenticated",
        "detail": "You did not pass a valid authentication token",
        "status": 401,
    }
    assert json.loads(gbody)["error"]["type"] == "comet_api_error"


async def test_bearer_scheme_is_case_insensitive(server: FakeReplicate) -> None:
    """'bearer KEY' is as good as 'Bearer KEY'."""
    pid = server.add_prediction()
    async with aiohttp.ClientSession(headers={"Authorization": f"bearer {KEY}"}) as s:
        assert (await fetch(s, "GET", prediction_url(server, pid)))[0] == 200


@pytest.mark.parametrize(
    ("style", "prefix", "envelope"),
    [("replicate", "/replicate/v1", False), ("comet", "/v1", True)],
)
async def test_error_style_overrides_the_prefix(
    session: aiohttp.ClientSession, style: Any, prefix: str, envelope: bool
) -> None:
    """error_style="replicate"/"comet" applies under both prefixes."""
    async with FakeReplicate(KEY, error_style=style) as server:
        _, _, body = await fetch(session, "GET", prediction_url(server, "x", prefix))
    assert ("error" in json.loads(body)) is envelope


async def test_unknown_paths_are_404_json_or_html_like_gateways(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """/v1/whatever is problem+json, /replicate/v1/whatever an HTML page."""
    v1, v1_headers, v1_body = await fetch(
        session, "GET", f"{server.base_url()}/whatever"
    )
    gw, gw_headers, _ = await fetch(
        session, "GET", f"{server.base_url('/replicate/v1')}/whatever"
    )
    wrong_method, _, _ = await fetch(session, "DELETE", prediction_url(server, "x"))
    assert (v1, json.loads(v1_body)["detail"]) == (404, "Not found.")
    assert gw == 404
    assert gw_headers["Content-Type"].startswith("text/html")
    assert "X-Request-Id" in v1_headers
    assert wrong_method == 405


async def test_faults_are_not_spent_on_paths_outside_the_api_and_files(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A request to neither the API nor /files/ (a stray /health) is answered
    normally and leaves an armed fault for the next API request."""
    pid = server.add_prediction()
    server.add_fault(Fault.server_error(), times=1)
    stray, _, _ = await fetch(session, "GET", f"{server.url}/health")
    first, _, _ = await fetch(session, "GET", prediction_url(server, pid))
    second, _, _ = await fetch(session, "GET", prediction_url(server, pid))
    assert (stray, first, second) == (404, 500, 200)
    assert server.stats.faults_injected["server_error"] == 1


# -- files ----------------------------------------------------------------


async def test_output_files_are_served_without_auth(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Output URLs download deterministic bytes of file_size, no key needed."""
    pid = server.add_prediction(n_files=2, file_size=100_000)
    urls = (await get_json(session, prediction_url(server, pid)))["output"]
    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(urls[1]) as response:
            assert response.content_length == 100_000
            chunks = [chunk async for chunk in response.content.iter_chunked(8192)]
        missing = [
            (await fetch(anonymous, "GET", f"{server.url}/files/{pid}/{name}"))[0]
            for name in ("out-2.bin", "out-01.bin", "other")
        ]
        unknown, _, _ = await fetch(anonymous, "GET", f"{server.url}/files/x/out-0.bin")
    assert len(urls) == 2
    assert b"".join(chunks) == server.file_content(pid, "out-1.bin")
    assert server.file_content(pid, "out-1.bin") != server.file_content(
        pid, "out-0.bin"
    )
    assert missing == [404, 404, 404]
    assert unknown == 404


async def test_file_faults_hit_downloads_not_the_api(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """add_fault(files=True) breaks the next download of that prediction only."""
    pid = server.add_prediction()
    server.add_fault(Fault.truncated_body(), prediction_id=pid, files=True)
    (url,) = (await get_json(session, prediction_url(server, pid)))["output"]
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(session, "GET", url)
    status, _, body = await fetch(session, "GET", url)
    assert (status, body) == (200, server.file_content(pid, "out-0.bin"))


# -- faults ---------------------------------------------------------------

CANNED = [
    (Fault.server_error(), 500, "application/problem+json", b"Internal Server Error"),
    (Fault.bad_gateway_html(), 502, "text/html; charset=utf-8", b"502 Bad Gateway"),
    (Fault.unavailable_comet(), 503, "application/json", b"comet_api_error"),
    (Fault.gateway_timeout_empty(), 504, "application/octet-stream", b""),
    (Fault.cloudflare_timeout(), 524, "text/html; charset=utf-8", b"timeout"),
    (Fault.html_200(), 200, "text/html; charset=utf-8", b"<!DOCTYPE html>"),
    (
        Fault.status(418, "tea", content_type="text/plain", headers={"X-A": "b"}),
        418,
        "text/plain",
        b"tea",
    ),
]


@pytest.mark.parametrize(("fault", "status", "ctype", "snippet"), CANNED)
async def test_canned_faults_answer_what_gateways_answer(
    server: FakeReplicate,
    session: aiohttp.ClientSession,
    fault: Fault,
    status: int,
    ctype: str,
    snippet: bytes,
) -> None:
    """Each canned fault: its status, content type and body; then normal again."""
    pid = server.add_prediction()
    server.add_fault(fault, prediction_id=pid)
    got, headers, body = await fetch(session, "GET", prediction_url(server, pid))
    again, _, _ = await fetch(session, "GET", prediction_url(server, pid))
    assert (got, headers.get("Content-Type", "application/octet-stream")) == (
        status,
        ctype,
    )
    assert snippet in body
    assert again == 200
    assert server.stats.faults_injected == {fault.kind: 1}
    assert server.stats.responses_by_status[status] >= 1


async def test_comet_503_names_the_request_id(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """The 503 envelope's message ends with the response's X-Request-Id."""
    server.add_fault(Fault.unavailable_comet())
    _, headers, body = await fetch(session, "GET", prediction_url(server, "any"))
    message = json.loads(body)["error"]["message"]
    assert message.endswith(f"(request id: {headers['X-Request-Id']})")


@pytest.mark.parametrize(
    ("fault", "header", "in_body"),
    [
        (Fault.rate_limited(0.2), "0.2", None),
        (Fault.rate_limited(3, in_body=True), "3", 3),
        (Fault.rate_limited(1.5, header=False, in_body=True), None, 1.5),
    ],
)
async def test_rate_limit_sends_retry_after_where_asked(
    server: FakeReplicate,
    session: aiohttp.ClientSession,
    fault: Fault,
    header: str | None,
    in_body: float | None,
) -> None:
    """429 with a throttling detail, Retry-After header and/or retry_after field."""
    server.add_fault(fault)
    status, headers, body = await fetch(session, "GET", prediction_url(server, "x"))
    problem = json.loads(body)
    assert status == 429
    assert problem["detail"].startswith(
        "Request was throttled. Your rate limit resets in ~"
    )
    assert headers.get("Retry-After") == header
    assert problem.get("retry_after") == in_body


async def test_reset_drops_the_connection(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Fault.reset: the client sees a disconnect; the server logs status 0.

    aiohttp resends a GET once after a disconnect, hence two resets.
    """
    pid = server.add_prediction()
    server.add_fault(Fault.reset(), times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await fetch(session, "GET", prediction_url(server, pid))
    assert (await fetch(session, "GET", prediction_url(server, pid)))[0] == 200
    resets = server.stats.faults_injected["reset"]
    assert resets >= 1
    assert server.stats.responses_by_status == {0: resets, 200: 1}
    assert server.stats.request_log[0].status == 0


async def test_truncated_json_has_a_consistent_length(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Fault.truncated_json: 200 JSON, full transfer, but the JSON is cut."""
    pid = server.add_prediction()
    server.add_fault(Fault.truncated_json(), prediction_id=pid)
    status, headers, body = await fetch(session, "GET", prediction_url(server, pid))
    assert (status, headers["Content-Type"]) == (200, "application/json")
    assert int(headers["Content-Length"]) == len(body) > 0
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


async def test_truncated_body_is_a_payload_error(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Fault.truncated_body: Content-Length promises more; ClientPayloadError."""
    pid = server.add_prediction()
    server.add_fault(Fault.truncated_body())
    with pytest.raises(aiohttp.ClientPayloadError):
        await fetch(session, "GET", prediction_url(server, pid))


async def test_slow_fault_does_not_block_other_requests(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Fault.slow delays one answer while a later request is answered first."""
    slow_id, fast_id = server.add_prediction(), server.add_prediction()
    server.add_fault(Fault.slow(0.3), prediction_id=slow_id)
    order: list[str] = []

    async def get(pid: str) -> None:
        await get_json(session, prediction_url(server, pid))
        order.append(pid)

    slow = asyncio.create_task(get(slow_id))
    await asyncio.sleep(0.05)
    await get(fast_id)
    await slow
    assert order == [fast_id, slow_id]


async def test_faults_match_id_and_count_in_order(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Faults hit their id only, `times` times, first added first (None: for ever)."""
    a, b = server.add_prediction(), server.add_prediction()
    server.add_fault(Fault.server_error(), prediction_id=a, times=2)
    server.add_fault(Fault.gateway_timeout_empty())
    server.add_fault(Fault.cloudflare_timeout(), prediction_id=b, times=None)

    async def status(pid: str) -> int:
        return (await fetch(session, "GET", prediction_url(server, pid)))[0]

    seen = [await status(p) for p in (b, a, a, a, b, b)]
    server.clear_faults()
    assert seen == [504, 500, 500, 200, 524, 524]
    assert await status(b) == 200
    with pytest.raises(ValueError, match="times"):
        server.add_fault(Fault.reset(), times=0)


async def test_chaos_is_deterministic_for_a_seed(
    session: aiohttp.ClientSession,
) -> None:
    """Same seed and request order: the same faults; creates are left alone."""
    kinds: list[Fault | str] = [
        "server_error",
        "bad_gateway_html",
        "gateway_timeout_empty",
        Fault.status(409),
    ]

    async def run(seed: int) -> list[int]:
        async with FakeReplicate(KEY, seed=seed) as server:
            pid = server.add_prediction()
            server.set_chaos(0.5, kinds)
            statuses = [
                (await fetch(session, "GET", prediction_url(server, pid)))[0]
                for _ in range(30)
            ]
            create = f"{server.base_url()}/models/a/b/predictions"
            for _ in range(10):
                assert (await fetch(session, "POST", create, json={"input": {}}))[
                    0
                ] == 201
            return statuses

    first, second, other = await run(1), await run(1), await run(2)
    assert first == second
    assert first != other
    assert {200, 500, 502, 504, 409} >= set(first)
    assert 0 < first.count(200) < 30


def test_set_chaos_validates_its_arguments() -> None:
    """Unknown kind names, bad probabilities and empty kinds are ValueErrors."""
    server = FakeReplicate()
    with pytest.raises(ValueError, match="unknown fault kind"):
        server.set_chaos(0.1, ["nope"])
    with pytest.raises(ValueError, match="probability"):
        server.set_chaos(1.5)
    with pytest.raises(ValueError, match="at least one"):
        server.set_chaos(0.1, [])
    assert {f.kind for f in CHAOS_FAULTS} >= {"reset", "truncated_body", "slow"}


# -- stats ----------------------------------------------------------------


async def test_peak_in_flight_counts_concurrent_slow_requests(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Five overlapping slow requests: peak 5, none in flight afterwards."""
    pid = server.add_prediction()
    server.add_fault(Fault.slow(0.2), times=5)
    await asyncio.gather(
        *(get_json(session, prediction_url(server, pid)) for _ in range(5))
    )
    stats = server.stats
    assert (stats.peak_in_flight, stats.in_flight) == (5, 0)
    assert stats.total_requests == 5
    assert stats.requests_per_id == {pid: 5}
    assert stats.responses_by_status == {200: 5}
    assert stats.faults_injected == {"slow": 5}


async def test_latency_makes_client_concurrency_visible(
    session: aiohttp.ClientSession,
) -> None:
    """With latency=, peak_in_flight shows how many requests a client overlaps."""
    async with FakeReplicate(KEY, latency=0.1) as server:
        pid = server.add_prediction()
        await asyncio.gather(
            *(get_json(session, prediction_url(server, pid)) for _ in range(4))
        )
        assert server.stats.peak_in_flight == 4


async def test_early_requests_are_those_inside_a_retry_after(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """After a 429 with Retry-After 2, any request within 2 s is early (per key)."""
    a, b = server.add_prediction(), server.add_prediction()
    server.add_fault(Fault.rate_limited(2), prediction_id=a)
    await fetch(session, "GET", prediction_url(server, a))
    clock.advance(1)
    await fetch(session, "GET", prediction_url(server, b))  # another id: still early
    clock.advance(1.5)
    await fetch(session, "GET", prediction_url(server, a))
    assert server.stats.early_requests == 1
    assert [r.status for r in server.stats.request_log] == [429, 200, 200]
    assert [r.time for r in server.stats.request_log] == [100.0, 101.0, 102.5]


async def test_early_grace_excuses_requests_already_in_flight(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Requests within early_grace of a pause's start are not early; later ones are."""
    async with FakeReplicate(KEY, clock=clock, early_grace=0.1) as server:
        a = server.add_prediction()
        server.add_fault(Fault.rate_limited(2), prediction_id=a)
        await fetch(session, "GET", prediction_url(server, a))  # the 429
        clock.advance(0.05)
        await fetch(session, "GET", prediction_url(server, a))  # in flight: excused
        clock.advance(0.5)
        await fetch(session, "GET", prediction_url(server, a))  # ignored the pause
        assert server.stats.early_requests == 1
        assert server.stats.requests_during_pause == 2


async def test_reset_stats_starts_afresh(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """reset_stats zeroes the counters; the log size is kept."""
    pid = server.add_prediction()
    await get_json(session, prediction_url(server, pid))
    server.reset_stats()
    assert server.stats.total_requests == 0
    assert not server.stats.request_log
    await get_json(session, prediction_url(server, pid))
    assert server.stats.total_requests == 1


async def test_request_log_is_bounded(session: aiohttp.ClientSession) -> None:
    """request_log_size keeps only the latest entries (0 keeps none)."""
    async with FakeReplicate(KEY, request_log_size=2) as server:
        for name in ("a", "b", "c"):
            await fetch(session, "GET", prediction_url(server, name))
        assert [r.path.rsplit("/", 1)[1] for r in server.stats.request_log] == [
            "b",
            "c",
        ]
    async with FakeReplicate(KEY, request_log_size=0) as server:
        await fetch(session, "GET", prediction_url(server, "a"))
        assert not server.stats.request_log


# -- scripting API --------------------------------------------------------


def test_ids_are_replicate_like_and_seeded() -> None:
    """Default ids: 26 chars of a-z2-7, the same for the same seed."""
    first = FakeReplicate(seed=7).add_predictions(100)
    again = FakeReplicate(seed=7).add_predictions(100)
    other = FakeReplicate(seed=8).add_predictions(100)
    assert first == again != other
    assert len(set(first)) == 100
    assert all(re.fullmatch(r"[a-z2-7]{26}", pid) for pid in first)


def test_add_predictions_applies_shared_and_varied_arguments() -> None:
    """add_predictions(n, vary, **kwargs): vary(i) overrides the shared kwargs."""
    server = FakeReplicate(clock=FakeClock())
    ids = server.add_predictions(
        10_000,
        lambda i: {"outcome": "failed"} if i % 2 else {},
        model="acme/bulk",
    )
    first, second = server.prediction_state(ids[0]), server.prediction_state(ids[1])
    assert len(set(ids)) == 10_000
    assert (first["status"], second["status"]) == ("succeeded", "failed")
    assert first["model"] == second["model"] == "acme/bulk"


@pytest.mark.parametrize(
    "kwargs",
    [{"id": "dup"}, {"id": "a/b"}, {"id": ""}, {"queue": -1}, {"file_size": -1}],
)
def test_add_prediction_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    """Duplicate or unroutable ids and negative numbers are ValueErrors."""
    server = FakeReplicate()
    server.add_prediction("dup")
    with pytest.raises(ValueError):  # noqa: PT011 - messages vary
        server.add_prediction(**kwargs)


async def test_lifecycle_errors_and_repeated_close() -> None:
    """url before start and a second start raise; close twice is fine."""
    server = FakeReplicate()
    with pytest.raises(RuntimeError, match="not started"):
        server.url  # noqa: B018
    await server.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        assert server.base_url("/replicate/v1") == f"{server.url}/replicate/v1"
        assert "predictions=0" in repr(server)
        with pytest.raises(RuntimeError, match="already started"):
            await server.start()
    finally:
        await server.close()
        await server.close()
    with pytest.raises(KeyError):
        server.prediction_state("nope")
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        server.api_key = "other"


def test_generated_ids_skip_ids_already_scripted() -> None:
    """A random id that is already taken (by an explicit id) is drawn again."""
    expected = FakeReplicate(seed=5).add_predictions(2)
    server = FakeReplicate(seed=5)
    server.add_prediction(expected[0])  # the id the next draw would give
    assert server.add_prediction() == expected[1]


async def test_file_content_of_a_file_not_served_is_a_key_error(
    server: FakeReplicate,
) -> None:
    """file_content answers like the server: out-N.bin past n_files does not exist."""
    pid = server.add_prediction(n_files=2)
    assert len(server.file_content(pid, "out-1.bin")) == 1024
    with pytest.raises(KeyError):
        server.file_content(pid, "out-2.bin")


async def test_a_failed_start_can_be_retried_on_another_port() -> None:
    """start() on a port in use raises OSError and leaves the server unstarted,
    so a second start() on a free port works."""
    async with FakeReplicate(KEY) as taken:
        port = int(taken.url.rsplit(":", 1)[1])
        server = FakeReplicate(KEY)
        with pytest.raises(OSError):  # noqa: PT011 - errno text varies
            await server.start(port=port)
        with pytest.raises(RuntimeError, match="not started"):
            server.url  # noqa: B018
        await server.start()
        try:
            assert server.url != taken.url
            pid = server.add_prediction()
            async with aiohttp.ClientSession(headers=AUTH) as session:
                assert (await get_json(session, prediction_url(server, pid)))["id"]
        finally:
            await server.close()


async def test_async_with_on_a_started_server_keeps_it_and_closes_it() -> None:
    """Entering an already started server does not start it again; leaving closes."""
    server = FakeReplicate(KEY)
    await server.start()
    url = server.url
    async with server as entered:
        assert entered is server
        assert server.url == url
    with pytest.raises(RuntimeError, match="not started"):
        server.url  # noqa: B018


async def test_the_app_can_be_served_by_your_own_runner() -> None:
    """FakeReplicate.app is a complete aiohttp app: mount it yourself and it
    answers with the key and predictions of its FakeReplicate."""
    server = FakeReplicate(KEY)
    pid = server.add_prediction(outcome="failed")
    runner = web.AppRunner(server.app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        url = f"http://{host}:{port}/v1/predictions/{pid}"
        async with aiohttp.ClientSession(headers=AUTH) as session:
            record = await get_json(session, url)
            status, _, _ = await fetch(
                session, "GET", url, headers={"Authorization": "Bearer no"}
            )
    finally:
        await runner.cleanup()
    assert (record["id"], record["status"]) == (pid, "failed")
    assert status == 401


async def test_pytest_plugin_fixture_serves_on_loopback(
    fake_replicate: FakeReplicate,
) -> None:
    """The fake_replicate fixture is a started server with the default key."""
    pid = fake_replicate.add_prediction()
    headers = {"Authorization": "Bearer test-key"}
    async with aiohttp.ClientSession(headers=headers) as session:
        record = await get_json(session, prediction_url(fake_replicate, pid))
    assert fake_replicate.url.startswith("http://127.0.0.1:")
    assert record["status"] == "succeeded"


# -- scenarios and command line -------------------------------------------


def test_scenarios_are_seeded_and_named() -> None:
    """load_scenario: same seed, same predictions; unknown names are errors."""
    first, again = FakeReplicate(seed=3), FakeReplicate(seed=3)
    ids = load_scenario(first, "demo")
    assert ids == load_scenario(again, "demo")
    assert len(ids) == 12
    statuses = {first.prediction_state(pid)["status"] for pid in ids}
    assert statuses <= {"starting", "processing", "succeeded"}
    assert load_scenario(FakeReplicate(), "empty") == []
    assert set(SCENARIOS) == {"demo", "chaos", "empty"}
    with pytest.raises(ValueError, match="unknown scenario"):
        load_scenario(FakeReplicate(), "nope")
    with pytest.raises(ValueError, match="no predictions to count"):
        load_scenario(FakeReplicate(), "empty", 3)


async def test_chaos_scenario_mixes_outcomes_and_faults(
    session: aiohttp.ClientSession,
) -> None:
    """The chaos scenario has odd statuses and fields, and faults some requests."""
    clock = FakeClock()
    async with FakeReplicate(KEY, clock=clock) as server:
        ids = load_scenario(server, "chaos")
        clock.advance(10)
        states = [server.prediction_state(pid) for pid in ids]
        for pid in ids:
            with contextlib.suppress(aiohttp.ClientError):
                await fetch(session, "GET", prediction_url(server, pid))
    statuses = {state["status"] for state in states}
    documented = {"succeeded", "failed", "canceled", "aborted"}
    assert statuses >= {*documented, "timed_out", "expired"}
    assert any("x_gateway" in state for state in states)
    assert sum(server.stats.faults_injected.values()) > 0


async def test_run_server_prints_urls_and_writes_ids(tmp_path: Path) -> None:
    """run_server: banner with both prefixes, key (default one), ids to a file."""
    stop, ids_file, printed = asyncio.Event(), tmp_path / "ids.txt", asyncio.Event()

    class Out(io.StringIO):
        def flush(self) -> None:
            printed.set()

    out = Out()
    server = FakeReplicate()
    task = asyncio.create_task(
        run_server(
            server,
            scenario="demo",
            predictions=3,
            ids_file=ids_file,
            out=out,
            stop=stop,
        )
    )
    await asyncio.wait_for(printed.wait(), 5)
    url = server.base_url()
    stop.set()
    await task
    lines = out.getvalue().splitlines()
    assert lines[0] == f"replipoll fake server on {url} (also /replicate/v1)"
    assert lines[1] == "api key: test-key"
    assert len(ids_file.read_text().split()) == 3


async def test_run_server_with_the_empty_scenario_prints_only_the_banner() -> None:
    """No default key, no ids: one line, so scripts can read the URL and go."""
    stop, printed = asyncio.Event(), asyncio.Event()

    class Out(io.StringIO):
        def flush(self) -> None:
            printed.set()

    out = Out()
    server = FakeReplicate(KEY)
    task = asyncio.create_task(run_server(server, out=out, stop=stop))
    await asyncio.wait_for(printed.wait(), 5)
    url = server.base_url()
    stop.set()
    await task
    assert out.getvalue() == f"replipoll fake server on {url} (also /replicate/v1)\n"
    with pytest.raises(RuntimeError, match="not started"):
        server.url  # noqa: B018 - closed once stopped


def test_cli_rejects_a_negative_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--scenario", "demo", "--predictions", "-1"])
    assert exited.value.code == 2
    assert "--predictions must be >= 0" in capsys.readouterr().err


def test_cli_rejects_a_count_for_the_empty_scenario(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--predictions without a scenario that makes predictions is a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["--predictions", "3"])
    assert exited.value.code == 2
    assert "--predictions needs" in capsys.readouterr().err


async def test_module_runs_serves_and_stops_on_sigterm() -> None:
    """python -m replipoll.testing: prints the URL, serves a GET, exits 0 on SIGTERM."""
    package_root = str(Path(replipoll.testing.__file__).parents[2])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "replipoll.testing",
        "--scenario",
        "demo",
        "--predictions",
        "2",
        "--api-key",
        KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": path},
    )
    assert process.stdout is not None
    try:
        lines = [
            (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            for _ in range(3)
        ]
        base = re.search(r" on (http://127\.0\.0\.1:\d+/v1) \(also", lines[0])
        assert base, lines
        assert lines[1].startswith("2 predictions")  # no key: it was not the default
        first_id = lines[2].strip()
        async with aiohttp.ClientSession(headers=AUTH) as session:
            record = await get_json(session, f"{base[1]}/predictions/{first_id}")
        assert record["id"] == first_id
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.communicate()
