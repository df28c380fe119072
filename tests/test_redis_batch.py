"""RedisBatch: one batch of ids spread over workers through a real Redis.

The library with several workers in this process (each its own Redis
connection, client and manager) against a FakeReplicate on loopback; then
the command line end to end: worker subprocesses, one killed with SIGKILL,
the survivors taking its ids over, the export holding every id once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import pty
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import replipoll
from hypothesis import given
from hypothesis import strategies as st
from replipoll._cli import main
from replipoll.redis import (
    BatchResult,
    RedisBatch,
    RedisStoreError,
    RedisUnavailableError,
    UnknownBatchError,
    WorkerReport,
    batch_record,
)
from replipoll.redis._batch_scripts import GROUP
from replipoll.redis._connection import redact_url
from replipoll.redis._tasks import end_tasks
from replipoll.testing import FakeReplicate

import redis
from tests.server_thread import ServerThread
from tests.stalls import WATCH
from tests.terminal import read_terminal

#: The API key the CLI gets from the environment; never printed.
SECRET = "r8_BatchSecret-never-print-9c2e"
#: A Redis password that must never be printed either.
PASSWORD = "RedisPw-never-print-51ab"
CLI = [
    sys.executable,
    "-c",
    "import sys; from replipoll._cli import main; sys.exit(main())",
]


# -- helpers ---------------------------------------------------------------------


async def work(
    server: FakeReplicate,
    url: str,
    prefix: str,
    ids: list[str] | None,
    *,
    name: str = "b",
    api_key: str | None = None,
    **options: Any,
) -> WorkerReport:
    """One worker: its own connection, client and manager; loads ``ids`` first."""
    async with RedisBatch.from_url(url, name, prefix=prefix, **options) as batch:
        if ids:
            await batch.load(ids)
        async with (
            replipoll.Client(
                base_url=server.base_url(), api_key=api_key or server.api_key
            ) as client,
            replipoll.PollManager(client, stop_on_systemic=True, timeout=30) as manager,
        ):
            return await batch.work(manager)


async def results_of(url: str, prefix: str, name: str = "b") -> list[BatchResult]:
    async with RedisBatch.from_url(url, name, prefix=prefix) as batch:
        return [result async for result in batch.results()]


def once_each(results: list[BatchResult], ids: list[str]) -> None:
    """Every id has exactly one result, and there is nothing else."""
    counts = Counter(result.id for result in results)
    assert set(counts) == set(ids), set(ids) ^ set(counts)
    assert set(counts.values()) == {1}


# -- the library -------------------------------------------------------------------


async def test_three_workers_finish_a_batch_with_every_id_written_once(
    redis_url: str, redis_prefix: str
) -> None:
    """All three load the same ids (the union once), share them, write each once,
    and leave the group as they end; the status says complete."""
    async with FakeReplicate() as server:
        ids = server.add_predictions(240, lambda i: {"duration": (i % 8) / 10})
        reports = await asyncio.gather(
            *(
                work(
                    server, redis_url, redis_prefix, ids, reclaim_after=2.0, prefetch=30
                )
                for _ in range(3)
            )
        )
        results = await results_of(redis_url, redis_prefix)
        async with RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch:
            status = await batch.status()
    once_each(results, ids)
    assert {r.result for r in results} == {"succeeded"}
    assert all(report.complete for report in reports)
    assert sum(report.finished for report in reports) == len(ids)
    assert all(report.finished > 0 for report in reports)  # prefetch spreads them
    assert {r.worker for r in results} == {report.worker for report in reports}
    assert status.complete
    assert status.all_succeeded
    assert (status.total, status.done, status.pending) == (240, 240, 0)
    assert status.consumers == 0
    assert (status.loads_started, status.loads_finished) == (3, 3)
    # The records are what `replipoll poll` writes.
    record = results[0].record
    assert set(record) == {"id", "result", "status", "prediction", "error"}
    assert record["prediction"]["id"] == record["id"]


async def test_concurrent_loads_of_overlapping_ids_load_the_union_once(
    redis_url: str, redis_prefix: str
) -> None:
    ids = [f"id{i:05d}" for i in range(2500)]
    parts = [ids[:1800], ids[700:], ids[::2], ids]
    batches = [RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) for _ in parts]
    try:
        added = await asyncio.gather(
            *(batch.load(part) for batch, part in zip(batches, parts, strict=True))
        )
        status = await batches[0].status()
        queue = await batches[0]._redis.xlen(batches[0].keys.queue)
    finally:
        for batch in batches:
            await batch.aclose()
    assert sum(added) == len(ids) == status.total == queue
    assert status.loading == 0
    assert status.interrupted_loads == 0


async def test_a_dead_workers_pending_ids_are_taken_over_after_reclaim_after(
    redis_url: str, redis_prefix: str
) -> None:
    """A consumer that read 25 ids and died: the live worker takes them over,
    writes them itself, and removes the dead consumer from the group."""
    async with FakeReplicate() as server:
        ids = server.add_predictions(60, duration=0.2)
        async with RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch:
            await batch.load(ids)
            connection = batch._redis
            reply: Any = await connection.xreadgroup(
                GROUP, "dead-worker", {batch.keys.queue: ">"}, count=25
            )
            dead = [fields["id"] for _, fields in reply[0][1]]
        report = await work(server, redis_url, redis_prefix, None, reclaim_after=0.6)
        results = await results_of(redis_url, redis_prefix)
    once_each(results, ids)
    assert report.taken_over == 25
    assert {r.worker for r in results if r.id in dead} == {report.worker}
    async with RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch:
        assert (await batch.status()).consumers == 0  # the dead one was removed


async def test_a_live_worker_keeps_its_slow_ids(
    redis_url: str, redis_prefix: str
) -> None:
    """Predictions that run for five times reclaim_after stay with the worker
    polling them: it renews them; the other worker takes none over."""
    async with FakeReplicate() as server:
        slow = server.add_predictions(6, duration=3.0)
        first = asyncio.create_task(
            work(server, redis_url, redis_prefix, slow, reclaim_after=0.6, prefetch=10)
        )
        await asyncio.sleep(0.5)  # the first has read them all
        second = await work(server, redis_url, redis_prefix, None, reclaim_after=0.6)
        first_report = await first
    assert second.taken_over == 0
    assert first_report.finished == 6
    for pid in slow:  # polled by one worker, not by two
        assert server.stats.requests_per_id[pid] <= 6


async def test_ids_ending_in_errors_are_results_too(
    redis_url: str, redis_prefix: str
) -> None:
    """Not found and a timeout: written once each with result "error"."""
    async with FakeReplicate() as server:
        good = server.add_predictions(20, duration=0.1)
        late = server.add_prediction(duration=60)
        ids = [*good, "ghost-one", late, "ghost-two"]
        async with (
            RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch,
            replipoll.Client(base_url=server.base_url(), api_key=server.api_key) as c,
            replipoll.PollManager(c, stop_on_systemic=True, timeout=4.0) as manager,
        ):
            await batch.load(ids)
            report = await batch.work(manager)
            status = await batch.status()
        results = {r.id: r for r in await results_of(redis_url, redis_prefix)}
    assert set(results) == set(ids)
    assert report.outcomes == {"succeeded": 20, "error": 3}
    assert status.outcomes == {"succeeded": 20, "error": 3}
    assert not status.all_succeeded
    assert results["ghost-one"].record["error"]["type"] == "NotFoundError"
    assert results["ghost-one"].record["error"]["status"] == 404
    assert results[late].record["error"]["type"] == "PollTimeout"
    assert results[late].record["status"] == "processing"  # the last record seen


async def test_an_id_finished_twice_is_written_once(
    redis_url: str, redis_prefix: str
) -> None:
    """Two entries of one id (what a take-over after a stall looks like): the
    result is written once; the other counts as a duplicate, acknowledged."""
    async with FakeReplicate() as server:
        (pid,) = server.add_predictions(1, duration=0.1)
        async with RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch:
            await batch.load([pid])
            await batch._redis.xadd(batch.keys.queue, {"id": pid})
        report = await work(server, redis_url, redis_prefix, None)
        results = await results_of(redis_url, redis_prefix)
    assert [r.id for r in results] == [pid]
    assert (report.finished, report.duplicates) == (1, 1)


async def test_an_entry_of_an_id_already_done_is_acknowledged_not_polled(
    redis_url: str, redis_prefix: str
) -> None:
    """Entries whose id is in the done set (a stale copy, say) are acknowledged
    as they arrive: no request, no result; the others are polled."""
    async with FakeReplicate() as server:
        ids = server.add_predictions(3, duration=0.1)
        await work(server, redis_url, redis_prefix, ids)
        fresh = server.add_prediction(duration=0.1)
        async with RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch:
            k = batch.keys
            await batch._redis.xadd(k.queue, {"id": ids[0]})  # done: a stale copy
            await batch.load(["elsewhere", fresh])
            await batch._redis.sadd(k.done, "elsewhere")  # as if written meanwhile
        before = server.stats.requests_per_id[ids[0]]
        report = await work(server, redis_url, redis_prefix, None)
        assert server.stats.requests_per_id[ids[0]] == before
        assert server.stats.requests_per_id["elsewhere"] == 0
        results = await results_of(redis_url, redis_prefix)
    assert report.complete
    assert (report.skipped, report.finished) == (2, 1)
    assert sorted(r.id for r in results) == sorted([*ids, fresh])


async def test_a_refused_key_writes_nothing_and_hands_the_ids_back(
    redis_url: str, redis_prefix: str
) -> None:
    """The manager stops the batch (stop_on_systemic); the worker returns its
    diagnosis, and its ids go straight to a worker with the right key."""
    async with FakeReplicate() as server:
        ids = server.add_predictions(50, duration=0.1)
        bad = await work(
            server, redis_url, redis_prefix, ids, api_key="r8_wrong", reclaim_after=30
        )
        assert bad.diagnosis is not None
        assert bad.diagnosis.kind == "key"
        assert (bad.complete, bad.finished) == (False, 0)
        assert bad.handed_back > 0
        assert await results_of(redis_url, redis_prefix) == []
        began = time.monotonic()
        good = await work(server, redis_url, redis_prefix, None, reclaim_after=2)
        results = await results_of(redis_url, redis_prefix)
    once_each(results, ids)
    assert good.taken_over == bad.handed_back
    # Not 30 s: handed back, not abandoned (time the machine stood still
    # left out).
    assert WATCH.ran(began, time.monotonic()) < 15


async def test_a_cancelled_worker_hands_its_ids_back(
    redis_url: str, redis_prefix: str
) -> None:
    async with FakeReplicate() as server:
        ids = server.add_predictions(30, duration=2.0)
        task = asyncio.create_task(
            work(server, redis_url, redis_prefix, ids, reclaim_after=30)
        )
        await asyncio.sleep(0.8)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with RedisBatch.from_url(redis_url, "b", prefix=redis_prefix) as batch:
            pending: Any = await batch._redis.xpending_range(
                batch.keys.queue, GROUP, "-", "+", 100
            )
        assert pending
        assert all(entry["time_since_delivered"] > 86_400_000 for entry in pending)
        report = await work(server, redis_url, redis_prefix, None, reclaim_after=30)
        once_each(await results_of(redis_url, redis_prefix), ids)
    assert report.taken_over == len(pending)


async def test_a_batch_with_no_ids_is_unknown_and_nothing_is_created(
    redis_url: str, redis_prefix: str
) -> None:
    async with FakeReplicate() as server:
        with pytest.raises(UnknownBatchError, match="no ids"):
            await work(server, redis_url, redis_prefix, None, name="typo")
    connection = redis.Redis.from_url(redis_url)
    try:
        assert list(connection.scan_iter(match=f"{redis_prefix}*")) == []
    finally:
        connection.close()


async def test_an_unreachable_redis_is_a_typed_error_without_the_password() -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{_closed_port()}/0"
    began = time.monotonic()
    async with RedisBatch.from_url(url, "b") as batch:
        with pytest.raises(RedisUnavailableError) as caught:
            await batch.load(["a"])
    assert WATCH.ran(began, time.monotonic()) < 10
    assert isinstance(caught.value, RedisStoreError)
    assert isinstance(caught.value, replipoll.ReplipollError)
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in caught.value.url
    assert "cannot reach Redis at redis://127.0.0.1:" in str(caught.value)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is RedisUnavailableError
    assert (again.url, again.key, str(again)) == (
        caught.value.url,
        "b",
        str(caught.value),
    )
    assert repr(type(again)) == "<class 'replipoll.redis.RedisUnavailableError'>"


def test_options_are_checked() -> None:
    connection = redis.asyncio.Redis()
    for bad in ("", "a{b}", " a"):
        with pytest.raises(replipoll.ConfigurationError, match="name"):
            RedisBatch(connection, bad)
    with pytest.raises(replipoll.ConfigurationError, match="reclaim_after"):
        RedisBatch(connection, "b", reclaim_after=0)
    with pytest.raises(replipoll.ConfigurationError, match="prefetch"):
        RedisBatch(connection, "b", prefetch=0)
    with pytest.raises(replipoll.ConfigurationError, match="redis"):
        RedisBatch("redis://localhost", "b")  # type: ignore[arg-type]
    with pytest.raises(replipoll.ConfigurationError) as caught:
        RedisBatch.from_url(f"redis://:{PASSWORD}@host:port/0", "b")
    assert PASSWORD not in str(caught.value)


@given(
    password=st.text(alphabet="abcdefXYZ0123456789!$&'()*+,;=-._~", min_size=1),
    user=st.sampled_from(["", "user"]),
)
def test_redact_url_never_keeps_the_password(password: str, user: str) -> None:
    secret = f"Pw{password}"
    for url in (
        f"redis://{user}:{secret}@cache.internal:6380/2",
        f"rediss://{user}:{secret}@cache.internal/0",
        f"unix:///run/redis.sock?db=1&password={secret}",
    ):
        shown = redact_url(url)
        assert secret not in shown
        assert "***" in shown
        assert "cache.internal" in shown or "redis.sock" in shown


def test_batch_record_is_the_poll_commands_record() -> None:
    """The library's default record and `replipoll poll`'s line agree."""
    from replipoll._cli._resultlog import record_for

    prediction = replipoll.Prediction.from_json(
        {"id": "abc", "status": "succeeded", "output": ["x"], "metrics": {}}
    )
    for result in (
        replipoll.PollResult("abc", prediction),
        replipoll.PollResult("abc", None, replipoll.NotFoundError("Not found.")),
        replipoll.PollResult(
            "abc", prediction, replipoll.PollTimeout("abc", 3.0, last=prediction)
        ),
    ):
        assert batch_record(result) == record_for(result)


async def test_a_task_that_loses_a_cancellation_is_still_stopped() -> None:
    """On Python 3.11 redis-py can lose a cancel (in asyncio.wait_for): the
    worker's shutdown cancels again until each of its tasks has ended."""

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(30)  # lost, as by a Redis call ending just then
        await asyncio.sleep(30)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await end_tasks([task])
    assert task.cancelled()


# -- the command line --------------------------------------------------------------


@pytest.fixture(scope="module")
def fake() -> Iterator[ServerThread]:
    with ServerThread(FakeReplicate(api_key=SECRET)) as server:
        yield server


def env() -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("REPLIPOLL_") and k not in {"REPLICATE_API_TOKEN"}
    }
    return {**base, "REPLICATE_API_TOKEN": SECRET}


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the CLI to the end; check no secret leaked and no traceback."""
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=env()
    )
    for secret in (SECRET, PASSWORD):
        assert secret not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lines_of(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n") or not data
    return [json.loads(line) for line in data.splitlines()]


def test_cli_workers_one_killed_every_id_exported_once_survivors_take_over(
    fake: ServerThread, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """300 ids and 3 ghosts, 3 workers given the same file; one is killed with
    SIGKILL while it holds ids. The survivors take its ids over and write
    them; the export has every id once; each worker's -o file has its own."""
    ids = [*fake.add(300, duration=3.0), "ghost-1", "ghost-2", "ghost-3"]
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("\n".join(ids) + "\n")
    common = [
        "--redis", redis_url, "--batch", "big", "--redis-prefix", redis_prefix,
        "--from", str(ids_file), "--base-url", fake.base_url,
        "--reclaim-after", "1", "--prefetch", "40",
    ]  # fmt: skip
    workers = [
        subprocess.Popen(
            [*CLI, "poll", *common, "-o", str(tmp_path / f"w{n}.jsonl")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for n in range(3)
    ]
    connection: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    queue = f"{redis_prefix}batch:{{big}}:queue"
    victim = workers[0]

    def pending(consumer: str) -> list[str]:
        """The entries ``consumer`` holds (read, not yet acknowledged)."""
        return [
            entry["message_id"]
            for entry in connection.xpending_range(
                queue, GROUP, "-", "+", 1000, consumername=consumer
            )
        ]

    try:
        began = time.monotonic()
        held: list[str] = []
        while not held:
            assert WATCH.ran(began, time.monotonic()) < 20, "it never held ids"
            assert victim.poll() is None
            consumers: list[dict[str, Any]] = []
            if connection.exists(queue):
                consumers = connection.xinfo_consumers(queue, GROUP)
            name = next(
                (c["name"] for c in consumers if f":{victim.pid}:" in c["name"]), None
            )
            if name is not None:
                held = pending(name)
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.communicate(timeout=10)
        # What it held when it died (it may have finished some of the ids
        # seen above meanwhile); the survivors claim them a second later.
        assert name is not None
        held = pending(name)
        dead_ids = {
            connection.xrange(queue, entry, entry)[0][1]["id"] for entry in held
        }
        outputs = [proc.communicate(timeout=120) for proc in workers[1:]]
    finally:
        for proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        connection.close()
    for proc, (out, err) in zip(workers[1:], outputs, strict=True):
        assert proc.returncode == 1, err  # the ghosts are errors
        assert "Traceback" not in err
        assert SECRET not in out + err
        assert "303 of 303 ids done (300 succeeded, 3 error)" in err
    took_over = sum(
        int(err.split("took over ")[1].split()[0])
        for _, err in outputs
        if "took over " in err
    )
    assert took_over >= len(held)

    export = run(
        "batch", "export", "big", "--redis", redis_url, "--redis-prefix",
        redis_prefix, "-o", str(tmp_path / "all.jsonl"),
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    records = lines_of(tmp_path / "all.jsonl")
    assert sorted(r["id"] for r in records) == sorted(ids)  # each once, none lost
    assert Counter(r["result"] for r in records) == {"succeeded": 300, "error": 3}
    own = [lines_of(tmp_path / f"w{n}.jsonl") for n in (1, 2)]
    survivors = {r["id"] for lines in own for r in lines}
    assert dead_ids <= survivors  # the dead one's ids were written by the others
    assert len(survivors) == sum(len(lines) for lines in own)  # no id twice
    dead_file = {r["id"] for r in lines_of(tmp_path / "w0.jsonl")}
    assert dead_file.isdisjoint(survivors)
    assert dead_file | survivors == set(ids)


def test_cli_status_export_and_delete(
    fake: ServerThread, redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    ids = fake.add(12, duration=0.1)
    where = ["--redis", redis_url, "--redis-prefix", redis_prefix]
    done = run("poll", *ids, "--batch", "small", *where, "--progress",
               "--base-url", fake.base_url)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "replipoll poll --batch small" in done.stderr  # the summary table
    status = run("batch", "status", "small", *where)
    assert status.returncode == 0
    assert "12 loaded, 12 done (12 succeeded), 0 to go" in status.stdout
    assert "complete" in status.stdout
    data = json.loads(run("batch", "status", "small", *where, "--json").stdout)
    assert (data["total"], data["done"], data["complete"]) == (12, 12, True)

    out = tmp_path / "all.jsonl"
    first = run("batch", "export", "small", *where, "-o", str(out))
    assert "12 results written" in first.stderr
    again = run("batch", "export", "small", *where, "-o", str(out))
    assert "0 results written" in again.stderr
    assert "12 already there" in again.stderr
    assert sorted(r["id"] for r in lines_of(out)) == sorted(ids)
    to_stdout = run("batch", "export", "small", *where)
    assert sorted(json.loads(line)["id"] for line in to_stdout.stdout.splitlines()) == (
        sorted(ids)
    )

    assert "deleted" in run("batch", "delete", "small", *where).stderr
    gone = run("batch", "status", "small", *where)
    assert gone.returncode == 2
    assert "no batch 'small'" in gone.stderr


def on_terminal(*args: str) -> tuple[int, str]:
    """Run the CLI with standard error on a pseudo-terminal (a progress bar)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [*CLI, *args],
        stdout=subprocess.DEVNULL,
        stderr=terminal,
        env={**env(), "COLUMNS": "100", "TERM": "xterm-256color"},
    )
    os.close(terminal)
    screen = read_terminal(controller, proc, timeout=30)
    return proc.wait(10), screen


def test_cli_progress_bar_counts_the_whole_batch_and_ends(
    fake: ServerThread, redis_url: str, redis_prefix: str
) -> None:
    """On a terminal: a bar of the batch's done/total, then the table; a worker
    started on a finished batch ends at once too (five times: its bar's ticker
    once hung on a lost cancellation)."""
    ids = fake.add(8, duration=0.2)
    args = ["poll", *ids, "--redis", redis_url, "--batch", "bar",
            "--redis-prefix", redis_prefix, "--base-url", fake.base_url]  # fmt: skip
    code, screen = on_terminal(*args)
    assert code == 0, screen
    assert "batch bar" in screen
    assert "8/8" in screen
    assert "this worker wrote" in screen
    for _ in range(5):
        code, screen = on_terminal(*args)
        assert code == 0, screen
        assert "this worker wrote" in screen


def test_cli_ctrl_c_hands_the_workers_ids_back(
    fake: ServerThread, redis_url: str, redis_prefix: str
) -> None:
    ids = fake.add(20, duration=30.0)
    proc = subprocess.Popen(
        [*CLI, "poll", *ids, "--redis", redis_url, "--batch", "stop",
         "--redis-prefix", redis_prefix, "--base-url", fake.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )  # fmt: skip
    connection: Any = redis.Redis.from_url(redis_url, decode_responses=True)
    queue = f"{redis_prefix}batch:{{stop}}:queue"
    try:
        deadline = time.monotonic() + 20
        while not (
            connection.exists(queue)
            and connection.xpending(queue, GROUP)["pending"] == 20
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        pending = connection.xpending_range(queue, GROUP, "-", "+", 100)
    finally:
        if proc.poll() is None:
            proc.kill()
        connection.close()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert "handed back" in err
    assert len(pending) == 20
    assert all(entry["time_since_delivered"] > 86_400_000 for entry in pending)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--redis", "redis://x"], "--redis needs --batch NAME"),
        (["--batch", "b"], "--batch needs --redis URL"),
        (["--reclaim-after", "3"], "--reclaim-after is for batch workers"),
    ],
)
def test_cli_half_a_batch_is_a_usage_error(
    args: list[str],
    says: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REPLICATE_API_TOKEN", SECRET)
    monkeypatch.delenv("REPLIPOLL_REDIS_URL", raising=False)
    assert main(["poll", "abc", *args]) == 2
    assert says in capsys.readouterr().err


def test_cli_the_redis_url_may_come_from_the_environment(
    fake: ServerThread,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """REPLIPOLL_REDIS_URL serves --batch; without --batch, poll is a plain poll."""
    monkeypatch.setenv("REPLICATE_API_TOKEN", SECRET)
    monkeypatch.setenv("REPLIPOLL_REDIS_URL", f"redis://:{PASSWORD}@127.0.0.1:1")
    (pid,) = fake.add(1)
    assert main(["poll", pid, "--batch", "b", "--base-url", fake.base_url]) == 1
    err = capsys.readouterr().err
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in err
    assert PASSWORD not in err
    assert main(["poll", pid, "-q", "--base-url", fake.base_url]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["id"] == pid
    assert err == ""


def test_cli_unreachable_redis_exits_1_with_one_line_and_no_password(
    fake: ServerThread,
) -> None:
    url = f"redis://:{PASSWORD}@127.0.0.1:{_closed_port()}/0"
    for args in (
        ["poll", "abc", "--redis", url, "--batch", "b", "--base-url", fake.base_url],
        ["batch", "status", "b", "--redis", url],
    ):
        done = run(*args, timeout=30)
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert line.startswith("replipoll: error: cannot reach Redis at redis://")
    bad = run("batch", "export", "b", "--redis", f"redis://:{PASSWORD}@h:port")
    assert bad.returncode == 2
    assert "unusable Redis URL redis://:***@h:port" in bad.stderr


def test_cli_without_the_redis_package_says_how_to_install_it() -> None:
    code = (
        "import sys; sys.modules['redis'] = None; "
        "from replipoll._cli import main; sys.exit(main())"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "batch", "status", "b", "--redis", "redis://x"],
        capture_output=True,
        text=True,
        env=env(),
        timeout=30,
    )
    assert done.returncode == 2
    assert "pip install 'replipoll[redis]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_rate_is_shared_by_the_workers_on_one_key(
    fake: ServerThread, redis_url: str, redis_prefix: str
) -> None:
    """Two workers with --rate 10 spend 10 requests a second together, not 20."""
    ids = fake.add(40)  # finished at once: one GET each
    where = ["--redis", redis_url, "--redis-prefix", redis_prefix]
    common = ["--batch", "paced", *where, "--rate", "10", "--base-url", fake.base_url]
    began = time.monotonic()
    workers = [
        subprocess.Popen(
            [*CLI, "poll", *ids, *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for _ in range(2)  # each given the ids: loaded once, whoever starts first
    ]
    outputs = [worker.communicate(timeout=60) for worker in workers]
    took = time.monotonic() - began
    for worker, (out, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
        assert SECRET not in out + err
    # A burst of 10, then 30 more at 10 a second: 3 s at least (two budgets
    # of their own would take half that).
    assert took >= 2.9
    connection = redis.Redis.from_url(redis_url)
    try:
        budgets = [k.decode() for k in connection.scan_iter(f"{redis_prefix}budget:*")]
    finally:
        connection.close()
    assert len(budgets) == 1  # one per key: named by a digest, not the key
    assert SECRET not in budgets[0]
