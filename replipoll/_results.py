"""What a PollManager reports: each id's result, its counters, the status tally.

Pure values and bookkeeping; the manager in :mod:`replipoll._manager` fills
them in.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import attrs

from ._errors import (
    AuthenticationError,
    BaseURLError,
    ConnectError,
    NotFoundError,
    RequestError,
)
from ._models import Prediction

__all__ = [
    "Diagnosis",
    "PollResult",
    "PollStats",
    "RunResult",
    "StatusTally",
    "SystemicWatch",
]


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
    #: ``"sweep"`` while pages of the list report the unfinished ids,
    #: ``"per-id"`` while each is polled on its own.
    mode: str = "per-id"
    #: List sweeps completed.
    sweeps: int = 0
    #: Pages of the list fetched (counted in ``requests`` too).
    sweep_pages: int = 0
    #: Predictions created by :meth:`PollManager.run` and ``run_many``
    #: (their creates are not counted in ``requests``).
    created: int = 0
    #: Records handed over by :meth:`PollManager.push` (webhooks) for an id
    #: being tracked.
    pushed: int = 0


@attrs.frozen
class RunResult:
    """How one input of :meth:`PollManager.run_many` ended.

    Attributes:
        index: The input's position in what was passed (results come in the
            order predictions finish).
        input: The input itself.
        prediction: The terminal record; on error, the last record seen (or
            ``None`` when the prediction was never created).
        error: ``None`` if a terminal record arrived; otherwise what ended
            it: a :class:`~replipoll.RequestError` from the create (nothing
            was created, or :class:`~replipoll.PredictionMayExistError`),
            or one from polling (:class:`~replipoll.PollTimeout`...).
    """

    index: int
    input: Mapping[str, Any]
    prediction: Prediction | None
    error: BaseException | None = None

    @property
    def id(self) -> str | None:
        """The prediction's id, if it was created."""
        return None if self.prediction is None else self.prediction.id

    @property
    def succeeded(self) -> bool:
        """True when the prediction reached ``succeeded``."""
        return (
            self.error is None
            and self.prediction is not None
            and self.prediction.status == "succeeded"
        )


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


#: What a whole batch can fail for.
DiagnosisKind = Literal["key", "base_url", "not_found", "unreachable"]


@attrs.frozen
class Diagnosis:
    """Why every request of a batch fails the same way, and what to do.

    Made by a :class:`~replipoll.PollManager` from the first answers of a
    batch, before any prediction came back: see
    :attr:`PollManager.diagnosis <replipoll.PollManager.diagnosis>`.

    Attributes:
        kind: ``"key"`` (401/403: the key was refused), ``"base_url"`` (an
            HTML page where the API should be), ``"not_found"`` (404 for
            every id: usually a wrong base URL), ``"unreachable"`` (no
            connection to the host).
        message: One line: the cause and the fix.
        error: One of the errors it was judged from.
        ids: How many ids failed that way before the judgement.
    """

    kind: DiagnosisKind
    message: str
    error: RequestError = attrs.field(eq=False)
    ids: int = 0


class SystemicWatch:
    """Judges, from a batch's first answers, whether it fails for one reason.

    Fed every failed attempt (:meth:`failed`) and every record that arrived
    (:meth:`answered`); until the first record, it counts the ids whose
    requests failed the same way, and once enough have, returns a
    :class:`Diagnosis`. A single record proves the base URL and the key work:
    from then on it judges nothing.

    The bar: one HTML page where the API should be; 3 ids refused with a 401
    or 403; 3 ids whose host could not be reached; 10 ids (or every id there
    is, if fewer) answered 404.

    Example:
        >>> from replipoll import AuthenticationError
        >>> base = "https://api.replicate.com/v1"
        >>> watch = SystemicWatch(base, key="REPLICATE_API_TOKEN")
        >>> refused = AuthenticationError("Invalid token", status=401)
        >>> [watch.failed(pid, refused, tracked=100) for pid in "ab"]
        [None, None]
        >>> diagnosis = watch.failed("c", refused, tracked=100)
        >>> diagnosis.kind, diagnosis.message.endswith("check REPLICATE_API_TOKEN")
        ('key', True)
    """

    KEY_IDS: Final = 3
    UNREACHABLE_IDS: Final = 3
    NOT_FOUND_IDS: Final = 10

    __slots__ = ("_base_url", "_failed", "_healthy", "_key")

    def __init__(self, base_url: str, *, key: str) -> None:
        """``key`` names where the key came from (an environment variable)."""
        self._base_url = base_url
        self._key = key
        self._healthy = False
        self._failed: dict[DiagnosisKind, set[str]] = {}

    @property
    def healthy(self) -> bool:
        """True once a record arrived: the batch as a whole works."""
        return self._healthy

    def answered(self) -> None:
        """A record arrived."""
        if not self._healthy:
            self._healthy = True
            self._failed.clear()

    def failed(
        self, prediction_id: str, error: BaseException, *, tracked: int
    ) -> Diagnosis | None:
        """Count one failed attempt; a :class:`Diagnosis` once one is due.

        Args:
            prediction_id: The id whose request failed.
            error: How it failed.
            tracked: Ids in the batch so far (a small batch needs fewer 404s).
        """
        if self._healthy:
            return None
        kind: DiagnosisKind
        if isinstance(error, BaseURLError):
            kind, needed = "base_url", 1
        elif isinstance(error, AuthenticationError):
            kind, needed = "key", self.KEY_IDS
        elif isinstance(error, ConnectError) and error.status is None:
            kind, needed = "unreachable", self.UNREACHABLE_IDS
        elif isinstance(error, NotFoundError):
            kind, needed = "not_found", min(self.NOT_FOUND_IDS, max(tracked, 1))
        else:
            return None
        ids = self._failed.setdefault(kind, set())
        ids.add(prediction_id)
        if len(ids) < needed:
            return None
        assert isinstance(error, RequestError)
        return Diagnosis(kind, self._explain(kind, error), error, len(ids))

    def _explain(self, kind: DiagnosisKind, error: RequestError) -> str:
        host = urlsplit(self._base_url).netloc
        if kind == "key":
            return (
                f"the key was refused by {host} ({error.status}: {error.message}); "
                f"check {self._key}"
            )
        if kind == "unreachable":
            if error.message.startswith("could not connect"):
                return error.message  # it names the host and the reason
            return f"cannot reach {host}: {error.message}"
        if kind == "not_found":
            return (
                f"no prediction found at {self._base_url} for any of the first "
                f"ids; is the base URL right? It usually ends in /v1 "
                f"(/replicate/v1 on gateways)"
            )
        return error.message
