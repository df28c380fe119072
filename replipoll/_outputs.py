"""Output files without I/O: their names, and what a ``data:`` output holds.

Pure and deterministic: :func:`output_names` maps the same outputs to the
same file names on every run and every machine, so a rerun of
:func:`~replipoll.save_outputs` finds what it saved before. :class:`DataURI`
parses a ``data:`` output (RFC 2397) and decodes its bytes; saving them is
:mod:`replipoll._download`'s job.
"""

from __future__ import annotations

import base64
import binascii
import functools
import mimetypes
import posixpath
import re
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Final
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import attrs

__all__ = [
    "MAX_NAME_LENGTH",
    "PREFERRED_EXTENSIONS",
    "DataURI",
    "extension_for",
    "is_data_uri",
    "output_names",
    "unique",
    "url_name",
]

#: The longest file name produced (most file systems allow 255 bytes).
MAX_NAME_LENGTH: Final = 120
#: A data URI's media type when it names none (RFC 2397).
DEFAULT_MEDIA_TYPE: Final = "text/plain"
#: Extensions for the media types models return most, where Python's table
#: would pick a rarer one or none (``audio/wav``).
PREFERRED_EXTENSIONS: Final = {
    "application/json": ".json",
    "application/octet-stream": ".bin",
    "audio/flac": ".flac",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".ogg",
    "audio/wav": ".wav",
    "audio/wave": ".wav",
    "audio/x-wav": ".wav",
    "image/gif": ".gif",
    "image/jpeg": ".jpg",
    "image/png": ".png",
    "image/svg+xml": ".svg",
    "image/webp": ".webp",
    "text/plain": ".txt",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
}

_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_EXTENSION: Final = re.compile(r"\.[a-z0-9]{1,16}")
_WHITESPACE: Final = re.compile(rb"[ \t\r\n\f\v]+")
_RESERVED: Final = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)


def is_data_uri(url: str) -> bool:
    """True for a ``data:`` URI (the scheme in any case)."""
    return url[:5].lower() == "data:"


@functools.cache
def _mime_table() -> mimetypes.MimeTypes:
    # Python's built-in table only, not the system's (/etc/mime.types, the
    # Windows registry): the same media type gets the same name everywhere.
    return mimetypes.MimeTypes()


def extension_for(media_type: str) -> str:
    """The file extension for a media type (``.bin`` when unknown).

    Example:
        >>> extension_for("image/jpeg"), extension_for("application/pdf")
        ('.jpg', '.pdf')
        >>> extension_for("application/x-never-heard-of")
        '.bin'
    """
    media_type = media_type.lower()
    ext = PREFERRED_EXTENSIONS.get(media_type)
    if ext is None:
        ext = (_mime_table().guess_extension(media_type, strict=False) or "").lower()
    return ext if _EXTENSION.fullmatch(ext) else ".bin"


@attrs.frozen
class DataURI:
    """A ``data:[<mediatype>][;base64],<data>`` output (RFC 2397).

    Attributes:
        media_type: ``type/subtype`` in lower case, parameters dropped
            (``text/plain`` when none is given).
        is_base64: The payload is base64; otherwise it is percent-encoded.
        payload: The encoded data after the comma.
    """

    media_type: str
    is_base64: bool
    payload: str = attrs.field(repr=lambda p: f"<{len(p)} characters>")

    @classmethod
    def parse(cls, uri: str) -> DataURI:
        """Split a data URI into its parts; the payload is not decoded yet.

        Raises:
            ValueError: ``uri`` is not a data URI, or has no comma.

        Example:
            >>> DataURI.parse("data:image/PNG;base64,iVBORw0KGgo=")
            DataURI(media_type='image/png', is_base64=True, payload=<12 characters>)
        """
        if not is_data_uri(uri):
            raise ValueError("not a data: URI")
        comma = uri.find(",")
        if comma < 0:
            raise ValueError("malformed data: URI: no comma before the data")
        media_type, is_base64 = _header(uri[5:comma])
        return cls(media_type, is_base64, uri[comma + 1 :])

    @property
    def extension(self) -> str:
        """The file extension for :attr:`media_type` (``.bin`` when unknown)."""
        return extension_for(self.media_type)

    def decode(self) -> bytes:
        """The bytes the URI holds.

        Raises:
            ValueError: the payload is not valid base64.

        Example:
            >>> DataURI.parse("data:,Hello%2C%20World%21").decode()
            b'Hello, World!'
        """
        data = unquote_to_bytes(self.payload) if "%" in self.payload else None
        if not self.is_base64:
            return data if data is not None else self.payload.encode()
        raw = data if data is not None else self.payload.encode("ascii", "replace")
        raw = _WHITESPACE.sub(b"", raw)
        raw += b"=" * (-len(raw) % 4)  # some encoders leave the padding out
        try:
            return base64.b64decode(raw, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"malformed data: URI: not valid base64 ({exc})") from None


def _header(header: str) -> tuple[str, bool]:
    """The media type and base64 flag of a data URI's part before the comma."""
    params = unquote(header).split(";")
    is_base64 = len(params) > 1 and params[-1].strip().lower() == "base64"
    media_type = params[0].strip().lower()
    if "/" not in media_type:  # "data:,x" and "data:;charset=utf-8,x"
        media_type = DEFAULT_MEDIA_TYPE
    return media_type, is_base64


def _data_name(uri: str) -> str:
    comma = uri.find(",")
    header = uri[5:comma] if comma >= 0 else ""
    # Not a parse of the whole URI: a malformed one still gets a name (and
    # fails when saved); an unknown type is ".bin".
    media_type = _header(header)[0] if comma >= 0 else "application/octet-stream"
    return f"output{extension_for(media_type)}"


def url_name(url: str) -> str:
    """A file name for one output, safe on every platform.

    For a URL, its path's last segment, percent-decoded and reduced to
    ``A-Z a-z 0-9 . _ -``; for a ``data:`` URI, ``output`` and the media
    type's extension.

    Example:
        >>> url_name("https://x/c/My%20Cat.JPG"), url_name("data:audio/wav,...")
        ('My_Cat.JPG', 'output.wav')
    """
    if is_data_uri(url):
        return _data_name(url)
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
    """Choose a file name for each output: pure and deterministic.

    A URL is named after its path's last segment, percent-decoded and reduced
    to ``A-Z a-z 0-9 . _ -`` (other runs of characters become ``_``; an empty
    name becomes ``output``). A ``data:`` URI is named ``output`` plus an
    extension from its media type (``.png``, ``.jpg``...; ``.bin`` when
    unknown). Names used more than once, compared without case (for
    case-insensitive file systems), get an index: two ``.../out.png`` become
    ``out-0.png`` and ``out-1.png``.

    Example:
        >>> output_names([
        ...     "https://x/a/out.png", "https://x/b/out.png", "https://x/c/My%20Cat.JPG",
        ...     "data:image/png;base64,iVBORw0KGgo=", "data:image/png;base64,R0lG",
        ...     "data:,Hello%2C%20World%21",
        ... ])  # doctest: +NORMALIZE_WHITESPACE
        ['out-0.png', 'out-1.png', 'My_Cat.JPG',
         'output-0.png', 'output-1.png', 'output.txt']
    """
    base = [url_name(url) for url in urls]
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


def unique(urls: Iterable[str]) -> list[str]:
    """``urls`` in order, each once."""
    return list(dict.fromkeys(urls))
