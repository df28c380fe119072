"""Share the polling of ids, and the records learned, between processes.

:class:`RedisShare` is a :class:`~replipoll.Share` kept in Redis. Keys and
the channel, under the share's ``prefix``:

=========================  ==================================================
``{prefix}records``        pub/sub channel: every record published, as JSON
                           ``{"id": ..., "record": ..., "from": ...}``
                           (``record`` is :meth:`~replipoll.Prediction.to_json`,
                           ``from`` the publisher's lease token)
``{prefix}result:{id}``    a terminal record, the same JSON, kept
                           ``result_ttl`` (set with its PUBLISH in one MULTI)
``{prefix}lease:{id}``     the token of the process polling the id, expiring
                           ``lease_ttl`` after its last renewal
=========================  ==================================================

Two background tasks per attached manager do the I/O: a *listener*
subscribed to the channel, and a *worker* that turns what the manager said
(track, untrack, publish) into one round trip, about a millisecond later,
renews the leases held every ``lease_ttl / 3`` and tries those of the ids
tracked but not held every ``lease_ttl / 4``. What the manager calls is
synchronous and local: sets and a queue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import math
import os
import socket
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Final, Literal, Self

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from .._errors import ConfigurationError
from .._models import Prediction
from .._options import check_positive
from .._share import ShareHooks
from ._connection import scrub, where
from ._tasks import end_tasks

__all__ = ["RedisShare"]

logger: Final = logging.getLogger("replipoll.redis")

# Per id, in one script: the stored result (if any), and the lease: won if
# set now, or already this token's. KEYS: result, lease, result, lease...
_CLAIM: Final = """
local out = {}
for i = 1, #KEYS, 2 do
  local stored = redis.call('GET', KEYS[i])
  local won = 0
  if redis.call('SET', KEYS[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    won = 1
  elseif redis.call('GET', KEYS[i + 1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
    won = 1
  end
  out[#out + 1] = won
  out[#out + 1] = stored
end
return out
"""
# Extend the leases still ours (and take back those that expired with no
# one taking them); return the 1-based places of those someone else holds.
_RENEW: Final = """
local lost = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
  elseif not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
  else
    lost[#lost + 1] = i
  end
end
return lost
"""
_RELEASE: Final = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then n = n + redis.call('DEL', key) end
end
return n
"""

#: Ids per script call, and per round trip of the worker.
_CHUNK: Final = 500
_CYCLE: Final = 5000
_RECORDS: Final = 500
#: How long the worker lets the loop add work before a round trip.
_WINDOW: Final = 0.001
#: Records kept for publishing while Redis is away (the oldest go first).
_OUTBOX: Final = 10_000
#: What counts as Redis failing: its errors, sockets', and our own bound.
_FAILURES: Final = (RedisError, OSError, TimeoutError)


class _Session:
    """The state of one attached manager: what it tracks, what this holds."""

    __slots__ = (
        "claims",
        "corrupt",
        "dropped",
        "held",
        "hooks",
        "outbox",
        "ready",
        "releases",
        "resync",
        "stopping",
        "tasks",
        "token",
        "tracked",
        "wake",
    )

    def __init__(self, hooks: ShareHooks, token: str) -> None:
        self.hooks: ShareHooks | None = hooks
        self.token = token
        self.tracked: set[str] = set()
        self.held: set[str] = set()
        # Ids whose last may_poll was refused: the manager dropped a request
        # and waits for poll_now. Others have a request queued or scheduled.
        self.dropped: set[str] = set()
        self.claims: dict[str, None] = {}  # ordered: claimed as tracked
        self.releases: set[str] = set()
        self.corrupt: set[str] = set()  # a stored result did not decode: said once
        self.outbox: collections.deque[Prediction] = collections.deque(maxlen=_OUTBOX)
        self.wake = asyncio.Event()
        self.ready = asyncio.Event()  # the listener is subscribed
        self.resync = False  # claim every unheld id at once (records missed)
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    def pending(self) -> bool:
        """Whether a round trip is due at once."""
        return bool(self.claims or self.releases or self.outbox or self.resync)

    def stopped(self) -> bool:
        """Whether the manager is gone (a call: it changes across awaits)."""
        return self.stopping


class RedisShare:
    """Share ids between the managers of many processes, through Redis.

    Each id tracked by several processes is polled by one of them at a time,
    the one holding its *lease* in Redis; a record any of them learns (by a
    poll, or a webhook pushed to it) reaches every other one awaiting its
    id, at once, through a pub/sub channel; a terminal record is also kept
    ``result_ttl`` seconds, so a process that starts tracking the id later
    resolves it without a request. When a process dies, its leases expire
    and the others take its ids over within about ``lease_ttl``.

    Leases are for efficiency, not correctness: a poll is an idempotent
    ``GET``, so two processes polling one id for a moment (a lease expiring
    during a stall, a take-over) only cost a request.

    If Redis does not answer (or fails), the share says so once, at ERROR
    on the ``replipoll.redis`` logger, and by default falls back to what a
    process does alone: it polls every id it tracks, so nothing waits on
    Redis (the request budget is spent more). When Redis answers again it
    says so at WARNING, and the leases are taken again. Every Redis call is
    bounded by ``timeout``.

    Each process tries the lease of every id it tracks but does not hold
    every ``lease_ttl / 4`` (a script call per 500 ids, in one round trip):
    with very many ids, a longer ``lease_ttl`` asks less of Redis.

    One share serves one :class:`~replipoll.PollManager` at a time (give
    each manager its own). Its background tasks run while a manager is
    attached; :meth:`aclose` (or leaving ``async with``) ends them, gives
    the leases back, and closes a connection that :meth:`from_url` opened.
    Redis Cluster is not supported (the scripts touch many keys).

    Args:
        redis: A :class:`redis.asyncio.Redis` (its connection is yours to
            close; see :meth:`from_url`). The share uses two of its pool's
            connections: one for the channel, one for the rest.
        prefix: Put before every key and the channel's name; processes
            share what shares the prefix.
        lease_ttl: Seconds a lease lasts without renewal (at least 0.1):
            about how long the ids of a process that died wait for a
            take-over.
        result_ttl: Seconds a terminal record is kept for processes that
            start tracking its id later.
        timeout: Seconds any Redis call may take before Redis counts as
            unavailable; default: 1 s, or ``lease_ttl / 2`` if shorter.
        on_unavailable: What a process polls while Redis is unavailable:
            ``"local"``, every id it tracks, as one process would (nothing
            waits on Redis); ``"wait"``, only those whose lease it held (no
            request is spent twice, but the other ids wait until Redis is
            back, and those of a process that dies meanwhile too).

    Raises:
        ConfigurationError: an option is unusable (``option`` names it).

    Example:
        >>> import asyncio, os, replipoll, secrets
        >>> from replipoll.redis import RedisShare
        >>> from replipoll.testing import FakeReplicate
        >>> async def main() -> list[str]:
        ...     url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        ...     async with FakeReplicate(seed=secrets.randbelow(2**32)) as server:
        ...         ids = server.add_predictions(3, duration=0.2)
        ...         base, key = server.base_url(), server.api_key
        ...         async with (
        ...             replipoll.Client(base_url=base, api_key=key) as client,
        ...             RedisShare.from_url(url, result_ttl=60) as share,
        ...             replipoll.PollManager(client, share=share) as manager,
        ...         ):
        ...             done = await asyncio.gather(*map(manager.wait, ids))
        ...     return [str(p.status) for p in done]
        >>> asyncio.run(main())
        ['succeeded', 'succeeded', 'succeeded']
    """

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = "replipoll:",
        lease_ttl: float = 10.0,
        result_ttl: float = 3600.0,
        timeout: float | None = None,
        on_unavailable: Literal["local", "wait"] = "local",
    ) -> None:
        owner = "RedisShare"
        if not isinstance(redis, Redis):
            raise ConfigurationError(
                f"{owner}: redis must be a redis.asyncio.Redis, "
                f"got {type(redis).__name__}",
                option="redis",
            )
        if not isinstance(prefix, str):
            raise ConfigurationError(
                f"{owner}: prefix must be a str, got {type(prefix).__name__}",
                option="prefix",
            )
        _check_seconds(owner, "lease_ttl", lease_ttl, least=0.1)
        _check_seconds(owner, "result_ttl", result_ttl, least=0.001)
        if timeout is not None:
            _check_seconds(owner, "timeout", timeout, least=0.001)
        if on_unavailable not in ("local", "wait"):
            raise ConfigurationError(
                f"{owner}: on_unavailable must be 'local' or 'wait', "
                f"got {on_unavailable!r}",
                option="on_unavailable",
            )
        self.redis = redis
        self.prefix = prefix
        self.lease_ttl = float(lease_ttl)
        self.result_ttl = float(result_ttl)
        self.timeout = float(
            timeout if timeout is not None else min(1.0, lease_ttl / 2)
        )
        self.on_unavailable: Literal["local", "wait"] = on_unavailable
        self._channel = f"{prefix}records"
        self._lease_ms = max(1, round(self.lease_ttl * 1000))
        self._result_ms = max(1, round(self.result_ttl * 1000))
        self._probe_every = min(1.0, self.lease_ttl / 4)
        self._where = where(redis)
        self._name = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._sessions = itertools.count(1)
        self._session: _Session | None = None
        self._stopping: set[asyncio.Task[None]] = set()
        self._owns = False
        self._started = self._closed = False
        self._down = False
        self._probe_at = 0.0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "replipoll:",
        lease_ttl: float = 10.0,
        result_ttl: float = 3600.0,
        timeout: float | None = None,
        on_unavailable: Literal["local", "wait"] = "local",
    ) -> RedisShare:
        """A share with a connection of its own to ``url``, closed by :meth:`aclose`.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
                or ``unix://`` (see :meth:`redis.asyncio.Redis.from_url`).
            prefix: See :class:`RedisShare`, as are the other options.
        """
        seconds: float | None = (
            timeout if timeout is not None else min(1.0, lease_ttl / 2)
        )
        if not (isinstance(seconds, int | float) and seconds > 0):
            seconds = None  # the constructor says what is wrong with it
        client = Redis.from_url(
            url,
            socket_connect_timeout=seconds,
            socket_timeout=seconds,
            # Once, at once: a connection left in the pool from before a
            # restart of Redis fails its first command.
            retry=Retry(NoBackoff(), 1),
        )
        share = cls(
            client,
            prefix=prefix,
            lease_ttl=lease_ttl,
            result_ttl=result_ttl,
            timeout=timeout,
            on_unavailable=on_unavailable,
        )
        share._owns = True
        return share

    def __repr__(self) -> str:
        state = "closed" if self._closed else "degraded" if self._down else "open"
        return f"<RedisShare {self._where} prefix={self.prefix!r} {state}>"

    @property
    def degraded(self) -> bool:
        """Whether Redis is unavailable now, as far as this share knows."""
        return self._down

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Check that Redis answers (optional: a manager's start does the rest).

        An unreachable Redis is logged, not raised: the share starts
        degraded (see :class:`RedisShare`).

        Raises:
            RuntimeError: the share is closed.
        """
        if self._closed:
            raise RuntimeError("this RedisShare is closed")
        if self._started:
            return
        self._started = True
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.ping()
        except _FAILURES as exc:
            self._lost(exc)

    async def aclose(self) -> None:
        """Stop the background tasks, give back the leases, close an owned connection.

        A manager still attached is detached first: from then on it polls
        every id it tracks, as without a share.
        """
        self._closed = True
        session = self._session
        if session is not None and session.hooks is not None:
            hooks = session.hooks
            for pid in list(session.dropped):  # nothing is scheduled for them
                hooks.poll_now(pid)
            self.detach(hooks)
        if self._stopping:  # (none is added once closed)
            await asyncio.gather(*self._stopping)
        if self._owns:
            self._owns = False
            with contextlib.suppress(*_FAILURES):
                async with asyncio.timeout(self.timeout):
                    await self.redis.aclose()

    # -- what the manager calls (replipoll.Share) --------------------------------

    def attach(self, hooks: ShareHooks) -> None:
        """Serve a manager that starts: its background tasks start now.

        Raises:
            ConfigurationError: the share already serves another manager.
            RuntimeError: the share is closed, or no event loop runs.
        """
        if self._closed:
            raise RuntimeError("this RedisShare is closed")
        if self._session is not None:
            if self._session.hooks is hooks:
                return
            raise ConfigurationError(
                "RedisShare: this share already serves a PollManager; "
                "give each manager a RedisShare of its own",
                option="share",
            )
        loop = asyncio.get_running_loop()
        session = _Session(hooks, f"{self._name}:{next(self._sessions)}")
        session.tasks = [
            loop.create_task(self._work(session), name="replipoll-redis-share"),
            loop.create_task(self._listen(session), name="replipoll-redis-listen"),
        ]
        self._session = session

    def detach(self, hooks: ShareHooks) -> None:
        """The manager closed: give its leases back and stop its tasks (soon)."""
        session = self._session
        if session is None or session.hooks is not hooks:
            return
        self._session = None
        session.hooks = None
        session.stopping = True
        session.wake.set()
        task = asyncio.get_running_loop().create_task(
            self._stop(session), name="replipoll-redis-stop"
        )
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def track(self, prediction_id: str) -> None:
        """Follow an id: its stored result is read and its lease tried, soon."""
        session = self._session
        if session is not None:
            session.tracked.add(prediction_id)
            session.claims[prediction_id] = None
            session.wake.set()

    def untrack(self, prediction_id: str) -> None:
        """Stop following an id: its lease, if held, is given back soon."""
        session = self._session
        if session is not None:
            session.tracked.discard(prediction_id)
            session.dropped.discard(prediction_id)
            session.corrupt.discard(prediction_id)
            session.claims.pop(prediction_id, None)
            if prediction_id in session.held:
                session.held.discard(prediction_id)
                session.releases.add(prediction_id)
                session.wake.set()

    def may_poll(self, prediction_id: str) -> bool:
        """Whether to poll the id now: this process holds its lease (or Redis is away).

        When not, the request is dropped; :meth:`~replipoll.ShareHooks.poll_now` is
        called if this process takes the lease later.
        """
        session = self._session
        if session is None or prediction_id not in session.tracked:
            return True
        if prediction_id in session.held or (
            self._down and self.on_unavailable == "local"
        ):
            if session.dropped:
                session.dropped.discard(prediction_id)
            return True
        session.dropped.add(prediction_id)
        return False

    def publish(self, prediction: Prediction) -> None:
        """Send a record to the peers (and keep it, if terminal), soon."""
        session = self._session
        if session is not None:
            session.outbox.append(prediction)
            session.wake.set()

    # -- the worker ------------------------------------------------------------

    async def _work(self, session: _Session) -> None:
        """Round trips for what the manager said, renewals and retries."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.timeout):
                await session.ready.wait()  # so no record published from now is missed
        now = loop.time()
        renew_at, retry_at = now + self.lease_ttl / 3, now + self.lease_ttl / 4
        while not session.stopped():
            if self._down:
                due = self._probe_at
            else:
                due = math.inf
                if session.held:
                    due = renew_at
                if len(session.tracked) > len(session.held):
                    due = min(due, retry_at)
            if self._down or not session.pending():
                session.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(due if due < math.inf else None):
                        await session.wake.wait()
            if session.stopped():
                break
            now = loop.time()
            if self._down:
                if now >= self._probe_at:
                    await self._probe(session)
                continue
            await asyncio.sleep(_WINDOW)  # what the loop adds meanwhile goes too
            try:
                if session.held and now >= renew_at:
                    renew_at = now + self.lease_ttl / 3
                    await self._renew(session)
                if now >= retry_at or session.resync:
                    retry_at = now + self.lease_ttl / 4
                    self._claim_unheld(session)
                while session.pending() and not session.stopped():
                    await self._exchange(session)
            except Exception as exc:  # Redis failed (or a surprise: said all the same)
                self._lost(exc, session)
        await self._finish(session)

    def _claim_unheld(self, session: _Session) -> None:
        session.resync = False
        held, claims = session.held, session.claims
        for pid in session.tracked:
            if pid not in held:
                claims[pid] = None

    async def _exchange(self, session: _Session) -> None:
        """One MULTI: releases, records (SET then PUBLISH), claims.

        A resync asked for meanwhile (the listener subscribed again) turns
        into claims first: an exchange leaves nothing pending that it could
        have done, so its callers' ``while session.pending()`` ends.
        """
        if session.resync:
            self._claim_unheld(session)
        releases = _take(session.releases, _CYCLE)
        claims = _take(session.claims, _CYCLE)
        records = [
            session.outbox.popleft() for _ in range(min(_RECORDS, len(session.outbox)))
        ]
        prefix, token = self.prefix, session.token
        try:
            async with asyncio.timeout(self.timeout):
                async with self.redis.pipeline(transaction=True) as pipe:
                    for chunk in _chunks(releases):
                        keys = [f"{prefix}lease:{pid}" for pid in chunk]
                        pipe.eval(_RELEASE, len(keys), *keys, token)
                    for prediction in records:
                        message = self._encode(prediction, token)
                        if message is None:
                            continue
                        if prediction.is_terminal:
                            key = f"{prefix}result:{prediction.id}"
                            pipe.set(key, message, px=self._result_ms)
                        pipe.publish(self._channel, message)
                    claimed = list(_chunks(claims))
                    for chunk in claimed:
                        keys = []
                        for pid in chunk:
                            keys += (f"{prefix}result:{pid}", f"{prefix}lease:{pid}")
                        pipe.eval(_CLAIM, len(keys), *keys, token, self._lease_ms)
                    answers = await pipe.execute()
        except BaseException:
            # Published once Redis answers; claims are made again then (all
            # tracked ids), and leases not given back expire on their own.
            session.outbox.extendleft(reversed(records))
            raise
        for chunk, answer in zip(
            claimed, answers[len(answers) - len(claimed) :], strict=True
        ):
            for i, pid in enumerate(chunk):
                self._claimed(session, pid, answer[2 * i] == 1, answer[2 * i + 1])

    def _claimed(
        self, session: _Session, pid: str, won: bool, stored: bytes | str | None
    ) -> None:
        """Act on one claim: deliver a stored result; poll an id won."""
        if pid not in session.tracked or session.stopping:
            if won:
                session.releases.add(pid)  # untracked meanwhile: give it back
            return
        if won:
            session.held.add(pid)
        if stored is not None and pid not in session.corrupt:
            prediction = self._decode(stored)
            if prediction is None or prediction.id != pid:
                session.corrupt.add(pid)  # polled all the same; not said again
            else:
                self._deliver(session, prediction)
                if pid not in session.tracked:
                    return  # resolved: untrack gave the lease back
        if won and pid in session.dropped and session.hooks is not None:
            session.dropped.discard(pid)
            session.hooks.poll_now(pid)

    async def _renew(self, session: _Session) -> None:
        """Extend every lease held, in one round trip; drop those lost."""
        held = list(session.held)
        chunks = list(_chunks(held))
        async with asyncio.timeout(self.timeout):
            async with self.redis.pipeline(transaction=False) as pipe:
                for chunk in chunks:
                    keys = [f"{self.prefix}lease:{pid}" for pid in chunk]
                    pipe.eval(_RENEW, len(keys), *keys, session.token, self._lease_ms)
                answers = await pipe.execute()
        for chunk, lost in zip(chunks, answers, strict=True):
            for place in lost:
                session.held.discard(chunk[int(place) - 1])

    async def _probe(self, session: _Session) -> None:
        """Redis is away: try again (every lease, every unheld id, the outbox)."""
        self._probe_at = asyncio.get_running_loop().time() + self._probe_every
        try:
            async with asyncio.timeout(self.timeout):
                # Connections from before the outage would fail once each.
                await self.redis.connection_pool.disconnect(inuse_connections=False)
                await self.redis.ping()
            if session.held:
                await self._renew(session)
            self._claim_unheld(session)
            while session.pending() and not session.stopped():
                await self._exchange(session)
        except Exception as exc:
            logger.debug(
                "Redis at %s: still unavailable (%s)", self._where, self._say(exc)
            )
            return
        self._down = False
        logger.warning(
            "Redis at %s answers again: sharing resumes "
            "(%d ids tracked here, %d leases held)",
            self._where,
            len(session.tracked),
            len(session.held),
        )

    def _lost(self, exc: BaseException, session: _Session | None = None) -> None:
        """Redis failed: say it once, and poll here what waits on it."""
        if self._down:
            logger.debug("Redis at %s: %s", self._where, self._say(exc))
            return
        self._down = True
        self._probe_at = asyncio.get_running_loop().time() + self._probe_every
        if self.on_unavailable == "local":
            fallback = "polling every id tracked here, as one process, until it is back"
        else:
            fallback = "polling only the ids whose lease this process held"
        logger.error(
            "Redis at %s is unavailable (%s): %s",
            self._where,
            self._say(exc),
            fallback,
            exc_info=not isinstance(exc, _FAILURES),  # a surprise: where it came from
        )
        if session is not None and self.on_unavailable == "local":
            hooks = session.hooks
            dropped, session.dropped = session.dropped, set()
            if hooks is not None:
                for pid in dropped:
                    hooks.poll_now(pid)

    async def _finish(self, session: _Session) -> None:
        """The manager is gone: give back every lease, publish what is left."""
        session.releases |= session.held
        session.held.clear()
        session.claims.clear()
        session.tracked.clear()
        if self._down or not (session.releases or session.outbox):
            return  # (leases expire on their own)
        try:
            while session.releases or session.outbox:
                await self._exchange(session)
        except Exception as exc:
            logger.warning(
                "Redis at %s: could not give back %d leases (%s); "
                "they expire within %g s",
                self._where,
                len(session.releases),
                self._say(exc),
                self.lease_ttl,
            )

    async def _stop(self, session: _Session) -> None:
        session.ready.set()  # a worker still waiting for the listener goes on
        worker, listener = session.tasks
        await end_tasks([listener])  # (a cancellation lost in redis-py: again)
        await asyncio.gather(worker, return_exceptions=True)

    # -- the listener ----------------------------------------------------------

    async def _listen(self, session: _Session) -> None:
        """Deliver the records peers publish; subscribe again after a failure."""
        loop = asyncio.get_running_loop()
        wait = 0.05
        while True:
            pubsub = self.redis.pubsub()
            try:
                async with asyncio.timeout(self.timeout):
                    await pubsub.subscribe(self._channel)
                if session.ready.is_set():
                    session.resync = True  # records were missed meanwhile
                    session.wake.set()
                session.ready.set()
                wait = 0.05
                await self._receive(session, pubsub, loop)
            except Exception as exc:
                logger.log(
                    logging.DEBUG if isinstance(exc, _FAILURES) else logging.ERROR,
                    "Redis at %s: subscription to %s failed (%s); again in %g s",
                    self._where,
                    self._channel,
                    self._say(exc),
                    wait,
                    exc_info=not isinstance(exc, _FAILURES),
                )
            finally:
                with contextlib.suppress(*_FAILURES):
                    async with asyncio.timeout(self.timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(wait)
            wait = min(wait * 2, 2.0)

    async def _receive(
        self,
        session: _Session,
        pubsub: PubSub,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        step = min(1.0, self.lease_ttl / 2)
        heard = loop.time()
        pinged: float | None = None
        while True:
            async with asyncio.timeout(step + self.timeout):
                message = await pubsub.get_message(timeout=step)
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                if message.get("type") == "message":
                    self._heard(session, message.get("data"))
            elif pinged is not None:
                if now - pinged > self.timeout:
                    raise TimeoutError("no answer to PING on the subscription")
            elif now - heard > self.lease_ttl:  # quiet: is the connection alive?
                async with asyncio.timeout(self.timeout):
                    await pubsub.ping()
                pinged = now

    def _heard(self, session: _Session, data: object) -> None:
        if not isinstance(data, bytes | str):
            return
        prediction = self._decode(data, session)
        if prediction is not None:
            self._deliver(session, prediction)

    # -- records ---------------------------------------------------------------

    def _encode(self, prediction: Prediction, token: str) -> bytes | None:
        try:
            envelope = {"id": prediction.id, "record": prediction.to_json()}
            envelope["from"] = token
            return json.dumps(envelope, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            logger.warning("could not publish %s: %s", prediction.id, exc)
            return None

    def _decode(
        self, data: bytes | str, listening: _Session | None = None
    ) -> Prediction | None:
        """A record from Redis; None if it does not decode (logged).

        ``listening``: from the channel, for this session: None too if it
        published the record itself or does not track its id.
        """
        try:
            envelope = json.loads(data)
            pid = envelope["id"]
            if listening is not None and (
                envelope.get("from") == listening.token or pid not in listening.tracked
            ):
                return None
            prediction = Prediction.from_json(envelope["record"])
        except Exception as exc:  # whatever is on the channel, the listener lives on
            logger.warning(
                "Redis at %s: a record under %r does not decode, ignored: %s",
                self._where,
                self.prefix,
                exc,
            )
            return None
        if prediction.id != pid:
            logger.warning(
                "Redis at %s: a record of %s was sent as %r, ignored",
                self._where,
                prediction.id,
                pid,
            )
            return None
        return prediction

    def _deliver(self, session: _Session, prediction: Prediction) -> None:
        hooks = session.hooks
        if hooks is None:
            return
        try:
            hooks.deliver(prediction)
        except Exception:
            logger.exception("delivering a record of %s failed", prediction.id)

    def _say(self, exc: BaseException) -> str:
        """The error, without the password."""
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return scrub(text, self.redis)


def _check_seconds(owner: str, option: str, value: object, *, least: float) -> None:
    check_positive(owner, option, value)
    assert isinstance(value, int | float)
    if not (least <= value < math.inf):
        raise ConfigurationError(
            f"{owner}: {option} must be a finite number of seconds "
            f"of at least {least:g}, got {value!r}",
            option=option,
        )


def _take(items: set[str] | dict[str, None], n: int) -> list[str]:
    """Remove and return up to ``n`` of ``items`` (a dict: oldest first)."""
    if len(items) <= n:
        taken = list(items)
        items.clear()
        return taken
    taken = list(itertools.islice(items, n))
    if isinstance(items, dict):
        for pid in taken:
            del items[pid]
    else:
        items.difference_update(taken)
    return taken


def _chunks(ids: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), _CHUNK):
        yield ids[start : start + _CHUNK]
