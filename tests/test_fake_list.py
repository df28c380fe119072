"""FakeReplicate's ``GET /predictions``: keyset pages, filters, slim, lagging items."""

from __future__ import annotations

import base64
import json
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDictProxy
from replipoll.testing import LIST_OMITS, FakeClock, FakeReplicate, Fault
from replipoll.testing._listing import (
    CreatedIndex,
    Cursor,
    parse_date_time,
    select,
)

KEY = "k-list"
AUTH = {"Authorization": f"Bearer {KEY}"}
EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z at clock 0


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
async def server(clock: FakeClock) -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(KEY, clock=clock, epoch=EPOCH) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def fetch(
    session: aiohttp.ClientSession, url: str, **params: str
) -> tuple[int, CIMultiDictProxy[str], Any]:
    async with session.get(url, params=params or None) as response:
        return response.status, response.headers, json.loads(await response.read())


async def page(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    status, _, body = await fetch(session, url, **params)
    assert status == 200, body
    return body


async def walk(
    session: aiohttp.ClientSession, url: str, **params: str
) -> list[list[str]]:
    """The ids of every page, following ``next`` from *url*."""
    pages = []
    body = await page(session, url, **params)
    while True:
        pages.append([r["id"] for r in body["results"]])
        if body["next"] is None:
            return pages
        body = await page(session, body["next"])


def add_spaced(server: FakeReplicate, clock: FakeClock, n: int) -> list[str]:
    """*n* predictions created 0.1 s apart, oldest first."""
    ids = []
    for _ in range(n):
        ids.append(server.add_prediction(duration=1))
        clock.advance(0.1)
    return ids


def list_url(server: FakeReplicate, prefix: str = "/v1") -> str:
    return f"{server.base_url(prefix)}/predictions"


# -- order, pages and cursors ---------------------------------------------


async def test_pages_of_100_newest_first_until_next_is_null(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Every prediction once, newest first, 100 a page; the first has no previous."""
    ids = add_spaced(server, clock, 250)

    first = await page(session, list_url(server))
    pages = await walk(session, list_url(server))

    assert set(first) == {"next", "previous", "results"}
    assert first["previous"] is None
    assert [len(p) for p in pages] == [100, 100, 50]
    assert [pid for p in pages for pid in p] == ids[::-1]
    created = [r["created_at"] for r in first["results"]]
    assert created == sorted(created, reverse=True)


async def test_previous_leads_back_to_the_same_page(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """next then previous gives the first page again, links and all."""
    add_spaced(server, clock, 150)
    first = await page(session, list_url(server))
    second = await page(session, first["next"])
    back = await page(session, second["previous"])

    assert second["next"] is None
    assert back == first


async def test_pages_do_not_shift_while_predictions_are_created(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """A keyset cursor: new predictions neither repeat nor hide older ones."""
    ids = add_spaced(server, clock, 300)
    first = await page(session, list_url(server))
    newer = add_spaced(server, clock, 40)

    second = await page(session, first["next"])
    third = await page(session, second["next"])
    back = await page(session, second["previous"])

    assert [r["id"] for r in first["results"]] == ids[::-1][:100]
    assert [r["id"] for r in second["results"]] == ids[::-1][100:200]
    assert [r["id"] for r in third["results"]] == ids[::-1][200:]
    # Going back: the page just above, then one more holding the new ones.
    assert [r["id"] for r in back["results"]] == ids[::-1][:100]
    assert back["previous"] is not None
    top = await page(session, back["previous"])
    assert [r["id"] for r in top["results"]] == newer[::-1]
    assert top["previous"] is None


async def test_pages_do_not_shift_among_predictions_created_at_one_instant(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Equal creation times: the later added is newer, and cursors still hold."""
    ids = server.add_predictions(250)  # the FakeClock stands still
    first = await page(session, list_url(server))
    later = server.add_predictions(30)

    rest = await walk(session, first["next"])

    assert [r["id"] for r in first["results"]] == ids[::-1][:100]
    assert [pid for p in rest for pid in p] == ids[::-1][100:]
    assert (await walk(session, list_url(server)))[0][:30] == later[::-1]


async def test_a_late_older_prediction_shows_on_a_later_page(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Added out of order (created in the past): sorted in, nothing shifts."""
    ids = add_spaced(server, clock, 200)
    first = await page(session, list_url(server))
    late = server.add_prediction(created=5.05)  # between ids[50] and ids[51]

    second = await walk(session, first["next"])

    assert [r["id"] for r in first["results"]] == ids[100:][::-1]
    assert [pid for p in second for pid in p] == [*ids[:51], late, *ids[51:100]][::-1]


async def test_next_links_keep_the_filters(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """created_after/created_before ride along in next and previous."""
    ids = add_spaced(server, clock, 400)
    records = {
        r["id"]: r for p in await walk_records(session, list_url(server)) for r in p
    }
    after = records[ids[50]]["created_at"]
    before = records[ids[300]]["created_at"]

    pages = await walk(
        session, list_url(server), created_after=after, created_before=before
    )
    first = await page(
        session, list_url(server), created_after=after, created_before=before
    )

    assert [pid for p in pages for pid in p] == ids[50:300][::-1]
    assert "created_after=" in first["next"]
    assert "created_before=" in first["next"]
    second = await page(session, first["next"])
    assert "created_after=" in second["previous"]


async def walk_records(
    session: aiohttp.ClientSession, url: str
) -> list[list[dict[str, Any]]]:
    pages = []
    body = await page(session, url)
    while True:
        pages.append(body["results"])
        if body["next"] is None:
            return pages
        body = await page(session, body["next"])


# -- filters --------------------------------------------------------------


@pytest.mark.parametrize("style", ["Z", "+00:00", "unescaped +"])
async def test_created_after_is_inclusive_and_created_before_exclusive(
    server: FakeReplicate,
    clock: FakeClock,
    session: aiohttp.ClientSession,
    style: str,
) -> None:
    """A prediction's own created_at: "after" keeps it, "before" leaves it out."""
    ids = add_spaced(server, clock, 20)
    # Each prediction's created_at is in one of three precisions; take them all.
    for k in (3, 10, 16):
        stamp = server.prediction_state(ids[k])["created_at"]
        assert stamp.endswith("Z")
        if style != "Z":
            stamp = stamp[:-1] + "+00:00"
        url = list_url(server)
        if style == "unescaped +":  # the query turns the "+" into a space
            after = await page(session, f"{url}?created_after={stamp}")
        else:
            after = await page(session, url, created_after=stamp)
        before = await page(session, url, created_before=stamp)

        assert [r["id"] for r in after["results"]] == ids[k:][::-1]
        assert [r["id"] for r in before["results"]] == ids[:k][::-1]


async def test_filters_take_offsets_and_bare_dates(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """-05:00 is five hours later in UTC; a date is its midnight, UTC."""
    early = server.add_prediction()  # 2027-01-15T08:00:00Z
    clock.advance(3600)
    late = server.add_prediction()  # 09:00Z

    def ids(body: Any) -> list[str]:
        return [r["id"] for r in body["results"]]

    url = list_url(server)
    assert ids(await page(session, url, created_after="2027-01-15T03:30:00-05:00")) == [
        late
    ]
    assert ids(await page(session, url, created_before="2027-01-15")) == []
    assert ids(await page(session, url, created_after="2027-01-15")) == [late, early]
    nanos = "2027-01-15T08:00:00.000000500Z"
    assert ids(await page(session, url, created_after=nanos)) == [late]


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2027-13-01T00:00:00Z", "2027-02-30", "2027-01-15T25:00:00Z", ""],
)
@pytest.mark.parametrize("name", ["created_after", "created_before"])
async def test_a_malformed_date_is_a_400_that_says_which(
    server: FakeReplicate, session: aiohttp.ClientSession, name: str, value: str
) -> None:
    """problem+json naming the parameter and the expected form."""
    status, headers, body = await fetch(session, list_url(server), **{name: value})

    assert status == 400
    assert headers["Content-Type"] == "application/problem+json"
    assert body["status"] == 400
    assert body["detail"].startswith(f"{name}: {value!r} is not an ISO 8601")


async def test_a_malformed_date_under_the_gateway_prefix_is_an_envelope(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Gateways' errors are OpenAI-style envelopes (error_style="auto")."""
    status, _, body = await fetch(
        session, list_url(server, "/replicate/v1"), created_after="soon"
    )
    assert status == 400
    assert "created_after" in body["error"]["message"]


def encoded(raw: str) -> str:
    return base64.b64encode(raw.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        encoded("x=1"),
        encoded("p=nan"),
        encoded("p=inf"),
        encoded("p=1.5&o=-1"),
        encoded("p=1.5&r=2"),
        encoded("p=1.5&q=1"),
        encoded("p=soon"),
    ],
)
async def test_a_bad_cursor_is_a_400(
    server: FakeReplicate, session: aiohttp.ClientSession, cursor: str
) -> None:
    """Only cursors the server made are read; others are "Invalid cursor."."""
    server.add_predictions(3)
    status, _, body = await fetch(session, list_url(server), cursor=cursor)
    assert (status, body["detail"]) == (400, "Invalid cursor.")


async def test_source_web_lists_nothing(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """Every fake prediction was created through the API, none on the web."""
    server.add_predictions(3)
    body = await page(session, list_url(server), source="web")
    assert body == {"next": None, "previous": None, "results": []}


# -- items ----------------------------------------------------------------


async def test_items_lack_logs_and_version_by_default(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Otherwise an item is what a GET of the prediction answers."""
    pid = server.add_prediction(duration=1, logs="hello\n", input={"a": 1})
    clock.advance(2)
    item = (await page(session, list_url(server)))["results"][0]
    single = await page(session, f"{list_url(server)}/{pid}")

    assert {"logs", "version"} == LIST_OMITS
    assert set(single) - set(item) == {"logs", "version"}
    assert item == {k: v for k, v in single.items() if k not in LIST_OMITS}
    assert item["status"] == "succeeded"
    assert item["output"] == [f"{server.url}/files/{pid}/out-0.bin"]


async def test_list_omits_can_serve_full_items(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """list_omits=frozenset(): items are the GET's records, logs included."""
    async with FakeReplicate(KEY, clock=clock, list_omits=frozenset()) as server:
        pid = server.add_prediction(duration=1, logs="hello\n", progress_steps=4)
        clock.advance(2)
        item = (await page(session, list_url(server)))["results"][0]
        assert item == await page(session, f"{list_url(server)}/{pid}")
        assert item["logs"].startswith("hello\n  0%|")


async def test_items_lag_behind_a_get_by_list_lag(
    clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """An item is its prediction as it was list_lag seconds ago; a GET is now."""
    async with FakeReplicate(KEY, clock=clock, list_lag=5.0) as server:
        done = server.add_prediction(duration=4)  # succeeded at 4
        clock.advance(5.5)
        fresh = server.add_prediction(queue=2, duration=1)  # created 1 s ago
        clock.advance(1)

        items = {r["id"]: r for r in (await page(session, list_url(server)))["results"]}
        single = await page(session, f"{list_url(server)}/{done}")

        assert single["status"] == "succeeded"
        assert items[done]["status"] == "processing"  # as at 1.5
        assert items[done]["completed_at"] is None
        assert items[fresh]["status"] == "starting"  # as at its creation
        clock.advance(10)
        items = {r["id"]: r for r in (await page(session, list_url(server)))["results"]}
        assert items[done]["status"] == items[fresh]["status"] == "succeeded"


async def test_a_prediction_created_later_is_unknown_until_then(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """created= in the future: not listed, GET and cancel 404, then both work."""
    now = server.add_prediction()
    later = server.add_prediction(created=30.0, duration=1)

    body = await page(session, list_url(server))
    status, _, _ = await fetch(session, f"{list_url(server)}/{later}")
    async with session.post(f"{list_url(server)}/{later}/cancel") as cancel:
        assert cancel.status == 404

    assert [r["id"] for r in body["results"]] == [now]
    assert status == 404
    clock.advance(30)
    body = await page(session, list_url(server))
    assert [r["id"] for r in body["results"]] == [later, now]
    assert (await page(session, f"{list_url(server)}/{later}"))["status"] == (
        "processing"
    )


async def test_gateway_prefix_links_stay_under_the_gateway(
    server: FakeReplicate, clock: FakeClock, session: aiohttp.ClientSession
) -> None:
    """Under /replicate/v1, next points under /replicate/v1 too."""
    ids = add_spaced(server, clock, 120)
    first = await page(session, list_url(server, "/replicate/v1"))
    assert first["next"].startswith(list_url(server, "/replicate/v1") + "?")
    second = await page(session, first["next"])
    assert [r["id"] for r in second["results"]] == ids[:20][::-1]
    assert "version" not in second["results"][0]


async def test_faults_hit_list_requests_which_are_counted_and_logged(
    server: FakeReplicate, session: aiohttp.ClientSession
) -> None:
    """A queued 429 answers the list; stats count both requests; the log has them."""
    server.add_predictions(2)
    server.add_fault(Fault.rate_limited(0.5))

    limited, _, _ = await fetch(session, list_url(server))
    body = await page(session, list_url(server))
    async with (
        aiohttp.ClientSession() as anonymous,
        anonymous.get(list_url(server)) as refused,
    ):
        assert refused.status == 401

    assert limited == 429
    assert len(body["results"]) == 2
    assert server.stats.list_requests == 3
    assert server.stats.faults_injected["rate_limited"] == 1
    assert [r.path for r in server.stats.request_log] == ["/v1/predictions"] * 3
    assert sum(server.stats.requests_per_id.values()) == 0


# -- the pure parts -------------------------------------------------------


@given(
    time=st.floats(allow_nan=False, allow_infinity=False),
    rank=st.integers(min_value=0, max_value=10**9),
    newer=st.booleans(),
)
def test_a_cursor_survives_its_trip_through_a_url(
    time: float, rank: int, newer: bool
) -> None:
    """decode(encode(c)) == c, and the encoding is plain base64."""
    cursor = Cursor(time, rank, newer)
    text = cursor.encode()
    assert Cursor.decode(text) == cursor
    assert base64.b64decode(text).decode().startswith("p=")


@given(st.lists(st.integers(min_value=0, max_value=20), max_size=120))
def test_the_index_sorts_out_of_order_additions_keeping_ties_in_order(
    times: list[int],
) -> None:
    """Whatever the order of additions: by time, then by order of addition."""
    index = CreatedIndex()
    for i, created in enumerate(times):
        index.add(float(created), f"p{i}")
    sorted_times, ids = index.sorted()
    expected = sorted(range(len(times)), key=lambda i: times[i])
    assert ids == [f"p{i}" for i in expected]
    assert sorted_times == sorted(float(t) for t in times)
    assert len(index) == len(times)


def test_select_walks_a_big_random_index_both_ways() -> None:
    """Pages of a shuffled 5,000: every id once going down, and again going up."""
    rng = random.Random(3)
    index = CreatedIndex()
    for i in range(5000):
        index.add(float(rng.randrange(1000)), f"p{i}")
    times, ids = index.sorted()

    down: list[str] = []
    result = select(times, ids, now=math.inf)
    down.extend(result.ids)
    while result.next is not None:
        result = select(times, ids, now=math.inf, cursor=result.next)
        down.extend(result.ids)
    up = result.ids  # the oldest page; now back to the newest
    while result.previous is not None:
        result = select(times, ids, now=math.inf, cursor=result.previous)
        up = result.ids + up

    assert down == ids[::-1]
    assert up == ids[::-1]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1970-01-01T00:00:00Z", 0.0),
        ("1970-01-01T00:00:01.25+00:00", 1.25),
        ("1970-01-01T01:00:00+01:00", 0.0),
        ("1970-01-01T00:00:00-0130", 5400.0),
        ("1970-01-01 00:00:10 00:00", 10.0),
        ("1970-01-01T00:00:00.000000001z", 1e-9),
        ("1970-01-02", 86400.0),
        ("1970-01-01T00:01", 60.0),
    ],
)
def test_date_times_in_the_forms_clients_send(text: str, seconds: float) -> None:
    """RFC 3339 and the ISO 8601 forms near it; no offset means UTC."""
    assert parse_date_time(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["", "2027", "2027-01-15T08", "2027-01-15T08:00:00+24:00", "2027-01-15Tnoon"],
)
def test_date_times_that_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO 8601|offset|range|day"):
        parse_date_time(text)
