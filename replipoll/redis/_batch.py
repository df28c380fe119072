"""One batch of prediction ids in Redis, polled by any number of workers.

A :class:`RedisBatch` is a handful of keys named after the batch; every
step that must not be half done is one Lua script, so any worker may be
killed at any moment (``kill -9`` included) without an id lost or written
twice::

    {prefix}batch:{NAME}:ids       SET     every id loaded
    {prefix}batch:{NAME}:queue     STREAM  one entry per id; consumer group "workers"
    {prefix}batch:{NAME}:done      SET     ids whose result is written
    {prefix}batch:{NAME}:results   STREAM  one entry per finished id: id, result,
                                           worker, record (the JSON Lines record)
    {prefix}batch:{NAME}:outcomes  HASH    result ("succeeded", "error"...) -> ids
    {prefix}batch:{NAME}:loaders   ZSET    workers loading ids -> lease end (ms)
    {prefix}batch:{NAME}:meta      HASH    loads_started, loads_finished

(The braces are Redis Cluster's hash tag: one batch lives in one slot.)

- **Loading** (:meth:`RedisBatch.load`): an id is added to the queue only
  if its ``SADD`` into the id set says it is new, in the same script; any
  number of workers may load the same ids at once and the union is loaded
  once. A loader holds a lease in the loaders set while it loads, so the
  batch is not taken for finished halfway through a load.
- **Working** (:meth:`RedisBatch.work`): each worker is a consumer of the
  queue's group; it reads a few ids at a time (``XREADGROUP``), holds at
  most ``prefetch`` of them, and polls them with its own
  :class:`~replipoll.PollManager`.
- **Finishing**: one script per group of finished ids: ``SADD`` into the done
  set, and only if that is new, ``XADD`` the record to the results; in every
  case ``XACK``. A result is written once, whichever worker ends an id.
- **Heartbeat and take-over**: entries stay pending while their predictions
  run (minutes, maybe), so a worker resets their idle time every quarter of
  ``reclaim_after`` (``XCLAIM`` to itself). Every worker takes over entries
  idle for ``reclaim_after`` (``XAUTOCLAIM``): a dead worker's. A worker that
  stops (Ctrl-C, a refused key) hands its entries back at once; a consumer
  with nothing pending that has been silent for ``reclaim_after`` is
  deleted.
- **The end**: a worker returns once every id loaded is done and nobody is
  loading; until then it stays, to take over a dead worker's ids.

Times are Redis's own (``TIME``), so the hosts' clocks never matter. What
goes wrong with Redis is said in the batch's errors (never a password)::

    ReplipollError
    └── RedisStoreError            .url, .reason
        ├── RedisUnavailableError  no connection to Redis, or no answer in time
        └── RedisBatchError        Redis answered an error or refused the
            │                      credentials; .batch
            └── UnknownBatchError  no ids in the batch, and none being loaded
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import socket
from collections.abc import (
    AsyncIterator,
    Iterable,
    Iterator,
    Sequence,
)
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import attrs
import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from .._errors import (
    ConfigurationError,
)
from .._manager import PollManager
from .._options import check_at_least, check_positive
from ._batch_scripts import (
    CHUNK,
    FINISH,
    GROUP,
    LOAD,
    MINE,
    STATUS,
    SWEEP,
)
from ._batch_values import (
    BatchKeys,
    BatchResult,
    BatchStatus,
    RecordMaker,
    ResultCallback,
    WorkerReport,
    batch_record,
    text,
)
from ._connection import redact_url, scrub, where
from ._errors import (
    RedisBatchError,
    RedisUnavailableError,
)
from ._worker import Worker

__all__ = ["RedisBatch"]

logger: Final = logging.getLogger("replipoll.redis")


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _check_name(instance: object, attribute: Any, value: Any) -> None:
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 200
        or any(c in value for c in "{}")
        or not value.isprintable()
        or value != value.strip()
    ):
        raise ConfigurationError(
            "RedisBatch: name must be 1 to 200 printable characters, without "
            f"braces or surrounding spaces, got {value!r}",
            option="name",
        )


def _check_redis(instance: object, attribute: Any, value: Any) -> None:
    if not isinstance(value, Redis):
        raise ConfigurationError(
            f"RedisBatch: redis must be a redis.asyncio.Redis, got {value!r}",
            option="redis",
        )


def _positive(instance: object, attribute: Any, value: Any) -> None:
    check_positive("RedisBatch", attribute.name, value)


def _at_least_one(instance: object, attribute: Any, value: Any) -> None:
    check_at_least("RedisBatch", attribute.name, value, 1)


# -- the batch ---------------------------------------------------------------


@attrs.define(eq=False)
class RedisBatch:
    """One batch of prediction ids in Redis, shared by any number of workers.

    Every worker makes its own ``RedisBatch`` (same ``name`` and ``prefix``),
    loads the ids it was given (:meth:`load`: any number may load the same
    ones), and polls its share until the batch is done (:meth:`work`). Each
    id's result is written once, whichever worker ends it, and a worker that
    dies mid-batch loses nothing: after ``reclaim_after`` seconds the others
    take its ids over. :meth:`results` reads every result back. See the
    module's documentation for the keys.

    Args:
        redis: A ``redis.asyncio.Redis`` client (this batch does not close it);
            :meth:`from_url` makes one of its own.
        name: The batch's name (1 to 200 printable characters, no braces).
        prefix: Put before every key.
        reclaim_after: Seconds after which a worker's ids are taken over by
            the others if it has not shown signs of life (a live worker
            renews its ids every quarter of it). It bounds how long a dead
            worker's ids wait; keep it well above the longest stall of an
            event loop.
        prefetch: The most new ids a worker holds at once; it may hold as
            many more taken over from dead workers. Small enough that one
            worker does not hoard the batch.
        worker: This worker's consumer name; default ``host:pid:random``.

    Raises:
        ConfigurationError: a bad option; ``option`` names it.

    Example:
        >>> import asyncio, replipoll
        >>> from replipoll.redis import RedisBatch
        >>> async def worker(url, ids):
        ...     async with RedisBatch.from_url(url, "nightly") as batch:
        ...         await batch.load(ids)  # any number of workers may
        ...         async with replipoll.Client() as client, replipoll.PollManager(
        ...             client, stop_on_systemic=True
        ...         ) as manager:
        ...             return await batch.work(manager)
    """

    _redis: Redis = attrs.field(alias="redis", validator=_check_redis)
    name: str = attrs.field(validator=_check_name)
    prefix: str = attrs.field(default="replipoll:", kw_only=True)
    reclaim_after: float = attrs.field(default=30.0, kw_only=True, validator=_positive)
    prefetch: int = attrs.field(default=500, kw_only=True, validator=_at_least_one)
    worker: str = attrs.field(factory=_worker_name, kw_only=True)
    keys: BatchKeys = attrs.field(init=False)
    _url: str = attrs.field(init=False)
    _owns_redis: bool = attrs.field(init=False, default=False)
    _scripts: dict[str, Any] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        self.keys = BatchKeys.of(self.prefix, self.name)
        self._url = where(self._redis)
        for label, script in (
            ("load", LOAD),
            ("finish", FINISH),
            ("mine", MINE),
            ("sweep", SWEEP),
            ("status", STATUS),
        ):
            self._scripts[label] = self._redis.register_script(script)

    @classmethod
    def from_url(
        cls, url: str, name: str, *, timeout: float = 5.0, **options: Any
    ) -> Self:
        """A batch on a connection of its own to the Redis at ``url``.

        The connection is closed with the batch (:meth:`aclose`). Connecting
        gives up after ``timeout`` seconds, and a failed command is tried
        twice more within a second or two, so an unreachable Redis is said
        in seconds, never a hang.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``,
                ``rediss://...`` or ``unix://path``.
            name: The batch's name.
            timeout: Seconds to connect, and to wait for an answer (past
                the short blocking reads of :meth:`work`).
            options: The other options of :class:`RedisBatch`.

        Raises:
            ConfigurationError: ``url`` is not a Redis URL (the message
                never shows its password).
        """
        check_positive(cls.__name__, "timeout", timeout)
        try:
            connection = Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=timeout,
                socket_timeout=timeout + 2.0,
                retry=Retry(ExponentialBackoff(cap=1.0, base=0.1), 2),
            )
        except ValueError as exc:
            reason = str(exc)
            with contextlib.suppress(ValueError):
                password = urlsplit(url).password
                reason = reason.replace(password, "***") if password else reason
            reason = reason.replace(url, redact_url(url))
            raise ConfigurationError(
                f"unusable Redis URL {redact_url(url)}: {reason}", option="url"
            ) from None
        batch = cls(connection, name, **options)
        batch._owns_redis = True
        return batch

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection, if :meth:`from_url` made it. Idempotent."""
        if self._owns_redis:
            self._owns_redis = False
            await self._redis.aclose()

    @property
    def url(self) -> str:
        """Where the batch's Redis is, without credentials."""
        return self._url

    # -- talking to Redis ------------------------------------------------------

    @contextlib.contextmanager
    def _speaking(self) -> Iterator[None]:
        """Turn redis-py's errors into the batch's; never a password in them."""
        try:
            yield
        except redis.exceptions.RedisError as exc:
            reason = str(exc) or type(exc).__name__
            reason = scrub(reason, self._redis)
            if isinstance(exc, redis.exceptions.AuthenticationError) or any(
                word in reason for word in ("WRONGPASS", "NOAUTH", "NOPERM")
            ):
                message = f"Redis at {self._url} refused the credentials ({reason})"
            elif isinstance(
                exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError
            ):
                raise RedisUnavailableError(
                    f"cannot reach Redis at {self._url} ({reason})",
                    url=self._url,
                    reason=reason,
                    key=self.name,
                ) from None
            else:
                message = f"Redis at {self._url} answered an error ({reason})"
            raise RedisBatchError(
                message, url=self._url, batch=self.name, reason=reason
            ) from None

    async def _run(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[script](keys=list(keys), args=list(args))

    async def _prepare(self) -> None:
        try:
            await self._redis.xgroup_create(
                self.keys.queue, GROUP, id="0", mkstream=True
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- loading ---------------------------------------------------------------

    async def load(self, ids: Iterable[str]) -> int:
        """Add ids to the batch; return how many were new to it.

        Ids already loaded (by this worker or any other, before or at the
        same time) are skipped, so every worker of a batch may be given the
        same ids. While it loads, a lease tells the others that more may
        come; a loader that dies mid-load leaves whole ids only, and a rerun
        with the same ids loads the rest.

        Raises:
            RedisStoreError: Redis failed (:class:`RedisUnavailableError`:
                could not be reached).
        """
        k = self.keys
        keys = [k.ids, k.queue, k.loaders, k.meta]
        lease = math.ceil(max(self.reclaim_after, 5.0) * 1000)
        added = 0
        with self._speaking():
            await self._prepare()
            await self._run("load", keys, [self.worker, lease, "begin"])
            head = [self.worker, lease, "add"]
            chunk: list[str] = []
            for pid in ids:
                chunk.append(pid)
                if len(chunk) == CHUNK:
                    added += await self._run("load", keys, [*head, *chunk])
                    chunk = []
            if chunk:
                added += await self._run("load", keys, [*head, *chunk])
            await self._run("load", keys, [self.worker, lease, "end"])
        return added

    # -- reading -----------------------------------------------------------------

    async def status(self) -> BatchStatus:
        """Where the batch stands (one script: a consistent snapshot).

        Raises:
            RedisStoreError: Redis failed.
        """
        k = self.keys
        with self._speaking():
            reply = await self._run(
                "status",
                [k.ids, k.done, k.queue, k.outcomes, k.loaders, k.meta],
                [GROUP],
            )
        total, done, loading, started, finished, pending, consumers = map(
            int, reply[:7]
        )
        pairs = [text(x) for x in reply[7:]]
        return BatchStatus(
            self.name,
            total=total,
            done=done,
            loading=loading,
            loads_started=started,
            loads_finished=finished,
            pending=pending,
            consumers=consumers,
            outcomes={pairs[i]: int(pairs[i + 1]) for i in range(0, len(pairs), 2)},
        )

    async def results(self, *, page: int = 1000) -> AsyncIterator[BatchResult]:
        """Every result written so far, in the order they were written.

        Each id appears once. Read it while workers run, or after.

        Raises:
            RedisStoreError: Redis failed.
        """
        start = "-"
        while True:
            with self._speaking():
                entries: Any = await self._redis.xrange(
                    self.keys.results, start, "+", count=page
                )
            for _, raw in entries or []:
                fields = {text(f): text(v) for f, v in raw.items()}
                yield BatchResult(
                    fields["id"],
                    fields["result"],
                    fields.get("worker", ""),
                    json.loads(fields["record"]),
                )
            if not entries or len(entries) < page:
                return
            start = "(" + text(entries[-1][0])

    async def delete(self) -> int:
        """Delete the batch's keys: its ids, results and all; return how many.

        Workers still running it stop with :class:`UnknownBatchError`.

        Raises:
            RedisStoreError: Redis failed.
        """
        with self._speaking():
            return int(await self._redis.delete(*self.keys.all()))

    # -- working ---------------------------------------------------------------

    async def work(
        self,
        manager: PollManager,
        *,
        on_result: ResultCallback | None = None,
        record: RecordMaker = batch_record,
    ) -> WorkerReport:
        """Poll this worker's share of the batch until the whole batch is done.

        Reads ids from the batch, polls each with ``manager``, and writes
        each result once (see the module's documentation). It returns when
        every id loaded is done and nobody is loading more, staying until
        then even with nothing of its own, so as to take over a dead
        worker's ids. Ids that end in an error (not found, a timeout) are
        results too (``"error"``).

        If the manager stops the batch (``stop_on_systemic=True`` and a
        refused key, say), it returns early with the manager's
        :attr:`~WorkerReport.diagnosis`, and the ids it held are handed back
        for other workers, not written. When it is cancelled, or fails, its
        ids are handed back too.

        Args:
            manager: The :class:`~replipoll.PollManager` to poll with
                (``stop_on_systemic=True`` recommended).
            on_result: Called (sync or async) with each id this worker
                ended and whether its result was written here (``False``:
                another worker's was first). If it raises, the worker stops
                with that exception.
            record: Makes the record written for an id (a JSON object with a
                string ``result``); :func:`batch_record` by default.

        Raises:
            UnknownBatchError: The batch has no ids, and nobody is loading
                any (check its name and prefix, or load ids first).
            RedisStoreError: Redis failed; the others take this worker's ids
                over after ``reclaim_after``.
        """
        worker = Worker(self, manager, on_result, record)
        with self._speaking():
            return await worker.run()
