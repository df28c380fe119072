"""Creating predictions, the pure part: build the request, read a refusal.

:func:`create_request` turns what :meth:`Client.create <replipoll.Client.create>`
was given into one :class:`~replipoll._sansio.ApiRequest`, or a
:class:`~replipoll.ConfigurationError` that names the bad argument; nothing
is sent for a request that could not be built. Three endpoints create:

* ``POST models/{owner}/{name}/predictions``: the model's latest version
  (``model="owner/name"``);
* ``POST predictions`` with ``"version"``: one version
  (``version="<id>"``, or ``model="owner/name:<id>"``);
* ``POST deployments/{owner}/{name}/predictions``: a deployment.

The gateways serve the same paths below their own base URL
(``.../replicate/v1``). Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

from ._errors import ConfigurationError
from ._sansio import ApiRequest

__all__ = [
    "WEBHOOK_EVENTS",
    "cancel_after_header",
    "create_limit",
    "create_request",
    "prefer_header",
]

#: The events a webhook may be sent for (``webhook_events_filter``).
WEBHOOK_EVENTS: Final = frozenset({"start", "output", "logs", "completed"})
#: The longest sync-mode wait Replicate accepts (``Prefer: wait=N``).
MAX_WAIT: Final = 60

#: An owner or a name: what Replicate's URLs hold (letters, digits, ``-``,
#: ``_``, ``.``), never a path separator or a dot segment.
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
#: A Replicate duration: ``90``, ``90s``, ``5m``, ``1h30m``, ``1.5h``.
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?")
#: What Replicate's 429 for creates says about a reduced limit.
_REDUCED: Final = re.compile(
    r"(\d+(?:\.\d+)?)\s*requests?\s+per\s+(second|minute|hour)"
    r"(?:\s+with\s+a\s+burst\s+of\s+(\d+))?",
    re.IGNORECASE,
)
_PER: Final = {"second": 1.0, "minute": 60.0, "hour": 3600.0}


def _owner_name(value: object, option: str) -> tuple[str, str]:
    """Split ``owner/name``; a clear error for anything else."""
    if not isinstance(value, str):
        raise ConfigurationError(
            f"{option} must be a string like 'owner/name', got {type(value).__name__}",
            option=option,
        )
    owner, slash, name = value.partition("/")
    if not (slash and _SEGMENT.fullmatch(owner) and _SEGMENT.fullmatch(name)):
        raise ConfigurationError(
            f"{option} must look like 'owner/name' (letters, digits, '-', '_', "
            f"'.'), got {value[:120]!r}",
            option=option,
        )
    return owner, name


def _version_id(value: object, option: str) -> str:
    if (
        not isinstance(value, str)
        or not value.strip()
        or len(value) > 256
        or not value.isprintable()
        or any(ch.isspace() for ch in value)
    ):
        raise ConfigurationError(
            f"{option} must be a version id (64 hex characters on Replicate), "
            f"got {value!r:.120}",
            option=option,
        )
    return value


def cancel_after_header(value: float | str) -> str:
    """The ``Cancel-After`` header for a server-side deadline.

    Seconds become whole seconds (``"300s"``); a string must already be a
    Replicate duration (``"90s"``, ``"5m"``, ``"1h30m"``).

    Example:
        >>> cancel_after_header(300), cancel_after_header("1h30m")
        ('300s', '1h30m')

    Raises:
        ConfigurationError: not a positive duration.
    """
    if isinstance(value, str):
        text = value.strip()
        if _DURATION.fullmatch(text) and any(ch in "123456789" for ch in text):
            return text
    elif (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    ):
        return f"{max(1, math.ceil(value))}s"
    raise ConfigurationError(
        f"cancel_after must be seconds (> 0) or a duration like '5m' or "
        f"'1h30m', got {value!r:.60}",
        option="cancel_after",
    )


def prefer_header(wait: bool | float) -> str | None:
    """The ``Prefer`` header for sync mode: ``wait=N``, 1 to 60 seconds.

    ``True`` asks for Replicate's longest wait (60 s); ``False`` for none.

    Example:
        >>> prefer_header(True), prefer_header(5), prefer_header(False)
        ('wait=60', 'wait=5', None)

    Raises:
        ConfigurationError: not a bool or seconds between 1 and 60.
    """
    if wait is True:
        return f"wait={MAX_WAIT}"
    if wait is False:
        return None
    if (
        isinstance(wait, int | float)
        and math.isfinite(wait)
        and 1 <= round(wait) <= MAX_WAIT
    ):
        return f"wait={round(wait)}"
    raise ConfigurationError(
        f"wait must be True, False or seconds from 1 to {MAX_WAIT} "
        f"(Replicate's sync mode), got {wait!r:.60}",
        option="wait",
    )


def _events(value: Iterable[str]) -> list[str]:
    if isinstance(value, str):
        value = [value]
    try:
        events = list(value)
    except TypeError:
        events = [value]  # type: ignore[list-item]  # reported just below
    unknown = [event for event in events if event not in WEBHOOK_EVENTS]
    if unknown or not events:
        raise ConfigurationError(
            f"webhook_events_filter takes some of {sorted(WEBHOOK_EVENTS)}, "
            f"got {unknown[0] if unknown else 'nothing'!r:.60}",
            option="webhook_events_filter",
        )
    return sorted(set(events), key=["start", "output", "logs", "completed"].index)


def _webhook(url: object) -> str:
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"webhook must be an http(s) URL the provider can reach, got {url!r:.120}",
            option="webhook",
        )
    assert isinstance(url, str)
    return url


def create_request(
    model: str | None = None,
    *,
    version: str | None = None,
    deployment: str | None = None,
    input: Mapping[str, Any],
    webhook: str | None = None,
    webhook_events_filter: Iterable[str] | None = None,
    cancel_after: float | str | None = None,
    wait: bool | float | None = None,
) -> ApiRequest:
    """The request that creates one prediction, checked before anything is sent.

    Exactly one of ``model`` (``"owner/name"``, or ``"owner/name:<version>"``
    for one version), ``version`` and ``deployment`` (``"owner/name"``).

    Example:
        >>> request = create_request("acme/echo", input={"prompt": "hi"}, wait=5)
        >>> request.method, request.path, request.body
        ('POST', 'models/acme/echo/predictions', b'{"input":{"prompt":"hi"}}')
        >>> dict(request.headers)["Prefer"]
        'wait=5'
        >>> create_request("acme/echo:5c7d", input={}).path
        'predictions'

    Raises:
        ConfigurationError: a bad argument; ``option`` names it.
    """
    given = [
        name
        for name, value in (
            ("model", model),
            ("version", version),
            ("deployment", deployment),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise ConfigurationError(
            "create takes exactly one of model ('owner/name'), version and "
            f"deployment ('owner/name'); got {', '.join(given) or 'none'}",
            option="model",
        )
    body: dict[str, Any] = {}
    if model is not None and isinstance(model, str) and ":" in model:
        model, _, version = model.partition(":")
        _owner_name(model, "model")
        model = None
    if model is not None:
        owner, name = _owner_name(model, "model")
        path = f"models/{owner}/{name}/predictions"
    elif deployment is not None:
        owner, name = _owner_name(deployment, "deployment")
        path = f"deployments/{owner}/{name}/predictions"
    else:
        body["version"] = _version_id(version, "version")
        path = "predictions"
    if not isinstance(input, Mapping):
        raise ConfigurationError(
            f"input must be a mapping of the model's inputs, "
            f"got {type(input).__name__}",
            option="input",
        )
    body["input"] = dict(input)
    if webhook is not None:
        body["webhook"] = _webhook(webhook)
        if webhook_events_filter is not None:
            body["webhook_events_filter"] = _events(webhook_events_filter)
    elif webhook_events_filter is not None:
        raise ConfigurationError(
            "webhook_events_filter needs a webhook URL", option="webhook_events_filter"
        )
    try:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        problem = str(exc)
    else:
        headers: list[tuple[str, str]] = [("Content-Type", "application/json")]
        if wait is not None and (prefer := prefer_header(wait)) is not None:
            headers.append(("Prefer", prefer))
        if cancel_after is not None:
            headers.append(("Cancel-After", cancel_after_header(cancel_after)))
        return ApiRequest("POST", path, "", data.encode(), tuple(headers))
    raise ConfigurationError(
        f"input must be JSON (strings, numbers, lists, mappings; files as URLs "
        f"or data: URIs): {problem}",
        option="input",
    )


def create_limit(message: str) -> tuple[float, int] | None:
    """The reduced create limit a 429's message states: (per second, burst).

    Replicate cuts the create limit of accounts low on credit, and says so:

    Example:
        >>> create_limit(
        ...     "Your rate limit for creating predictions is reduced to 6 "
        ...     "requests per minute with a burst of 1 while you have less "
        ...     "than $5.0 in credit."
        ... )
        (0.1, 1)
        >>> create_limit("Request was throttled.") is None
        True
    """
    match = _REDUCED.search(message)
    if match is None:
        return None
    count, per, burst = match.groups()
    rate = float(count) / _PER[per.lower()]
    if rate <= 0:
        return None
    return rate, max(1, int(burst)) if burst else 1
