"""One worker's run of a batch: the ids it holds, and the loops that keep them.

:meth:`RedisBatch.work <replipoll.redis.RedisBatch.work>` runs a
:class:`Worker`: one loop reads ids from the batch's stream into the
manager, one writes the results (the ``FINISH`` script), one
renews this worker's entries and takes over those of a dead worker.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs
import redis.exceptions

from .._errors import BatchStoppedError, ManagerClosedError, RequestError
from .._manager import PollManager, PollResult
from .._results import Diagnosis
from ._batch_scripts import CHUNK, GROUP, HAND_BACK_MS, READ_COUNT
from ._batch_values import (
    RecordMaker,
    ResultCallback,
    WorkerReport,
    json_line,
    text,
)
from ._errors import RedisStoreError, UnknownBatchError
from ._tasks import end_tasks

if TYPE_CHECKING:
    from ._batch import RedisBatch

__all__ = ["Worker"]

logger = logging.getLogger("replipoll.redis")


@attrs.define(eq=False)
class Worker:
    """One run of :meth:`RedisBatch.work`: the ids held and the loops."""

    batch: RedisBatch
    manager: PollManager
    on_result: ResultCallback | None
    record: RecordMaker
    #: Stream entry -> prediction id, for every id held.
    held: dict[str, str] = attrs.Factory(dict)
    tasks: dict[str, asyncio.Task[None]] = attrs.Factory(dict)
    finished: asyncio.Queue[tuple[str, PollResult]] = attrs.Factory(asyncio.Queue)
    #: Entries being taken (between their delivery and ``held``).
    taking: set[str] = attrs.Factory(set)
    #: Entries pending here but not held at the last renewal (see _renew).
    strays: set[str] = attrs.Factory(set)
    #: Ids that failed while the manager was still judging whether the whole
    #: batch fails for one reason (see _held_back): not written yet.
    deferred: list[tuple[str, PollResult]] = attrs.Factory(list)
    room: asyncio.Event = attrs.Factory(asyncio.Event)
    stop: asyncio.Event = attrs.Factory(asyncio.Event)
    complete: bool = False
    diagnosis: Diagnosis | None = None
    failure: Exception | None = None
    counts: Counter[str] = attrs.Factory(Counter)
    outcomes: Counter[str] = attrs.Factory(Counter)

    @property
    def _tick(self) -> float:
        return self.batch.reclaim_after / 4

    async def run(self) -> WorkerReport:
        b = self.batch
        status = await b.status()
        if not status.exists:
            raise self._unknown()
        self.complete = status.complete
        if self.complete:  # nothing left to poll, nor to take over
            return self._report()
        await b._prepare()
        loops = [
            asyncio.create_task(self._read(), name="replipoll-batch-read"),
            asyncio.create_task(self._maintain(), name="replipoll-batch-maintain"),
            asyncio.create_task(self._finish(), name="replipoll-batch-finish"),
        ]
        stopped = asyncio.create_task(self.stop.wait())
        try:
            done, _ = await asyncio.wait(
                [*loops, stopped], return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()  # a loop's failure is the worker's
            if self.failure is not None:
                raise self.failure
        finally:
            await asyncio.shield(self._shut_down([*loops, stopped]))
        return self._report()

    def _report(self) -> WorkerReport:
        return WorkerReport(
            worker=self.batch.worker,
            complete=self.complete,
            finished=self.counts["finished"],
            duplicates=self.counts["duplicates"],
            skipped=self.counts["skipped"],
            taken_over=self.counts["taken_over"],
            handed_back=self.counts["handed_back"],
            outcomes=dict(self.outcomes),
            diagnosis=self.diagnosis,
        )

    def _unknown(self) -> UnknownBatchError:
        b = self.batch
        return UnknownBatchError(
            f"batch {b.name!r} (prefix {b.prefix!r}) at {b.url} has no ids, and "
            "no worker is loading any: give this worker the ids, or check the "
            "batch's name",
            url=b.url,
            batch=b.name,
            reason="no ids",
        )

    async def _shut_down(self, loops: list[asyncio.Task[Any]]) -> None:
        self.stop.set()
        await end_tasks(loops)
        await end_tasks(self.tasks.values())
        for pid in set(self.held.values()):
            await self.manager.cancel(pid)
        b = self.batch
        try:
            if not self.complete:
                # Results that came in as it stopped: written, not lost work.
                chunk = []
                while not self.finished.empty():
                    chunk.append(self.finished.get_nowait())
                if chunk:
                    await self._write(chunk)
            # Whatever is still pending here goes back to the batch at once.
            given = await self._mine(HAND_BACK_MS)
            self.counts["handed_back"] = 0 if self.complete else len(given)
            if self.complete:  # a tidy group: no dead worker left in it
                await self._sweep()
        except (redis.exceptions.RedisError, RedisStoreError) as exc:
            logger.warning(
                "batch %r: could not hand back this worker's ids (%s); the "
                "others take them over after %g s",
                b.name,
                type(exc).__name__,
                b.reclaim_after,
            )

    # -- the loops -------------------------------------------------------------

    async def _read(self) -> None:
        b = self.batch
        block = max(1, min(1000, math.floor(b.reclaim_after * 250)))
        while not self.stop.is_set():
            self.room.clear()
            free = b.prefetch - len(self.held)
            if free <= 0:
                await self.room.wait()
                continue
            reply: Any = await b._redis.xreadgroup(
                GROUP,
                b.worker,
                {b.keys.queue: ">"},
                count=min(free, READ_COUNT),
                block=block,
            )
            entries: list[tuple[Any, Any]] = []
            streams = (
                reply.values()
                if isinstance(reply, dict)
                else (found for _, found in reply or [])
            )
            for found in streams:  # (a dict from a RESP3 connection)
                entries.extend(found)
            if entries:
                await self._take(entries)
            else:  # nothing new: ids handed back, or a dead worker's, if any
                await self._take_over()

    async def _maintain(self) -> None:
        b = self.batch
        renewed = swept = time.monotonic()
        while not self.stop.is_set():
            await asyncio.sleep(min(self._tick, 1.0))
            now = time.monotonic()
            if now - renewed >= self._tick:
                renewed = now
                await self._renew()
                await self._take_over()
            if now - swept >= b.reclaim_after:
                swept = now
                await self._sweep()
            status = await b.status()
            if status.complete:
                self.complete = True
                self.stop.set()
            elif not status.exists:
                raise self._unknown()

    async def _finish(self) -> None:
        while not self.stop.is_set():
            chunk = [await self.finished.get()]
            while len(chunk) < CHUNK and not self.finished.empty():
                chunk.append(self.finished.get_nowait())
            await self._write(chunk)

    # -- the steps ---------------------------------------------------------------

    async def _take(
        self, entries: Sequence[tuple[Any, Any]], *, over: bool = False
    ) -> None:
        """Start polling delivered entries; acknowledge those done already."""
        b = self.batch
        fresh: list[tuple[str, str]] = []
        gone: list[str] = []
        for entry, fields in entries:
            entry = text(entry)
            if entry in self.held or entry in self.taking:
                continue  # (the reader and the take-over may both bring it)
            self.taking.add(entry)
            pid = None
            if fields:
                pid = {text(f): text(v) for f, v in fields.items()}.get("id")
            if pid is None:  # trimmed away, or not one of ours
                gone.append(entry)
            else:
                fresh.append((entry, pid))
        try:
            if fresh:
                flags = await b._redis.smismember(
                    b.keys.done, [pid for _, pid in fresh]
                )
                for (entry, pid), done in zip(fresh, flags, strict=True):
                    if done:
                        gone.append(entry)
                        self.counts["skipped"] += 1
                        continue
                    if over:
                        self.counts["taken_over"] += 1
                    self.held[entry] = pid
                    self.tasks[entry] = asyncio.create_task(self._poll(entry, pid))
            if gone:
                await b._redis.xack(b.keys.queue, GROUP, *gone)
        finally:
            self.taking.difference_update(entry for entry, _ in fresh)
            self.taking.difference_update(gone)

    async def _poll(self, entry: str, pid: str) -> None:
        try:
            (result,) = await self.manager.poll_many([pid])
        except RuntimeError:  # the manager was closed under the worker
            result = PollResult(pid, None, ManagerClosedError(pid))
        except Exception as exc:  # a bug: the worker fails rather than wait
            self.failure = exc
            self.stop.set()
            return
        self.finished.put_nowait((entry, result))

    def _drop(self, entry: str) -> None:
        self.held.pop(entry, None)
        self.tasks.pop(entry, None)

    def _held_back(
        self, chunk: list[tuple[str, PollResult]]
    ) -> tuple[list[tuple[str, PollResult]], bool]:
        """Split off what of ``chunk`` (and of the ids held back) to write now.

        With ``stop_on_systemic``, a request that failed before the manager
        judged the batch (a refused key: the first few ids fail one by one,
        then the batch stops) is no result of its id: its error is held back
        until the judgement. If the batch is stopped, those ids are handed
        back with the rest; once a record arrives (the batch works), they
        are written. Nothing waits for ever: with nothing else in flight
        here, they are written as they are. Returns what to write, and
        whether the batch stopped.
        """
        manager = self.manager
        if not manager.stop_on_systemic:
            return chunk, False
        if manager.diagnosis is not None:
            self.deferred.clear()  # handed back with every id held
            return [], True
        if manager._judging:  # (no record yet, no diagnosis)
            now = [(e, r) for e, r in chunk if not isinstance(r.error, RequestError)]
            self.deferred += [
                (e, r) for e, r in chunk if isinstance(r.error, RequestError)
            ]
            if len(self.deferred) < len(self.held) - len(now):
                return now, False
        now, self.deferred = [*self.deferred, *chunk], []
        return now, False

    async def _write(self, chunk: list[tuple[str, PollResult]]) -> None:
        """Write the results of finished ids (once each), acknowledge them."""
        b = self.batch
        k = b.keys
        args: list[str] = [GROUP, b.worker]
        written: list[tuple[str, PollResult, str]] = []
        chunk, stopped = self._held_back(chunk)
        for entry, result in chunk:
            error = result.error
            if isinstance(error, BatchStoppedError):
                stopped = True  # not a result: handed back as the worker stops
                continue
            if isinstance(error, asyncio.CancelledError | ManagerClosedError):
                self._drop(entry)  # taken over elsewhere, or stopping: not ours
                continue
            record = self.record(result)
            outcome = str(record["result"])
            args += [entry, result.id, outcome, json_line(record)]
            written.append((entry, result, outcome))
        if stopped:
            self.diagnosis = self.manager.diagnosis
            self.stop.set()
        if not written:
            self.room.set()
            return
        reply = await b._run(
            "finish", [k.queue, k.done, k.results, k.outcomes, k.ids, k.loaders], args
        )
        flags, (done, total, loading) = reply[:-3], reply[-3:]
        for (entry, result, outcome), flag in zip(written, flags, strict=True):
            self._drop(entry)
            if flag:
                self.counts["finished"] += 1
                self.outcomes[outcome] += 1
            else:
                self.counts["duplicates"] += 1
            if self.on_result is not None:
                answer = self.on_result(result, bool(flag))
                if inspect.isawaitable(answer):
                    await answer
        self.room.set()
        if int(total) > 0 and int(done) >= int(total) and int(loading) == 0:
            self.complete = True
            self.stop.set()

    async def _sweep(self) -> None:
        """Delete the workers with nothing pending, silent for ``reclaim_after``."""
        b = self.batch
        idle = math.ceil(b.reclaim_after * 1000)
        removed = await b._run("sweep", [b.keys.queue], [GROUP, b.worker, idle])
        if removed:
            logger.info("batch %r: %s dead worker(s) removed", b.name, removed)

    async def _mine(self, idle: int) -> list[Any]:
        """The entries pending here, given ``idle`` (0: renewed; see ``MINE``)."""
        b = self.batch
        entries: list[Any] = await b._run(
            "mine", [b.keys.queue], [GROUP, b.worker, idle]
        )
        return entries

    async def _renew(self) -> None:
        """Reset the idle time of this worker's entries; let go of those taken.

        Entries pending here that this worker does not hold (a read whose
        answer was lost on the way) are taken up if still stray at the next
        renewal; renewed meanwhile, they would otherwise never end.
        """
        b = self.batch
        before = dict(self.held)
        mine = {text(entry) for entry in await self._mine(0)}
        for entry, pid in before.items():
            task = self.tasks.get(entry)
            if entry not in mine and task is not None and not task.done():
                # Another worker took it over (this one stalled): stop polling.
                await self.manager.cancel(pid)
        strays = mine - self.held.keys() - self.taking
        lost, self.strays = strays & self.strays, strays
        if lost:
            logger.info("batch %r: %d stray entries taken up", b.name, len(lost))
            found = [await b._redis.xrange(b.keys.queue, e, e) for e in sorted(lost)]
            await self._take([item for items in found for item in items or []])

    async def _take_over(self) -> None:
        """Take over the entries of workers silent for ``reclaim_after``."""
        b = self.batch
        if len(self.held) >= 2 * b.prefetch:
            return
        idle = math.ceil(b.reclaim_after * 1000)
        cursor = "0-0"
        claimed: list[tuple[Any, Any]] = []
        while len(claimed) < b.prefetch:
            reply = await b._redis.xautoclaim(
                b.keys.queue,
                GROUP,
                b.worker,
                idle,
                cursor,
                count=min(READ_COUNT, b.prefetch - len(claimed)),
            )
            cursor = text(reply[0])
            claimed.extend(reply[1])
            if cursor == "0-0":
                break
        if claimed:
            await self._take(claimed, over=True)
