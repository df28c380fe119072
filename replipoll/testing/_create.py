"""The fake server's create side, minus the HTTP: read a request, budget, wait.

:func:`read_create` turns a create request's path, headers and JSON body into
a :class:`CreateSpec` (or raises :class:`Invalid` with the 422's detail);
:class:`CreateBudget` is the token bucket of ``create_rate_limit``;
:func:`hold` is sync mode's wait (``Prefer: wait=N``).  Nothing here touches
aiohttp: the handler in ``_http`` does the I/O.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ._records import Prediction

#: The events a webhook may be sent for, in Replicate's order: the default
#: ``webhook_events_filter`` of a create that gives a webhook but no filter.
WEBHOOK_EVENTS: Final = ("start", "output", "logs", "completed")
#: The longest sync-mode wait (``Prefer: wait``, and what a bare ``wait`` means).
MAX_WAIT: Final = 60

#: A Replicate duration: ``90`` (seconds), ``90s``, ``5m``, ``1h30m``, ``1.5h``.
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?")
_PART: Final = re.compile(r"(\d+(?:\.\d+)?)([hms])")
_UNIT: Final = {"h": 3600.0, "m": 60.0, "s": 1.0}
#: Longest real sleep of a held create between two looks at its prediction:
#: how soon a cancel, or a hand-driven clock left alone, ends the wait.
_LOOK: Final = 0.02


class Invalid(ValueError):
    """A create request the API refuses with a 422; the message is the detail."""


@attrs.frozen
class CreateSpec:
    """What a valid create request asks for.

    Attributes:
        script: Keyword arguments of :meth:`FakeReplicate.add_prediction`
            (``queue``, ``duration``, ``outcome``, ``input``, ``model``).
        deployment: ``owner/name`` for a deployment's endpoint, else ``None``.
        webhook: The ``webhook`` URL, if any.
        events: The ``webhook_events_filter`` (empty without a webhook).
        wait: Seconds of ``Prefer: wait``; ``None``: answer at once.
        cancel_after: Seconds of ``Cancel-After``; ``None``: no deadline.
    """

    script: dict[str, Any]
    deployment: str | None
    webhook: str | None
    events: tuple[str, ...]
    wait: int | None
    cancel_after: float | None


@attrs.frozen
class CreateRecord:
    """One prediction created through the API; see :meth:`FakeReplicate.created`.

    Attributes:
        id: The prediction's id.
        input: Its ``input`` object, as sent.
        model: ``owner/name`` it is served as.
        deployment: ``owner/name`` of the deployment it was created through,
            else ``None``.
        webhook: The ``webhook`` URL sent, else ``None``.
        webhook_events_filter: The events webhooks are due for (all four when
            a webhook came without a filter; empty without a webhook).
        wait: Seconds of ``Prefer: wait`` asked for; ``None``: none.
        deadline: When ``Cancel-After`` ends it, in seconds of the server's
            clock; ``None``: no deadline.
        time: When it was created, in seconds of the server's clock.
        request_id: The ``X-Request-Id`` of the create request that made it.
    """

    id: str
    input: Mapping[str, Any]
    model: str
    deployment: str | None
    webhook: str | None
    webhook_events_filter: tuple[str, ...]
    wait: int | None
    deadline: float | None
    time: float
    request_id: str


def parse_duration(text: str) -> float:
    """Seconds of a ``Cancel-After`` value (``"90"``, ``"30s"``, ``"1h30m"``).

    Replicate refuses less than 5 seconds; the fake takes anything above 0.

    Raises:
        ValueError: Not a duration, or not above 0.
    """
    text = text.strip()
    if not _DURATION.fullmatch(text):
        raise ValueError(f"not a duration: {text!r}")
    if text[-1].isdigit():
        seconds = float(text)
    else:
        seconds = sum(float(n) * _UNIT[unit] for n, unit in _PART.findall(text))
    if not 0 < seconds < math.inf:
        raise ValueError(f"not a positive duration: {text!r}")
    return seconds


def parse_wait(header: str | None) -> int | None:
    """Seconds of sync mode asked for by a ``Prefer`` header; ``None``: none.

    ``wait`` alone is :data:`MAX_WAIT`; other preferences (RFC 7240, comma
    separated) are ignored, as the RFC says.

    Raises:
        Invalid: A ``wait`` that is not a whole number of seconds, 1 to 60.
    """
    if header is None:
        return None
    for preference in header.split(","):
        name, eq, value = preference.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not eq:
            return MAX_WAIT
        value = value.strip().strip('"')
        if value.isdigit() and 1 <= int(value) <= MAX_WAIT:
            return int(value)
        raise Invalid(
            f"- Prefer: wait must be a whole number of seconds from 1 to "
            f"{MAX_WAIT}, not {value[:40]!r}"
        )
    return None


def parse_events(value: object) -> tuple[str, ...]:
    """A ``webhook_events_filter`` as given: a list of known event names.

    Raises:
        Invalid: Not a list, or an unknown event.
    """
    if not isinstance(value, list):
        raise Invalid("- webhook_events_filter: must be a list of events")
    for event in value:
        if event not in WEBHOOK_EVENTS:
            raise Invalid(
                f"- webhook_events_filter: {event!r} is not one of "
                + ", ".join(WEBHOOK_EVENTS)
            )
    return tuple(dict.fromkeys(value))


def _number(value: object) -> bool:
    """Whether *value* is a JSON number >= 0 (``true`` is not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value >= 0


def read_create(
    match: Mapping[str, str], headers: Mapping[str, str], body: object
) -> CreateSpec:
    """Check a create request; return what it asks for.

    Args:
        match: The path's ``owner`` and ``name`` (models and deployments),
            and ``kind`` (``"models"`` or ``"deployments"``); empty for
            ``POST /predictions``.
        headers: The request's headers (``Prefer``, ``Cancel-After``).
        body: Its JSON body.

    Raises:
        Invalid: What the 422 says.
    """
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        raise Invalid("- input: required object")
    script = body["input"]
    deployment = None
    model = script.get("replipoll_model")
    if model is not None and not (isinstance(model, str) and "/" in model):
        raise Invalid("- input: replipoll_model must be 'owner/name'")
    if "owner" in match:
        path_name = f"{match['owner']}/{match['name']}"
        if match.get("kind") == "deployments":
            deployment = path_name
            model = model or path_name
        else:
            model = path_name
    else:
        version = body.get("version")
        if not isinstance(version, str) or not version:
            raise Invalid("- version: required")
        if "/" in version:
            model = version.partition(":")[0]
        model = model or "owner/model"
    queue = script.get("replipoll_queue", 0.0)
    duration = script.get("replipoll_duration", 1.0)
    outcome = script.get("replipoll_outcome", "succeeded")
    if not (_number(queue) and _number(duration) and isinstance(outcome, str)):
        raise Invalid(
            "- input: bad replipoll_queue, replipoll_duration or replipoll_outcome"
        )
    webhook = body.get("webhook")
    events: tuple[str, ...] = ()
    if webhook is not None:
        if not isinstance(webhook, str) or not webhook.startswith(
            ("http://", "https://")
        ):
            raise Invalid("- webhook: must be an http(s) URL")
        events = WEBHOOK_EVENTS
    if body.get("webhook_events_filter") is not None:
        events = parse_events(body["webhook_events_filter"])
        if webhook is None:
            events = ()  # nothing to send them to
    cancel_after = None
    if "Cancel-After" in headers:
        try:
            cancel_after = parse_duration(headers["Cancel-After"])
        except ValueError:
            raise Invalid(
                f"- Cancel-After: {headers['Cancel-After'][:40]!r} is not a "
                "duration like 30s, 5m or 1h30m"
            ) from None
    script_args = {
        "queue": queue,
        "duration": duration,
        "outcome": outcome,
        "input": script,
        "model": model,
    }
    return CreateSpec(
        script_args,
        deployment,
        webhook,
        events,
        parse_wait(headers.get("Prefer")),
        cancel_after,
    )


@attrs.define
class CreateBudget:
    """A token bucket for create requests: *rate* a second, *burst* at once.

    Pure: :meth:`spend` takes the time.  It starts full.
    """

    rate: float
    burst: int
    _tokens: float = attrs.field(init=False)
    _at: float | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self._tokens = float(self.burst)

    def spend(self, now: float) -> float:
        """Take a token at *now*: 0.0, or seconds until one is free (none taken)."""
        if self._at is not None:
            refill = max(0.0, now - self._at) * self.rate
            self._tokens = min(float(self.burst), self._tokens + refill)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate

    def detail(self, wait: float) -> str:
        """The 429's detail, as Replicate words it for accounts low on credit."""
        per_minute = f"{self.rate * 60:.3f}".rstrip("0").rstrip(".")
        return (
            "Request was throttled. Your rate limit for creating predictions is"
            f" reduced to {per_minute} requests per minute with a burst of"
            f" {self.burst} while you have less than $5.0 in credit. Your rate"
            f" limit resets in ~{max(1, math.ceil(wait))}s."
        )


def retry_after(wait: float) -> str:
    """*wait* as a ``Retry-After`` value: seconds, rounded up to milliseconds."""
    millis = math.ceil(wait * 1000)
    whole, rest = divmod(millis, 1000)
    return str(whole) if not rest else f"{whole}.{rest:03d}".rstrip("0")


async def hold(p: Prediction, clock: Callable[[], float], seconds: float) -> None:
    """Wait until *p* is final or *seconds* of *clock* have passed (sync mode).

    The wait is real (``asyncio.sleep``), in looks of at most 20 ms that
    check the prediction (a cancel ends the wait too).  A clock that did not
    move during a look is driven by hand and nobody is driving it: the wait
    ends there, and the answer shows the prediction as it stands.
    """
    until = clock() + seconds
    while True:
        now = clock()
        completed = p.timeline(now)[2]
        if completed is not None or now >= until:
            return
        end = p.timeline(math.inf)[2]
        target = until if end is None else min(until, end)
        await asyncio.sleep(min(target - now, _LOOK))
        if clock() == now:
            return
