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

Lines are strict JSON, which any reader accepts: a ``NaN``, ``Infinity`` or
``-Infinity`` a server sent (Python's ``json`` reads them, most readers do
not) is written as ``null``, wherever it is in the record (:func:`dumps`).

A file that is not empty must already be a results file to be opened: every
complete line a JSON object with a string ``id`` and a string ``result``
(blank lines allowed). Anything else is refused with :class:`ForeignFileError`
before a byte of it is changed; only then is a torn last line cut off.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
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
    "ForeignFileError",
    "LogContents",
    "ResultLog",
    "describe_error",
    "dumps",
    "finite",
    "read_log",
    "record_for",
    "same_file",
]

#: The ``result`` of a line whose id ended with an error, not a final status.
ERROR: Final = "error"
#: How every line this module writes begins (a torn first line is judged by it).
LINE_START: Final = b'{"id":"'

if sys.platform != "win32":
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

else:  # pragma: no cover - no advisory locks worth having

    def _lock(fd: int) -> None:
        pass


def _null(constant: str) -> None:
    return None


def finite(value: Any) -> Any:
    """``value`` (JSON-ready data) with every NaN and infinity replaced by ``None``.

    ``value`` itself is returned when it holds none; it is never changed.

    Example:
        >>> finite({"output": float("nan"), "metrics": [1.5, float("-inf")]})
        {'output': None, 'metrics': [1.5, None]}
    """
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        # A round trip replaces them at any depth, with json's own recursion.
        return json.loads(json.dumps(value), parse_constant=_null)
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    """``value`` as strict JSON text: NaN and infinities are written as ``null``.

    ASCII only. Without ``indent``, compact and on one line.

    Example:
        >>> dumps({"id": "a", "output": float("inf")})
        '{"id":"a","output":null}'
    """
    separators = (",", ":") if indent is None else (",", ": ")
    try:
        return json.dumps(value, allow_nan=False, indent=indent, separators=separators)
    except ValueError:
        return json.dumps(
            finite(value), allow_nan=False, indent=indent, separators=separators
        )


def record_for(result: PollResult) -> dict[str, Any]:
    """The JSON object written for one finished id.

    ``result`` is the final status (``"succeeded"``, ``"failed"``, ...) or
    ``"error"`` when polling ended without one (see ``error``). The record is
    strict JSON data: a NaN or infinity the server sent is ``None``.
    """
    prediction = result.prediction
    status = str(prediction.status) if prediction is not None else None
    error = result.error
    record = {
        "id": result.id,
        "result": status if error is None and status is not None else ERROR,
        "status": status,
        "prediction": prediction.to_json() if prediction is not None else None,
        "error": None if error is None else describe_error(error),
    }
    strict: dict[str, Any] = finite(record)
    return strict


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


class ForeignFileError(ValueError):
    """The file is not a results file; it was left as it was.

    Attributes:
        path: The file.
        looks: What it looks like instead, e.g. ``line 1 is not JSON``.
    """

    def __init__(self, path: Path, looks: str) -> None:
        super().__init__(f"{path} is not a replipoll results file ({looks})")
        self.path = path
        self.looks = looks


@attrs.frozen
class LogContents:
    """What an existing results file holds.

    Attributes:
        results: The ``result`` of the last line of each id, in first-seen order.
        bad_lines: Complete lines that were not a JSON object with a string
            ``id`` and a string ``result``.
        torn_bytes: Bytes after the last newline (an interrupted write).
        first_bad: What the first bad line is instead of a record, or what a
            torn line with no record before it looks like; ``None`` if the
            file is a results file.
    """

    results: dict[str, str]
    bad_lines: int = 0
    torn_bytes: int = 0
    first_bad: str | None = None

    def finished(self) -> set[str]:
        """The ids whose last line has a final status: no need to poll again."""
        return {pid for pid, result in self.results.items() if result in TERMINAL}


_PLAIN_ID: Final = re.compile(rb"\s*[A-Za-z0-9_-]+\s*")
_KINDS: Final[dict[type, str]] = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _parse_record(line: bytes) -> dict[str, Any] | str:
    """The record on one complete line, or what the line is instead."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        if _PLAIN_ID.fullmatch(line):
            return "looks like a prediction id, as in an ids file"
        return "is not JSON"
    if not isinstance(record, dict):
        return f"is JSON {_KINDS.get(type(record), 'data')}, not an object"
    if not isinstance(record.get("id"), str) or not isinstance(
        record.get("result"), str
    ):
        return 'is a JSON object without a string "id" and "result"'
    return record


def _cut_short(tail: bytes) -> bool:
    """Whether ``tail`` may be the start of a line of ours.

    For a file with no complete record to vouch for it: a foreign file that
    merely lacks a final newline must not be cut (unless its one line is a
    whole record).
    """
    start = tail.strip()
    return start.startswith(LINE_START) or LINE_START.startswith(start)


def _scan(
    lines: Iterable[bytes], *, stop_at_bad: bool = False
) -> tuple[LogContents, int]:
    """Parse lines of a results file; also return where the complete lines end.

    With ``stop_at_bad``, stop at the first line that is not a record (the
    file is refused then: no need to read a big foreign file to its end).
    """
    results: dict[str, str] = {}
    bad = end = 0
    tail = b""
    first_bad = None
    number = 0
    for number, line in enumerate(lines, 1):
        if not line.endswith(b"\n"):
            tail = line  # only the last line can lack its newline
            break
        end += len(line)
        if not line.strip():
            continue
        record = _parse_record(line)
        if isinstance(record, str):
            bad += 1
            if first_bad is None:
                first_bad = f"line {number} {record}"
                if stop_at_bad:
                    break
            continue
        results[record["id"]] = record["result"]
    if tail.strip() and not results and first_bad is None and not _cut_short(tail):
        looks = _parse_record(tail)
        if isinstance(looks, str):
            first_bad = f"line {number} {looks}"
    return LogContents(results, bad, len(tail), first_bad), end


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
        """Open, lock and repair the file; return (and keep) its contents.

        Raises:
            ForeignFileError: the file is not empty and not a results file;
                it was not changed.
            OSError: the file cannot be opened, is not a regular file, or
                is locked (``BlockingIOError``).
        """
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
                contents, end = _scan(reader, stop_at_bad=True)
            if contents.first_bad is not None:
                raise ForeignFileError(self.path, contents.first_bad)
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
        line = dumps(record)  # ASCII: always encodable; NaN written as null
        data = (line + "\n").encode("ascii")
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


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name one file.

    The same file when both exist; else the same absolute path once symbolic
    links are resolved (``a`` may be about to be created).
    """
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def _datasync(fd: int) -> None:
    sync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
    sync(fd)
