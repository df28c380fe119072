"""Webhooks, the pure part: verify a delivery, remember it, sign one for tests.

Replicate signs its webhooks as the `Standard Webhooks
<https://www.standardwebhooks.com/>`_ spec says: three headers,
``webhook-id``, ``webhook-timestamp`` (Unix seconds) and
``webhook-signature`` (space-separated ``v1,<base64>`` entries), and an
HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed by the bytes of the secret's
base64 part (after ``whsec_``). The HMAC itself is the ``standardwebhooks``
package's; what is around it here makes up for what that package does not
do:

* every bad input is a :class:`~replipoll.WebhookVerificationError` with a
  ``reason`` (the package lets a signature entry without a comma escape as
  a bare ``ValueError``, and bad base64 as ``binascii.Error``);
* the timestamp is checked here, against an injectable ``now`` and
  ``tolerance`` (the package's are ``datetime.now()`` and five minutes);
* a secret that is not ``whsec_`` and strict base64 is refused as the
  configuration error it is (the package decodes base64 leniently,
  skipping characters it does not know);
* the body is decoded into a lossless :class:`~replipoll.Prediction`.

Nothing here does I/O; :mod:`replipoll._webhook_handler` is the aiohttp
side.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import math
import re
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import attrs
from standardwebhooks.webhooks import Webhook

from ._decode import FieldError
from ._errors import ConfigurationError, WebhookVerificationError
from ._models import Prediction, prediction_hook
from ._options import at_least, check_non_negative, non_negative
from ._sansio import NOT_JSON, header, parse_json

__all__ = [
    "DEFAULT_TOLERANCE",
    "ReplayGuard",
    "WebhookKey",
    "parse_secret",
    "sign_webhook",
    "verify_webhook",
]

#: Seconds a delivery's timestamp may be off our clock (the spec's five minutes).
DEFAULT_TOLERANCE: Final = 300.0
#: Where to find the secret, said in every refusal of one.
_GET_SECRET: Final = (
    "copy your account's webhook secret (the 'key' of "
    "GET https://api.replicate.com/v1/webhooks/default/secret; it starts with "
    "'whsec_')"
)
_PREFIX: Final = "whsec_"
#: A timestamp header: whole Unix seconds, in ASCII digits (the spec's form).
_TIMESTAMP: Final = re.compile(r"[0-9]{1,12}", re.ASCII)
#: The longest webhook id accepted; ids are remembered (see ReplayGuard), so
#: their size is bounded. Standard Webhooks ids are a few dozen characters.
MAX_ID_LENGTH: Final = 256


@attrs.frozen(repr=False)
class WebhookKey:
    """A checked webhook secret: the HMAC key, which no repr or message shows.

    Made by :func:`parse_secret`, which keeps the last few made: a web app
    checks its secret once, not once per delivery.
    """

    _signer: Webhook = attrs.field(alias="signer")

    @classmethod
    def parse(cls, secret: str) -> WebhookKey:
        """Check ``secret`` (``whsec_`` and base64) and build the key.

        Raises:
            ConfigurationError: ``option="secret"``: the secret is not
                ``whsec_`` followed by base64 (the message says where to
                copy it from, and never shows it).
        """
        secret = secret.strip()
        if not secret.startswith(_PREFIX):
            raise _bad_secret("the webhook secret does not start with 'whsec_'")
        encoded = secret[len(_PREFIX) :]
        try:
            # Strict: the package would skip characters that are not base64,
            # and take a mangled secret for another key.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not key:
            raise _bad_secret("the webhook secret is not 'whsec_' followed by base64")
        return cls(Webhook(key))

    def __repr__(self) -> str:
        return "WebhookKey(<hidden>)"

    def signature(self, msg_id: str, timestamp: int, body: str) -> bytes:
        """The raw HMAC of one delivery (what a ``v1,`` entry holds, decoded)."""
        when = datetime.fromtimestamp(timestamp, tz=UTC)
        signed = self._signer.sign(msg_id=msg_id, timestamp=when, data=body)
        return base64.b64decode(signed.partition(",")[2])


@functools.lru_cache(maxsize=16)
def _cached_key(secret: str) -> WebhookKey:
    return WebhookKey.parse(secret)


def parse_secret(secret: str) -> WebhookKey:
    """The key of ``secret``, checked (see :meth:`WebhookKey.parse`); cached."""
    if not isinstance(secret, str):
        raise _bad_secret(
            f"the webhook secret must be a string, not {type(secret).__name__}"
        )
    return _cached_key(secret)


def _bad_secret(what: str) -> ConfigurationError:
    # The secret itself is never quoted: a message ends up in logs.
    return ConfigurationError(f"{what}: {_GET_SECRET}", option="secret")


@attrs.define(repr=False, eq=False)
class ReplayGuard:
    """Remembers the webhook ids handled lately, so a replayed delivery is refused.

    A captured delivery stays correctly signed; only its timestamp ages.
    Within the tolerance it could be sent again, and :func:`verify_webhook`
    with ``replays=guard`` refuses it (``reason="replay"``) if its id was
    handled already.

    **An id is remembered once it was handled, not once it was verified**:
    call :meth:`remember` after your code dealt with the delivery. A sender
    retries a delivery whose handling failed (your handler answered 5xx,
    or crashed) *with the same id*; that retry must get through, and would
    not if verifying alone had marked the id. (Two copies arriving at the
    same moment may so both be handed over: make handling idempotent, as
    :meth:`PollManager.push <replipoll.PollManager.push>` is.)
    :func:`~replipoll.webhook_handler` does all this for you.

    Memory is bounded: an id is kept for twice the tolerance (a delivery
    stamped up to ``tolerance`` ahead of our clock stays acceptable that
    long), and at most ``max_size`` ids, the oldest forgotten first.
    Size it above the webhooks you receive in ``2 * tolerance`` seconds.

    Args:
        tolerance: The tolerance of the :func:`verify_webhook` calls it
            serves (seconds); not less.
        max_size: The most ids kept.

    Example:
        >>> guard = ReplayGuard()
        >>> guard.seen("msg_1", now=1000.0)
        False
        >>> guard.remember("msg_1", now=1000.0)
        >>> guard.seen("msg_1", now=1500.0), guard.seen("msg_1", now=1601.0)
        (True, False)
    """

    tolerance: float = attrs.field(default=DEFAULT_TOLERANCE, validator=non_negative)
    max_size: int = attrs.field(default=100_000, validator=at_least(1))
    #: id -> when it may be forgotten, oldest first.
    _until: dict[str, float] = attrs.field(init=False, factory=dict)

    def __repr__(self) -> str:
        return (
            f"ReplayGuard(tolerance={self.tolerance!r}, max_size={self.max_size!r}, "
            f"remembered={len(self._until)})"
        )

    def __len__(self) -> int:
        return len(self._until)

    def seen(self, webhook_id: str, *, now: float | None = None) -> bool:
        """Whether ``webhook_id`` was handled within the window (Unix ``now``)."""
        self._forget_old(time.time() if now is None else now)
        return webhook_id in self._until

    def remember(self, webhook_id: str, *, now: float | None = None) -> None:
        """Mark ``webhook_id`` handled at ``now`` (Unix seconds; default: now)."""
        now = time.time() if now is None else now
        self._forget_old(now)
        until = self._until
        until.pop(webhook_id, None)  # re-inserted: last in the age order
        until[webhook_id] = now + 2 * self.tolerance
        while len(until) > self.max_size:
            del until[next(iter(until))]

    def _forget_old(self, now: float) -> None:
        until = self._until
        while until:
            oldest = next(iter(until))
            if until[oldest] > now:
                return
            del until[oldest]


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
    replays: ReplayGuard | None = None,
) -> Prediction:
    """Check a webhook delivery's signature and return the prediction it carries.

    Args:
        headers: The request's headers, as your framework gives them: any
            mapping (aiohttp's, Starlette's, a ``dict``); names in any case.
        body: The request's body exactly as received (bytes, or text):
            parse nothing before, the signature covers these bytes.
        secret: Your account's webhook secret, ``whsec_...``.
        tolerance: Seconds the ``webhook-timestamp`` may differ from
            ``now``, either way.
        now: Unix seconds to check the timestamp against; default: the
            system clock.
        replays: Refuse an id this guard remembers (``reason="replay"``);
            the guard is not changed: call :meth:`ReplayGuard.remember`
            once you handled the delivery.

    Returns:
        The record, decoded losslessly (``prediction.raw`` is the body's
        JSON, ``to_json()`` gives it back).

    Raises:
        WebhookVerificationError: the delivery is refused; ``reason`` says
            why: ``"missing-header"``, ``"bad-header"`` (a timestamp that
            is not whole seconds, an id too long), ``"stale"``,
            ``"future"``, ``"bad-signature"`` (no entry matches the secret:
            forged, tampered with, or another secret), ``"replay"``,
            ``"bad-body"`` (signed, but not a prediction).
        ConfigurationError: the secret is not ``whsec_`` and base64
            (``option="secret"``), or ``tolerance`` or ``replays`` is
            unusable. Your configuration, not the delivery, is wrong.

    Example:
        >>> from replipoll import sign_webhook, verify_webhook
        >>> secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        >>> body = '{"id": "p1", "status": "succeeded", "output": "hi"}'
        >>> sent = 1_700_000_000
        >>> headers = sign_webhook(body, secret, msg_id="msg_1", timestamp=sent)
        >>> prediction = verify_webhook(headers, body, secret, now=sent + 5)
        >>> prediction.id, prediction.output
        ('p1', 'hi')
        >>> from replipoll import WebhookVerificationError
        >>> try:
        ...     verify_webhook(headers, body.replace("hi", "ho"), secret, now=sent + 5)
        ... except WebhookVerificationError as exc:
        ...     print(exc)
        webhook refused: no signature matches the secret (bad-signature)
    """
    key = parse_secret(secret)
    check_non_negative("verify_webhook", "tolerance", tolerance)
    if replays is not None and replays.tolerance < tolerance:
        raise ConfigurationError(
            f"verify_webhook: the ReplayGuard forgets ids after "
            f"2 x {replays.tolerance:g} s, too soon for a tolerance of "
            f"{tolerance:g} s: give it tolerance={tolerance:g}",
            option="replays",
        )
    msg_id = _header(headers, "webhook-id")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _header(headers, "webhook-signature")
    if len(msg_id) > MAX_ID_LENGTH:
        raise _refuse(
            "bad-header", f"the webhook-id is over {MAX_ID_LENGTH} characters"
        )
    if not _TIMESTAMP.fullmatch(stamp):
        raise _refuse(
            "bad-header", "webhook-timestamp is not whole Unix seconds", msg_id
        )
    timestamp = int(stamp)
    now = time.time() if now is None else now
    if timestamp < now - tolerance:
        raise _refuse(
            "stale", f"sent {now - timestamp:.0f} s ago, over the tolerance", msg_id
        )
    if timestamp > now + tolerance:
        raise _refuse(
            "future", f"stamped {timestamp - now:.0f} s ahead of our clock", msg_id
        )
    text = _text(body, msg_id)
    try:
        expected = key.signature(msg_id, timestamp, text)
    except (ValueError, OverflowError, OSError):  # a time no datetime holds
        raise _refuse(
            "bad-header", "webhook-timestamp is out of range", msg_id
        ) from None
    if not any(hmac.compare_digest(expected, given) for given in _entries(signatures)):
        raise _refuse("bad-signature", "no signature matches the secret", msg_id)
    if replays is not None and replays.seen(msg_id, now=now):
        raise _refuse("replay", "this webhook-id was handled already", msg_id)
    return _prediction(body if isinstance(body, bytes) else text.encode(), msg_id)


def sign_webhook(
    body: bytes | str,
    secret: str,
    *,
    msg_id: str | None = None,
    timestamp: float | None = None,
) -> dict[str, str]:
    """Sign ``body`` as Replicate would; return the three headers to send with it.

    For tests and fake servers: what :func:`verify_webhook` accepts.

    Args:
        body: The body to send, exactly (bytes must be UTF-8).
        secret: The ``whsec_...`` secret.
        msg_id: The ``webhook-id``; default: a new random ``msg_...``. A
            retry of a delivery keeps its id.
        timestamp: Unix seconds (whole seconds are sent); default: now.

    Returns:
        ``{"webhook-id": ..., "webhook-timestamp": ..., "webhook-signature":
        "v1,..."}``.

    Raises:
        ConfigurationError: a bad secret, or a body that is not UTF-8.
    """
    key = parse_secret(secret)
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigurationError(
                "sign_webhook: the body is not UTF-8", option="body"
            ) from None
    if msg_id is None:
        msg_id = f"msg_{secrets.token_urlsafe(18)}"
    stamp = math.floor(time.time() if timestamp is None else timestamp)
    signature = base64.b64encode(key.signature(msg_id, stamp, body)).decode("ascii")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": f"v1,{signature}",
    }


def _refuse(
    reason: str, detail: str, webhook_id: str | None = None
) -> WebhookVerificationError:
    return WebhookVerificationError(detail, reason=reason, webhook_id=webhook_id)


def _header(headers: Mapping[str, str], name: str) -> str:
    """The value of header ``name``; refused when missing, empty or not text."""
    value = header(headers, name)
    if not isinstance(value, str) or not value.strip():
        raise _refuse("missing-header", f"no {name} header")
    return value.strip()


def _text(body: bytes | str, msg_id: str) -> str:
    """The body as the text that was signed (the signed content is UTF-8)."""
    if isinstance(body, str):
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse("bad-body", "the body is not UTF-8 text", msg_id) from None


def _entries(signatures: str) -> list[bytes]:
    """The ``v1`` signatures of the header, decoded; anything else is skipped.

    Entries of other versions are for other verifiers (the spec's upgrade
    path), and a malformed one (no comma, bad base64) simply matches
    nothing: one good entry is enough.
    """
    found = []
    for entry in signatures.split():
        version, comma, encoded = entry.partition(",")
        if not comma or version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            continue
    return found


def _prediction(body: bytes, msg_id: str) -> Prediction:
    """The signed body as a record (a signed body that is no record is refused)."""
    data = parse_json(body)
    if data is NOT_JSON:
        raise _refuse("bad-body", "the body is not JSON", msg_id)
    try:
        return prediction_hook(data, None)
    except FieldError as exc:
        failure = exc
    where = f"field {failure.field!r}" if failure.field else "the body"
    # Raised outside the handler: the FieldError's text may quote the body.
    raise _refuse(
        "bad-body", f"not a prediction: {where} is missing or malformed", msg_id
    )
