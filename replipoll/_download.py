"""Copy a finished prediction's output files to a directory of your own.

Output URLs are delivery URLs that expire (about an hour on Replicate), so a
batch that wants to keep its results must copy them. :func:`save_outputs` does
that concurrently, streaming each file in chunks, atomically (a temporary file
in the same directory, then :func:`os.replace`), skipping files already saved
and retrying transient failures with the same retry engine and
:class:`~replipoll.RetryPolicy` as API requests. Output URLs are fetched
through a transport that has no key: they are public, and the key must never
reach another host.

File naming is pure and deterministic (:func:`output_names`), so a rerun maps
every URL to the same path and skips what is already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import posixpath
import re
import secrets
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import aiohttp
import attrs

from ._errors import ConfigurationError, DownloadError, RequestError
from ._models import Prediction
from ._options import check_at_least
from ._providers import Timeouts
from ._retry import RetryPolicy, call_with_retries
from ._transport import Transport

__all__ = ["DownloadReport", "SavedFile", "output_names", "save_outputs"]

#: Bytes buffered before a disk write.
FLUSH_SIZE: Final = 1024 * 1024
#: The longest file name produced (most file systems allow 255 bytes).
MAX_NAME_LENGTH: Final = 120
#: Per-request timeouts for downloads: a big file may take long in total, but
#: a connection that goes silent for a minute is dead.
DEFAULT_TIMEOUTS: Final = Timeouts(total=None, connect=10.0, read=60.0)

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED: Final = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)


@attrs.frozen
class SavedFile:
    """One output file that is now on disk.

    Attributes:
        url: The output URL it came from.
        path: Where it is.
        size: Its size in bytes.
        skipped: True when the file was already there and nothing was fetched.
    """

    url: str
    path: Path
    size: int
    skipped: bool = False


@attrs.frozen
class DownloadReport:
    """What :func:`save_outputs` did: the files on disk and the failures.

    Attributes:
        prediction_id: The prediction whose outputs these are.
        directory: The directory the files are in (``dest_dir / prediction_id``).
        files: The files now on disk, in output order, skipped ones included.
        errors: One :class:`~replipoll.DownloadError` per URL that could not be
            saved, in output order.
    """

    prediction_id: str
    directory: Path
    files: tuple[SavedFile, ...] = ()
    errors: tuple[DownloadError, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every output file is on disk."""
        return not self.errors

    @property
    def saved(self) -> tuple[SavedFile, ...]:
        """The files fetched by this call."""
        return tuple(f for f in self.files if not f.skipped)

    @property
    def skipped(self) -> tuple[SavedFile, ...]:
        """The files that were already there."""
        return tuple(f for f in self.files if f.skipped)

    def raise_for_errors(self) -> None:
        """Raise the first failure, if any; the rest stay in :attr:`errors`.

        Raises:
            DownloadError: at least one output could not be saved.
        """
        if self.errors:
            raise self.errors[0]


def _safe_name(url: str) -> str:
    """A file name from the URL path's last segment, safe on every platform."""
    path = urlsplit(url).path
    name = unquote(posixpath.basename(path.rstrip("/")))
    name = unicodedata.normalize("NFKC", name)
    name = _UNSAFE.sub("_", name).strip("._")
    if not name:
        return "output"
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    stem = stem.strip("._") or "output"
    if stem.lower() in _RESERVED:
        stem = f"_{stem}"
    ext = ext[:16]
    stem = stem[: MAX_NAME_LENGTH - len(ext) - 1] or "output"
    return f"{stem}.{ext}" if ext else stem


def _split(name: str) -> tuple[str, str]:
    stem, dot, ext = name.rpartition(".")
    return (stem, f".{ext}") if dot and stem else (name, "")


def output_names(urls: Sequence[str]) -> list[str]:
    """Choose a file name for each output URL: pure and deterministic.

    The name is the URL path's last segment, percent-decoded and reduced to
    ``A-Z a-z 0-9 . _ -`` (other runs of characters become ``_``; an empty
    name becomes ``output``). Names used more than once, compared without
    case (for case-insensitive file systems), get an index: two
    ``.../out.png`` become ``out-0.png`` and ``out-1.png``.

    Example:
        >>> output_names(["https://x/a/out.png", "https://x/b/out.png",
        ...               "https://x/c/My%20Cat.JPG"])
        ['out-0.png', 'out-1.png', 'My_Cat.JPG']
    """
    base = [_safe_name(url) for url in urls]
    counts: dict[str, int] = {}
    for name in base:
        counts[name.lower()] = counts.get(name.lower(), 0) + 1
    taken = {name.lower() for name in base if counts[name.lower()] == 1}
    result: list[str] = []
    index: dict[str, int] = {}
    for name in base:
        if counts[name.lower()] == 1:
            result.append(name)
            continue
        stem, ext = _split(name)
        while True:
            n = index.get(name.lower(), 0)
            index[name.lower()] = n + 1
            candidate = f"{stem}-{n}{ext}"
            if candidate.lower() not in taken:
                break
        taken.add(candidate.lower())
        result.append(candidate)
    return result


def _unique(urls: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(urls))


class _PartFile:
    """A temporary file beside the target, renamed over it once complete.

    Writes are buffered and done in a worker thread, so the event loop never
    waits for the disk.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        # Not tempfile.mkstemp: its 0600 mode would outlive the rename; this
        # file gets the mode the umask gives any new file.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        while True:
            path = target.with_name(f".{target.name[:60]}.{secrets.token_hex(4)}.part")
            try:
                fd = os.open(path, flags, 0o666)
            except FileExistsError:
                continue
            break
        self.path = path
        self._file = os.fdopen(fd, "wb")
        self._buffer = bytearray()

    async def write(self, chunk: bytes) -> None:
        """Buffer ``chunk``; write the buffer out once it is large."""
        self._buffer += chunk
        if len(self._buffer) >= FLUSH_SIZE:
            await asyncio.to_thread(self._file.write, self._buffer)
            self._buffer = bytearray()

    async def finish(self) -> None:
        """Write the rest, flush to disk, and rename over the target."""
        await asyncio.to_thread(self._sync)
        # Quick, and with no await in between: the file is in place or not.
        self._file.close()
        os.replace(self.path, self.target)

    def _sync(self) -> None:
        self._file.write(self._buffer)
        self._buffer = bytearray()
        self._file.flush()
        os.fsync(self._file.fileno())

    def discard(self) -> None:
        """Close and delete; never raises."""
        with contextlib.suppress(OSError, ValueError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


async def _save_one(
    transport: Transport,
    url: str,
    target: Path,
    *,
    overwrite: bool,
    retry: RetryPolicy,
    timeouts: Timeouts,
    slots: asyncio.Semaphore,
) -> SavedFile:
    async def attempt(within: float | None) -> int:
        return await transport.download(
            url, functools.partial(_PartFile, target), timeouts, within=within
        )

    # The slot covers the existence check too, so files are taken in order.
    async with slots:
        try:
            # Inside the try: a check that fails (ELOOP, EACCES) is this
            # file's failure, not an exception that loses the whole report.
            if not overwrite:
                size = await asyncio.to_thread(_existing_size, target)
                if size is not None:
                    return SavedFile(url, target, size, skipped=True)
            size = await call_with_retries(attempt, retry, what=url)
        except RequestError as exc:
            raise DownloadError(url, exc.message, status=exc.status) from exc
        except OSError as exc:
            reason = f"cannot write {target}: {exc.strerror or exc}"
            raise DownloadError(url, reason) from exc
    return SavedFile(url, target, size)


def _existing_size(path: Path) -> int | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size if path.is_file() else None


async def save_outputs(
    prediction: Prediction,
    dest_dir: str | os.PathLike[str],
    *,
    session: aiohttp.ClientSession | None = None,
    concurrency: int = 4,
    overwrite: bool = False,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
) -> DownloadReport:
    """Save a prediction's output files under ``dest_dir / prediction.id``.

    Every ``http(s)`` URL in ``prediction.output`` is saved (one URL, a list,
    or URLs nested in objects: see :meth:`Prediction.output_urls`; a URL
    listed twice is saved once). Files are named by ``output_names()``
    inside a directory named after the prediction id, so outputs of different
    predictions never collide. Each file is streamed to a temporary
    ``.NAME.*.part`` file in that directory and renamed into place only once
    complete, so a crash never leaves a half-written file under its final name.

    A failed file does not stop the others: the report lists what was saved
    and what failed. Only misuse raises.

    Args:
        prediction: A finished prediction (from :meth:`Client.get`,
            :meth:`Client.wait` or a :class:`PollManager`).
        dest_dir: The directory to save into; created if missing.
        session: An :class:`aiohttp.ClientSession` to borrow (left open).
            It must carry no credentials (no ``Authorization`` header, no
            ``auth=``): output URLs are public and no key may leak to the
            hosts serving them. By default a session is made for the call.
        concurrency: The most files downloaded at once.
        overwrite: Fetch files again even when they are already present.
        retry: What to retry (429, 5xx, resets, timeouts) and how long to
            wait; :class:`RetryPolicy` by default. 403 and 404 (an expired
            delivery URL) are not retried.
        timeouts: Per-download timeouts; by default no total limit, 10 s to
            connect, 60 s of silence at most.

    Returns:
        A :class:`DownloadReport`; check :attr:`DownloadReport.ok`, or call
        :meth:`DownloadReport.raise_for_errors`.

    Raises:
        ConfigurationError: ``concurrency`` is below 1, or ``session`` sends
            credentials; ``option`` names it.

    Example:
        >>> import asyncio, tempfile, replipoll
        >>> from replipoll.testing import FakeReplicate
        >>> async def main(dest):
        ...     async with FakeReplicate() as server:
        ...         pid = server.add_prediction(n_files=2)
        ...         async with replipoll.Client(
        ...             base_url=server.base_url(), api_key=server.api_key
        ...         ) as client:
        ...             prediction = await client.get(pid)
        ...         report = await replipoll.save_outputs(prediction, dest)
        ...     return report.ok, [f.path.name for f in report.files]
        >>> with tempfile.TemporaryDirectory() as dest:
        ...     asyncio.run(main(dest))
        (True, ['out-0.bin', 'out-1.bin'])
    """
    check_at_least("save_outputs", "concurrency", concurrency, 1)
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise ConfigurationError(
            "save_outputs: session must be an aiohttp.ClientSession or None",
            option="session",
        )
    transport = Transport.for_downloads(session)
    retry = retry if retry is not None else RetryPolicy()
    timeouts = timeouts if timeouts is not None else DEFAULT_TIMEOUTS
    directory = Path(dest_dir) / _safe_name(f"/{prediction.id}")
    urls = _unique(prediction.output_urls())
    if not urls:
        return DownloadReport(prediction.id, directory)
    targets = [directory / name for name in output_names(urls)]
    try:
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
    except OSError as exc:
        reason = f"cannot create {directory}: {exc.strerror or exc}"
        errors = tuple(DownloadError(url, reason) for url in urls)
        return DownloadReport(prediction.id, directory, (), errors)
    slots = asyncio.Semaphore(concurrency)
    try:
        outcomes = await asyncio.gather(
            *(
                _save_one(
                    transport,
                    url,
                    target,
                    overwrite=overwrite,
                    retry=retry,
                    timeouts=timeouts,
                    slots=slots,
                )
                for url, target in zip(urls, targets, strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        await transport.close()
    files: list[SavedFile] = []
    failures: list[DownloadError] = []
    for outcome in outcomes:
        if isinstance(outcome, SavedFile):
            files.append(outcome)
        elif isinstance(outcome, DownloadError):
            failures.append(outcome)
        else:
            raise outcome  # a bug or a cancellation: never swallowed
    return DownloadReport(prediction.id, directory, tuple(files), tuple(failures))
