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

import asyncio
import contextlib
import inspect
import json
import logging
import math
import os
import re
import secrets
import socket
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
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
    BatchStoppedError,
    ConfigurationError,
    ManagerClosedError,
    PollTimeout,
    RequestError,
)
from .._manager import PollManager, PollResult
from .._options import check_at_least, check_positive
from .._results import Diagnosis
from ._errors import (
    RedisBatchError,
    RedisStoreError,
    RedisUnavailableError,
    UnknownBatchError,
)

__all__ = [
    "BatchKeys",
    "BatchResult",
    "BatchStatus",
    "RedisBatch",
    "WorkerReport",
    "redact_url",
]

logger: Final = logging.getLogger("replipoll.redis")

#: The consumer group every worker of a batch joins.
GROUP: Final = "workers"
#: Ids per load script call, and finished ids per finish script call.
_CHUNK: Final = 1000
#: The idle time (ms) that hands an entry back: past any worker's reclaim_after.
_HAND_BACK_MS: Final = 365 * 86_400_000
#: Ids read per ``XREADGROUP``, at most.
_READ_COUNT: Final = 100

ResultCallback = Callable[[PollResult, bool], Awaitable[None] | None]
RecordMaker = Callable[[PollResult], Mapping[str, Any]]

# -- the scripts -------------------------------------------------------------
# Every one reads Redis's clock as ms with this line.
_NOW: Final = (
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
)

# KEYS: ids, queue, loaders, meta. ARGV: loader, lease (ms), 'begin' | 'end' |
# 'add', then the ids. Returns how many ids were new.
_LOAD: Final = (
    _NOW
    + """
local op = ARGV[3]
if op == 'end' then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('HINCRBY', KEYS[4], 'loads_finished', 1)
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
if op == 'begin' then
  redis.call('HINCRBY', KEYS[4], 'loads_started', 1)
  return 0
end
local added = 0
for i = 4, #ARGV do
  if redis.call('SADD', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'id', ARGV[i])
    added = added + 1
  end
end
return added
"""
)

# KEYS: queue, done, results, outcomes, ids, loaders. ARGV: group, worker, then
# (entry, id, result, record) for each finished id. Returns a 1 (written) or
# 0 (done already) per id, then done, total and live loaders.
_FINISH: Final = (
    _NOW
    + """
local reply = {}
for i = 3, #ARGV, 4 do
  local entry, id, result = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('SADD', KEYS[2], id) == 1 then
    redis.call('XADD', KEYS[3], '*', 'id', id, 'result', result,
      'worker', ARGV[2], 'record', ARGV[i + 3])
    redis.call('HINCRBY', KEYS[4], result, 1)
    reply[#reply + 1] = 1
  else
    reply[#reply + 1] = 0
  end
  redis.call('XACK', KEYS[1], ARGV[1], entry)
end
reply[#reply + 1] = redis.call('SCARD', KEYS[2])
reply[#reply + 1] = redis.call('SCARD', KEYS[5])
reply[#reply + 1] = redis.call('ZCOUNT', KEYS[6], now, '+inf')
return reply
"""
)

# KEYS: queue. ARGV: group, worker, and the idle time (ms) to set: 0 to keep
# this worker's pending entries (a heartbeat), more to hand them back. With
# nothing pending, a worker handing back deletes itself from the group.
# Returns the entries concerned.
_MINE: Final = """
local entries = {}
local start = '-'
while true do
  local page = redis.call('XPENDING', KEYS[1], ARGV[1], start, '+', 1000, ARGV[2])
  if #page == 0 then break end
  local ids = {}
  for _, item in ipairs(page) do
    ids[#ids + 1] = item[1]
    entries[#entries + 1] = item[1]
  end
  if ARGV[3] ~= '0' then
    ids[#ids + 1] = 'IDLE'
    ids[#ids + 1] = ARGV[3]
  end
  ids[#ids + 1] = 'JUSTID'
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, unpack(ids))
  if #page < 1000 then break end
  start = '(' .. page[#page][1]
end
if #entries == 0 and ARGV[3] ~= '0' then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
return entries
"""

# KEYS: queue. ARGV: group, this worker, silence (ms). Deletes the consumers
# (not this one) with nothing pending, silent that long; returns how many.
_SWEEP: Final = """
local removed = 0
for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[2] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed = removed + 1
  end
end
return removed
"""

# KEYS: ids, done, queue, outcomes, loaders, meta. ARGV: group. Returns total,
# done, live loaders, loads started, loads finished, pending, consumers, then
# the outcomes as name, count pairs.
_STATUS: Final = (
    _NOW
    + """
local meta = redis.call('HMGET', KEYS[6], 'loads_started', 'loads_finished')
local pending, consumers = 0, 0
if redis.call('EXISTS', KEYS[3]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[3])) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    if info['name'] == ARGV[1] then
      pending, consumers = info['pending'], info['consumers']
    end
  end
end
local reply = {
  redis.call('SCARD', KEYS[1]), redis.call('SCARD', KEYS[2]),
  redis.call('ZCOUNT', KEYS[5], now, '+inf'),
  tonumber(meta[1]) or 0, tonumber(meta[2]) or 0, pending, consumers,
}
for _, value in ipairs(redis.call('HGETALL', KEYS[4])) do
  reply[#reply + 1] = value
end
return reply
"""
)


# -- errors ------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority or the query) replaced by ``***``.

    Example:
        >>> redact_url("redis://user:s3cret@cache:6380/2")
        'redis://user:***@cache:6380/2'
        >>> redact_url("unix:///run/redis.sock?db=1&password=s3cret")
        'unix:///run/redis.sock?db=1&password=***'
        >>> redact_url("redis://localhost")
        'redis://localhost'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        name, colon, _ = userinfo.partition(":")
        authority = f"{name}:***@{host}" if colon else f"***@{host}"
    tail = _QUERY_PASSWORD.sub(r"\1***", tail)
    return f"{scheme}{sep}{authority}{tail}"


#: A password given in a URL's query (``unix://...?password=...``).
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _where(connection: Redis) -> str:
    """Redis's address as a URL without credentials, for messages."""
    options: dict[str, Any] = connection.connection_pool.connection_kwargs
    if "path" in options:
        return f"unix://{options['path']}?db={options.get('db', 0)}"
    host, port = options.get("host", "localhost"), options.get("port", 6379)
    return f"redis://{host}:{port}/{options.get('db', 0)}"


def _secrets_of(connection: Redis) -> list[str]:
    """The passwords a connection holds, to cut out of any message."""
    options = connection.connection_pool.connection_kwargs
    return [s for s in (options.get("password"),) if isinstance(s, str) and s]


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- values ------------------------------------------------------------------


@attrs.frozen
class BatchKeys:
    """The Redis keys of one batch (see the module's documentation)."""

    ids: str
    queue: str
    done: str
    results: str
    outcomes: str
    loaders: str
    meta: str

    @classmethod
    def of(cls, prefix: str, name: str) -> BatchKeys:
        """The keys of batch ``name`` under ``prefix``.

        Example:
            >>> BatchKeys.of("replipoll:", "nightly").queue
            'replipoll:batch:{nightly}:queue'
        """
        base = f"{prefix}batch:{{{name}}}:"
        return cls(*(base + field.name for field in attrs.fields(cls)))

    def all(self) -> list[str]:
        """Every key, in field order."""
        return list(attrs.astuple(self))


@attrs.frozen
class BatchStatus:
    """Where a batch stands, as read from Redis in one step.

    Attributes:
        name: The batch.
        total: Ids loaded.
        done: Ids whose result is written.
        loading: Workers loading ids right now (their lease is running).
        loads_started: Loads ever begun.
        loads_finished: Loads that ran to their end.
        pending: Ids delivered to a worker and not finished (held).
        consumers: Workers in the group: alive, or dead and not yet
            cleaned up.
        outcomes: Results written, by ``result`` (``"succeeded"``,
            ``"error"``...).
    """

    name: str
    total: int
    done: int
    loading: int
    loads_started: int
    loads_finished: int
    pending: int
    consumers: int
    outcomes: dict[str, int]

    @property
    def exists(self) -> bool:
        """Whether the batch has ids, or a worker is loading some."""
        return self.total > 0 or self.loading > 0

    @property
    def complete(self) -> bool:
        """Whether every id loaded is done and nobody is loading more."""
        return self.total > 0 and self.done >= self.total and self.loading == 0

    @property
    def interrupted_loads(self) -> int:
        """How many loads stopped halfway (their worker died), leaving ids out.

        Run a worker with the same ids again to finish loading them.
        """
        return max(self.loads_started - self.loads_finished - self.loading, 0)

    @property
    def all_succeeded(self) -> bool:
        """Whether the batch is complete and every id ``succeeded``."""
        return self.complete and self.outcomes.get("succeeded", 0) == self.total


@attrs.frozen
class BatchResult:
    """One entry of a batch's results: an id and how it ended.

    Attributes:
        id: The prediction id.
        result: Its final status, or ``"error"``.
        worker: The worker (consumer name) that wrote it.
        record: The record: ``id``, ``result``, ``status``, ``prediction``
            (:meth:`Prediction.to_json <replipoll.Prediction.to_json>`) and
            ``error``, as ``replipoll poll`` writes each JSON line.
    """

    id: str
    result: str
    worker: str
    record: dict[str, Any]


@attrs.frozen
class WorkerReport:
    """What one worker did, as :meth:`RedisBatch.work` returns it.

    Attributes:
        worker: Its consumer name (``host:pid:random``).
        complete: Whether the batch was complete when it returned.
        finished: Results this worker wrote.
        duplicates: Ids it finished whose result another worker had
            written first (not written again).
        skipped: Ids delivered to it that were done already (acknowledged,
            not polled).
        taken_over: Ids it took over from workers that stopped or died.
        handed_back: Ids it held when it stopped, handed back to the batch.
        outcomes: The results it wrote, by ``result``.
        diagnosis: Why it stopped early, when its first answers showed that
            every request of its fails for one reason (a refused key, a
            wrong base URL); its ids were handed back, not written.
    """

    worker: str
    complete: bool
    finished: int
    duplicates: int
    skipped: int
    taken_over: int
    handed_back: int
    outcomes: dict[str, int]
    diagnosis: Diagnosis | None = None


def batch_record(result: PollResult) -> dict[str, Any]:
    """The record written for a finished id (as ``replipoll poll``'s JSON lines).

    ``result`` is the final status, or ``"error"`` when polling ended without
    one; ``error`` then says what happened (never the API key).

    Example:
        >>> from replipoll import NotFoundError, PollResult
        >>> record = batch_record(PollResult("ghost", None, NotFoundError("gone")))
        >>> record["result"], record["error"]["type"]
        ('error', 'NotFoundError')
    """
    prediction = result.prediction
    status = str(prediction.status) if prediction is not None else None
    error = result.error
    info: dict[str, Any] | None = None
    if error is not None:
        info = {"type": type(error).__name__, "message": str(error)}
        if isinstance(error, RequestError):
            info.update(
                status=error.status,
                request_id=error.request_id,
                attempts=error.attempts,
            )
        elif isinstance(error, PollTimeout):
            info["timeout"] = error.timeout
    return {
        "id": result.id,
        "result": status if error is None and status is not None else "error",
        "status": status,
        "prediction": prediction.to_json() if prediction is not None else None,
        "error": info,
    }


def _null(constant: str) -> None:
    return None


def _json(record: Mapping[str, Any]) -> str:
    """Strict JSON on one line: a NaN or infinity a server sent becomes null."""
    try:
        return json.dumps(record, allow_nan=False, separators=(",", ":"))
    except ValueError:
        finite = json.loads(json.dumps(record), parse_constant=_null)
        return json.dumps(finite, allow_nan=False, separators=(",", ":"))


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


async def _end(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for their end, cancelling again any that go on.

    On Python 3.11 a cancellation can be lost in ``asyncio.wait_for`` (which
    redis-py uses) when the awaited call ends at the same moment: a task
    cancelled in a Redis call may carry on as if nothing happened.
    """
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    for task in every:
        if not task.cancelled():
            task.exception()  # retrieved: the worker reports what matters


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
        self._url = _where(self._redis)
        for label, text in (
            ("load", _LOAD),
            ("finish", _FINISH),
            ("mine", _MINE),
            ("sweep", _SWEEP),
            ("status", _STATUS),
        ):
            self._scripts[label] = self._redis.register_script(text)

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
            for secret in _secrets_of(self._redis):
                reason = reason.replace(secret, "***")
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
                if len(chunk) == _CHUNK:
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
        pairs = [_text(x) for x in reply[7:]]
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
                fields = {_text(f): _text(v) for f, v in raw.items()}
                yield BatchResult(
                    fields["id"],
                    fields["result"],
                    fields.get("worker", ""),
                    json.loads(fields["record"]),
                )
            if not entries or len(entries) < page:
                return
            start = "(" + _text(entries[-1][0])

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
        worker = _Worker(self, manager, on_result, record)
        with self._speaking():
            return await worker.run()


@attrs.define(eq=False)
class _Worker:
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
        await _end(loops)
        await _end(self.tasks.values())
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
            given = await self._mine(_HAND_BACK_MS)
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
                count=min(free, _READ_COUNT),
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
            while len(chunk) < _CHUNK and not self.finished.empty():
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
            entry = _text(entry)
            if entry in self.held or entry in self.taking:
                continue  # (the reader and the take-over may both bring it)
            self.taking.add(entry)
            pid = None
            if fields:
                pid = {_text(f): _text(v) for f, v in fields.items()}.get("id")
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

    async def _write(self, chunk: list[tuple[str, PollResult]]) -> None:
        """Write the results of finished ids (once each), acknowledge them."""
        b = self.batch
        k = b.keys
        args: list[str] = [GROUP, b.worker]
        written: list[tuple[str, PollResult, str]] = []
        stopped = False
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
            args += [entry, result.id, outcome, _json(record)]
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
        """The entries pending here, given ``idle`` (0: renewed; see ``_MINE``)."""
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
        mine = {_text(entry) for entry in await self._mine(0)}
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
                count=min(_READ_COUNT, b.prefetch - len(claimed)),
            )
            cursor = _text(reply[0])
            claimed.extend(reply[1])
            if cursor == "0-0":
                break
        if claimed:
            await self._take(claimed, over=True)
