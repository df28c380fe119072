"""Receive Replicate's webhooks in an aiohttp app: verify, hand over, answer.

:func:`webhook_handler` makes the request handler. What a delivery must be
to pass is decided by :func:`~replipoll.verify_webhook` (pure, in
:mod:`replipoll._webhooks`); this module reads the body, maps refusals to
statuses and hands accepted records to the receiver (usually a
:class:`~replipoll.PollManager`, through its ``push``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from aiohttp import web

from ._errors import ConfigurationError, WebhookVerificationError
from ._models import Prediction
from ._options import check_at_least, check_non_negative
from ._sansio import header
from ._webhooks import DEFAULT_TOLERANCE, ReplayGuard, parse_secret, verify_webhook

__all__ = ["MAX_WEBHOOK_BODY", "WebhookReceiver", "webhook_handler"]

logger: Final = logging.getLogger("replipoll")

#: The largest webhook body read (a prediction with a big text output); a
#: bigger one is answered 413 without being read.
MAX_WEBHOOK_BODY: Final = 16 * 1024 * 1024


class WebhookReceiver(Protocol):
    """What :func:`webhook_handler` hands verified records to.

    :class:`~replipoll.PollManager` is one: its ``push`` resolves the
    waiting future of the prediction's id at once. The return value is
    ignored; an awaitable one is awaited first.
    """

    def push(self, prediction: Prediction, /) -> object:
        """Take a verified record (called once per delivery accepted)."""
        ...  # pragma: no cover


def webhook_handler(
    receiver: WebhookReceiver | Callable[[Prediction], object],
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    replays: ReplayGuard | None = None,
    max_body_size: int = MAX_WEBHOOK_BODY,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler for Replicate's webhooks, to add with ``add_post``.

    Each delivery is verified (:func:`verify_webhook`) and its record handed
    to ``receiver.push``; the answer tells the sender what to do next:

    ============ ====================================================
    ``204``      handed over (or a copy of a delivery handed over
                 already: nothing to retry, nothing pushed again)
    ``401``      refused: bad signature, no signature headers, a stale
                 or future timestamp; the body is the ``reason`` alone
    ``400``      signed, but the body is not a prediction
    ``413``      a body over ``max_body_size``, not read
    ``500``      the receiver raised: the sender retries (Replicate
                 retries its ``completed`` webhook for about a minute)
    ============ ====================================================

    A delivery's id is remembered only once the receiver took it, so a
    retry after a ``500`` is handed over, while a replay of a delivery
    handled already is not (see :class:`ReplayGuard`). Refusals are logged
    at WARNING on the ``replipoll`` logger, without the secret; copies at
    INFO.

    Args:
        receiver: Anything with a ``push(prediction)`` method (a
            :class:`~replipoll.PollManager`, see :class:`WebhookReceiver`),
            or a function taking the :class:`~replipoll.Prediction`, plain
            or ``async``.
        secret: Your account's webhook secret, ``whsec_...``; checked now.
        tolerance: Seconds a delivery's timestamp may be off the clock.
        replays: The guard that remembers handled ids; default: one of its
            own (pass one to share it between handlers).
        max_body_size: The largest body read, in bytes.

    Raises:
        ConfigurationError: a bad secret (``option="secret"``), a receiver
            that has no ``push`` and is not callable, or a bad number.

    Example:
        >>> import asyncio, aiohttp
        >>> from aiohttp import web
        >>> from aiohttp.test_utils import TestServer
        >>> from replipoll import sign_webhook, webhook_handler
        >>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        >>> pushed = []
        >>> app = web.Application()
        >>> _ = app.router.add_post("/hook", webhook_handler(pushed.append, secret))
        >>> async def deliver(body: str) -> int:
        ...     async with TestServer(app) as server, aiohttp.ClientSession() as s:
        ...         headers = sign_webhook(body, secret)
        ...         async with s.post(server.make_url("/hook"), data=body,
        ...                           headers=headers) as answer:
        ...             return answer.status
        >>> asyncio.run(deliver('{"id": "p1", "status": "succeeded"}'))
        204
        >>> [(p.id, str(p.status)) for p in pushed]
        [('p1', 'succeeded')]
    """
    parse_secret(secret)  # a bad secret fails now, not at the first delivery
    check_non_negative("webhook_handler", "tolerance", tolerance)
    check_at_least("webhook_handler", "max_body_size", max_body_size, 1)
    guard = ReplayGuard(tolerance=tolerance) if replays is None else replays
    if guard.tolerance < tolerance:
        raise ConfigurationError(
            f"webhook_handler: replays has tolerance={guard.tolerance:g}, below "
            f"the handler's {tolerance:g}: a replay could outlive its memory",
            option="replays",
        )
    push = _push_of(receiver)

    async def handle_webhook(request: web.Request) -> web.StreamResponse:
        body = await _read(request, max_body_size)
        if body is None:
            logger.warning(
                "webhook refused (413): body over %d bytes, from %s",
                max_body_size,
                request.remote,
            )
            return web.Response(status=413, text="too-large")
        try:
            prediction = verify_webhook(
                request.headers, body, secret, tolerance=tolerance, replays=guard
            )
        except WebhookVerificationError as exc:
            return _refused(exc, request)
        webhook_id = (header(request.headers, "webhook-id") or "").strip()
        try:
            taken = push(prediction)
            if inspect.isawaitable(taken):
                await taken
        except Exception:
            # Not remembered: the sender's retry (same id) gets another go.
            logger.exception(
                "webhook %r for prediction %s: the receiver failed; answered 500 "
                "so that the sender retries",
                webhook_id,
                prediction.id,
            )
            return web.Response(status=500, text="receiver-failed")
        guard.remember(webhook_id)
        return web.Response(status=204)

    return handle_webhook


def _push_of(
    receiver: WebhookReceiver | Callable[[Prediction], object],
) -> Callable[[Prediction], object]:
    push = getattr(receiver, "push", None)
    if callable(push):
        return push  # type: ignore[no-any-return]
    if callable(receiver):
        return receiver
    raise ConfigurationError(
        f"webhook_handler: receiver must have a push(prediction) method or be "
        f"callable, got {type(receiver).__name__}",
        option="receiver",
    )


def _refused(exc: WebhookVerificationError, request: web.Request) -> web.Response:
    """The answer to a refused delivery (and its line in the log)."""
    if exc.reason == "replay":
        # A copy of a delivery handled already (a sender's duplicate, or a
        # replay). A 2xx, so that a sender stops: a non-2xx would make it
        # retry a delivery that needs nothing more.
        logger.info(
            "webhook %r: handled already; not handed over again", exc.webhook_id
        )
        return web.Response(status=204)
    status = 400 if exc.reason == "bad-body" else 401
    logger.warning(
        "%s; webhook %r from %s answered %d",
        exc,
        exc.webhook_id,
        request.remote,
        status,
    )
    return web.Response(status=status, text=exc.reason)


async def _read(request: web.Request, limit: int) -> bytes | None:
    """The body, or ``None`` if it is over ``limit`` bytes (read no further).

    Read from the stream: ``request.read()`` would stop at the app's
    ``client_max_size`` (1 MiB by default), not at ours.
    """
    length = request.content_length
    if length is not None and length > limit:
        return None
    chunks = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
