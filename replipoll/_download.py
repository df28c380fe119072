"""Copy a finished prediction's output files to a directory of your own.

Output URLs are delivery URLs that expire (about an hour on Replicate), so a
batch that wants to keep its results must copy them. :func:`save_outputs` does
that concurrently, streaming each file in chunks, atomically (a temporary file
in the same directory, then :func:`os.replace`), skipping files already saved
and retrying transient failures with the same retry engine and
:class:`~replipoll.RetryPolicy` as API requests. Output URLs are fetched
through a transport that has no key: they are public, and the key must never
reach another host. Files are stored as served (never decompressed), up to
``max_size`` bytes each; ``data:`` outputs are decoded and saved with no
request at all.

Nothing under the destination is trusted: the per-prediction directory is
opened once, without following a symbolic link, and every file is created
and renamed relative to that open directory, so a link planted or swapped in
cannot send a write elsewhere.

File naming is pure and deterministic (:func:`~replipoll._outputs.output_names`),
so a rerun maps every output to the same path and skips what is already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import secrets
import stat
from pathlib import Path
from typing import Final

import aiohttp
import attrs

from ._errors import ConfigurationError, DownloadError, RequestError
from ._models import Prediction
from ._options import check_at_least
from ._outputs import DataURI, is_data_uri, output_names, unique, url_name
from ._providers import Timeouts
from ._retry import RetryPolicy, call_with_retries
from ._transport import Transport

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUTS",
    "DownloadReport",
    "SavedFile",
    "output_names",
    "save_outputs",
]

#: Bytes buffered before a disk write.
FLUSH_SIZE: Final = 1024 * 1024
#: The largest output file saved by default (10 GiB): generous, but a host
#: cannot fill the disk with an endless body.
DEFAULT_MAX_SIZE: Final = 10 * 1024**3
#: Per-download timeouts: a big file may take long, but not for ever (an
#: hour in all, so a host trickling a byte at a time is cut off too), and a
#: connection that goes silent for a minute is dead.
DEFAULT_TIMEOUTS: Final = Timeouts(total=3600.0, connect=10.0, read=60.0)
#: ``data:`` outputs longer than this are decoded in a worker thread, so the
#: event loop is not held up.
INLINE_DECODE: Final = 1024 * 1024

# os.replace takes dir fds wherever os.rename does (both are renameat), but
# only os.rename is listed in os.supports_dir_fd.
_DIR_FD: Final = (
    hasattr(os, "O_DIRECTORY")
    and hasattr(os, "O_NOFOLLOW")
    and {os.open, os.rename, os.stat, os.unlink} <= os.supports_dir_fd
)
_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
# O_EXCL alone already refuses a symbolic link at the name; O_NOFOLLOW says
# so twice where it exists.
_PART_FLAGS: Final = (
    os.O_WRONLY
    | os.O_CREAT
    | os.O_EXCL
    | getattr(os, "O_NOFOLLOW", 0)
    | _CLOEXEC
    | getattr(os, "O_BINARY", 0)
)
# Windows' reparse tags for a symbolic link and a junction (stat names them
# on Windows only).
_LINK_TAGS: Final = (0xA000000C, 0xA0000003)


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


class _Refused(Exception):
    """The per-prediction directory is a symbolic link, or not a directory."""


def _is_link(st: os.stat_result) -> bool:
    # A Windows junction redirects like a symbolic link.
    return stat.S_ISLNK(st.st_mode) or getattr(st, "st_reparse_tag", 0) in _LINK_TAGS


def _refusal(path: Path) -> _Refused:
    try:
        link = _is_link(os.lstat(path))
    except OSError:
        link = False
    what = "a symbolic link" if link else "not a directory"
    return _Refused(
        f"{path} is {what}; save_outputs writes only into a real directory "
        f"and never follows a link under the destination"
    )


class _Directory:
    """The per-prediction directory, held open so a link cannot redirect writes.

    Where the platform allows (``os.supports_dir_fd``), a descriptor opened
    with ``O_NOFOLLOW`` that every check, create, rename and removal is
    relative to: whatever is swapped in at the directory's path later, the
    files go into the directory that was checked. Elsewhere, paths, with the
    directory checked again (``lstat``) before each create and rename.
    """

    __slots__ = ("_fd", "_identity", "path")

    def __init__(self, path: Path) -> None:
        """Open ``path``; raise :class:`_Refused` for a link or a non-directory."""
        self.path = path
        self._fd: int | None = None
        if _DIR_FD:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
            try:
                self._fd = os.open(path, flags)
            except OSError as exc:
                # ELOOP for a link (EMLINK on FreeBSD), ENOTDIR for a file.
                if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENOTDIR):
                    raise _refusal(path) from None
                raise
            st = os.fstat(self._fd)
        else:
            st = os.lstat(path)
            if _is_link(st) or not stat.S_ISDIR(st.st_mode):
                raise _refusal(path)
        self._identity = (st.st_dev, st.st_ino)

    @classmethod
    def make(cls, path: Path) -> _Directory:
        """Create ``path`` (and its parents) if missing, then open it."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # checked when opened
            path.mkdir()
        return cls(path)

    def close(self) -> None:
        """Close the descriptor, if any. Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _unchanged(self) -> None:
        # Only without dir fds: a window remains between this and the next
        # call, the best that paths allow.
        st = os.lstat(self.path)
        if _is_link(st) or (st.st_dev, st.st_ino) != self._identity:
            raise OSError(errno.ELOOP, f"{self.path} was replaced meanwhile")

    def size_of(self, name: str) -> int | None:
        """The size of the regular file ``name``; ``None`` if there is none.

        A symbolic link is not followed, so it is no file: the download
        replaces the link itself.
        """
        try:
            if self._fd is not None:
                st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
            else:
                st = os.lstat(self.path / name)
        except FileNotFoundError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def create(self, name: str) -> int:
        """Create the new file ``name`` (never through a link); its descriptor."""
        if self._fd is not None:
            return os.open(name, _PART_FLAGS, 0o666, dir_fd=self._fd)
        self._unchanged()
        return os.open(self.path / name, _PART_FLAGS, 0o666)

    def replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` (over a link at ``dst``, not its target)."""
        if self._fd is not None:
            os.replace(src, dst, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            return
        self._unchanged()
        os.replace(self.path / src, self.path / dst)

    def unlink(self, name: str) -> None:
        """Remove ``name``."""
        if self._fd is not None:
            os.unlink(name, dir_fd=self._fd)
        else:
            os.unlink(self.path / name)


async def _open_directory(path: Path) -> _Directory:
    """:meth:`_Directory.make` in a worker thread; closed if cancelled meanwhile."""
    opening = asyncio.ensure_future(asyncio.to_thread(_Directory.make, path))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[_Directory]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


class _PartFile:
    """A temporary file beside the target, renamed over it once complete.

    Writes are buffered and done in a worker thread, so the event loop never
    waits for the disk.
    """

    def __init__(self, directory: _Directory, name: str) -> None:
        self._directory = directory
        self._name = name
        # Not tempfile.mkstemp: its 0600 mode would outlive the rename; this
        # file gets the mode the umask gives any new file.
        while True:
            part = f".{name[:60]}.{secrets.token_hex(4)}.part"
            try:
                fd = directory.create(part)
            except FileExistsError:
                continue
            break
        self._part = part
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
        self._directory.replace(self._part, self._name)

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
            self._directory.unlink(self._part)


@attrs.define(frozen=True, eq=False)
class _Job:
    """What the files of one :func:`save_outputs` call share."""

    transport: Transport
    directory: _Directory
    overwrite: bool
    retry: RetryPolicy
    timeouts: Timeouts
    max_size: int | None
    slots: asyncio.Semaphore


def _failure(url: str, reason: str, *, status: int | None = None) -> DownloadError:
    """The DownloadError for ``url``; a long ``data:`` URI is cut in its message."""
    if not is_data_uri(url) or len(url) <= 100:
        return DownloadError(url, reason, status=status)
    error = DownloadError(f"{url[:60]}…({len(url)} characters)", reason, status=status)
    error.url = url  # still the output itself, as for every other error
    return error


def _too_large(limit: int) -> str:
    # The transport's words for a download over the limit.
    return f"the file is larger than {limit} bytes (max_size); not saved"


async def _fetch(job: _Job, url: str, name: str) -> int:
    """Download ``url`` into ``name``, retrying what is worth it; its size."""
    open_part = functools.partial(_PartFile, job.directory, name)

    async def attempt(within: float | None) -> int:
        return await job.transport.download(
            url, open_part, job.timeouts, max_size=job.max_size, within=within
        )

    return await call_with_retries(attempt, job.retry, what=url)


async def _save_data(job: _Job, uri: str, name: str) -> int:
    """Decode a ``data:`` output into ``name``, with no request; its size."""
    try:
        parsed = DataURI.parse(uri)
        if len(parsed.payload) > INLINE_DECODE:
            data = await asyncio.to_thread(parsed.decode)
        else:
            data = parsed.decode()
    except ValueError as exc:
        raise _failure(uri, str(exc)) from None
    if job.max_size is not None and len(data) > job.max_size:
        raise _failure(uri, _too_large(job.max_size))
    part = _PartFile(job.directory, name)
    try:
        await part.write(data)
        await part.finish()
    except BaseException:
        part.discard()  # synchronous: must run even when cancelled
        raise
    return len(data)


async def _save_one(job: _Job, url: str, name: str) -> SavedFile:
    target = job.directory.path / name
    # The slot covers the existence check too, so files are taken in order.
    async with job.slots:
        try:
            # Inside the try: a check that fails (EACCES) is this file's
            # failure, not an exception that loses the whole report.
            if not job.overwrite:
                size = await asyncio.to_thread(job.directory.size_of, name)
                if size is not None:
                    return SavedFile(url, target, size, skipped=True)
            if is_data_uri(url):
                size = await _save_data(job, url, name)
            else:
                size = await _fetch(job, url, name)
        except RequestError as exc:
            raise _failure(url, exc.message, status=exc.status) from exc
        except OSError as exc:
            reason = f"cannot write {target}: {exc.strerror or exc}"
            raise _failure(url, reason) from exc
    return SavedFile(url, target, size)


async def save_outputs(
    prediction: Prediction,
    dest_dir: str | os.PathLike[str],
    *,
    session: aiohttp.ClientSession | None = None,
    concurrency: int = 4,
    overwrite: bool = False,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
) -> DownloadReport:
    """Save a prediction's output files under ``dest_dir / prediction.id``.

    Every ``http(s)`` URL (the scheme in any case) and every ``data:`` URI in
    ``prediction.output`` is saved (one URL, a list, or URLs nested in
    objects: see :meth:`Prediction.output_urls`; one listed twice is saved
    once). Files are named by ``output_names()`` inside a directory named
    after the prediction id, so outputs of different predictions never
    collide. Each file is streamed to a temporary ``.NAME.*.part`` file in
    that directory and renamed into place only once complete, so a crash
    never leaves a half-written file under its final name. Files are stored
    as served: a ``Content-Encoding`` such as gzip is not undone. A ``data:``
    URI is decoded and written the same way, with no request.

    The directory ``dest_dir / prediction.id`` must be a real directory: if
    it is a symbolic link, every file of the prediction fails and nothing is
    written. Under it no link is followed: a link where a file goes is
    replaced by the file (the file it pointed to is left alone), never
    written through or taken for the file. ``dest_dir`` itself may be a link.

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
            delivery URL) are not retried, nor is a file over ``max_size``.
        timeouts: Per-download timeouts; by default an hour per file in all,
            10 s to connect, 60 s of silence at most.
        max_size: The largest file saved, in bytes (10 GiB by default;
            ``None`` for no limit). A bigger file is a
            :class:`~replipoll.DownloadError`, refused as soon as its size is
            announced or its body passes the limit, and nothing of it is kept.

    Returns:
        A :class:`DownloadReport`; check :attr:`DownloadReport.ok`, or call
        :meth:`DownloadReport.raise_for_errors`.

    Raises:
        ConfigurationError: ``concurrency`` or ``max_size`` is below 1, or
            ``session`` sends credentials; ``option`` names it.

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
    if max_size is not None:
        check_at_least("save_outputs", "max_size", max_size, 1)
    if session is not None and not isinstance(session, aiohttp.ClientSession):
        raise ConfigurationError(
            "save_outputs: session must be an aiohttp.ClientSession or None",
            option="session",
        )
    transport = Transport.for_downloads(session)
    path = Path(dest_dir) / url_name(f"/{prediction.id}")
    urls = unique(prediction.output_urls())
    if not urls:
        return DownloadReport(prediction.id, path)
    try:
        directory = await _open_directory(path)
    except (_Refused, OSError) as exc:
        reason = (
            str(exc)
            if isinstance(exc, _Refused)
            else f"cannot create {path}: {exc.strerror or exc}"
        )
        errors = tuple(_failure(url, reason) for url in urls)
        return DownloadReport(prediction.id, path, (), errors)
    job = _Job(
        transport,
        directory,
        overwrite=overwrite,
        retry=retry if retry is not None else RetryPolicy(),
        timeouts=timeouts if timeouts is not None else DEFAULT_TIMEOUTS,
        max_size=max_size,
        slots=asyncio.Semaphore(concurrency),
    )
    try:
        outcomes = await asyncio.gather(
            *(
                _save_one(job, url, name)
                for url, name in zip(urls, output_names(urls), strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        directory.close()
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
    return DownloadReport(prediction.id, path, tuple(files), tuple(failures))
