"""What a successful answer's headers say about pace: pure, no clock read.

Replicate's answers have been seen with ``ratelimit-remaining`` and
``ratelimit-reset`` headers (undocumented); other stacks send the
``x-ratelimit-*`` spelling or the IETF draft's single ``RateLimit`` header
(``limit=100, remaining=50, reset=5``). A server may also suggest when to
ask again about a prediction still running: a ``Retry-After`` on a 2xx
answer. :class:`ServerHints` reads all of them from one answer's headers;
the client uses the rate part to slow its budget down (never to speed it
up past what was configured) and the :class:`~replipoll.PollManager` the
suggested interval.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Final

import attrs
from multidict import CIMultiDict, CIMultiDictProxy

from ._sansio import header, parse_retry_after

__all__ = ["HINT_HEADERS", "ServerHints"]

#: The headers :meth:`ServerHints.read` looks at (any case).
HINT_HEADERS: Final = (
    "Ratelimit-Remaining",
    "X-Ratelimit-Remaining",
    "Ratelimit-Reset",
    "X-Ratelimit-Reset",
    "Ratelimit",
    "Retry-After",
)

#: A reset larger than this is a Unix time, not seconds (GitHub's style).
_EPOCH_THRESHOLD: Final = 1e9
#: The longest reset believed, in seconds: a day. Longer is garbage.
_MAX_RESET: Final = 86_400.0
_NUMBER: Final = re.compile(r"\s*(\d+(?:\.\d*)?)\s*")
_DRAFT_ITEM: Final = re.compile(r"(remaining|reset)\s*=\s*(\d+(?:\.\d*)?)", re.I)


_HINT_HEADERS_LOWER: Final = tuple(name.lower() for name in HINT_HEADERS)


def _number(value: str | None) -> float | None:
    if value is None or len(value) > 40:
        return None
    match = _NUMBER.fullmatch(value)
    return float(match.group(1)) if match else None


def _reset_seconds(value: float | None, now: float) -> float | None:
    if value is None:
        return None
    if value > _EPOCH_THRESHOLD:
        value = max(0.0, value - now)
    return value if value <= _MAX_RESET else None


@attrs.define
class ServerHints:
    """The pace hints of one answer; :meth:`read` fills them in.

    A mutable scratch object, reused from answer to answer by one worker,
    so that an answer without hints (nearly all of them) costs no
    allocation.

    Attributes:
        remaining: Requests left in the current window (``None``: not said).
        reset: Seconds until the window resets.
        poll_after: Seconds after which to ask again (a 2xx ``Retry-After``).

    Example:
        >>> hints = ServerHints()
        >>> hints.read({"ratelimit-remaining": "0", "ratelimit-reset": "12"}, now=0)
        True
        >>> hints.remaining, hints.reset, hints.poll_after
        (0, 12.0, None)
        >>> hints.read({"RateLimit": "limit=100, remaining=40, reset=5"}, now=0)
        True
        >>> hints.remaining, hints.reset
        (40, 5.0)
        >>> hints.read({"Content-Type": "application/json"}, now=0)
        False
    """

    remaining: int | None = None
    reset: float | None = None
    poll_after: float | None = None

    def read(self, headers: Mapping[str, str], now: float) -> bool:
        """Read the hints of ``headers``; return whether there were any.

        Unusable values (words, negative numbers, a reset over a day) count
        as not sent. A reset past 10^9 is read as a Unix time. Never raises.

        Args:
            headers: The answer's headers.
            now: The wall-clock time as a Unix timestamp (for HTTP dates and
                Unix-time resets).
        """
        if isinstance(headers, CIMultiDictProxy | CIMultiDict):
            present = any(name in headers for name in _HINT_HEADERS_LOWER)
        else:  # a plain mapping: keys in any case
            present = any(key.lower() in _HINT_HEADERS_LOWER for key in headers)
        if not present:
            self.remaining = self.reset = self.poll_after = None
            return False  # nearly every answer: a few lookups, nothing parsed
        remaining = _number(
            header(headers, "Ratelimit-Remaining")
            or header(headers, "X-Ratelimit-Remaining")
        )
        reset = _number(
            header(headers, "Ratelimit-Reset") or header(headers, "X-Ratelimit-Reset")
        )
        draft = header(headers, "Ratelimit")
        if draft is not None and len(draft) <= 200:
            for name, value in _DRAFT_ITEM.findall(draft):
                if name.lower() == "remaining" and remaining is None:
                    remaining = float(value)
                elif name.lower() == "reset" and reset is None:
                    reset = float(value)
        poll_after = parse_retry_after(header(headers, "Retry-After"), now)
        if poll_after is not None and not math.isfinite(poll_after):
            poll_after = None
        self.remaining = (
            int(remaining)
            if remaining is not None and math.isfinite(remaining)
            else None
        )
        self.reset = _reset_seconds(reset, now)
        self.poll_after = poll_after
        return not (
            self.remaining is None and self.reset is None and poll_after is None
        )
