"""Compact per-prediction state and its rendering as Replicate JSON.

Pure code: nothing here reads a clock or does I/O.  The server passes ``now``
(monotonic seconds from its injected clock) and the offset that turns monotonic
seconds into wall-clock seconds for the timestamp strings.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import time
import zlib
from collections.abc import Collection
from typing import Any, Final

import attrs

from ._progress import progress_logs

DEFAULT_ERROR: Final = (
    "E1001 Model Out of Memory: CUDA out of memory. Tried to allocate 2.00 GiB"
)

_API_URL: Final = "https://api.replicate.com/v1/predictions/"


class _Missing(enum.Enum):
    MISSING = enum.auto()


#: Marks "no output given": a succeeded prediction then serves file URLs.
MISSING: Final = _Missing.MISSING


@attrs.define
class Prediction:
    """What the server remembers about one prediction (a few slots, no JSON)."""

    id: str
    created: float
    queue: float
    duration: float
    outcome: str
    output: Any
    n_files: int
    file_size: int
    error: str | None
    input: dict[str, Any]
    model: str
    logs: str
    extra: dict[str, Any] | None
    canceled_at: float | None = None
    #: Steps of a tqdm progress bar printed while processing; 0: none.
    steps: int = 0
    #: Server-side deadline (``Cancel-After``), monotonic seconds; see
    #: :meth:`set_deadline`.
    deadline: float | None = None
    #: The ``webhook`` URL given at create (stored; this module sends nothing).
    webhook: str | None = None
    #: The ``webhook_events_filter`` given at create (all four events when a
    #: webhook came without one; empty without a webhook).
    webhook_events_filter: tuple[str, ...] = ()
    #: ``owner/name`` of the deployment it was created through, if any.
    deployment: str | None = None

    def timeline(self, now: float) -> tuple[str, float | None, float | None]:
        """Return ``(status, started, completed)`` at monotonic time *now*.

        ``started``/``completed`` are monotonic seconds or ``None``.  An
        ``aborted`` prediction spends ``queue + duration`` in ``starting`` and
        never starts; a cancel freezes the prediction at the moment it came;
        a deadline that passes first ends it ``aborted`` if it had not
        started, else ``canceled``.
        """
        start = self.created + self.queue
        end = start + self.duration
        aborted = self.outcome == "aborted"
        cancel = self.canceled_at
        if cancel is not None and now >= cancel:
            started = start if not aborted and start <= cancel else None
            if started is None and cancel == self.deadline:
                return "aborted", None, cancel
            return "canceled", started, cancel
        if now < start or (aborted and now < end):
            return "starting", None, None
        if now < end:
            return "processing", start, None
        return self.outcome, None if aborted else start, end

    def logs_at(self, now: float, started: float, completed: float | None) -> str:
        """The logs at *now* of a prediction that started at *started*."""
        if not self.steps:
            return self.logs
        end = now if completed is None else min(now, completed)
        bar = progress_logs(self.steps, self.duration, end - started)
        return self.logs + bar

    def cancel(self, now: float) -> None:
        """Cancel at *now* unless the prediction is already final then."""
        # canceled_at may hold a deadline still to come: a cancel beats it.
        end = self.created + self.queue + self.duration
        if (self.canceled_at is None or now < self.canceled_at) and now < end:
            self.canceled_at = now

    def set_deadline(self, at: float) -> None:
        """Give the prediction a deadline at monotonic time *at* (``Cancel-After``).

        If it is not final by then, it ends at *at*: ``aborted`` (never
        started, not charged) if it was still ``starting``, else ``canceled``.
        A cancel that comes first wins.
        """
        self.deadline = at
        self.cancel(at)


@attrs.frozen
class Timeline:
    """When a scripted prediction was, or will be, created, started and done.

    Times are seconds of the server's (monotonic) clock, as scripted: what
    happens to the prediction whatever the clients do, a cancel that already
    came taken into account.

    Attributes:
        created: When it was created (it is listed and served from then on).
        started: When it started processing; ``None`` if it never does
            (aborted, or cancelled while starting).
        completed: When it reached its final status.
        status: That final status.
    """

    created: float
    started: float | None
    completed: float
    status: str

    @classmethod
    def of(cls, p: Prediction) -> Timeline:
        """The timeline of *p* as scripted (and cancelled) so far."""
        status, started, completed = p.timeline(math.inf)
        assert completed is not None  # every script ends
        return cls(p.created, started, completed, status)


def file_name(index: int) -> str:
    """Name of the *index*-th output file of a prediction."""
    return f"out-{index}.bin"


def served_file(p: Prediction, name: str) -> bytes | None:
    """Return the bytes of *p*'s output file *name*, or ``None`` if none such.

    Files ``out-0.bin`` to ``out-{n_files - 1}.bin`` exist from the start; their
    content is a hash of the id and name, repeated up to ``file_size`` bytes.
    """
    digits = name[4:-4]
    if not (name.startswith("out-") and name.endswith(".bin") and digits.isdigit()):
        return None
    if digits != str(int(digits)) or int(digits) >= p.n_files:
        return None
    block = hashlib.sha256(f"{p.id}/{name}".encode()).digest()
    return (block * (p.file_size // len(block) + 1))[: p.file_size]


@functools.lru_cache(maxsize=1024)
def version_hash(model: str) -> str:
    """A stable 64-hex version id for *model* (what ``/v1`` answers carry)."""
    return hashlib.sha256(model.encode()).hexdigest()


def timestamp(seconds: float, style: int) -> str:
    """Format wall-clock *seconds* as Replicate does, in one of three precisions.

    Style 0 gives microseconds (``2023-09-08T16:19:34.765994Z``), 1 milliseconds
    (``2026-03-12T11:27:18.258Z``), 2 nanoseconds
    (``2024-11-06T17:11:57.625316416Z``).
    """
    whole = int(seconds // 1)
    frac = seconds - whole
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    if style == 0:
        return f"{base}.{int(frac * 1e6):06d}Z"
    if style == 1:
        return f"{base}.{int(frac * 1e3):03d}Z"
    return f"{base}.{int(frac * 1e9):09d}Z"


def render(
    p: Prediction,
    now: float,
    *,
    wall_offset: float,
    origin: str,
    gateway: bool,
    retention: float | None,
    omit: Collection[str] = (),
) -> dict[str, Any]:
    """Build the JSON object a GET of *p* answers at monotonic time *now*.

    Args:
        p: The prediction.
        now: Monotonic seconds (the server's clock).
        wall_offset: Added to monotonic seconds to get Unix seconds.
        origin: ``scheme://host:port`` used in the URLs of output files and
            of the event stream (``urls.stream``).
        gateway: Answer as DeerAPI/CometAPI do (``version: "hidden"``).
        retention: Seconds after completion when input, output and logs are
            removed (``data_removed: true``); ``None``: never.
        omit: Top-level keys to leave out (list items lack some).
    """
    status, started, completed = p.timeline(now)
    style = zlib.crc32(p.id.encode()) % 3
    output: Any = None
    error = None
    metrics: dict[str, Any] = {}
    removed = (
        retention is not None and completed is not None and now - completed >= retention
    )
    if completed is not None:
        if started is not None:
            metrics["predict_time"] = round(completed - started, 6)
        metrics["total_time"] = round(completed - p.created, 6)
        if status == "succeeded":
            if p.output is MISSING:
                output = [
                    f"{origin}/files/{p.id}/{file_name(i)}" for i in range(p.n_files)
                ]
                metrics["image_count"] = p.n_files
            else:
                output = p.output
        elif status == "failed":
            error = DEFAULT_ERROR if p.error is None else p.error
        if removed:
            output = None
    pid = p.id
    record: dict[str, Any] = {
        "id": pid,
        "model": p.model,
        "version": "hidden" if gateway else version_hash(p.model),
        "input": {} if removed else p.input,
        "logs": ""
        if started is None or removed or "logs" in omit
        else p.logs_at(now, started, completed),
        "output": output,
        "data_removed": removed,
        "error": error,
        "status": status,
        "created_at": timestamp(p.created + wall_offset, style),
        "started_at": None
        if started is None
        else timestamp(started + wall_offset, style),
        "completed_at": None
        if completed is None
        else timestamp(completed + wall_offset, style),
        "urls": {
            "cancel": f"{_API_URL}{pid}/cancel",
            "get": f"{_API_URL}{pid}",
            "stream": f"{origin}/stream/{pid}",
            "web": f"https://replicate.com/p/{pid}",
        },
        "metrics": metrics,
        "source": "api",
    }
    if p.extra:
        record.update(p.extra)
    for key in omit:
        record.pop(key, None)
    return record
