"""The fake server's webhooks: signed deliveries at each prediction's transitions.

A prediction created with a ``webhook`` (``POST /predictions`` and the
others, or :meth:`FakeReplicate.add_prediction`) gets, for the events of its
``webhook_events_filter``:

* ``start``: when it starts processing (none if it never starts);
* ``logs`` (or ``output`` if the filter has no ``logs``): a third and two
  thirds of the way through its processing, if it is still running then;
* ``completed``: when it reaches its final status.

Each body is the record as a ``GET`` renders it at the transition, signed
as Standard Webhooks say with the server's ``webhook_secret`` (by the
``standardwebhooks`` package directly: the fake imports nothing of
replipoll's core, so the core's verifier is checked against an independent
signer). Only the ``completed`` delivery is retried, on a non-2xx answer or
no answer, with a doubling wait, until ``webhook_retry_window`` seconds of
the server's clock after completion, as Replicate does.

Deliveries are scheduled on the server's clock by one background task
(running while a prediction with a webhook is still to be delivered; stopped
by ``close``); the sends
themselves happen in real time. With a :class:`FakeClock` the task looks at
the clock every :data:`TICK` real seconds: a delivery goes out within a
tick of the clock being advanced past its time (all due deliveries at
once, in order), and the retry window only closes as the clock is advanced.

The fake never sends traffic off the machine: a webhook URL whose host is
not a loopback address (``127.0.0.0/8``, ``::1``, ``localhost``) is not
called (:attr:`ServerStats.webhooks_refused`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple
from urllib.parse import urlsplit

import aiohttp
import attrs
from standardwebhooks.webhooks import Webhook

from ._records import Prediction
from ._stats import ServerStats, WebhookRecord

logger: Final = logging.getLogger("replipoll.testing")

#: Real seconds between two looks at the server's clock, at most: how late
#: a delivery may be after a cancel, or after a :class:`FakeClock` moved.
TICK: Final = 0.1
#: The first wait before retrying a ``completed`` delivery; it doubles...
RETRY_FIRST: Final = 0.1
#: ... up to this (real seconds).
RETRY_MAX: Final = 10.0
#: How long one attempt may take before it counts as no answer.
ATTEMPT_TIMEOUT: Final = 10.0
#: Every event, in Replicate's order (a webhook without a filter gets all).
ALL_EVENTS: Final = ("start", "output", "logs", "completed")
_PREFIX: Final = "whsec_"


def new_secret(seed: int) -> str:
    """A ``whsec_`` secret of 32 bytes, drawn from *seed* (a fake needs no more)."""
    key = random.Random(f"webhook-secret/{seed}").randbytes(32)
    return _PREFIX + base64.b64encode(key).decode("ascii")


def check_secret(secret: str) -> str:
    """Return *secret* if it is ``whsec_`` and strict base64.

    Raises:
        ValueError: It is not (the secret is not quoted).
    """
    encoded = secret.removeprefix(_PREFIX) if isinstance(secret, str) else ""
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not (isinstance(secret, str) and secret.startswith(_PREFIX) and key):
        raise ValueError("webhook_secret must be 'whsec_' followed by base64")
    return secret


def is_loopback(url: str) -> bool:
    """Whether *url* is http(s) to this machine: a loopback IP or ``localhost``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Due(NamedTuple):
    time: float
    #: What marks it done: ``start``, ``mid1``, ``mid2``, ``completed``.
    key: str
    event: str


def due_deliveries(p: Prediction) -> list[_Due]:
    """Return *p*'s deliveries as scripted now (a cancel moves them), in order."""
    events = p.webhook_events_filter if p.webhook else ()
    _, started, completed = p.timeline(math.inf)
    assert completed is not None  # every script ends
    due = []
    if started is not None:
        if "start" in events:
            due.append(_Due(started, "start", "start"))
        middle = "logs" if "logs" in events else "output" if "output" in events else ""
        for k in (1, 2) if middle else ():
            at = started + k * p.duration / 3
            if at < completed:
                due.append(_Due(at, f"mid{k}", middle))
    if "completed" in events:
        due.append(_Due(completed, "completed", "completed"))
    return due


@attrs.define(eq=False)
class _Tracked:
    """A prediction with a webhook, and which of its deliveries went out."""

    prediction: Prediction
    done: set[str] = attrs.Factory(set)
    #: Set once the previous delivery's first attempt ended: deliveries of
    #: one prediction go out in order.
    previous: asyncio.Event | None = None


@attrs.define(eq=False)
class WebhookSender:
    """Sends a :class:`FakeReplicate`'s webhooks (see the module's docstring)."""

    secret: str
    loss: float
    delay: float
    duplicates: float
    retry_window: float
    seed: int
    clock: Callable[[], float]
    #: ``render(prediction, at)``: the record a GET answers at *at*.
    render: Callable[[Prediction, float], dict[str, Any]]
    #: The server's current stats (``reset_stats`` replaces them).
    stats: Callable[[], ServerStats]
    _signer: Webhook = attrs.field(init=False)
    _rng: random.Random = attrs.field(init=False)
    _new: list[Prediction] = attrs.field(init=False, factory=list)
    _tracked: dict[str, _Tracked] = attrs.field(init=False, factory=dict)
    _sending: set[asyncio.Task[None]] = attrs.field(init=False, factory=set)
    _task: asyncio.Task[None] | None = attrs.field(init=False, default=None)
    _wake: asyncio.Event | None = attrs.field(init=False, default=None)
    _loop: asyncio.AbstractEventLoop | None = attrs.field(init=False, default=None)
    _session: aiohttp.ClientSession | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._signer = Webhook(check_secret(self.secret))
        self._rng = random.Random(f"webhooks/{self.seed}")

    def added(self, p: Prediction) -> None:
        """Note a new prediction; its webhook fields are read a moment later.

        (The create handler sets them just after the prediction is made.)
        """
        self._new.append(p)
        with contextlib.suppress(RuntimeError):  # no loop here: start() finds it
            if self._wake is not None and asyncio.get_running_loop() is self._loop:
                self._wake.set()
                self._ensure_running()

    def _ensure_running(self) -> None:
        """Run the background task while there is something to deliver.

        It ends when no prediction is left to watch, so that a server whose
        predictions have no webhook runs no task of its own between requests
        (a test that checks for leaked tasks sees none).
        """
        if self._session is not None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="fake-webhooks")

    async def start(self) -> None:
        """Get ready to deliver, in the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # No proxies from the environment, no cookies: straight to loopback.
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        if self._new:
            self._ensure_running()

    async def close(self) -> None:
        """Stop scheduling and cancel deliveries in flight; safe to call twice."""
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        self._task = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            wake.clear()
            now = self.clock()
            self._take_new()
            next_due = self._send_due(now)
            if not self._tracked and not self._new:
                return  # added() starts it again
            wait = TICK if next_due is None else min(max(next_due - now, 0.0), TICK)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()

    def _take_new(self) -> None:
        new, self._new = self._new, []
        for p in new:
            if p.webhook is not None and p.webhook_events_filter:
                self._tracked[p.id] = _Tracked(p)

    def _send_due(self, now: float) -> float | None:
        """Start every delivery due by *now*; return when the next one is due."""
        next_due = None
        for pid, tracked in list(self._tracked.items()):
            p = tracked.prediction
            waiting = False
            for due in due_deliveries(p):
                if due.key in tracked.done:
                    continue
                if due.time > now:
                    next_due = due.time if next_due is None else min(next_due, due.time)
                    waiting = True
                    break
                tracked.done.add(due.key)
                self._start_delivery(tracked, due)
            if not waiting:
                del self._tracked[pid]
        return next_due

    def _start_delivery(self, tracked: _Tracked, due: _Due) -> None:
        p = tracked.prediction
        after, tracked.previous = tracked.previous, asyncio.Event()
        task = asyncio.create_task(self._deliver(p, due, after, tracked.previous))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(
        self,
        p: Prediction,
        due: _Due,
        after: asyncio.Event | None,
        done: asyncio.Event,
    ) -> None:
        """Send one delivery (retrying ``completed``); then set *done*."""
        try:
            url = p.webhook
            assert url is not None
            webhook_id = _webhook_id(self.seed, p.id, due.key)
            if not is_loopback(url):
                self.stats().webhooks_refused += 1
                logger.warning(
                    "FakeReplicate: not sending webhooks off this machine (%s)", url
                )
                return
            # Both drawn now, in scheduling order: the same seed and script
            # lose and duplicate the same deliveries.
            lost = self._rng.random() < self.loss
            copies = 2 if self._rng.random() < self.duplicates else 1
            if lost:
                self.stats().webhooks_lost += 1
                return
            body = json.dumps(self.render(p, due.time), separators=(",", ":"))
            if self.delay:
                await asyncio.sleep(self.delay)
            if after is not None:
                await after.wait()
            await self._attempts(p, due, url, webhook_id, body, copies, done)
        finally:
            done.set()

    async def _attempts(
        self,
        p: Prediction,
        due: _Due,
        url: str,
        webhook_id: str,
        body: str,
        copies: int,
        first_done: asyncio.Event,
    ) -> None:
        until = due.time + self.retry_window
        wait = RETRY_FIRST
        for attempt in itertools.count(1):
            ok = False
            headers = self._signed(webhook_id, body)  # each attempt: signed anew
            for _ in range(copies):  # a duplicate: the very same request again
                status = await self._send(url, headers, body)
                stats = self.stats()
                stats.webhooks_sent += 1
                if 200 <= status < 300:
                    ok = True
                else:
                    stats.webhook_failures += 1
                record = WebhookRecord(
                    self.clock(), p.id, webhook_id, due.event, attempt, status
                )
                stats.webhook_log.append(record)
            first_done.set()
            copies = 1  # a duplicate is a copy of the first attempt only
            if ok or due.event != "completed":
                return
            await asyncio.sleep(wait)
            if self.clock() > until:
                return
            wait = min(wait * 2, RETRY_MAX)

    def _signed(self, webhook_id: str, body: str) -> dict[str, str]:
        """The headers of one attempt, stamped with the real wall clock.

        (A receiver checks the timestamp against its own: *clock* may be a
        :class:`FakeClock`.)
        """
        when = datetime.fromtimestamp(math.floor(time.time()), tz=UTC)
        return {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(when.timestamp())),
            "webhook-signature": self._signer.sign(webhook_id, when, body),
        }

    async def _send(self, url: str, headers: dict[str, str], body: str) -> int:
        """POST one copy; return the status, 0 if no answer came."""
        session = self._session
        assert session is not None
        try:
            async with session.post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as answer:
                await answer.read()
                return answer.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0


def _webhook_id(seed: int, prediction_id: str, key: str) -> str:
    """A ``msg_`` id, the same for every attempt of one delivery."""
    digest = hashlib.sha256(f"{seed}/{prediction_id}/{key}".encode()).digest()
    return "msg_" + base64.b32encode(digest).decode("ascii")[:27].lower()
