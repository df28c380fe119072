"""A PollManager's default schedule learns each model as its predictions finish."""

from __future__ import annotations

import asyncio
import statistics

from replipoll import Client, LearnedPolicy, PollManager, PollPolicy
from replipoll.testing import FakeReplicate

QUICK = PollPolicy(min_interval=0.1, age_factor=0.0, max_interval=0.1, jitter=0.1)


async def test_the_default_schedule_is_a_learned_one() -> None:
    async with Client(base_url="http://127.0.0.1:9/v1", api_key="k") as client:
        assert isinstance(PollManager(client).policy, LearnedPolicy)


async def test_a_known_model_is_polled_near_its_finish_not_on_the_clock(
    fake_replicate: FakeReplicate,
) -> None:
    """After a model's first runs, its next predictions cost a few polls each.

    The first batch is polled on the clock (every 0.1 s for 1.5 s runs); the
    second, after learning, near 1.5 s: far fewer requests for the same runs.
    """
    policy = LearnedPolicy(base=QUICK)
    async with (
        Client(base_url=fake_replicate.base_url(), api_key="test-key") as client,
        PollManager(client, policy=policy, sweep=False, coalesce=0) as manager,
    ):
        first = fake_replicate.add_predictions(8, duration=1.5, model="acme/image")
        assert all(r.error is None for r in await manager.poll_many(first))
        assert policy.samples("acme/image") == 8
        second = fake_replicate.add_predictions(8, duration=1.5, model="acme/image")
        results = await manager.poll_many(second)
    assert all(r.prediction and r.prediction.status == "succeeded" for r in results)
    per_id = fake_replicate.stats.requests_per_id
    before = statistics.mean(per_id[pid] for pid in first)
    after = statistics.mean(per_id[pid] for pid in second)
    assert before >= 10
    assert after <= before / 2


async def test_another_model_keeps_the_clock_until_it_is_learnt(
    fake_replicate: FakeReplicate,
) -> None:
    """Learning one model says nothing about another: it is polled on the clock."""
    policy = LearnedPolicy(base=QUICK)
    async with (
        Client(base_url=fake_replicate.base_url(), api_key="test-key") as client,
        PollManager(client, policy=policy, sweep=False, coalesce=0) as manager,
    ):
        known = fake_replicate.add_predictions(6, duration=1.0, model="acme/a")
        await manager.poll_many(known)
        other = fake_replicate.add_prediction(duration=1.0, model="acme/b")
        await asyncio.wait_for(manager.wait(other), 10)
    assert policy.samples("acme/b") == 1
    assert fake_replicate.stats.requests_per_id[other] >= 8


async def test_a_short_budget_serves_the_oldest_predictions_first(
    fake_replicate: FakeReplicate,
) -> None:
    """Polls wanting 4x the budget: the oldest predictions are polled at pace.

    Ten running predictions created a minute apart, submitted newest first;
    each wants a poll every 0.5 s, the budget gives 5 a second. After the
    first GETs (two seconds), the oldest (nearest to losing their outputs,
    had they ended) get the polls, not the first submitted.
    """
    now = fake_replicate.now()
    ids = [
        fake_replicate.add_prediction(duration=600, created=now - 60 * age)
        for age in range(10)
    ]  # ids[0] is the newest
    async with (
        Client(base_url=fake_replicate.base_url(), api_key="test-key") as client,
        PollManager(
            client,
            policy=PollPolicy.fixed(0.5),
            rate_limit=5,
            burst=1,
            max_concurrency=1,
            sweep=False,
            coalesce=0,
        ) as manager,
    ):
        for pid in ids:
            manager.submit(pid)
        await asyncio.sleep(4.0)
    per_id = fake_replicate.stats.requests_per_id
    oldest = [per_id[pid] for pid in ids[5:]]
    newest = [per_id[pid] for pid in ids[:5]]
    assert min(oldest[2:]) >= 3  # the three oldest: polled at the budget's pace
    assert max(newest) <= 2  # their first GET, hardly more
