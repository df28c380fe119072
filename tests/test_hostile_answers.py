"""Hostile answers, as a broken or malicious gateway would send them.

Huge bodies, gzip bombs, bodies that never end or trickle in, records of
another prediction: each ends in a typed error (or a retry), within the
request's deadline, in bounded memory, and without freezing the event loop
for more than a few tens of milliseconds (measured by a ticker that should
wake every 5 ms).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import pytest
import pytest_asyncio
from replipoll import (
    Client,
    MismatchedIdError,
    Prediction,
    RequestTimeoutError,
    ResponseTooLargeError,
    RetryPolicy,
    Timeouts,
)
from replipoll.testing import FakeReplicate, Fault

T = TypeVar("T")
MiB = 1024 * 1024
#: The longest the event loop may go without running the ticker, in tests
#: (measured: 5-20 ms on an idle 2-core machine, 131 ms once under a full
#: CI run; a frozen loop stalls for seconds, so the bound leaves room).
STALL = 0.25


async def while_ticking(work: Awaitable[T]) -> tuple[T | BaseException, float]:
    """Run ``work``; return its outcome and the longest the loop froze meanwhile."""
    gaps: list[float] = []
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last - 0.005)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.02)
    try:
        outcome: T | BaseException = await work
    except Exception as exc:
        outcome = exc
    done.set()
    await ticker
    return outcome, max(gaps)


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate() as fake:
        yield fake


def one_try(server: FakeReplicate, **options: object) -> Client:
    return Client(
        base_url=server.base_url(),
        api_key=server.api_key,
        retry=RetryPolicy(max_attempts=1),
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "fault",
    [
        Fault.huge_body(64 * MiB),  # a Content-Length over the limit
        Fault.gzip_bomb(256 * MiB),  # 256 KiB on the wire
        Fault.endless_body(),  # chunked, for ever
    ],
    ids=["huge", "gzip bomb", "endless"],
)
async def test_an_oversized_answer_is_cut_off_at_the_limit(
    server: FakeReplicate, fault: Fault
) -> None:
    """Refused while it streams in (after decompression), never read whole:
    ResponseTooLargeError at once, not retried, the loop never frozen."""
    pid = server.add_prediction()
    server.add_fault(fault, prediction_id=pid, times=None)
    async with one_try(server) as client:
        start = time.monotonic()
        outcome, stall = await while_ticking(client.get(pid))
        elapsed = time.monotonic() - start
    assert isinstance(outcome, ResponseTooLargeError), outcome
    assert outcome.limit == 16 * MiB
    assert "max_answer_size" in str(outcome)
    assert not RetryPolicy().is_retryable(outcome)
    assert elapsed < 5.0
    assert stall < STALL


async def test_the_limit_is_configurable(server: FakeReplicate) -> None:
    pid = server.add_prediction()
    server.add_fault(Fault.huge_body(2 * MiB), prediction_id=pid)
    async with one_try(server, max_answer_size=MiB) as client:
        with pytest.raises(ResponseTooLargeError) as info:
            await client.get(pid)
    assert info.value.limit == MiB
    server.add_fault(Fault.huge_body(2 * MiB), prediction_id=pid)
    async with one_try(server, max_answer_size=4 * MiB) as client:
        record = await client.get(pid)
    assert len(record.output) > MiB


async def test_a_body_that_trickles_in_ends_at_the_requests_deadline(
    server: FakeReplicate,
) -> None:
    """One byte every 50 ms is never silent for the read timeout; the total
    timeout still ends it."""
    pid = server.add_prediction()
    server.add_fault(Fault.trickle(0.05), prediction_id=pid, times=None)
    async with one_try(server, timeouts=Timeouts(total=0.5, read=5)) as client:
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError, match=r"0\.5s"):
            await client.get(pid)
    assert time.monotonic() - start < 1.5


async def test_a_big_valid_answer_is_parsed_while_the_loop_runs(
    server: FakeReplicate,
) -> None:
    """The worst JSON to parse (dense numbers): 2 MiB is parsed in a worker
    thread that yields to the event loop, which never stalls meanwhile."""
    pid = server.add_prediction()
    output = [1] * MiB  # "1,1,1,...": 2 MiB of tokens
    body = json.dumps({"id": pid, "status": "succeeded", "output": output})
    server.add_fault(Fault.status(200, body), prediction_id=pid)
    async with one_try(server) as client:
        outcome, stall = await while_ticking(client.get(pid))
    assert isinstance(outcome, Prediction), outcome
    assert outcome.output == output
    assert stall < STALL


async def test_a_big_answer_stops_parsing_at_the_deadline(
    server: FakeReplicate,
) -> None:
    """Parsing counts in the request's time: past it, a timeout, and the
    worker thread stops at its next token."""
    pid = server.add_prediction()
    body = json.dumps({"id": pid, "status": "succeeded", "output": [1] * (4 * MiB)})
    server.add_fault(Fault.status(200, body), prediction_id=pid)
    async with one_try(server, timeouts=Timeouts(total=0.5)) as client:
        start = time.monotonic()
        with pytest.raises(RequestTimeoutError, match="parse"):
            await client.get(pid)
    assert time.monotonic() - start < 1.5


async def test_a_record_of_another_prediction_is_retried_never_misfiled(
    server: FakeReplicate,
) -> None:
    mine, other = server.add_prediction(), server.add_prediction(outcome="failed")
    server.add_fault(Fault.mismatched_id(other), prediction_id=mine)
    async with Client(
        base_url=server.base_url(),
        api_key=server.api_key,
        retry=RetryPolicy(max_attempts=2, base_delay=0),
    ) as client:
        record = await client.get(mine)
        assert record.id == mine
        assert record.status == "succeeded"
        server.add_fault(Fault.mismatched_id(), prediction_id=mine, times=None)
        with pytest.raises(MismatchedIdError) as info:
            await client.get(mine)
    assert info.value.expected == mine
    assert info.value.received != mine
    assert info.value.attempts == 2
