"""What a PollManager reports: each id's result, its counters, the status tally.

Pure values and bookkeeping; the manager in :mod:`replipoll._manager` fills
them in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Final

import attrs

from ._models import Prediction

__all__ = ["PollResult", "PollStats", "StatusTally"]


@attrs.frozen
class PollResult:
    """How polling one id ended.

    Attributes:
        id: The prediction id, as submitted.
        prediction: The terminal record; on error, the last record seen (or
            ``None`` if none arrived).
        error: ``None`` if a terminal record arrived; otherwise the exception
            that ended this id (:class:`~replipoll.NotFoundError`,
            :class:`~replipoll.PollTimeout`, a ``RequestError`` whose
            ``attempts`` says retries were exhausted,
            :class:`~replipoll.ManagerClosedError`...).
    """

    id: str
    prediction: Prediction | None
    error: BaseException | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether a terminal record arrived (succeeded, failed, canceled, aborted).

        False when polling ended in an error (see :attr:`error`). A
        ``failed`` prediction is terminal; :attr:`succeeded` tells them apart.
        """
        return self.error is None

    @property
    def succeeded(self) -> bool:
        """True when the prediction reached ``succeeded``."""
        return (
            self.error is None
            and self.prediction is not None
            and (self.prediction.status == "succeeded")
        )


@attrs.frozen
class PollStats:
    """A snapshot of a :class:`PollManager`'s counters."""

    #: Ids being polled now.
    tracked: int
    #: Ids whose polling ended (a terminal record or an error).
    finished: int
    #: Ids that ended with an error.
    errors: int
    #: Requests open right now.
    in_flight: int
    #: The most requests that were ever open at once.
    peak_in_flight: int
    #: Latest status of every id being polled ("unknown" before its first
    #: answer); terminal statuses count ids that ended in them.
    by_status: dict[str, int]
    #: Requests sent, retries included.
    requests: int
    #: Failed requests that were tried again.
    retries: int
    #: 429 answers received.
    throttled: int
    #: Seconds requests spent waiting for the rate budget, summed.
    budget_wait: float


class StatusTally:
    """Counts ids by their latest status, in a bounded number of names.

    Documented statuses are counted under their own name. Undocumented ones
    too, but only the first :attr:`MAX_UNDOCUMENTED` of them (cut to 64
    characters, the key cut out by ``redact``); every later one is counted
    as :attr:`OTHER`. A server that sends a new status on every poll so
    costs a fixed amount of memory, and as many log lines.

    Example:
        >>> tally = StatusTally(redact=str, say=lambda name, pid: None)
        >>> odd = Prediction(id="a", status="queued_upstream")
        >>> tally.count("unknown")
        >>> tally.move("unknown", tally.name(odd))
        >>> tally.snapshot()
        {'queued_upstream': 1}
    """

    #: How many undocumented statuses get a name of their own.
    MAX_UNDOCUMENTED: Final = 16
    #: What every undocumented status after those is counted as.
    OTHER: Final = "undocumented (other)"
    _LONGEST: Final = 64

    __slots__ = ("_named", "_redact", "_say", "counts")

    def __init__(
        self, *, redact: Callable[[str], str], say: Callable[[str, str], None]
    ) -> None:
        """``say(name, prediction_id)`` hears of each new undocumented name once."""
        self.counts: Counter[str] = Counter()
        self._named: dict[str, str] = {}
        self._redact = redact
        self._say = say

    def name(self, prediction: Prediction | None) -> str:
        """The name ``prediction``'s status is counted under (``None``: unknown)."""
        if prediction is None:
            return "unknown"
        status = prediction.status
        if prediction.is_documented_status:
            return str(status)
        key = status[:256]
        name = self._named.get(key)
        if name is not None:
            return name
        if len(self._named) >= self.MAX_UNDOCUMENTED:
            return self.OTHER
        name = self._redact(status)
        if len(name) > self._LONGEST:
            name = name[: self._LONGEST - 1] + "…"
        self._named[key] = name
        self._say(name, prediction.id)
        if len(self._named) == self.MAX_UNDOCUMENTED:
            self._say(self.OTHER, prediction.id)
        return name

    def count(self, name: str) -> None:
        """One more id in ``name``."""
        self.counts[name] += 1

    def uncount(self, name: str) -> None:
        """One id less in ``name`` (it is no longer tracked)."""
        self.counts[name] -= 1

    def move(self, old: str, new: str) -> None:
        """One id's status went from ``old`` to ``new`` (names from :meth:`name`)."""
        self.counts[old] -= 1
        self.counts[new] += 1

    def snapshot(self) -> dict[str, int]:
        """The non-zero counts."""
        return {k: v for k, v in self.counts.items() if v}
