"""What the fake server counts, and a clock tests can drive by hand."""

from __future__ import annotations

from collections import Counter, deque
from typing import NamedTuple

import attrs


class RequestRecord(NamedTuple):
    """One line of :attr:`ServerStats.request_log`."""

    #: Arrival time, in seconds of the server's (monotonic) clock.
    time: float
    method: str
    path: str
    #: Status sent; 0 when the connection was dropped without an answer.
    status: int


class WebhookRecord(NamedTuple):
    """One attempt to deliver a webhook (a line of :attr:`ServerStats.webhook_log`)."""

    #: When the attempt ended, in seconds of the server's clock.
    time: float
    prediction_id: str
    #: The ``webhook-id`` header: the same for every attempt of a delivery.
    webhook_id: str
    #: ``start``, ``output``, ``logs`` or ``completed``.
    event: str
    #: 1 for the first attempt; a duplicate (``webhook_duplicates``) repeats it.
    attempt: int
    #: The receiver's HTTP status; 0 when no answer came (refused, timed out).
    status: int


@attrs.define
class ServerStats:
    """Live counters of a :class:`FakeReplicate`, updated as requests arrive.

    "API requests" are those under ``/v1`` and ``/replicate/v1``; file
    downloads (``/files/...``) count only in :attr:`total_requests`,
    :attr:`responses_by_status` and :attr:`request_log`.

    Attributes:
        total_requests: Every request received, files and unknown paths included.
        requests_per_id: API requests (GET and cancel) per prediction id.
        cancel_requests: Cancel requests per prediction id.
        list_requests: List requests (``GET /predictions``), every one that
            arrived: those a fault answered or a wrong key refused too.
        create_requests: Create requests (``POST`` on ``/predictions``,
            ``/models/.../predictions`` or ``/deployments/.../predictions``),
            every one that arrived, like :attr:`list_requests`.
        creations: Predictions actually created through the API (a create
            refused, throttled or faulted before handling makes none; see
            :meth:`FakeReplicate.created`).
        creates_throttled: Create requests refused with a 429 by the
            server's ``create_rate_limit`` (not those of a fault).
        stream_requests: Event stream requests (``GET /stream/{id}``),
            every one that arrived, like :attr:`list_requests`.
        streams_open: Event streams being served right now.
        in_flight: API requests being handled right now.
        peak_in_flight: Highest :attr:`in_flight` seen.  Handlers answer
            without pausing, so requests overlap only while a ``latency`` or a
            :meth:`Fault.slow` keeps them waiting.
        early_requests: API requests that arrived while a ``Retry-After`` this
            server sent was still running, timed from when the 429 was
            produced, less those arriving within the server's
            ``early_grace`` of the pause's start (requests a concurrent
            client had already sent).  Limits are per key, so a request for
            any prediction counts.
        requests_during_pause: Every API request that arrived during a
            pause, those within the grace included.
        responses_by_status: Responses per HTTP status (0: connection dropped).
        faults_injected: Faults injected, by :attr:`Fault.kind`.
        request_log: The latest requests (a bounded deque, oldest dropped
            first; empty when the server was built with ``request_log_size=0``).
        webhooks_sent: Webhook requests sent (each attempt, each duplicate).
        webhooks_lost: Webhook deliveries dropped on purpose
            (``webhook_loss``): never sent at all.
        webhook_failures: Webhook attempts the receiver answered with a
            non-2xx status, or did not answer.
        webhooks_refused: Webhook deliveries not sent because their URL
            is not on this machine (the fake sends nothing elsewhere).
        webhook_log: The latest webhook attempts (a bounded deque).
    """

    total_requests: int = 0
    requests_per_id: Counter[str] = attrs.Factory(Counter)
    cancel_requests: Counter[str] = attrs.Factory(Counter)
    list_requests: int = 0
    create_requests: int = 0
    creations: int = 0
    creates_throttled: int = 0
    stream_requests: int = 0
    streams_open: int = 0
    in_flight: int = 0
    peak_in_flight: int = 0
    early_requests: int = 0
    requests_during_pause: int = 0
    responses_by_status: Counter[int] = attrs.Factory(Counter)
    faults_injected: Counter[str] = attrs.Factory(Counter)
    request_log: deque[RequestRecord] = attrs.Factory(lambda: deque(maxlen=10_000))
    webhooks_sent: int = 0
    webhooks_lost: int = 0
    webhook_failures: int = 0
    webhooks_refused: int = 0
    webhook_log: deque[WebhookRecord] = attrs.Factory(lambda: deque(maxlen=10_000))


@attrs.define
class FakeClock:
    """A monotonic clock that only moves when told to; pass it as ``clock=``.

    Example:
        >>> clock = FakeClock()
        >>> clock.advance(2.5)
        >>> clock()
        2.5
    """

    now: float = 0.0

    def __call__(self) -> float:
        """Return the current time in seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by *seconds*."""
        self.now += seconds
