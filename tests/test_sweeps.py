"""List sweeps: a PollManager following its ids through pages of GET predictions.

Against FakeReplicate's faithful list endpoint on loopback, and against small
real aiohttp servers that serve the list badly (not at all, failing, missing
ids), built from a FakeReplicate's scripted predictions.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from replipoll import Client, PollManager, PollPolicy, PollTimeout, RetryPolicy
from replipoll.testing import FakeReplicate

from .test_manager import QUICK, other_tasks, until

FAST_RETRY = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)

ListHandler = Callable[[web.Request, FakeReplicate], Awaitable[web.StreamResponse]]


def interleaved(
    server: FakeReplicate, tracked: int, untracked: int, **kwargs: float
) -> list[str]:
    """Script ``tracked`` ids among ``untracked`` others, evenly mixed."""
    ids: list[str] = []
    every = max(1, (tracked + untracked) // max(tracked, 1))
    for n in range(tracked + untracked):
        pid = server.add_prediction(logs="step 1\nstep 2\n", **kwargs)  # type: ignore[arg-type]
        if n % every == 0 and len(ids) < tracked:
            ids.append(pid)
    return ids


@asynccontextmanager
async def manager_for(
    base_url: str, api_key: str = "test-key", **options: object
) -> AsyncIterator[PollManager]:
    async with Client(base_url=base_url, api_key=api_key, retry=FAST_RETRY) as client:
        options.setdefault("policy", QUICK)
        options.setdefault("sweep_interval", 0.1)
        async with PollManager(client, **options) as manager:  # type: ignore[arg-type]
            yield manager


@asynccontextmanager
async def odd_list_server(
    scripted: FakeReplicate, list_handler: ListHandler
) -> AsyncIterator[tuple[str, Counter[str]]]:
    """A real server: single GETs from ``scripted``, the list from ``list_handler``.

    Yields its base URL and a count of requests by kind (``get``, ``list``).
    """
    counts: Counter[str] = Counter()

    async def get(request: web.Request) -> web.StreamResponse:
        counts["get"] += 1
        pid = request.match_info["id"]
        try:
            return web.json_response(scripted.prediction_state(pid))
        except KeyError:
            return web.json_response({"detail": "Not found."}, status=404)

    async def listing(request: web.Request) -> web.StreamResponse:
        counts["list"] += 1
        return await list_handler(request, scripted)

    app = web.Application()
    app.router.add_get("/v1/predictions", listing)
    app.router.add_get("/v1/predictions/{id}", get)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}/v1", counts
    finally:
        await runner.cleanup()


async def test_sweeps_resolve_every_id_with_its_whole_record_for_fewer_requests(
    fake_replicate: FakeReplicate,
) -> None:
    """Sweeps report 300 ids in a few pages; each ends with its full record."""
    ids = interleaved(fake_replicate, 300, 300, duration=1.0)
    async with manager_for(fake_replicate.base_url(), sweep=True) as manager:
        results = await manager.poll_many(ids)
        stats = manager.stats
    assert [r.id for r in results] == ids
    assert all(r.error is None for r in results)
    # The list's items lack logs: each finished id was fetched once more.
    assert all(r.prediction and r.prediction.logs for r in results)
    assert stats.sweeps > 0
    assert stats.sweep_pages == fake_replicate.stats.list_requests
    per_id = fake_replicate.stats.requests_per_id
    # A first GET and a last one; the polls in between were pages.
    assert max(per_id[pid] for pid in ids) <= 3
    assert stats.requests < 4 * len(ids)
    assert not other_tasks()


async def test_per_id_polling_spends_more_on_the_same_batch(
    fake_replicate: FakeReplicate,
) -> None:
    """The comparison the sweeps are for: per-id polling of the same batch."""
    ids = interleaved(fake_replicate, 300, 300, duration=1.0)
    async with manager_for(fake_replicate.base_url(), sweep=False) as manager:
        results = await manager.poll_many(ids)
        stats = manager.stats
    assert all(r.error is None for r in results)
    assert stats.sweeps == 0
    assert fake_replicate.stats.list_requests == 0
    assert stats.requests > 4 * len(ids)  # QUICK polls every 0.05-0.2 s


async def test_list_items_resolve_ids_without_a_get_when_full_records_is_off(
    fake_replicate: FakeReplicate,
) -> None:
    """full_records=False: a finished id ends with its list item, logs absent."""
    ids = interleaved(fake_replicate, 200, 100, duration=2.0)
    async with manager_for(
        fake_replicate.base_url(), sweep=True, full_records=False
    ) as manager:
        results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)
    assert all(r.prediction and r.prediction.status == "succeeded" for r in results)
    swept = [r for r in results if r.prediction and r.prediction.logs is None]
    assert swept, "no id was resolved from a list item"
    per_id = fake_replicate.stats.requests_per_id
    assert all(per_id[r.id] <= 1 for r in swept)  # at most the first GET


async def test_new_ids_join_running_sweeps_without_a_first_get(
    fake_replicate: FakeReplicate,
) -> None:
    """Once sweeps pay, an id submitted later is found in the list, no GET."""
    first = interleaved(fake_replicate, 40, 0, duration=3.0)
    async with manager_for(
        fake_replicate.base_url(), sweep=True, full_records=False
    ) as manager:
        futures = [manager.submit(pid) for pid in first]
        await asyncio.sleep(0.5)
        assert manager.stats.mode == "sweep"
        late = fake_replicate.add_prediction(duration=0.3)
        assert (await manager.submit(late)).status == "succeeded"
        await asyncio.gather(*futures)
    assert fake_replicate.stats.requests_per_id[late] == 0


async def test_auto_mode_polls_each_id_when_the_account_dwarfs_the_batch(
    fake_replicate: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    """sweep=None measures: 30 ids among 6,000 others are cheaper one by one."""
    ids = interleaved(fake_replicate, 30, 6000, duration=1.5)
    caplog.set_level(logging.INFO, logger="replipoll")
    async with manager_for(fake_replicate.base_url()) as manager:
        results = await manager.poll_many(ids)
        stats = manager.stats
    assert all(r.error is None for r in results)
    assert stats.mode == "per-id"
    said = [r.getMessage() for r in caplog.records if "pages for" in r.getMessage()]
    assert said
    assert "polling each id" in said[-1]


async def test_auto_mode_leaves_a_small_batch_to_per_id_polling(
    fake_replicate: FakeReplicate,
) -> None:
    """Under 20 ids, sweep=None never sweeps: per-id polling costs little."""
    ids = fake_replicate.add_predictions(5, duration=0.3)
    async with manager_for(fake_replicate.base_url()) as manager:
        await manager.poll_many(ids)
    assert fake_replicate.stats.list_requests == 0


async def test_a_server_without_the_list_gets_per_id_polling_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 404 on the first page: per-id polling for good, one warning."""
    scripted = FakeReplicate()
    ids = scripted.add_predictions(40, duration=2.0)

    async def not_served(request: web.Request, _: FakeReplicate) -> web.Response:
        return web.json_response({"detail": "Not found."}, status=404)

    async with (
        odd_list_server(scripted, not_served) as (base_url, counts),
        manager_for(base_url, sweep=True) as manager,
    ):
        results = await manager.poll_many(ids)
        stats = manager.stats
    assert all(r.error is None for r in results)
    assert counts["list"] == 1
    assert stats.mode == "per-id"
    warned = [r for r in caplog.records if "does not serve the list" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            lambda: web.Response(text="<html>hi</html>", content_type="text/html"),
            id="html",
        ),
        pytest.param(lambda: web.json_response({"data": []}), id="not-a-page"),
        pytest.param(lambda: web.Response(status=405), id="405"),
    ],
)
async def test_anything_but_a_page_means_the_list_is_not_served(
    answer: Callable[[], web.Response],
) -> None:
    """An HTML page, another JSON shape, a 405: per-id polling, nothing lost."""
    scripted = FakeReplicate()
    ids = scripted.add_predictions(30, duration=2.0)

    async def odd(request: web.Request, _: FakeReplicate) -> web.Response:
        return answer()

    async with (
        odd_list_server(scripted, odd) as (base_url, counts),
        manager_for(base_url, sweep=True) as manager,
    ):
        results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)
    assert counts["list"] == 1


async def test_a_failing_list_is_retried_then_left_for_per_id_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """500s on every page: retried, then per-id polling; no id lost."""
    scripted = FakeReplicate()
    ids = scripted.add_predictions(30, duration=2.0)

    async def broken(request: web.Request, _: FakeReplicate) -> web.Response:
        return web.json_response({"detail": "boom"}, status=500)

    caplog.set_level(logging.INFO, logger="replipoll")
    async with (
        odd_list_server(scripted, broken) as (base_url, counts),
        manager_for(base_url, sweep=True) as manager,
    ):
        results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)
    assert counts["list"] == FAST_RETRY.max_attempts  # one sweep, then per-id
    assert any("a sweep failed" in r.getMessage() for r in caplog.records)


async def test_ids_the_list_leaves_out_are_polled_on_their_own() -> None:
    """A list that never shows some tracked ids: they end all the same."""
    scripted = FakeReplicate()
    ids = scripted.add_predictions(40, duration=1.0)
    hidden = set(ids[::4])

    async def partial(request: web.Request, server: FakeReplicate) -> web.Response:
        items = [
            server.prediction_state(pid) for pid in reversed(ids) if pid not in hidden
        ]
        for item in items:
            item.pop("logs")
        return web.json_response({"next": None, "previous": None, "results": items})

    async with (
        odd_list_server(scripted, partial) as (base_url, counts),
        manager_for(base_url, sweep=True) as manager,
    ):
        results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)
    assert all(r.prediction and r.prediction.status == "succeeded" for r in results)
    assert counts["list"] > 0


async def test_items_that_are_not_predictions_are_skipped() -> None:
    """Garbage items in a page cost nothing but themselves."""
    scripted = FakeReplicate()
    ids = scripted.add_predictions(25, duration=0.4)

    async def noisy(request: web.Request, server: FakeReplicate) -> web.Response:
        items: list[object] = [server.prediction_state(pid) for pid in ids]
        items[1:1] = [None, 7, {"id": 3}, {"status": "succeeded"}, "x"]
        return web.json_response({"next": None, "results": items})

    async with (
        odd_list_server(scripted, noisy) as (base_url, _),
        manager_for(base_url, sweep=True) as manager,
    ):
        results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)


async def test_a_lagging_list_delays_but_loses_nothing() -> None:
    """Items that show the past (list_lag) still end every id."""
    async with FakeReplicate(list_lag=0.5) as server:
        ids = interleaved(server, 60, 60, duration=0.5)
        async with manager_for(server.base_url(), sweep=True) as manager:
            results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)


async def test_a_swept_id_still_ends_at_its_deadline(
    fake_replicate: FakeReplicate,
) -> None:
    """The deadline holds for swept ids: PollTimeout, with the last status."""
    ids = interleaved(fake_replicate, 30, 0, duration=60)
    async with manager_for(fake_replicate.base_url(), sweep=True, timeout=1.0) as m:
        results = await m.poll_many(ids)
        assert m.stats.sweeps > 0
    assert all(isinstance(r.error, PollTimeout) for r in results)
    assert all(r.error.status == "processing" for r in results)  # type: ignore[union-attr]


async def test_closing_mid_sweep_ends_every_id_and_leaks_no_task(
    fake_replicate: FakeReplicate,
) -> None:
    """close() while pages are being fetched: every id ends, no task is left."""
    ids = interleaved(fake_replicate, 50, 5000, duration=60)
    async with manager_for(fake_replicate.base_url(), sweep=True) as manager:
        batch = asyncio.create_task(manager.poll_many(ids))
        await until(lambda: fake_replicate.stats.list_requests > 0)
    results = await asyncio.wait_for(batch, 10)
    assert len(results) == 50
    assert all(r.error is not None for r in results)
    assert not other_tasks()


async def test_pages_count_against_max_concurrency(
    fake_replicate: FakeReplicate,
) -> None:
    """Pages are fetched by the workers: never more requests open than allowed."""
    ids = interleaved(fake_replicate, 100, 100, duration=0.5)
    async with manager_for(
        fake_replicate.base_url(), sweep=True, max_concurrency=2
    ) as manager:
        await manager.poll_many(ids)
        assert manager.stats.peak_in_flight <= 2


async def test_sweep_option_is_checked() -> None:
    """sweep takes None, True or False; anything else is a ConfigurationError."""
    from replipoll import ConfigurationError

    async with Client(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        with pytest.raises(ConfigurationError) as caught:
            PollManager(client, sweep="yes")  # type: ignore[arg-type]
        assert caught.value.option == "sweep"
        with pytest.raises(ConfigurationError):
            PollManager(client, sweep_interval=0)


async def test_client_lists_the_account_newest_first_within_the_filters(
    client: Client, fake_replicate: FakeReplicate
) -> None:
    """Client.list_predictions follows every page, in order, within the window."""
    ids = fake_replicate.add_predictions(250, duration=0.1)
    listed = [p.id async for p in client.list_predictions()]
    assert listed == ids[::-1]
    middle = fake_replicate.prediction_state(ids[100])["created_at"]
    from replipoll._decode import parse_timestamp

    after = parse_timestamp(middle)
    newer = [p.id async for p in client.list_predictions(created_after=after)]
    assert set(newer) <= set(ids[100:])
    assert ids[-1] in newer


async def test_per_id_policy_is_kept_for_ids_the_sweeps_hand_back() -> None:
    """An id handed back to per-id polling is polled on the manager's policy."""
    scripted = FakeReplicate()
    ids = scripted.add_predictions(25, duration=0.8)

    async def empty(request: web.Request, _: FakeReplicate) -> web.Response:
        return web.json_response({"next": None, "results": []})

    async with (
        odd_list_server(scripted, empty) as (base_url, counts),
        manager_for(base_url, sweep=True, policy=PollPolicy.fixed(0.1)) as manager,
    ):
        results = await manager.poll_many(ids)
    assert all(r.error is None for r in results)
    assert counts["get"] > 2 * len(ids)
