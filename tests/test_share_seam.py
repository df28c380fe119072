"""The seams for more than one process: a manager's Budget and its Share.

The share here is a plain in-memory one, shared by two managers in one
process (the Redis one has tests of its own): it holds "leases" in a dict
and hands records over at once, which shows exactly what the manager asks of
a share and when.
"""

from __future__ import annotations

import asyncio

import pytest
import replipoll
from replipoll import Prediction, ShareHooks
from replipoll.testing import FakeReplicate


class MemoryPeers:
    """The state peers share: who polls each id, who follows it."""

    def __init__(self) -> None:
        self.leases: dict[str, MemoryShare] = {}
        self.members: list[MemoryShare] = []


class MemoryShare:
    """A Share over :class:`MemoryPeers`; records every call it gets."""

    def __init__(self, peers: MemoryPeers, *, claim: bool = True) -> None:
        self.peers = peers
        self.claim = claim
        self.hooks: ShareHooks | None = None
        self.tracked: set[str] = set()
        self.published: list[Prediction] = []
        self.untracked: list[str] = []
        self.asked: list[str] = []
        self.detached = False
        peers.members.append(self)

    def attach(self, hooks: ShareHooks) -> None:
        assert self.hooks is None
        self.hooks = hooks

    def detach(self, hooks: ShareHooks) -> None:
        assert hooks is self.hooks
        self.detached = True

    def track(self, prediction_id: str) -> None:
        self.tracked.add(prediction_id)
        if self.claim:  # answered a moment later, as over a network
            asyncio.get_running_loop().call_soon(self._claim, prediction_id)

    def _claim(self, prediction_id: str) -> None:
        if prediction_id not in self.tracked or prediction_id in self.peers.leases:
            return
        self.peers.leases[prediction_id] = self
        if self.hooks is not None:
            self.hooks.poll_now(prediction_id)

    def untrack(self, prediction_id: str) -> None:
        self.tracked.discard(prediction_id)
        self.untracked.append(prediction_id)
        if self.peers.leases.get(prediction_id) is self:
            del self.peers.leases[prediction_id]

    def may_poll(self, prediction_id: str) -> bool:
        self.asked.append(prediction_id)
        return self.peers.leases.get(prediction_id) is self

    def publish(self, prediction: Prediction) -> None:
        self.published.append(prediction)
        for peer in self.peers.members:
            if peer is not self and peer.hooks is not None:
                peer.hooks.deliver(prediction)

    def take_over(self, prediction_id: str) -> None:
        """The holder died: this one polls the id from now on."""
        self.peers.leases[prediction_id] = self
        assert self.hooks is not None
        self.hooks.poll_now(prediction_id)


def test_the_protocols_are_checkable() -> None:
    share = MemoryShare(MemoryPeers())
    assert isinstance(share, replipoll.Share)
    assert isinstance(replipoll.RateBudget(rate=1), replipoll.Budget)
    assert not isinstance(object(), replipoll.Budget)


async def test_two_managers_poll_each_id_once_and_both_resolve(
    fake_replicate: FakeReplicate,
) -> None:
    ids = fake_replicate.add_predictions(20, duration=0.3)
    peers = MemoryPeers()
    a, b = MemoryShare(peers), MemoryShare(peers)
    base, key = fake_replicate.base_url(), fake_replicate.api_key
    async with (
        replipoll.Client(base_url=base, api_key=key) as client_a,
        replipoll.Client(base_url=base, api_key=key) as client_b,
        # (Per-id polls only: a sweep lists the key's predictions, whoever polls.)
        replipoll.PollManager(client_a, share=a, sweep=False) as one,
        replipoll.PollManager(client_b, share=b, sweep=False) as two,
    ):
        both = await asyncio.gather(
            *(one.wait(pid) for pid in ids), *(two.wait(pid) for pid in ids)
        )
        # a tracked each id first, and polled it; b awaited a's records.
        assert two.stats.requests == 0
        assert one.stats.requests == sum(
            fake_replicate.stats.requests_per_id[pid] for pid in ids
        )
    assert [p.id for p in both] == ids + ids
    assert all(p.status == "succeeded" for p in both)
    assert {p.id for p in a.published} == set(ids)  # terminal records, polled
    assert not b.published
    assert a.detached
    assert b.detached
    assert not peers.leases  # every lease given back


async def test_a_share_delivers_records_to_the_awaiting_manager(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction(duration=30)
    peers = MemoryPeers()
    polling, elsewhere = MemoryShare(peers), MemoryShare(peers)
    base, key = fake_replicate.base_url(), fake_replicate.api_key
    updates: list[str] = []
    async with (
        replipoll.Client(base_url=base, api_key=key) as client,
        replipoll.PollManager(
            client, share=polling, on_update=lambda p: updates.append(str(p.status))
        ) as manager,
        replipoll.PollManager(client, share=elsewhere) as receiver,
    ):
        future = manager.submit(pid)
        await asyncio.sleep(0.2)
        record = await client.get(pid)
        running = Prediction.from_json({**record.to_json(), "status": "processing"})
        # A webhook for an id the receiving manager does not track reaches the
        # one that does: first a running record, then the terminal one.
        assert receiver.push(running) is False
        await asyncio.sleep(0.05)
        assert manager.latest(pid) == running
        done = Prediction.from_json(
            {**record.to_json(), "status": "succeeded", "output": "by webhook"}
        )
        receiver.push(done)
        result = await asyncio.wait_for(future, 2)
    assert result.output == "by webhook"
    assert elsewhere.published == [running, done]
    assert not polling.published  # learned from a peer: not published again
    assert "processing" in updates
    assert manager.stats.pushed == 0  # delivered by a peer, not pushed here


async def test_an_id_another_process_polls_costs_no_request_until_taken_over(
    fake_replicate: FakeReplicate,
) -> None:
    pid = fake_replicate.add_prediction(duration=0.2)
    peers = MemoryPeers()
    holder = MemoryShare(peers)  # never attached: a process that died
    holder.track(pid)
    share = MemoryShare(peers)
    async with (
        replipoll.Client(
            base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
        ) as client,
        replipoll.PollManager(client, share=share) as manager,
    ):
        future = manager.submit(pid)
        await asyncio.sleep(0.5)
        assert not future.done()
        assert fake_replicate.stats.requests_per_id.get(pid, 0) == 0
        assert pid in share.asked  # its first GET asked, and was dropped
        share.take_over(pid)
        result = await asyncio.wait_for(future, 3)
    assert result.status == "succeeded"
    assert share.published == [result]


@pytest.mark.parametrize("end", ["cancel", "timeout", "close"])
async def test_every_way_an_id_ends_untracks_it(
    fake_replicate: FakeReplicate, end: str
) -> None:
    pid = fake_replicate.add_prediction(duration=30)
    share = MemoryShare(MemoryPeers())
    async with replipoll.Client(
        base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
    ) as client:
        manager = replipoll.PollManager(
            client, share=share, timeout=0.3 if end == "timeout" else None
        )
        async with manager:
            future = manager.submit(pid)
            await asyncio.sleep(0.1)
            if end == "cancel":
                future.cancel()
            elif end == "timeout":
                with pytest.raises(replipoll.PollTimeout):
                    await future
        assert share.untracked == [pid]
        assert share.detached


async def test_budget_and_rate_limit_together_are_refused(
    fake_replicate: FakeReplicate,
) -> None:
    budget = replipoll.RateBudget(rate=5)
    base, key = fake_replicate.base_url(), fake_replicate.api_key
    with pytest.raises(replipoll.ConfigurationError, match="budget or rate_limit"):
        replipoll.Client(base_url=base, api_key=key, budget=budget, rate_limit=3)
    with pytest.raises(
        replipoll.ConfigurationError, match=r"replipoll\.Budget"
    ) as info:
        replipoll.Client(base_url=base, api_key=key, create_budget=5)  # type: ignore[arg-type]
    assert info.value.option == "create_budget"
    async with replipoll.Client(base_url=base, api_key=key, budget=budget) as client:
        assert client.budget is budget
        with pytest.raises(replipoll.ConfigurationError, match="not both"):
            replipoll.PollManager(client, budget=budget, rate_limit=2)
        with pytest.raises(replipoll.ConfigurationError, match=r"replipoll\.Share"):
            replipoll.PollManager(client, share=object())  # type: ignore[arg-type]
        own = replipoll.RateBudget(rate=50)
        assert replipoll.PollManager(client, budget=own).budget is own
        assert replipoll.PollManager(client).budget is budget


async def test_a_prediction_the_manager_creates_is_tracked_with_the_share(
    fake_replicate: FakeReplicate,
) -> None:
    share = MemoryShare(MemoryPeers())
    async with (
        replipoll.Client(
            base_url=fake_replicate.base_url(), api_key=fake_replicate.api_key
        ) as client,
        replipoll.PollManager(client, share=share) as manager,
    ):
        done = await manager.run(
            "acme/echo", input={"prompt": "hi", "replipoll_duration": 0.2}
        )
    assert share.untracked == [done.id]  # tracked from its create on
    assert share.published == [done]
