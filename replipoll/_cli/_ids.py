"""Reading prediction ids as people have them: bare, in URLs, in files of any shape.

Pure functions over text already read (:func:`gather_ids`, :func:`parse_ids`,
:func:`id_from`), and the one function that reads (:func:`read_input`). Every
command that takes ids (``poll``, ``download``, ``get``) reads them here.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from .._errors import ConfigurationError, InvalidPredictionIdError
from .._sansio import validate_prediction_id

__all__ = [
    "FORMS",
    "STDIN",
    "STDIN_NAME",
    "decode_lines",
    "gather_ids",
    "id_from",
    "parse_ids",
    "read_input",
]

STDIN: Final = "-"
#: How standard input is named in messages.
STDIN_NAME: Final = "standard input"
#: Said when an id with a ``/`` is refused.
FORMS: Final = (
    "an id is understood bare, in a page URL (https://replicate.com/p/ID) "
    "or in an API URL (.../predictions/ID)"
)

_PLAIN_ID: Final = re.compile(r"[A-Za-z0-9_-]+")
_INLINE_COMMENT: Final = re.compile(r"\s#")
_JSON_SPACE: Final = re.compile(r"[ \t\n\r]*")
_URL_TAILS: Final = frozenset({"cancel", "stream"})
_BOM: Final = "\ufeff"
_DECODER: Final = json.JSONDecoder()


def id_from(text: str) -> str:
    """The prediction id that ``text`` names: an id, or a page or API URL.

    URLs are ``http`` or ``https``, any host, any case:
    ``.../p/ID`` (a page on replicate.com) and ``.../predictions/ID``
    (the API), the latter maybe followed by ``/cancel`` or ``/stream``; a
    query, a fragment and a trailing slash are ignored, and the id is
    percent-decoded. The id is then checked as the library checks it.

    Example:
        >>> id_from("57l4sqxxk3sljddbebv6v33k22")
        '57l4sqxxk3sljddbebv6v33k22'
        >>> id_from("https://replicate.com/p/57l4sqxxk3sljddbebv6v33k22")
        '57l4sqxxk3sljddbebv6v33k22'
        >>> id_from("HTTP://Gateway.example/replicate/v1/predictions/a%2Db/cancel?x=1")
        'a-b'
        >>> id_from("https://replicate.com/acme/model")
        Traceback (most recent call last):
        ...
        replipoll.InvalidPredictionIdError: invalid ...: contains '/'; an id is ...

    Raises:
        InvalidPredictionIdError: not a usable id. If ``text`` has a ``/``
            that is not in a URL understood, the reason says which are.
    """
    if "/" not in text:  # the common case: no URL
        return validate_prediction_id(text)
    found = _id_in_url(text)
    if found is not None:
        return validate_prediction_id(found)
    try:
        return validate_prediction_id(text)
    except InvalidPredictionIdError as exc:  # it is: it has a "/"
        raise InvalidPredictionIdError(text, f"{exc.reason}; {FORMS}") from None


def _id_in_url(text: str) -> str | None:
    """The id in a page or API URL, percent-decoded; ``None`` if no such URL."""
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # e.g. "http://[::1": not a URL at all
        return None
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        return None
    segments = parts.path.rstrip("/").split("/")
    words = [segment.lower() for segment in segments]
    if len(words) >= 3 and words[-1] in _URL_TAILS and words[-3] == "predictions":
        segment = segments[-2]
    elif len(words) >= 2 and words[-2] in {"predictions", "p"}:
        segment = segments[-1]
    else:
        return None
    try:
        return urllib.parse.unquote(segment, errors="strict")
    except UnicodeDecodeError:
        raise InvalidPredictionIdError(
            segment, "percent-encodes bytes that are not UTF-8 text"
        ) from None


def decode_lines(data: bytes, source: str) -> list[str]:
    """The lines of an ids file's bytes: UTF-8, any line ends (LF, CRLF, CR).

    Example:
        >>> decode_lines(b"abc\\r\\ndef\\n", "ids.txt")
        ['abc', 'def', '']
        >>> decode_lines(b"abc\\n\\xff\\n", "ids.txt")
        Traceback (most recent call last):
        ...
        replipoll.ConfigurationError: ids.txt line 2 is not UTF-8 text

    Raises:
        ConfigurationError: the bytes are not UTF-8; the message names the line.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        # (The "x" makes the line the bad byte is on count, even at its start.)
        number = len((data[: exc.start] + b"x").splitlines())
        raise ConfigurationError(f"{source} line {number} is not UTF-8 text") from None
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def parse_ids(lines: Iterable[str], source: str = "input") -> list[str]:
    """Ids from the lines of an ids file, in order (duplicates kept).

    A line holds an id, a page or API URL (:func:`id_from`), or a JSON
    value: a string, or an object with a string ``"id"`` (JSON Lines, such as
    a results file of ``replipoll poll`` or ``replipoll run``). Skipped:
    the lines of ``replipoll run`` about inputs without a prediction, blank lines, ``#``
    comment lines, comments after whitespace (``abc  # note``), a UTF-8 BOM,
    the ``\\r`` of CRLF line ends. Text whose first line (comments aside)
    starts with ``[`` is one JSON array of ids or objects with an ``"id"``,
    in any layout; one starting with ``{`` may be one JSON object on several
    lines.

    Args:
        lines: The text, line by line (line ends may be kept).
        source: What the lines are called in messages (the file's name).

    Example:
        >>> parse_ids(["abc\\n", "  # a comment\\n", "", " def ", "abc"])
        ['abc', 'def', 'abc']
        >>> parse_ids(["\\ufeffabc  # first\\r\\n", "https://replicate.com/p/def\\r\\n"])
        ['abc', 'def']
        >>> parse_ids(['{"id": "abc", "result": "failed"}', '"def"'])
        ['abc', 'def']
        >>> parse_ids(['{"id": "#input-0", "result": "error", "input_index": 0}'])
        []
        >>> parse_ids(["[", '  "abc",', '  {"id": "def"}', "]"])
        ['abc', 'def']
        >>> parse_ids(["abc", "ab#c"], "ids.txt")
        Traceback (most recent call last):
        ...
        replipoll.ConfigurationError: ids.txt line 2: invalid ... 'ab#c': contains '#'

    Raises:
        ConfigurationError: a line, or an item of the JSON array, is not an
            id; the message names ``source`` and the line.
    """
    lines = list(lines)
    if lines:
        lines[0] = lines[0].removeprefix(_BOM)
    first = next((n for n, line in enumerate(lines) if _content(line)), None)
    if first is not None:
        text = lines[first].strip()
        if text.startswith("["):
            return _ids_in_array(_join(lines[first:]), source, first)
        if text.startswith("{") and _loads(text) is None:
            whole = _loads(_join(lines[first:]))  # one object on several lines?
            if isinstance(whole, dict):
                return [_id_in_value(whole, f"{source} line {first + 1}")]
    ids = []
    for number, line in enumerate(lines, 1):
        text = _content(line)
        if text and (pid := _id_on_line(text, f"{source} line {number}")):
            ids.append(pid)
    return ids


def _join(lines: list[str]) -> str:
    return "\n".join(line.rstrip("\r\n") for line in lines)


def _content(line: str) -> str:
    """A line without surrounding whitespace; "" if blank or a comment line."""
    text = line.strip()
    return "" if text.startswith("#") else text


def _loads(text: str) -> Any:
    """``json.loads``, or ``None`` if ``text`` is not JSON."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _id_on_line(text: str, where: str) -> str | None:
    """The id on one line.

    ``None`` for a line of ``replipoll run`` about an input that has no
    prediction (its ``"id"`` is ``#input-N``).
    """
    if text[0] in '{["':
        try:
            value, end = _DECODER.raw_decode(text)
        except (ValueError, RecursionError):
            raise ConfigurationError(f"{where} is not valid JSON") from None
        if _without_comment(text[end:]):  # only a comment may follow
            raise ConfigurationError(f"{where} is not valid JSON")
        if (
            isinstance(value, dict)
            and "input_index" in value
            and str(value.get("id", "")).startswith("#input-")
        ):
            return None
        return _id_in_value(value, where)
    return _checked(_without_comment(text), where)


def _without_comment(text: str) -> str:
    """``text`` up to a ``#`` after whitespace, stripped."""
    match = _INLINE_COMMENT.search(text)
    return (text if match is None else text[: match.start()]).strip()


def _id_in_value(value: Any, where: str) -> str:
    """The id that a JSON value holds: a string, or an object's ``"id"``."""
    if isinstance(value, dict):
        if not isinstance(value.get("id"), str):
            raise ConfigurationError(f'{where} is a JSON object without a string "id"')
        value = value["id"]
    if not isinstance(value, str):
        raise ConfigurationError(
            f'{where} is neither an id nor a JSON object with an "id"'
        )
    return _checked(value.strip(), where)


def _checked(text: str, where: str) -> str:
    try:
        return id_from(text)
    except InvalidPredictionIdError as exc:
        raise ConfigurationError(f"{where}: {exc}") from None


def _ids_in_array(text: str, source: str, offset: int) -> list[str]:
    """The ids of a JSON array, each error naming the line it is on.

    ``text`` starts with ``[`` (after whitespace); it is its file from line
    ``offset + 1`` on. json's own decoder reads each item (with its position,
    which ``json.loads`` would not give).
    """
    line, counted = offset + 1, 0  # the line of text[counted]

    def line_of(pos: int) -> str:
        # Counted on from the last position asked: linear, not quadratic.
        nonlocal line, counted
        if pos < counted:
            line, counted = offset + 1, 0
        line += text.count("\n", counted, pos)
        counted = pos
        return f"{source} line {line}"

    def skip(pos: int) -> int:
        match = _JSON_SPACE.match(text, pos)
        assert match is not None  # it matches the empty string
        return match.end()

    ids = []
    pos = skip(text.index("[") + 1)  # only whitespace before it
    closed = text.startswith("]", pos)
    while not closed:
        try:
            item, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"{line_of(exc.pos)} is not a valid JSON array: {exc.msg.lower()}"
            ) from None
        except RecursionError:
            raise ConfigurationError(
                f"{line_of(pos)} is not a valid JSON array: nested too deep"
            ) from None
        if isinstance(item, list):
            raise ConfigurationError(f"{line_of(pos)} is an array in the array")
        ids.append(_id_in_value(item, line_of(pos)))
        pos = skip(end)
        if text.startswith(",", pos):
            pos = skip(pos + 1)
        elif text.startswith("]", pos):
            closed = True
        else:
            raise ConfigurationError(
                f"{line_of(pos)} is not a valid JSON array: expecting ',' or ']'"
            )
    pos = skip(pos + 1)
    if pos < len(text):
        raise ConfigurationError(
            f"{line_of(pos)} is not a valid JSON array: text after its end"
        )
    return ids


def gather_ids(
    args: Sequence[str],
    from_file: str | None,
    read: Callable[[str], bytes],
    is_file: Callable[[str], bool],
) -> list[str]:
    """The ids to poll, in order, once each: from ``args``, a file, and stdin.

    ``-`` (as an argument or as ``from_file``) is standard input. Arguments
    are ids or URLs (:func:`id_from`); files and standard input are read
    with :func:`parse_ids`. The only I/O is through the two callables.

    Args:
        args: The command's arguments.
        from_file: ``--from FILE``, if given.
        read: The bytes of a file, or of standard input for ``-``
            (:func:`read_input`).
        is_file: Whether a path names an existing file (``os.path.isfile``),
            to catch ``replipoll poll ids.txt`` for ``--from ids.txt``.

    Example:
        >>> files = {"ids.txt": b"b\\nhttps://replicate.com/p/c\\n", "-": b"a\\n"}
        >>> gather_ids(["a", "-"], "ids.txt", files.__getitem__, files.__contains__)
        ['a', 'b', 'c']

    Raises:
        ConfigurationError: an argument is not an id (or is a file); a file
            holds something that is not an id, or is not UTF-8 text.
        OSError: from ``read``.
    """
    ids: list[str] = []
    for arg in args:
        if arg == STDIN:
            continue
        if not _PLAIN_ID.fullmatch(arg) and is_file(arg):
            raise ConfigurationError(
                f"{arg} is a file, not a prediction id: did you mean --from FILE?"
            )
        try:
            ids.append(id_from(arg.strip()))
        except InvalidPredictionIdError as exc:
            raise ConfigurationError(str(exc)) from None
    if from_file is not None and from_file != STDIN:
        ids.extend(parse_ids(decode_lines(read(from_file), from_file), from_file))
    if STDIN in args or from_file == STDIN:
        ids.extend(parse_ids(decode_lines(read(STDIN), STDIN_NAME), STDIN_NAME))
    return list(dict.fromkeys(ids))


def read_input(name: str) -> bytes:
    """The bytes of the file ``name``, or of standard input for ``-``.

    Raises:
        OSError: the file cannot be read.
    """
    if name == STDIN:
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
        if stream is None:  # a text-only replacement (an embedding program)
            return sys.stdin.read().encode("utf-8", "surrogateescape")
        return stream.read()
    with open(name, "rb") as file:
        return file.read()
