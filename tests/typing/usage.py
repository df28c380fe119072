"""Code written the way a user writes it, checked with ``mypy --strict``.

It is never run: ``nox -s mypy`` type-checks it, so that a change to the
public API that breaks users' type checking (a lost annotation, a widened
return type, a removed re-export) fails here first. ``assert_type`` pins the
types users rely on.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, assert_type

import aiohttp
import replipoll
from replipoll import (
    PROVIDERS,
    TERMINAL_STATUSES,
    Budget,
    Client,
    PollManager,
    PollPolicy,
    PollResult,
    PollStats,
    Prediction,
    Provider,
    RateBudget,
    RetryPolicy,
    Status,
    Timeouts,
)
from replipoll.testing import FakeClock, FakeReplicate, Fault, ServerStats
from replipoll.testing.chaos import ChaosBatch

log = logging.getLogger(__name__)


def configure() -> list[Client]:
    """Every way of building a client."""
    assert_type(PROVIDERS, dict[str, Provider])
    uniapi = Provider(
        name="uniapi",
        base_url="https://api.uniapi.io/replicate/v1",
        env_var="UNIAPI_KEY",
        timeouts=Timeouts(total=90.0, connect=10.0),
    )
    clients = [
        Client(),
        Client("deerapi", api_key="k"),
        Client(PROVIDERS["cometapi"], timeouts=Timeouts(total=180.0)),
        Client(uniapi, api_key="k", rate_limit=40.0, burst=5, max_connections=20),
        Client(
            base_url="https://gateway.example/replicate/v1",
            api_key="k",
            retry=RetryPolicy(max_attempts=3, base_delay=0.1),
        ),
        Client(
            api_key="k",
            # Any iterable of statuses is accepted and stored as a frozenset.
            retry=RetryPolicy(retry_statuses={429, 503}),
        ),
    ]
    assert_type(clients[0].base_url, str)
    assert_type(clients[0].provider, str)
    assert_type(clients[0].timeouts, Timeouts)
    assert_type(clients[0].retry, RetryPolicy)
    assert_type(clients[0].budget, Budget)
    return clients


def describe(prediction: Prediction) -> str:
    """Reading a record."""
    assert_type(prediction.id, str)
    assert_type(prediction.status, Status | str)
    assert_type(prediction.is_terminal, bool)
    assert_type(prediction.output, Any)
    assert_type(prediction.error, str | Mapping[str, Any] | None)
    assert_type(prediction.error_message, str | None)
    assert_type(prediction.invalid, Mapping[str, Any])
    assert_type(prediction.raw, Mapping[str, Any])
    assert_type(prediction.created_at, datetime | None)
    assert_type(prediction.data_removed, bool | None)
    urls: list[str] = list(prediction.output_urls())
    if prediction.metrics is not None:
        assert_type(prediction.metrics.predict_time, float | None)
    if prediction.urls is not None:
        assert_type(prediction.urls.get, str | None)
    if prediction.status == Status.SUCCEEDED or prediction.status in TERMINAL_STATUSES:
        return f"{prediction.id}: {len(urls)} files"
    payload: dict[str, Any] = prediction.to_json()
    return str(Prediction.from_json(payload).status)


async def one(client: Client, prediction_id: str) -> Prediction | None:
    """One prediction: get, wait, cancel, and the errors worth catching."""
    assert_type(await client.get(prediction_id), Prediction)
    try:
        prediction = await client.wait(prediction_id, timeout=60.0)
    except replipoll.PollTimeout as error:
        assert_type(error.last, Prediction | None)
        assert_type(error.timeout, float)
        await client.cancel(error.prediction_id)
        return error.last
    except replipoll.RateLimitedError as error:
        assert_type(error.retry_after, float | None)
        raise
    except replipoll.RequestError as error:
        assert_type(error.status, int | None)
        assert_type(error.request_id, str | None)
        assert_type(error.attempts, int)
        log.warning("%s failed: %s", prediction_id, error.message)
        return None
    except replipoll.ReplipollError:
        raise
    assert_type(prediction, Prediction)
    return prediction


async def on_update(prediction: Prediction) -> None:
    """An async callback for status changes."""
    log.info("%s is %s", prediction.id, prediction.status)


async def batch(client: Client, ids: Iterable[str]) -> Counter[str]:
    """Many predictions with a manager."""
    statuses: Counter[str] = Counter()
    async with PollManager(
        client,
        max_concurrency=16,
        rate_limit=40.0,
        burst=10,
        timeout=None,
        policy=PollPolicy(min_interval=1.0, max_interval=10.0),
        on_update=on_update,
        cancel_on_timeout=True,
    ) as manager:
        results = await manager.poll_many(ids)
        assert_type(results, list[PollResult])
        for result in results:
            assert_type(result.is_terminal, bool)
            assert_type(result.error, BaseException | None)
            if result.succeeded and result.prediction is not None:
                statuses[str(result.prediction.status)] += 1

        async for result in manager.as_completed(["a", "b"]):
            assert_type(result, PollResult)

        future = manager.submit("c")
        assert_type(future, asyncio.Future[Prediction])
        prediction = await asyncio.shield(future)
        assert_type(prediction, Prediction)
        assert_type(await manager.cancel("c", remote=True), Prediction | None)

        stats = manager.stats
        assert_type(stats, PollStats)
        assert_type(stats.by_status, dict[str, int])
        assert_type(stats.budget_wait, float)
    return statuses


async def save(prediction: Prediction, session: aiohttp.ClientSession) -> list[Path]:
    """Copy outputs to disk."""
    report = await replipoll.save_outputs(
        prediction, Path("outputs"), session=session, concurrency=2
    )
    assert_type(report, replipoll.DownloadReport)
    for error in report.errors:
        assert_type(error, replipoll.DownloadError)
    report.raise_for_errors()
    return [saved.path for saved in report.files]


def policies() -> float:
    """The pure policy objects."""
    policy = PollPolicy.fixed(0.5)
    budget = RateBudget(rate=10.0, burst=2)
    budget.pause_until(5.0)
    retry = RetryPolicy(timeout=30.0, on_retry=lambda n, error, wait: None)
    retrying: replipoll.Retrying = retry.start(now=0.0)
    wait = retrying.next_wait(replipoll.ServerError("boom", status=503), now=0.0)
    return (
        policy.next_delay(3.0)
        + budget.next_free(now=1.0)
        + float(budget.try_acquire(now=9.0))
        + (wait if wait is not None else 0.0)
    )


async def a_test() -> None:
    """How a user's test drives the fake server."""
    clock = FakeClock()
    async with FakeReplicate(api_key="k", clock=clock, seed=1) as server:
        pid = server.add_prediction(queue=1.0, duration=5.0, output=["x"])
        ids = server.add_predictions(3, lambda i: {"duration": i * 0.1})
        server.add_fault(Fault.rate_limited(0.2), prediction_id=pid, times=1)
        server.add_fault(Fault.server_error(), times=None)
        server.clear_faults()
        server.set_chaos(0.1, seed=3)
        clock.advance(10.0)
        async with Client(base_url=server.base_url(), api_key=server.api_key) as c:
            await batch(c, [pid, *ids])
        stats = server.stats
        assert_type(stats, ServerStats)
        assert stats.early_requests == 0
        assert stats.requests_per_id[pid] >= 1
        chaos = ChaosBatch.script(
            server, 50, seed=2, slow_beyond=1.0, faults=[Fault.reset()], duplicates=0
        )
        assert_type(chaos.batch, tuple[str, ...])
        assert_type(chaos.permanent, frozenset[str])
        outcome: str = chaos.expected[chaos.batch[0]]
        assert outcome in ChaosBatch.OUTCOMES


async def across_processes(client: Client, ids: list[str]) -> int:
    """The redis extra: a shared budget, a share, a batch."""
    from replipoll import Share
    from replipoll.redis import (
        BatchResult,
        BatchStatus,
        RedisBatch,
        RedisBudget,
        RedisShare,
        RedisStoreError,
        RedisUnavailableError,
        WorkerReport,
    )

    url = "redis://127.0.0.1:6379/0"
    async with (
        RedisBudget.from_url(url, "replipoll:budget", rate=10.0, burst=2) as budget,
        RedisShare.from_url(url, prefix="app:", lease_ttl=5.0) as share,
        RedisBatch.from_url(url, "nightly", reclaim_after=10.0) as work,
    ):
        shared: Budget = budget
        peers: Share = share
        manager = PollManager(client, budget=shared, share=peers)
        try:
            assert_type(await budget.acquire(), float)
            assert_type(await work.load(ids), int)
            assert_type(await work.status(), BatchStatus)
            async with manager:
                assert_type(await work.work(manager), WorkerReport)
            async for result in work.results():
                assert_type(result, BatchResult)
        except RedisUnavailableError as exc:
            assert_type(exc.key, str)
            return 1
        except RedisStoreError as exc:
            assert_type(exc.url, str)
            return 2
    return 0
