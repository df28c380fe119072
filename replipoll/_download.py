"""Copy a finished prediction's output files to a directory of your own.

Output URLs are delivery URLs that expire (about an hour on Replicate), so a
batch that wants to keep its results must copy them. :func:`save_outputs` does
that concurrently, streaming each file in chunks, atomically (a temporary file
in the same directory, then :func:`os.replace`), skipping files already saved
and retrying transient failures with the same :class:`~replipoll.RetryPolicy`
as API requests. Output URLs are fetched *without* the API key: they are
public, and the key must never reach another host.

File naming is pure and deterministic (:func:`output_names`), so a rerun maps
every URL to the same path and skips what is already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import aiohttp
import attrs
import backoff

from ._errors import (
    ConfigurationError,
    ConnectError,
    DownloadError,
    RequestError,
    RequestTimeoutError,
)
from ._models import Prediction
from ._retry import RetryPolicy
from ._sansio import error_for_response

__all__ = ["DownloadReport", "SavedFile", "output_names", "save_outputs"]

logger: Final = logging.getLogger("replipoll")

#: Bytes asked of the socket at a time, and bytes buffered before a disk write.
CHUNK_SIZE: Final = 64 * 1024
FLUSH_SIZE: Final = 1024 * 1024
#: The longest file name produced (most file systems allow 255 bytes).
MAX_NAME_LENGTH: Final = 120
#: Per-request timeouts for downloads: a big file may take long in total, but
#: a connection that goes silent for a minute is dead.
DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(
    total=None, sock_connect=10, sock_read=60
)

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
    """A temporary file beside the target, renamed over it once complete."""

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
        self.size = 0

    def write(self, data: bytes | bytearray) -> None:
        self._file.write(data)
        self.size += len(data)

    def sync(self) -> None:
        """Flush to disk (slow: run it in a thread)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def commit(self) -> None:
        """Close and rename over the target (quick; no await in between)."""
        self._file.close()
        os.replace(self.path, self.target)

    def discard(self) -> None:
        """Close and delete; never raises."""
        with contextlib.suppress(OSError, ValueError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _raise_for_status(response: aiohttp.ClientResponse, body: bytes, url: str) -> None:
    raise error_for_response(
        response.status,
        response.headers,
        body,
        now=time.time(),
        url=url,
        reason=response.reason or "",
    )


async def _fetch_once(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    timeout: aiohttp.ClientTimeout,
) -> int:
    """One attempt: stream ``url`` into a part file, then rename it to ``target``.

    Raises:
        RequestError: the request failed (retried by the caller if worth it).
        OSError: the file could not be written.
    """
    try:
        async with session.get(url, timeout=timeout) as response:
            if response.status >= 300:
                _raise_for_status(response, await response.content.read(4096), url)
            # Created synchronously: a cancellation must not strand the file.
            part = _PartFile(target)
            try:
                buffer = bytearray()
                async for chunk in response.content.iter_chunked(CHUNK_SIZE):
                    buffer += chunk
                    if len(buffer) >= FLUSH_SIZE:
                        await asyncio.to_thread(part.write, buffer)
                        buffer.clear()
                await asyncio.to_thread(part.write, buffer)
                expected = response.content_length
                identity = response.headers.get("Content-Encoding", "identity")
                if identity == "identity" and expected not in (None, part.size):
                    raise ConnectError(
                        f"answer cut off after {part.size} of {expected} bytes",
                        url=url,
                        status=response.status,
                    )
                await asyncio.to_thread(part.sync)
                part.commit()
            except BaseException:
                part.discard()  # synchronous: must run even when cancelled
                raise
            return part.size
    except TimeoutError:
        raise RequestTimeoutError("download timed out", url=url) from None
    except aiohttp.InvalidURL:
        raise RequestError("not a valid URL", url=url) from None  # not retried
    except aiohttp.ClientPayloadError as exc:
        raise ConnectError(f"answer cut off: {type(exc).__name__}", url=url) from None
    except aiohttp.ClientError as exc:
        reason = str(exc) or type(exc).__name__
        raise ConnectError(f"download failed: {reason}", url=url) from None


def _log_retry(details: Any) -> None:
    logger.warning(
        "retrying download in %.2fs after attempt %d failed: %s",
        details["wait"],
        details["tries"],
        details["exception"],
    )


async def _save_one(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    *,
    overwrite: bool,
    retry: RetryPolicy,
    timeout: aiohttp.ClientTimeout,
    slots: asyncio.Semaphore,
) -> SavedFile:
    fetch = backoff.on_exception(
        retry.wait_gen,
        RequestError,
        max_tries=retry.max_attempts,
        giveup=lambda exc: not retry.is_retryable(exc),
        jitter=None,
        on_backoff=_log_retry,
        raise_on_giveup=True,
        logger=None,
    )(_fetch_once)
    # The slot covers the existence check too, so files are taken in order.
    async with slots:
        try:
            # Inside the try: a check that fails (ELOOP, EACCES) is this
            # file's failure, not an exception that loses the whole report.
            if not overwrite:
                size = await asyncio.to_thread(_existing_size, target)
                if size is not None:
                    return SavedFile(url, target, size, skipped=True)
            size = await fetch(session, url, target, timeout)
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
    timeout: aiohttp.ClientTimeout | None = None,
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
            It must not send an ``Authorization`` header: output URLs are
            public and the API key must not leak to the host serving them.
            By default a session is made for the call.
        concurrency: The most files downloaded at once.
        overwrite: Fetch files again even when they are already present.
        retry: What to retry (429, 5xx, resets, timeouts) and how long to
            wait; :class:`RetryPolicy` by default. 403 and 404 (an expired
            delivery URL) are not retried.
        timeout: Per-download timeouts; by default no total limit, 10 s to
            connect, 60 s of silence at most.

    Returns:
        A :class:`DownloadReport`; check :attr:`DownloadReport.ok`, or call
        :meth:`DownloadReport.raise_for_errors`.

    Raises:
        ConfigurationError: ``concurrency`` is below 1, or ``session`` sends
            an ``Authorization`` header.

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
    if concurrency < 1:
        raise ConfigurationError("concurrency must be at least 1")
    if session is not None and "Authorization" in session.headers:
        raise ConfigurationError(
            "the session sends an Authorization header; output URLs are public "
            "and the API key must not leave for another host"
        )
    retry = retry if retry is not None else RetryPolicy()
    timeout = timeout if timeout is not None else DEFAULT_TIMEOUT
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
    owned = session is None
    http = aiohttp.ClientSession() if session is None else session
    try:
        outcomes = await asyncio.gather(
            *(
                _save_one(
                    http,
                    url,
                    target,
                    overwrite=overwrite,
                    retry=retry,
                    timeout=timeout,
                    slots=slots,
                )
                for url, target in zip(urls, targets, strict=True)
            ),
            return_exceptions=True,
        )
    finally:
        if owned:
            await http.close()
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
