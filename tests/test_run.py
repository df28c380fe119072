"""PollManager.run / run_many / push: create and wait, resolved by whoever is first.

The create's answer serves as the first poll; a pushed record (a webhook)
resolves the waiting future at once; an id whose webhook is expected is
polled only as a safety net, so a lost webhook costs delay, never the result.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from replipoll import (
    BadRequestError,
    Client,
    LearnedPolicy,
    PollManager,
    PollPolicy,
    Prediction,
    RunResult,
    Status,
)
from replipoll.testing import FakeReplicate

QUICK = PollPolicy(min_interval=0.05, age_factor=0.0, max_interval=0.05, jitter=0)


def _client(server: FakeReplicate) -> Client:
    return Client(base_url=server.base_url(), api_key=server.api_key)


def _gets(server: FakeReplicate, pid: str) -> int:
    return server.stats.requests_per_id[pid]


async def test_run_creates_and_waits_and_its_answer_is_the_first_poll(
    fake_replicate: FakeReplicate,
) -> None:
    async with (
        _client(fake_replicate) as client,
        PollManager(client, policy=QUICK, sweep=False) as manager,
    ):
        done = await manager.run("acme/echo", input={"replipoll_duration": 0.3})
        stats = manager.stats
    assert done.status == "succeeded"
    assert stats.created == 1
    assert fake_replicate.stats.creations == 1
    # Polled every 0.05 s for 0.3 s: a handful of GETs, none at once.
    assert 1 <= _gets(fake_replicate, done.id) <= 10


async def test_run_in_sync_mode_needs_no_poll(fake_replicate: FakeReplicate) -> None:
    async with _client(fake_replicate) as client, PollManager(client) as manager:
        done = await manager.run("acme/echo", input={"replipoll_duration": 0.2}, wait=5)
    assert done.status == "succeeded"
    assert _gets(fake_replicate, done.id) == 0


async def test_a_pushed_record_resolves_the_waiting_future_at_once(
    fake_replicate: FakeReplicate,
) -> None:
    seen: list[str] = []
    pid = fake_replicate.add_prediction(duration=60)
    async with (
        _client(fake_replicate) as client,
        PollManager(
            client, on_update=lambda p: seen.append(str(p.status)), sweep=False
        ) as manager,
    ):
        future = manager.submit(pid, webhook=True)
        await asyncio.sleep(0.2)  # its first GET: processing
        pushed = Prediction(id=pid, status=Status.SUCCEEDED, output="pushed")
        assert manager.push(pushed) is True
        record = await asyncio.wait_for(future, 1)
        stats = manager.stats
    assert record.output == "pushed"
    assert stats.pushed == 1
    assert seen[-1] == "succeeded"
    assert _gets(fake_replicate, pid) == 1  # the first GET only


async def test_a_push_that_beats_the_submit_is_kept_for_it(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction(duration=60)
    async with _client(fake_replicate) as client, PollManager(client) as manager:
        early = Prediction(id=pid, status=Status.FAILED, error="boom")
        assert manager.push(early) is False
        running = Prediction(id="other", status=Status.PROCESSING)
        assert manager.push(running) is False  # not terminal: not kept
        record = await asyncio.wait_for(manager.wait(pid), 1)
    assert record.error == "boom"
    assert _gets(fake_replicate, pid) == 0


async def test_push_refuses_what_is_not_a_record(fake_replicate: FakeReplicate) -> None:
    async with _client(fake_replicate) as client, PollManager(client) as manager:
        with pytest.raises(TypeError, match="Prediction"):
            manager.push({"id": "x", "status": "succeeded"})  # type: ignore[arg-type]


async def test_a_lost_webhook_costs_delay_never_the_result(
    fake_replicate: FakeReplicate,
) -> None:
    """No push ever comes: the safety polls find the result, and only they."""
    async with (
        _client(fake_replicate) as client,
        PollManager(
            client, policy=QUICK, sweep=False, safety_interval=0.5, webhook_grace=0.1
        ) as manager,
    ):
        done = await asyncio.wait_for(
            manager.run(
                "acme/echo",
                input={"replipoll_duration": 0.6},
                webhook="http://127.0.0.1:9/never",
            ),
            5,
        )
    assert done.status == "succeeded"
    # Safety polls every 0.5 s, not the policy's every 0.05 s.
    assert 1 <= _gets(fake_replicate, done.id) <= 3


async def test_run_many_yields_as_each_ends_and_one_failure_stays_its_own(
    fake_replicate: FakeReplicate,
) -> None:
    inputs = [
        {"n": 0, "replipoll_duration": 0.6},
        {"n": 1, "replipoll_duration": "bad"},  # refused: 422
        {"n": 2, "replipoll_duration": 0.1},
    ]
    async with (
        _client(fake_replicate) as client,
        PollManager(client, policy=QUICK, sweep=False) as manager,
    ):
        results = [r async for r in manager.run_many(inputs, "acme/echo")]
        stats = manager.stats
    assert all(isinstance(r, RunResult) for r in results)
    assert [r.index for r in results][-1] == 0  # the slowest ends last
    by_index = {r.index: r for r in results}
    assert by_index[0].succeeded
    assert by_index[2].succeeded
    assert by_index[2].input == inputs[2]
    assert isinstance(by_index[1].error, BadRequestError)
    assert by_index[1].prediction is None
    assert by_index[1].id is None
    assert stats.created == 2
    assert fake_replicate.stats.creations == 2


async def test_leaving_run_many_early_leaks_no_task(
    fake_replicate: FakeReplicate,
) -> None:
    inputs = [{"n": n, "replipoll_duration": 0.05 if n == 0 else 30} for n in range(5)]
    async with _client(fake_replicate) as client, PollManager(client) as manager:
        async with contextlib.aclosing(manager.run_many(inputs, "acme/echo")) as it:
            async for result in it:
                assert result.index == 0
                break
        left = [
            t
            for t in asyncio.all_tasks()
            if not t.done() and "run_many.<locals>" in repr(t.get_coro())
        ]
    assert left == []


async def test_latest_is_the_record_as_last_seen_logs_and_all(
    fake_replicate: FakeReplicate,
) -> None:
    """Between status changes the record moves on (its logs); latest() has it."""
    pid = fake_replicate.add_prediction(duration=60)
    async with (
        _client(fake_replicate) as client,
        PollManager(client, sweep=False) as manager,
    ):
        assert manager.latest(pid) is None  # not tracked
        manager.submit(pid, webhook=True)
        running = Prediction(id=pid, status=Status.PROCESSING, logs="step 3/10")
        manager.push(running)
        latest = manager.latest(pid)
    assert latest is not None
    assert latest.logs == "step 3/10"


async def test_safety_polls_set_before_the_model_was_known_move_once_it_is(
    fake_replicate: FakeReplicate,
) -> None:
    """Three ids of a new model expect webhooks: their safety polls are set
    30 s out. Two webhooks arrive and teach the model; the third id, whose
    webhook is lost, is polled at once (past its expected finish plus the
    grace), not 30 s later."""
    ids = [
        fake_replicate.add_prediction(duration=0.2, model="acme/m") for _ in range(3)
    ]
    async with (
        _client(fake_replicate) as client,
        PollManager(
            client,
            policy=LearnedPolicy(min_samples=2),
            sweep=False,
            safety_interval=30,
            webhook_grace=0.1,
        ) as manager,
    ):
        futures = [manager.submit(pid, webhook=True) for pid in ids]
        await asyncio.sleep(0.5)  # first GETs (running); then all end
        assert [_gets(fake_replicate, pid) for pid in ids] == [1, 1, 1]
        for pid in ids[:2]:  # their webhooks
            record = Prediction.from_json(fake_replicate.prediction_state(pid))
            assert manager.push(record)
        lost = await asyncio.wait_for(futures[2], 2)
    assert lost.status == "succeeded"
    assert _gets(fake_replicate, ids[2]) == 2


async def test_run_many_reads_inputs_as_it_goes_and_holds_no_task_per_prediction(
    fake_replicate: FakeReplicate,
) -> None:
    """A generator of 40 inputs is read as creates go out, not all at once;
    waiting on 40 predictions takes the manager's futures, not 40 tasks."""
    read: list[int] = []

    def inputs() -> Iterator[dict[str, object]]:
        for n in range(40):
            read.append(n)
            yield {"n": n, "replipoll_duration": 0.5}

    async with (
        _client(fake_replicate) as client,
        PollManager(client, max_concurrency=4, policy=QUICK, sweep=False) as manager,
    ):
        results = manager.run_many(inputs(), "acme/echo")
        first = await anext(results)
        creating = [
            t
            for t in asyncio.all_tasks()
            if not t.done() and "run_many.<locals>" in repr(t.get_coro())
        ]
        assert len(creating) <= 4
        rest = [r async for r in results]
    assert first.succeeded
    assert len(rest) == 39
    assert all(r.succeeded for r in rest)
    assert read == list(range(40))


async def test_an_inputs_iterator_that_fails_ends_run_many_with_its_error(
    fake_replicate: FakeReplicate,
) -> None:
    def inputs() -> Iterator[dict[str, object]]:
        yield {"replipoll_duration": 0.1}
        yield {"replipoll_duration": 0.1}
        raise OSError("the inputs file went away")

    got: list[RunResult] = []

    async def drain(manager: PollManager) -> None:
        async for result in manager.run_many(inputs(), "acme/echo"):
            got.append(result)

    async with _client(fake_replicate) as client, PollManager(client) as manager:
        with pytest.raises(OSError, match="went away"):
            await drain(manager)
    assert sorted(r.index for r in got) == [0, 1]  # what was taken, delivered
