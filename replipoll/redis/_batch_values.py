"""What a batch reads and writes: its keys, its status, results, reports, records.

Plain values, shared by :class:`~replipoll.redis.RedisBatch` and the worker
that runs it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from .._errors import PollTimeout, RequestError
from .._manager import PollResult
from .._results import Diagnosis

__all__ = [
    "BatchKeys",
    "BatchResult",
    "BatchStatus",
    "RecordMaker",
    "ResultCallback",
    "WorkerReport",
    "batch_record",
    "json_line",
    "text",
]

ResultCallback = Callable[[PollResult, bool], Awaitable[None] | None]
RecordMaker = Callable[[PollResult], Mapping[str, Any]]


def text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# -- values ------------------------------------------------------------------


@attrs.frozen
class BatchKeys:
    """The Redis keys of one batch (see the module's documentation)."""

    ids: str
    queue: str
    done: str
    results: str
    outcomes: str
    loaders: str
    meta: str

    @classmethod
    def of(cls, prefix: str, name: str) -> BatchKeys:
        """The keys of batch ``name`` under ``prefix``.

        Example:
            >>> BatchKeys.of("replipoll:", "nightly").queue
            'replipoll:batch:{nightly}:queue'
        """
        base = f"{prefix}batch:{{{name}}}:"
        return cls(*(base + field.name for field in attrs.fields(cls)))

    def all(self) -> list[str]:
        """Every key, in field order."""
        return list(attrs.astuple(self))


@attrs.frozen
class BatchStatus:
    """Where a batch stands, as read from Redis in one step.

    Attributes:
        name: The batch.
        total: Ids loaded.
        done: Ids whose result is written.
        loading: Workers loading ids right now (their lease is running).
        loads_started: Loads ever begun.
        loads_finished: Loads that ran to their end.
        pending: Ids delivered to a worker and not finished (held).
        consumers: Workers in the group: alive, or dead and not yet
            cleaned up.
        outcomes: Results written, by ``result`` (``"succeeded"``,
            ``"error"``...).
    """

    name: str
    total: int
    done: int
    loading: int
    loads_started: int
    loads_finished: int
    pending: int
    consumers: int
    outcomes: dict[str, int]

    @property
    def exists(self) -> bool:
        """Whether the batch has ids, or a worker is loading some."""
        return self.total > 0 or self.loading > 0

    @property
    def complete(self) -> bool:
        """Whether every id loaded is done and nobody is loading more."""
        return self.total > 0 and self.done >= self.total and self.loading == 0

    @property
    def interrupted_loads(self) -> int:
        """How many loads stopped halfway (their worker died), leaving ids out.

        Run a worker with the same ids again to finish loading them.
        """
        return max(self.loads_started - self.loads_finished - self.loading, 0)

    @property
    def all_succeeded(self) -> bool:
        """Whether the batch is complete and every id ``succeeded``."""
        return self.complete and self.outcomes.get("succeeded", 0) == self.total


@attrs.frozen
class BatchResult:
    """One entry of a batch's results: an id and how it ended.

    Attributes:
        id: The prediction id.
        result: Its final status, or ``"error"``.
        worker: The worker (consumer name) that wrote it.
        record: The record: ``id``, ``result``, ``status``, ``prediction``
            (:meth:`Prediction.to_json <replipoll.Prediction.to_json>`) and
            ``error``, as ``replipoll poll`` writes each JSON line.
    """

    id: str
    result: str
    worker: str
    record: dict[str, Any]


@attrs.frozen
class WorkerReport:
    """What one worker did, as :meth:`RedisBatch.work` returns it.

    Attributes:
        worker: Its consumer name (``host:pid:random``).
        complete: Whether the batch was complete when it returned.
        finished: Results this worker wrote.
        duplicates: Ids it finished whose result another worker had
            written first (not written again).
        skipped: Ids delivered to it that were done already (acknowledged,
            not polled).
        taken_over: Ids it took over from workers that stopped or died.
        handed_back: Ids it held when it stopped, handed back to the batch.
        outcomes: The results it wrote, by ``result``.
        diagnosis: Why it stopped early, when its first answers showed that
            every request of its fails for one reason (a refused key, a
            wrong base URL); its ids were handed back, not written.
    """

    worker: str
    complete: bool
    finished: int
    duplicates: int
    skipped: int
    taken_over: int
    handed_back: int
    outcomes: dict[str, int]
    diagnosis: Diagnosis | None = None


def batch_record(result: PollResult) -> dict[str, Any]:
    """The record written for a finished id (as ``replipoll poll``'s JSON lines).

    ``result`` is the final status, or ``"error"`` when polling ended without
    one; ``error`` then says what happened (never the API key).

    Example:
        >>> from replipoll import NotFoundError, PollResult
        >>> record = batch_record(PollResult("ghost", None, NotFoundError("gone")))
        >>> record["result"], record["error"]["type"]
        ('error', 'NotFoundError')
    """
    prediction = result.prediction
    status = str(prediction.status) if prediction is not None else None
    error = result.error
    info: dict[str, Any] | None = None
    if error is not None:
        info = {"type": type(error).__name__, "message": str(error)}
        if isinstance(error, RequestError):
            info.update(
                status=error.status,
                request_id=error.request_id,
                attempts=error.attempts,
            )
        elif isinstance(error, PollTimeout):
            info["timeout"] = error.timeout
    return {
        "id": result.id,
        "result": status if error is None and status is not None else "error",
        "status": status,
        "prediction": prediction.to_json() if prediction is not None else None,
        "error": info,
    }


def _null(constant: str) -> None:
    return None


def json_line(record: Mapping[str, Any]) -> str:
    """Strict JSON on one line: a NaN or infinity a server sent becomes null."""
    try:
        return json.dumps(record, allow_nan=False, separators=(",", ":"))
    except ValueError:
        finite = json.loads(json.dumps(record), parse_constant=_null)
        return json.dumps(finite, allow_nan=False, separators=(",", ":"))
