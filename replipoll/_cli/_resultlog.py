"""A crash-safe JSON Lines file of finished predictions, for resumable batches.

Each finished id is one line, appended with a single ``write`` and made
durable with ``fsync`` before the next: a process killed at any moment (even
with ``SIGKILL``) loses no line already reported, and at worst leaves one
trailing partial line, which :meth:`ResultLog.open` cuts off before appending.
Reading never fails on such a line, nor on any other line that is not a
record: it is counted and skipped.

The line format is documented in ``docs/howto/resume-batch.md``::

    {"id": "...", "result": "succeeded", "status": "succeeded",
     "prediction": {...}, "error": null}
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import attrs

from .._errors import PollTimeout, RequestError
from .._manager import PollResult
from .._models import TERMINAL_STATUSES as TERMINAL

__all__ = [
    "LogContents",
    "ResultLog",
    "describe_error",
    "read_log",
    "record_for",
]

#: The ``result`` of a line whose id ended with an error, not a final status.
ERROR: Final = "error"

if sys.platform != "win32":
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

else:  # pragma: no cover - no advisory locks worth having

    def _lock(fd: int) -> None:
        pass


def record_for(result: PollResult) -> dict[str, Any]:
    """The JSON object written for one finished id.

    ``result`` is the final status (``"succeeded"``, ``"failed"``, ...) or
    ``"error"`` when polling ended without one (see ``error``).
    """
    prediction = result.prediction
    status = str(prediction.status) if prediction is not None else None
    error = result.error
    return {
        "id": result.id,
        "result": status if error is None and status is not None else ERROR,
        "status": status,
        "prediction": prediction.to_json() if prediction is not None else None,
        "error": None if error is None else describe_error(error),
    }


def describe_error(error: BaseException) -> dict[str, Any]:
    """A JSON-ready description of an error; never contains the API key."""
    info: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, RequestError):
        info["status"] = error.status
        info["request_id"] = error.request_id
        info["attempts"] = error.attempts
    elif isinstance(error, PollTimeout):
        info["timeout"] = error.timeout
    return info


@attrs.frozen
class LogContents:
    """What an existing results file holds.

    Attributes:
        results: The ``result`` of the last line of each id, in first-seen order.
        bad_lines: Complete lines that were not a JSON object with an ``id``.
        torn_bytes: Bytes after the last newline (an interrupted write).
    """

    results: dict[str, str]
    bad_lines: int = 0
    torn_bytes: int = 0

    def finished(self) -> set[str]:
        """The ids whose last line has a final status: no need to poll again."""
        return {pid for pid, result in self.results.items() if result in TERMINAL}


def _scan(lines: Iterable[bytes]) -> tuple[LogContents, int]:
    """Parse lines of a results file; also return where the complete lines end."""
    results: dict[str, str] = {}
    bad = end = torn = 0
    for line in lines:
        if not line.endswith(b"\n"):
            torn = len(line)  # only the last line can lack its newline
            break
        end += len(line)
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            bad += 1
            continue
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            bad += 1
            continue
        result = record.get("result")
        results[record["id"]] = result if isinstance(result, str) else ERROR
    return LogContents(results, bad, torn), end


def read_log(path: str | os.PathLike[str]) -> LogContents:
    """Read a results file without changing it; a missing file reads as empty."""
    try:
        with open(path, "rb") as file:
            return _scan(file)[0]
    except FileNotFoundError:
        return LogContents({})


class ResultLog:
    """An append-only JSON Lines file, one durable line per finished id.

    Use it as a context manager: on entry the file is created if missing,
    locked against a second writer (where the platform allows), read, and a
    torn last line is cut off; :attr:`contents` then says what it held.

    Args:
        path: The file.
        durable: ``fsync`` after each line (survives power loss, not just a
            killed process); on by default.

    Raises:
        OSError: the file cannot be opened; ``BlockingIOError`` when another
            process holds its lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self.durable = durable
        self.written = 0
        self.contents = LogContents({})
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> LogContents:
        """Open, lock and repair the file; return (and keep) its contents."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0)
        fd = os.open(self.path, flags, 0o666)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                # It is read to the end to resume: /dev/zero never ends, a
                # FIFO or a terminal waits for a writer.
                raise OSError(
                    errno.EINVAL, "not a regular file (it is read back to resume)"
                )
            _lock(fd)
            with open(fd, "rb", closefd=False) as reader:
                contents, end = _scan(reader)
            if contents.torn_bytes:
                # An interrupted write: cut it off so the next line starts clean.
                os.ftruncate(fd, end)
                os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_END)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self.contents = contents
        return contents

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line, in a single write, then fsync.

        Raises:
            ValueError: the log is not open.
            OSError: the write failed (disk full, ...).
        """
        if self._fd is None:
            raise ValueError("the result log is not open")
        line = json.dumps(record, separators=(",", ":"))  # ASCII: always encodable
        data = (line + "\n").encode("utf-8")
        view = memoryview(data)
        while view:  # one write in practice; a short write is finished here
            written = os.write(self._fd, view)
            view = view[written:]
        if self.durable:
            _datasync(self._fd)
        self.written += 1

    def close(self) -> None:
        """Release the lock and close the file. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _datasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
    sync(fd)
