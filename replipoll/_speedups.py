"""The optional fast path: msgspec's JSON decoder, and uvloop for the command line.

``pip install 'replipoll[speed]'`` installs both, and replipoll uses them on
its own:

- :data:`loads`, which parses every answer replipoll reads, is
  :func:`msgspec_loads` when msgspec is installed: about four times as fast
  as ``json.loads`` on a prediction's record, with the very same results and
  errors;
- the ``replipoll`` command line runs on uvloop's event loop
  (:func:`loop_factory`). A program of your own picks its own loop:
  ``uvloop.run(main())``, or
  ``asyncio.Runner(loop_factory=uvloop.new_event_loop)``.

The environment variable ``REPLIPOLL_NO_SPEEDUPS`` (any non-empty value)
turns both off, whatever is installed: the JSON loader is then ``json.loads``
and the command line runs on asyncio's own loop. The loader is chosen once,
when replipoll is imported.

Same results, case by case. msgspec refuses some bodies that ``json.loads``
accepts; those go to ``json.loads``, which decides:

- ``NaN``, ``Infinity`` and ``-Infinity``, and numbers beyond a float's range
  (``1e400``, which ``json.loads`` reads as ``inf``);
- lone surrogates, escaped (``"\\ud800"``) or raw (the bytes ED A0 80, which
  ``json.loads`` lets through);
- a UTF-8 byte-order mark, and UTF-16 and UTF-32 bodies;
- integers longer than ``sys.get_int_max_str_digits()`` (msgspec honours the
  same limit; ``json.loads`` refuses them too, unless the limit is lifted);
- invalid UTF-8, and anything that is not JSON: ``json.loads`` raises its own
  error (msgspec's ``DecodeError`` is not a ``ValueError``, and is never seen).

Where both accept a body, they agree: integers of any size stay integers
(orjson would turn those beyond 64 bits into floats, which is why it is not
the one used), floats are correctly rounded by both, and of duplicate keys the
last value wins, in the first one's place. Nesting is the one place where
msgspec accepts more: both stop at Python's recursion limit, msgspec a few
levels deeper, so a body nested :data:`DEEP` levels or more is parsed again
by ``json.loads`` (a bracket count tells cheaply which bodies could be).

Example:
    The same value, whichever loader is in use:

    >>> loads(b'{"n": 123456789012345678901234567890, "a": 1, "a": 2}')
    {'n': 123456789012345678901234567890, 'a': 2}
    >>> loads(b'[NaN, -Infinity, 1e400]')
    [nan, -inf, inf]
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Mapping
from typing import Any, Final

__all__ = [
    "DEEP",
    "DISABLE_VARIABLE",
    "HAS_MSGSPEC",
    "JSON_LOADER",
    "Loader",
    "loads",
    "loop_factory",
    "msgspec_loads",
    "speedups",
    "stdlib_loads",
]

#: Parses one body; raises what ``json.loads`` raises for anything else.
Loader = Callable[[bytes], Any]

#: Any non-empty value turns the fast path off.
DISABLE_VARIABLE: Final = "REPLIPOLL_NO_SPEEDUPS"
#: Nesting from which a body msgspec parsed is parsed again by ``json.loads``.
#: At Python's default recursion limit, ``json.loads`` reaches this deep
#: when called with fewer than 450 frames on the stack.
DEEP: Final = 500
_CONTAINERS: Final = (dict, list)


def disabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``REPLIPOLL_NO_SPEEDUPS`` asks for the standard library only."""
    return bool(environ.get(DISABLE_VARIABLE))


def stdlib_loads(body: bytes) -> Any:
    """``json.loads(body)``: the reference for every other loader.

    A function of its own, so that ``json.loads`` runs as deep in the stack
    as when :func:`msgspec_loads` hands it a body: at the recursion limit,
    the two end alike too.
    """
    return json.loads(body)


try:
    import msgspec.json
except ImportError:  # no speed extra
    _msgspec_decode: Loader | None = None
else:
    _msgspec_decode = msgspec.json.Decoder().decode

#: Whether msgspec is installed (whether or not it is used).
HAS_MSGSPEC: Final = _msgspec_decode is not None


def _nested(data: Any, depth: int) -> bool:
    """Whether ``data`` holds lists or objects nested ``depth`` levels deep."""
    level = [data] if type(data) in _CONTAINERS else []
    for _ in range(depth - 1):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) in _CONTAINERS
        ]
        if not level:
            return False
    return bool(level)


def msgspec_loads(body: bytes) -> Any:
    """Parse ``body`` with msgspec; where it would differ, with ``json.loads``.

    The result, or the exception, is always what ``json.loads(body)`` would
    give (see the module's docstring for each case).

    Raises:
        ValueError: ``body`` is not JSON (``json.JSONDecodeError``, or
            ``UnicodeDecodeError``), or an integer in it is too long.
        RecursionError: ``body`` is nested too deep.
        RuntimeError: msgspec is not installed.
    """
    decode = _msgspec_decode
    if decode is None:
        raise RuntimeError("msgspec is not installed: pip install 'replipoll[speed]'")
    try:
        data = decode(body)
    except Exception:
        # msgspec refuses what json.loads may accept (NaN, 1e400, lone
        # surrogates, a BOM, UTF-16...): json.loads decides, and raises its
        # own errors for what is not JSON.
        return json.loads(body)
    if (
        len(body) >= 2 * DEEP  # a body nested n deep has 2n brackets at least
        and body.count(b"[") + body.count(b"{") >= DEEP
        and _nested(data, DEEP)
    ):
        return json.loads(body)  # where json.loads may hit the recursion limit
    return data


def _choose(environ: Mapping[str, str]) -> tuple[str, Loader]:
    if not HAS_MSGSPEC or disabled(environ):
        return "json", stdlib_loads
    return "msgspec", msgspec_loads


#: The loader in use, and its name: ``"msgspec"`` or ``"json"``. Chosen on
#: import; tests and benchmarks may put the other one in its place.
JSON_LOADER, loads = _choose(os.environ)


def loop_factory(
    environ: Mapping[str, str] = os.environ,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The uvloop loop factory if installed and not turned off, else ``None``.

    For ``asyncio.Runner(loop_factory=...)``, where ``None`` means asyncio's
    own loop.
    """
    if disabled(environ):
        return None
    try:
        import uvloop
    except ImportError:  # no speed extra, or Windows (no uvloop there)
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def speedups(environ: Mapping[str, str] = os.environ) -> str:
    """One line saying which parts of the fast path are in use, for people.

    The JSON loader is the one chosen on import; the event loop is the one a
    command started now would get.
    """
    parts = []
    if JSON_LOADER == "msgspec":
        parts.append("msgspec (JSON)")
    if loop_factory(environ) is not None:
        parts.append("uvloop (command line)")
    if parts:
        return "fast path: " + ", ".join(parts)
    if disabled(environ):
        return f"fast path: off ({DISABLE_VARIABLE} is set)"
    return "fast path: not installed (pip install 'replipoll[speed]')"
