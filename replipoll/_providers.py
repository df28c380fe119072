"""Provider presets: base URL, key variable and per-request timeouts."""

from __future__ import annotations

from typing import Final

import attrs

from ._errors import ConfigurationError
from ._options import positive

__all__ = ["PROVIDERS", "Provider", "Timeouts", "get_provider"]


@attrs.frozen
class Timeouts:
    """Per-request timeouts, in seconds (``None`` = no limit).

    Args:
        total: The whole request, connecting and reading the body included.
        connect: Getting a connection (from the pool or a new one).
        read: Silence between two reads of the answer.
    """

    total: float | None = attrs.field(default=60.0, validator=positive(none=True))
    connect: float | None = attrs.field(default=10.0, validator=positive(none=True))
    read: float | None = attrs.field(default=None, validator=positive(none=True))


@attrs.frozen
class Provider:
    """A Replicate-compatible API: its base URL, key variable and timeouts."""

    name: str
    base_url: str
    env_var: str
    timeouts: Timeouts = Timeouts()


#: The built-in presets. CometAPI's query has been seen to take longer than
#: 45 s to answer, so its per-request timeout allows two minutes.
PROVIDERS: Final[dict[str, Provider]] = {
    "replicate": Provider(
        "replicate",
        "https://api.replicate.com/v1",
        "REPLICATE_API_TOKEN",
        Timeouts(total=60.0, connect=10.0),
    ),
    "deerapi": Provider(
        "deerapi",
        "https://api.deerapi.com/replicate/v1",
        "DEERAPI_KEY",
        Timeouts(total=90.0, connect=10.0),
    ),
    "cometapi": Provider(
        "cometapi",
        "https://api.cometapi.com/replicate/v1",
        "COMETAPI_KEY",
        Timeouts(total=120.0, connect=10.0),
    ),
}


def get_provider(name: str | Provider) -> Provider:
    """Return the preset called ``name`` (case-insensitive), or ``name`` itself.

    Raises:
        ConfigurationError: no preset has that name.
    """
    if isinstance(name, Provider):
        return name
    preset = PROVIDERS.get(str(name).lower())
    if preset is None:
        known = ", ".join(sorted(PROVIDERS))
        raise ConfigurationError(
            f"unknown provider {name!r}; use one of {known}, or pass base_url=",
            option="provider",
        )
    return preset
