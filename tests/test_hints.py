"""Server hints and list pages: pure parsing, and what a real server's headers do."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from replipoll import (
    BaseURLError,
    Client,
    DecodeError,
    GatewayError,
    PollManager,
    PollPolicy,
    RateBudget,
)
from replipoll._hints import ServerHints
from replipoll._pages import decode_page, list_request

# -- ServerHints: pure ---------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ratelimit-remaining": "10", "ratelimit-reset": "3"}, (10, 3.0, None)),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2.5"}, (0, 2.5, None)),
        ({"RateLimit": "limit=100, remaining=7, reset=4"}, (7, 4.0, None)),
        ({"Retry-After": "2"}, (None, None, 2.0)),
        ({"ratelimit-remaining": "lots", "ratelimit-reset": "-1"}, (None, None, None)),
        ({"ratelimit-reset": "999999"}, (None, None, None)),  # over a day: garbage
        ({"Content-Type": "application/json"}, (None, None, None)),
    ],
)
def test_hints_are_read_in_every_spelling_and_garbage_counts_as_unsaid(
    headers: dict[str, str], expected: tuple[int | None, float | None, float | None]
) -> None:
    hints = ServerHints()
    said = hints.read(headers, now=0.0)
    assert (hints.remaining, hints.reset, hints.poll_after) == expected
    assert said == (expected != (None, None, None))


def test_a_unix_time_reset_is_read_as_seconds_from_now() -> None:
    hints = ServerHints()
    hints.read({"x-ratelimit-reset": "1700000030"}, now=1_700_000_000.0)
    assert hints.reset == 30.0


def test_an_answer_without_hints_clears_the_last_ones() -> None:
    """The scratch object is reused: stale hints must not outlive their answer."""
    hints = ServerHints()
    hints.read({"Retry-After": "5", "ratelimit-remaining": "1"}, now=0.0)
    hints.read({}, now=0.0)
    assert (hints.remaining, hints.reset, hints.poll_after) == (None, None, None)


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "ratelimit-remaining",
                "RateLimit-Reset",
                "ratelimit",
                "retry-after",
                "x-other",
            ]
        ),
        st.text(max_size=60),
    )
)
def test_hints_never_raise_on_any_header_values(headers: dict[str, str]) -> None:
    hints = ServerHints()
    hints.read(headers, now=time.time())
    assert hints.remaining is None or isinstance(hints.remaining, int)
    assert hints.reset is None or 0 <= hints.reset <= 86_400
    assert hints.poll_after is None or hints.poll_after >= 0


# -- RateBudget.heed: pure -----------------------------------------------------


def test_heed_paces_to_the_server_when_it_is_tighter_than_the_rate() -> None:
    budget = RateBudget(rate=50, burst=1)
    budget.heed(remaining=4, reset=2.0, now=10.0)
    assert budget.next_free(10.0) == pytest.approx(0.5)


def test_heed_never_speeds_a_budget_up() -> None:
    budget = RateBudget(rate=5, burst=1)
    assert budget.try_acquire(0.0)
    before = budget.next_free(0.0)
    budget.heed(remaining=1000, reset=1.0, now=0.0)
    assert budget.next_free(0.0) == before


def test_heed_with_nothing_left_pauses_until_the_reset() -> None:
    budget = RateBudget()  # no rate: only the pause applies
    budget.heed(remaining=0, reset=3.0, now=1.0)
    assert budget.is_paused(3.9)
    assert not budget.is_paused(4.0)
    budget.heed(remaining=5, reset=1.0, now=10.0)  # a budget without a rate
    assert budget.next_free(10.0) == 0.0


# -- pages: pure ---------------------------------------------------------------


def page(results: object, next_link: object = None) -> bytes:
    return json.dumps(
        {"next": next_link, "previous": None, "results": results}
    ).encode()


def test_a_page_keeps_its_predictions_and_skips_the_rest() -> None:
    body = page(
        [
            {"id": "a", "status": "processing"},
            {"id": 3},
            None,
            {"id": "b", "status": "x"},
        ],
        "https://api.replicate.com/v1/predictions?cursor=cD0y",
    )
    decoded = decode_page(200, {}, body)
    assert [p.id for p in decoded.results] == ["a", "b"]
    assert decoded.skipped == 2
    assert decoded.next_query == "cursor=cD0y"


def test_a_next_link_without_a_query_ends_the_listing() -> None:
    assert (
        decode_page(200, {}, page([], "https://elsewhere.example/")).next_query is None
    )


def test_the_next_link_is_asked_below_the_base_with_the_filters_kept() -> None:
    after = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
    request = list_request(created_after=after, next_query="cursor=abc")
    assert request.path == (
        "predictions?cursor=abc&created_after=2026-11-27T15%3A00%3A00.000000Z"
    )
    kept = list_request(
        created_after=after,
        next_query="cursor=abc&created_after=2026-11-27T15%3A00%3A00Z",
    )
    assert kept.path.count("created_after") == 1


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"<!DOCTYPE html><html><title>Login</title></html>", BaseURLError),
        (b'{"error": {"message": "no such route", "type": "x"}}', GatewayError),
        (b'{"data": []}', DecodeError),
        (b'{"results": "none"}', DecodeError),
    ],
)
def test_anything_but_a_page_is_a_typed_error(
    body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error):
        decode_page(200, {}, body, url="http://127.0.0.1/v1/predictions")


# -- hints from a real server --------------------------------------------------


@asynccontextmanager
async def hinting_server(
    headers: dict[str, str], finish_after: int
) -> AsyncIterator[tuple[str, list[float]]]:
    """A server answering one prediction, processing for ``finish_after`` GETs."""
    seen: list[float] = []

    async def get(request: web.Request) -> web.Response:
        seen.append(time.monotonic())
        status = "succeeded" if len(seen) > finish_after else "processing"
        record = {"id": request.match_info["id"], "status": status}
        return web.json_response(record, headers=headers)

    app = web.Application()
    app.router.add_get("/v1/predictions/{id}", get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/v1", seen
    finally:
        await runner.cleanup()


async def test_a_retry_after_on_a_success_sets_the_next_poll() -> None:
    """A 2xx Retry-After of 0.4 s: the manager asks no sooner, whatever its policy."""
    async with (
        hinting_server({"Retry-After": "0.4"}, finish_after=2) as (base, seen),
        Client(base_url=base, api_key="k") as client,
        PollManager(client, policy=PollPolicy.fixed(0.05), coalesce=0) as manager,
    ):
        assert (await manager.submit("abc")).status == "succeeded"
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert len(gaps) == 2
    assert all(gap >= 0.39 for gap in gaps)


async def test_ratelimit_headers_with_nothing_left_pause_the_client() -> None:
    """remaining=0, reset=0.5: the client's next request waits for the reset."""
    headers = {"ratelimit-remaining": "0", "ratelimit-reset": "0.5"}
    async with (
        hinting_server(headers, finish_after=10) as (base, seen),
        Client(base_url=base, api_key="k") as client,
    ):
        await client.get("abc")
        assert client.budget.is_paused(time.monotonic())
        await client.get("abc")
    assert seen[1] - seen[0] >= 0.45


async def test_ratelimit_headers_pace_a_manager_to_what_the_server_allows() -> None:
    """remaining=2 per second against a budget of 100/s: about 2 requests a second."""
    headers = {"ratelimit-remaining": "2", "ratelimit-reset": "1"}
    async with (
        hinting_server(headers, finish_after=4) as (base, seen),
        Client(base_url=base, api_key="k") as client,
        PollManager(
            client, policy=PollPolicy.fixed(0.01), rate_limit=100, burst=1, coalesce=0
        ) as manager,
    ):
        await manager.submit("abc")
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert all(gap >= 0.45 for gap in gaps)
