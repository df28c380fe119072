"""One API key's rate budget, shared through Redis by every process that uses it.

:class:`RedisBudget` is :class:`~replipoll.RateBudget` kept in Redis: the
same GCRA (one number, the theoretical arrival time) and the same pauses,
held in a hash at the budget's key and spent by one Lua script that reads
Redis's own clock (``TIME``), so the hosts' clocks never matter. In each
process, the requests waiting on a budget queue locally and only the head
of the queue talks to Redis: one script call in flight per process, then a
sleep for the wait the script returned.

When Redis does not answer, the budget says so in the ``replipoll.redis``
log (ERROR, once an outage) and either fails every request with
:class:`RedisUnavailableError` or spends a local :class:`~replipoll.RateBudget`
at a fraction of the rate until Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Self

import attrs
import redis.exceptions
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import redis as redis_sync

from .._errors import ConfigurationError
from .._options import at_least, check_fraction, check_positive, positive
from .._schedule import RateBudget
from ._connection import scrub, where
from ._errors import RedisUnavailableError
from ._tasks import end_tasks

__all__ = ["RedisBudget", "RedisUnavailableError"]

logger: Final = logging.getLogger("replipoll.redis")

#: What "Redis does not answer" looks like (asyncio.timeout raises TimeoutError,
#: an OSError; redis-py's own errors are not OSErrors). A replica that a
#: failover left read-only can keep no budget either.
_UNREACHABLE: Final = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
    OSError,
)

# The budget is a hash of two times, in microseconds of Redis's clock: tat,
# GCRA's theoretical arrival time, and paused, the end of the latest pause.
# ARGV: the operation, the interval between slots (us; 0: no rate), burst,
# the ramp after a pause without a rate (us), how long an idle budget is kept
# (ms), then the operation's own. Every answer is {slots taken, us until a
# slot is free, us of pause left}. Numbers are formatted by hand: Lua 5.1's
# tostring keeps 14 digits, too few for microseconds since 1970.
_SCRIPT: Final = """
local key, op = KEYS[1], ARGV[1]
local interval, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local ramp, expire = tonumber(ARGV[4]), tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local state = redis.call('HMGET', key, 'tat', 'paused')
local tat = tonumber(state[1]) or 0
local paused = tonumber(state[2]) or 0

local function spacing()
  if interval > 0 then return interval end
  -- No rate: after a pause, from burst/s up, doubling every half second.
  local since = now - paused
  if paused == 0 or since >= ramp then return 0 end
  if since < 0 then since = 0 end
  return 1000000 / (burst * 2 ^ (since / 500000))
end

local function left(t)
  if t > now then return math.ceil(t - now) end
  return 0
end

local function save()
  redis.call('HSET', key, 'tat', string.format('%.3f', tat),
    'paused', string.format('%.0f', paused))
  local last = math.max(tat, paused + ramp)
  redis.call('PEXPIRE', key, math.ceil((last - now) / 1000) + expire)
end

if op == 'take' then
  local wanted = tonumber(ARGV[6])
  if paused > now then return {0, left(paused), left(paused)} end
  local t = spacing()
  if t == 0 then return {wanted, 0, 0} end
  local taken = 0
  while taken < wanted and tat - (burst - 1) * t <= now do
    tat = math.max(tat, now) + t
    taken = taken + 1
  end
  if taken > 0 then save() end
  return {taken, left(tat - (burst - 1) * t), 0}
elseif op == 'pause' then
  local untl = now + tonumber(ARGV[6])
  if untl > paused then paused = untl end
  if untl > tat then tat = untl end
  save()
  return {0, 0, left(paused)}
elseif op == 'heed' then
  local t = spacing()
  if t > 0 and tonumber(ARGV[7]) > t then
    local next_tat = now + tonumber(ARGV[6]) + (burst - 1) * t
    if next_tat > tat then
      tat = next_tat
      save()
    end
  end
  return {0, 0, left(paused)}
end
return redis.error_reply('replipoll budget: unknown operation ' .. tostring(op))
"""


def _unavailable(url: str, key: str, reason: str) -> RedisUnavailableError:
    """The error of a budget whose Redis does not answer."""
    return RedisUnavailableError(
        f"Redis at {url} is unavailable ({reason}): the rate budget shared "
        f"at key {key!r} hands out no slot; start Redis, or pass "
        "on_unavailable='local' to go on with a local budget at a "
        "fraction of the rate",
        url=url,
        reason=reason,
        key=key,
    )


def _check_redis(instance: object, attribute: Any, value: Any) -> None:
    if isinstance(value, redis_sync.Redis) or not hasattr(value, "register_script"):
        raise ConfigurationError(
            f"RedisBudget: redis must be a redis.asyncio.Redis, got {value!r}",
            option="redis",
        )


def _check_key(instance: object, attribute: Any, value: Any) -> None:
    if not (isinstance(value, str | bytes) and value):
        raise ConfigurationError(
            f"RedisBudget: key must be a non-empty string, got {value!r}",
            option="key",
        )


def _check_mode(instance: object, attribute: Any, value: Any) -> None:
    if value not in ("fail", "local"):
        raise ConfigurationError(
            f"RedisBudget: on_unavailable must be 'fail' or 'local', got {value!r}",
            option="on_unavailable",
        )


def _check_fraction(instance: object, attribute: Any, value: Any) -> None:
    check_positive("RedisBudget", attribute.name, value)
    check_fraction("RedisBudget", attribute.name, value)


def _changed(instance: RedisBudget, attribute: Any, value: Any) -> Any:
    """``rate`` or ``burst`` set: validated, and the local fallback follows."""
    value = attrs.setters.validate(instance, attribute, value)
    instance._next_try = 0.0  # a hint from the old limit
    fallback = instance._fallback
    if fallback is not None:
        if attribute.name == "rate":
            share = instance.fallback_fraction
            fallback.rate = None if value is None else value * share
        else:
            fallback.burst = value
    return value


@attrs.define(eq=False)
class RedisBudget:
    """A :class:`~replipoll.RateBudget` that many processes share through Redis.

    Every process that uses one API key makes a ``RedisBudget`` with the
    same ``key`` (and its own connection), and passes it to its
    :class:`~replipoll.Client` or :class:`~replipoll.PollManager` as
    ``budget=``: together their requests keep to ``rate`` requests a
    second, bursts of ``burst``, and a ``Retry-After`` any of them gets
    pauses them all. A slot is taken when a request goes, never booked
    ahead. The state is a hash at ``key`` that expires once the budget has
    been idle for ``expire_after`` seconds.

    In one process, requests wait in line (first come first served;
    ``urgent`` ones at the head) and only the first talks to Redis, then
    sleeps for the wait Redis returned. :meth:`try_acquire` cannot reach
    Redis without waiting: it returns False, and callers :meth:`acquire`.

    Every Redis call is given ``timeout`` seconds. When Redis does not
    answer, the ``replipoll.redis`` logger says so at ERROR, once an outage,
    and then, with ``on_unavailable="fail"``, :meth:`acquire` raises
    :class:`RedisUnavailableError`; with ``"local"``, this process goes on
    with a local :class:`~replipoll.RateBudget` at ``fallback_fraction *
    rate`` (so that a few processes together stay under the limit), tries
    Redis again every ``retry_interval`` seconds, and returns to it (logged
    at WARNING) once it answers.

    Close the budget when done (``async with``, or :meth:`aclose`): it
    waits for a pause still being written, and closes the connection that
    :meth:`from_url` opened (one passed in stays open: it is yours).

    Args:
        redis: A ``redis.asyncio.Redis``.
        key: The Redis key of the budget (the same in every process).
        rate: Requests per second, or ``None`` for no limit (shared pauses
            still apply, and the ramp after them).
        burst: Requests that may go at once after a quiet spell.
        on_unavailable: ``"fail"`` or ``"local"``: see above.
        fallback_fraction: The local budget's share of ``rate``, above 0, at
            most 1.
        timeout: Seconds each Redis call may take.
        retry_interval: Seconds between tries of Redis while on the local
            budget.
        expire_after: Seconds an idle budget's key outlives its last slot or
            pause.

    Raises:
        ConfigurationError: an option is unusable (``.option`` names it).

    Example:
        >>> from redis.asyncio import Redis
        >>> budget = RedisBudget(Redis(), "replipoll:budget:my-key", rate=10, burst=2)
        >>> budget.try_acquire(now=0.0)  # Redis is asked only in acquire()
        False
        >>> RedisBudget(Redis(), "k", rate=10, on_unavailable="retry")
        Traceback (most recent call last):
        ...
        replipoll.ConfigurationError: RedisBudget: on_unavailable must be ...
    """

    #: Seconds a budget without a rate takes to speed up after a pause.
    RAMP: ClassVar[float] = RateBudget.RAMP

    _redis: Redis = attrs.field(alias="redis", validator=_check_redis, repr=False)
    key: str = attrs.field(validator=_check_key)
    rate: float | None = attrs.field(
        kw_only=True, validator=positive(none=True), on_setattr=_changed
    )
    burst: int = attrs.field(
        default=1, kw_only=True, validator=at_least(1), on_setattr=_changed
    )
    on_unavailable: Literal["fail", "local"] = attrs.field(
        default="fail", kw_only=True, validator=_check_mode
    )
    fallback_fraction: float = attrs.field(
        default=0.5, kw_only=True, validator=_check_fraction
    )
    timeout: float = attrs.field(default=1.0, kw_only=True, validator=positive())
    retry_interval: float = attrs.field(default=3.0, kw_only=True, validator=positive())
    expire_after: float = attrs.field(default=60.0, kw_only=True, validator=positive())

    _script: Any = attrs.field(init=False, repr=False)
    _owns_redis: bool = attrs.field(default=False, init=False, repr=False)
    _closed: bool = attrs.field(default=False, init=False, repr=False)
    # This process's own pauses, and the shared one the script last reported.
    _local_pause: float = attrs.field(default=-math.inf, init=False, repr=False)
    _shared_pause: float = attrs.field(default=-math.inf, init=False, repr=False)
    # No script call before this: when the script said the next slot is free.
    _next_try: float = attrs.field(default=0.0, init=False, repr=False)
    # The line: each waiter's future ends True (a slot is yours) or False
    # (your turn to ask Redis). _busy: a waiter has the turn.
    _queue: deque[asyncio.Future[bool]] = attrs.field(
        factory=deque, init=False, repr=False
    )
    _busy: bool = attrs.field(default=False, init=False, repr=False)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(
        default=None, init=False, repr=False
    )
    # A pause (monotonic) and a heed (spacing, when) still to be written.
    _pending_pause: float | None = attrs.field(default=None, init=False, repr=False)
    _pending_heed: tuple[float, float] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _writer: asyncio.Task[None] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _fallback: RateBudget | None = attrs.field(default=None, init=False, repr=False)
    _prober: asyncio.Task[None] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _outage_since: float | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._script = self._redis.register_script(_SCRIPT)

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str,
        *,
        rate: float | None,
        burst: int = 1,
        timeout: float = 1.0,
        **options: Any,
    ) -> Self:
        """A budget on a connection of its own to the Redis at ``url``.

        The connection is closed with the budget (:meth:`aclose`). Its
        sockets time out after ``timeout`` seconds, and a failed command
        is retried once, at once, so that an outage shows quickly.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``,
                ``rediss://...`` or ``unix://path``.
            key: The Redis key of the budget.
            rate: Requests per second, or ``None``.
            burst: Requests that may go at once.
            timeout: Seconds each Redis call may take.
            options: The other options of :class:`RedisBudget`.
        """
        check_positive(cls.__name__, "timeout", timeout)
        connection = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        budget = cls(
            connection, key, rate=rate, burst=burst, timeout=timeout, **options
        )
        budget._owns_redis = True
        return budget

    # -- the Budget protocol ---------------------------------------------------

    @property
    def paused_until(self) -> float:
        """The time before which no request may go, as far as this process knows.

        Its own pauses, and the shared pause the script last reported
        (``time.monotonic`` seconds; ``-inf`` if none).
        """
        until = max(self._local_pause, self._shared_pause)
        if self._fallback is not None:
            until = max(until, self._fallback.paused_until)
        return until

    @property
    def waiting(self) -> int:
        """Requests of this process waiting in :meth:`acquire` for their turn."""
        count = sum(not waiter.done() for waiter in self._queue)
        if self._fallback is not None:
            count += self._fallback.waiting
        return count

    @property
    def fallback(self) -> RateBudget | None:
        """The local budget in use while Redis is unavailable, else ``None``."""
        return self._fallback

    def try_acquire(self, now: float) -> bool:
        """Return False: a slot comes from Redis, in :meth:`acquire`.

        On the local budget (Redis unavailable, ``on_unavailable="local"``),
        take a slot of it if one is free at ``now``.
        """
        if self._fallback is not None:
            return self._fallback.try_acquire(now)
        return False

    async def acquire(self, *, urgent: bool = False) -> float:
        """Wait for a slot of the shared budget; return the seconds waited.

        Waits in line behind this process's other requests (at the head
        if ``urgent``); the head asks Redis, and sleeps for the wait it
        returns. Cancelling the wait gives its turn up.

        Raises:
            RedisUnavailableError: Redis did not answer within ``timeout``
                (with ``on_unavailable="fail"``); the requests waiting in
                line behind this one fail with it.
            RuntimeError: the budget was closed.
        """
        start = time.monotonic()
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._forget(loop)
        while True:
            if self._closed:
                raise RuntimeError("this RedisBudget is closed")
            self._write_soon()
            fallback = self._fallback
            if fallback is not None:
                await fallback.acquire(urgent=urgent)
                return time.monotonic() - start
            if self._busy or self._queue:
                waiter: asyncio.Future[bool] = loop.create_future()
                if urgent:
                    self._queue.appendleft(waiter)
                else:
                    self._queue.append(waiter)
                try:
                    given = await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled() and not waiter.result():
                        self._pass_turn()  # handed the turn as it was cancelled
                    raise
                if given:
                    return time.monotonic() - start
            else:
                self._busy = True
            try:
                taken = await self._take_turn()
            except RedisUnavailableError as error:
                self._fail_line(error)  # rather than each waiting its timeout
                raise
            finally:
                self._pass_turn()
            if taken:
                return time.monotonic() - start
            # Redis is unavailable: the local budget serves, next time round.

    def pause_until(self, when: float) -> None:
        """Hand out no slot before ``when`` here, and in every process.

        This process pauses at once; the pause is written to Redis in the
        background (as a duration from now, on Redis's clock; a pause there
        is only ever lengthened), and the other processes heed it from
        their next call on.
        """
        if when > self._local_pause:
            self._local_pause = when
        if self._fallback is not None:
            self._fallback.pause_until(when)
        if when > time.monotonic() and (
            self._pending_pause is None or when > self._pending_pause
        ):
            self._pending_pause = when
            self._write_soon()

    def heed(self, remaining: int, reset: float, now: float) -> None:
        """Slow down to a server's word: ``remaining`` requests in ``reset`` seconds.

        As :meth:`RateBudget.heed <replipoll.RateBudget.heed>`, for every
        process: never speeds up; nothing left means a pause until the
        reset; an allowance tighter than ``rate`` pushes the shared next
        slot to ``reset / remaining`` seconds after ``now`` (a budget
        without a rate heeds only the pause).
        """
        if reset <= 0:
            return
        if remaining <= 0:
            self.pause_until(now + reset)
            return
        if self._fallback is not None:
            self._fallback.heed(remaining, reset, now)
        spacing = reset / remaining
        if self.rate is None or spacing <= 1.0 / self.rate:
            return
        self._next_try = max(self._next_try, now + spacing)
        self._pending_heed = (spacing, now)
        self._write_soon()

    def is_paused(self, now: float) -> bool:
        """Whether a pause known here is still running at ``now``."""
        return now < self.paused_until

    # -- closing -----------------------------------------------------------------

    async def aclose(self) -> None:
        """Finish writing a pause (within ``timeout``), stop, close an owned connection.

        Waiters still in line end with ``RuntimeError`` when their turn comes.
        """
        self._closed = True
        if self._prober is not None:
            await end_tasks([self._prober])
        if self._writer is not None:
            await asyncio.wait([self._writer], timeout=self.timeout)
            await end_tasks([self._writer])
        if self._owns_redis:
            await self._redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- the line ----------------------------------------------------------------

    async def _take_turn(self) -> bool:
        """Ask Redis until a slot is taken (True) or Redis is given up (False)."""
        while True:
            if self._fallback is not None:
                return False
            if self._closed:
                raise RuntimeError("this RedisBudget is closed")
            now = time.monotonic()
            wait = max(self.paused_until, self._next_try) - now
            if wait > 0:
                # At least a millisecond: uvloop's timers count whole ones.
                await asyncio.sleep(max(wait, 0.001))
                continue
            wanted = 1 + self._live_waiters(64 if self.rate is None else self.burst)
            answer = await self._call("take", wanted)
            if answer is None:
                return False
            taken, wait_us, _ = answer
            self._next_try = time.monotonic() + wait_us / 1e6
            if taken:
                self._hand_out(taken - 1)
                return True

    def _live_waiters(self, most: int) -> int:
        count = 0
        for waiter in self._queue:
            if count >= most:
                break
            if not waiter.done():
                count += 1
        return count

    def _hand_out(self, slots: int) -> None:
        """Give slots taken by the head to the next waiters in line."""
        queue = self._queue
        while slots and queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(True)
                slots -= 1

    def _fail_line(self, error: RedisUnavailableError) -> None:
        """Redis is unavailable: every waiter in line fails with ``error`` too."""
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                copy = _unavailable(error.url, error.key, error.reason)
                copy.__cause__ = error.__cause__
                waiter.set_exception(copy)

    def _pass_turn(self) -> None:
        """The head is done: the next waiter in line talks to Redis."""
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                waiter.set_result(False)
                return
        self._busy = False

    def _forget(self, loop: asyncio.AbstractEventLoop) -> None:
        # Whatever waited on another event loop (one that has ended) is gone.
        self._queue.clear()
        self._busy = False
        if self._writer is not None and self._writer.get_loop() is not loop:
            self._writer = None
        if self._prober is not None and self._prober.get_loop() is not loop:
            self._prober = None
        self._loop = loop

    # -- Redis -------------------------------------------------------------------

    async def _call(self, op: str, *extra: float) -> tuple[int, int, int] | None:
        """Run the script; ``None`` if Redis is unavailable and the local budget serves.

        Raises:
            RedisUnavailableError: Redis did not answer, and
                ``on_unavailable="fail"``.
        """
        rate = self.rate
        args = (
            op,
            0 if rate is None else 1e6 / rate,
            self.burst,
            round(self.RAMP * 1e6),
            math.ceil(self.expire_after * 1000),
            *extra,
        )
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._script(keys=[self.key], args=args)
        except _UNREACHABLE as exc:
            self._unavailable(exc)
            return None
        if self._outage_since is not None:
            self._back()
        taken, wait_us, pause_us = (int(number) for number in answer)
        if pause_us > 0:
            until = time.monotonic() + pause_us / 1e6
            if until > self._shared_pause:
                self._shared_pause = until
        return taken, wait_us, pause_us

    def _unavailable(self, exc: BaseException) -> None:
        reason = scrub(str(exc) or type(exc).__name__, self._redis)
        if isinstance(exc, TimeoutError) and not str(exc):
            reason = f"no answer within {self.timeout:g} s"
        address = where(self._redis)
        local = self.on_unavailable == "local"
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            then = (
                "this process goes on with a local budget at "
                f"{self.fallback_fraction:g} of the rate, and tries Redis again "
                f"every {self.retry_interval:g} s"
                if local
                else "requests fail with RedisUnavailableError until it answers"
            )
            logger.error(
                "Redis at %s is unavailable (%s): the rate budget %r is not shared; %s",
                address,
                reason,
                self.key,
                then,
            )
        if not local:
            raise _unavailable(address, self.key, reason) from exc
        if self._fallback is None:
            rate = self.rate
            fallback = RateBudget(
                rate=None if rate is None else rate * self.fallback_fraction,
                burst=self.burst,
            )
            fallback.pause_until(max(self._local_pause, self._shared_pause))
            self._fallback = fallback
            self._prober = asyncio.get_running_loop().create_task(self._probe())

    def _back(self) -> None:
        assert self._outage_since is not None
        logger.warning(
            "Redis at %s answers again after %.1f s: the rate budget %r is shared "
            "again",
            where(self._redis),
            time.monotonic() - self._outage_since,
            self.key,
        )
        self._outage_since = None

    async def _probe(self) -> None:
        """On the local budget: try Redis every ``retry_interval``; go back to it."""
        try:
            while True:
                await asyncio.sleep(self.retry_interval)
                try:
                    async with asyncio.timeout(self.timeout):
                        await self._redis.ping()
                except _UNREACHABLE:
                    continue
                except redis.exceptions.RedisError as exc:
                    logger.debug("Redis answered the probe with %r", exc)
                    continue
                fallback = self._fallback
                self._fallback = None
                self._next_try = 0.0
                if fallback is not None:
                    # What this process learned meanwhile is for every process.
                    self.pause_until(fallback.paused_until)
                if self._outage_since is not None:
                    self._back()
                self._write_soon()
                return
        except Exception:
            logger.exception("trying Redis again failed (budget %r)", self.key)
        finally:
            self._prober = None

    def _write_soon(self) -> None:
        """Start writing a pause or heed to Redis, unless under way (or no loop)."""
        if self._writer is not None or self._closed:
            return
        if self._pending_pause is None and self._pending_heed is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # written by the next acquire()
        self._writer = loop.create_task(self._write())

    async def _write(self) -> None:
        try:
            while self._fallback is None:
                pause, heed = self._pending_pause, self._pending_heed
                self._pending_pause = self._pending_heed = None
                if pause is None and heed is None:
                    return
                left = -1.0 if pause is None else pause - time.monotonic()
                if left > 0:
                    await self._call("pause", math.ceil(left * 1e6))
                if heed is not None:
                    spacing, at = heed
                    offset = spacing - (time.monotonic() - at)
                    await self._call("heed", offset * 1e6, spacing * 1e6)
        except RedisUnavailableError:
            pass  # logged; this process pauses anyway
        except Exception:
            logger.exception("writing to the rate budget %r failed", self.key)
        finally:
            self._writer = None
