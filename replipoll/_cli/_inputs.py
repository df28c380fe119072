"""The inputs of ``replipoll run``: ``-i`` arguments and a JSON Lines file.

Pure but for reading the files named: ``-i key=value`` is a string,
``-i key:=JSON`` a raw JSON value (httpie's convention) and ``-i key=@path``
a local file sent as a ``data:`` URI; ``--inputs FILE`` holds one JSON object
of inputs a line. Every problem is an :class:`InputError` whose message says
what to write instead, before anything is sent.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "FORMS",
    "MAX_FILE_SIZE",
    "InputError",
    "data_uri",
    "input_digest",
    "parse_input",
    "parse_inputs",
    "parse_inputs_file",
]

#: The largest file ``-i key=@path`` sends inline: a data URI is base64 (a
#: third bigger) inside the create's JSON body, and providers cap that body.
MAX_FILE_SIZE: Final = 5 * 1024 * 1024
#: What ``-i`` takes, for error messages and ``--help``.
FORMS: Final = (
    "key=value (a string), key:=JSON (a number, true, a list...), "
    "key=@path (a local file, sent inline)"
)


class InputError(ValueError):
    """An input that cannot be sent; the message says why and what to do."""


def data_uri(path: str, *, limit: int = MAX_FILE_SIZE) -> str:
    """The file at ``path`` as a ``data:`` URI, with its guessed mime type.

    Raises:
        InputError: it cannot be read, is not a regular file, or is bigger
            than ``limit`` bytes (upload it and pass its URL instead).
    """
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > limit:
                raise InputError(
                    f"{path} is {size / 1e6:.1f} MB, over the {limit / 1e6:.1f} MB "
                    "sent inline; upload it somewhere the provider can fetch and "
                    "pass its URL: -i key=https://..."
                )
            data = file.read(limit + 1)
    except IsADirectoryError:
        raise InputError(f"{path} is a directory, not a file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:  # it grew, or fstat knows no size (a pipe)
        raise InputError(
            f"{path} is over the {limit / 1e6:.1f} MB sent inline; upload it and "
            "pass its URL: -i key=https://..."
        )
    mime = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (the API refuses it)")


def _loads(text: str) -> Any:
    """``json.loads`` that refuses ``NaN`` and the infinities."""
    return json.loads(text, parse_constant=_reject_constant)


def parse_input(arg: str) -> tuple[str, Any]:
    """One ``-i`` argument as ``(key, value)``.

    ``key=value`` is a string (``key=\\@x`` the string ``@x``),
    ``key:=JSON`` a JSON value, ``key=@path`` the file at ``path`` as a
    ``data:`` URI. The key is what comes before the first ``=`` (or ``:=``).

    Example:
        >>> parse_input("prompt=a cat")
        ('prompt', 'a cat')
        >>> parse_input("steps:=30"), parse_input("sizes:=[1, 2]")
        (('steps', 30), ('sizes', [1, 2]))
        >>> parse_input("handle=\\\\@me")
        ('handle', '@me')

    Raises:
        InputError: no ``=``, no key, JSON that does not parse, or a file
            that cannot be sent.
    """
    key, eq, value = arg.partition("=")
    raw = key.endswith(":")
    if raw:
        key = key[:-1]
    if not eq or not key.strip():
        raise InputError(f"-i {arg!r:.80}: expected {FORMS}")
    if raw:
        try:
            return key, _loads(value)
        except (ValueError, RecursionError) as exc:
            raise InputError(
                f"-i {key}:=...: {value!r:.60} is not JSON ({exc}); "
                f"for a string write -i {key}=..."
            ) from None
    if value.startswith("@"):
        return key, data_uri(value[1:])
    if value.startswith("\\@"):
        return key, value[1:]
    return key, value


def parse_inputs(args: Iterable[str]) -> dict[str, Any]:
    """Every ``-i`` argument, as the ``input`` object.

    Raises:
        InputError: a bad argument (see :func:`parse_input`), or a key given
            twice.
    """
    inputs: dict[str, Any] = {}
    for arg in args:
        key, value = parse_input(arg)
        if key in inputs:
            raise InputError(f"-i {key} is given twice")
        inputs[key] = value
    return inputs


def parse_inputs_file(
    lines: Iterable[str], source: str, defaults: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The inputs of a JSON Lines file: one object a non-blank line.

    Each object's keys win over ``defaults`` (the ``-i`` arguments).

    Example:
        >>> parse_inputs_file(['{"n": 1}\\n', '\\n', '{"n": 2, "x": 0}'], "f", {"x": 9})
        [{'x': 9, 'n': 1}, {'x': 0, 'n': 2}]
        >>> parse_inputs_file(['{"n": 1}', '[1]'], "in.jsonl")
        Traceback (most recent call last):
        ...
        replipoll._cli._inputs.InputError: in.jsonl line 2: a JSON array, not an ...

    Raises:
        InputError: a line that is not a JSON object (the message names the
            line), or no inputs at all.
    """
    inputs = []
    for number, line in enumerate(lines, 1):
        text = line.strip().removeprefix("\ufeff") if number == 1 else line.strip()
        if not text:
            continue
        where = f"{source} line {number}"
        try:
            value = _loads(text)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"{where}: not JSON ({exc})") from None
        if not isinstance(value, dict):
            kinds: dict[type, str] = {list: "a JSON array", str: "a JSON string"}
            kind = kinds.get(type(value), "a JSON value")
            raise InputError(f"{where}: {kind}, not an object of inputs")
        inputs.append({**(defaults or {}), **value})
    if not inputs:
        raise InputError(f"{source} holds no inputs (one JSON object a line)")
    return inputs


def input_digest(target: str, inputs: Mapping[str, Any]) -> str:
    """A short fingerprint of what one prediction is created from.

    Kept in each line of a results file, so that a rerun can tell whether
    its N-th input is still the one recorded (an edited inputs file, another
    model), instead of taking another input's result for its own.

    Example:
        >>> input_digest("acme/echo", {"b": 1, "a": 2}) == input_digest(
        ...     "acme/echo", {"a": 2, "b": 1}
        ... )
        True
    """
    text = json.dumps(
        [target, inputs], sort_keys=True, separators=(",", ":"), ensure_ascii=True
    )
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]
