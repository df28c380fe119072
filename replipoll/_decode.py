"""The cattrs machinery that turns JSON into records; it knows no record.

:func:`make_converter` builds the one converter (called once, by
:mod:`replipoll._models`, with the record classes) and :func:`structure`
runs it, turning a field that does not fit into a :class:`DecodeError` that
names it. Nothing here imports the records, so the records can use it
without an import cycle.

Decoding is strict about types (a ``status`` that is an object is an error, a
``data_removed`` of ``"false"`` is not silently ``True``) and lenient about
shape (unknown keys are kept in ``extra``, missing optional keys are ``None``,
unknown status strings are kept as strings).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import DecodeError

__all__ = ["make_converter", "parse_timestamp", "structure"]

T = TypeVar("T")

#: The longest message a DecodeError carries.
_MAX_MESSAGE: Final = 300


class _FieldError(Exception):
    """A value of the wrong type; carries the field name up to the record."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_timestamp(value: object) -> datetime:
    """Parse an RFC 3339 timestamp into an aware ``datetime``.

    Accepts millisecond, microsecond and nanosecond precision (nanoseconds are
    truncated to microseconds), ``Z`` or a numeric offset; a timestamp with no
    offset is taken as UTC.

    Raises:
        ValueError: ``value`` is not such a timestamp.
    """
    if type(value) is not str:
        raise ValueError(f"expected a timestamp string, got {type(value).__name__}")
    text = value
    dot = text.find(".")
    # Seven digits after the dot: more than datetime keeps. fromisoformat
    # takes at most 6 before Python 3.12 is lenient everywhere; trim to be
    # sure on every version. (An O(1) test: this runs three times a record.)
    if dot != -1 and text[dot + 1 : dot + 8].isdigit():
        end = dot + 8
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[: dot + 7] + text[end:]
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _strict(kind: type[T], name: str) -> Callable[[object, object], T]:
    def check(value: object, _: object) -> T:
        if type(value) is not kind:
            raise TypeError(f"expected {name}, got {_json_type(value)}")
        return value  # type: ignore[return-value,unused-ignore]

    return check


def _number(value: object, _: object) -> float:
    if type(value) is float or type(value) is int:
        return float(value)
    raise TypeError(f"expected a number, got {_json_type(value)}")


def _integer(value: object, _: object) -> int:
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer():
        return int(value)
    raise TypeError(f"expected an integer, got {_json_type(value)}")


def error_text(value: object, _: object) -> str:
    """A field documented as a string: anything else is kept as JSON text."""
    if type(value) is str:
        return value
    return json.dumps(value, ensure_ascii=False)


def _status_hook(statuses: type[enum.StrEnum]) -> Callable[[object, object], Any]:
    known: Final = {s.value: s for s in statuses}

    def status(value: object, _: object) -> Any:
        if not isinstance(value, str):
            raise TypeError(f"expected a status string, got {_json_type(value)}")
        return known.get(value, str(value))

    return status


def _mapping(value: object, _: object) -> Mapping[str, Any]:
    if type(value) is not dict:
        raise TypeError(f"expected an object, got {_json_type(value)}")
    return value


def _timestamp(value: object, _: object) -> datetime:
    return parse_timestamp(value)


def _any(value: object, _: object) -> object:
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(value), type(value).__name__)


#: Field hooks for one record class, by field name.
FieldHooks = Mapping[str, Callable[[Any, Any], Any]]


def make_converter(
    records: Iterable[type],
    *,
    statuses: type[enum.StrEnum],
    field_hooks: Mapping[type, FieldHooks] | None = None,
) -> cattrs.Converter:
    """Build the converter for ``records`` (attrs classes, innermost first).

    Args:
        records: The record classes; each may have an ``extra`` field that
            receives the keys it does not know.
        statuses: The enum of documented statuses; a field typed
            ``statuses | str`` keeps an undocumented status as a plain string.
        field_hooks: Fields decoded by a hook of their own rather than by
            their type's, e.g. ``{Prediction: {"error": error_text}}``.
    """
    conv = cattrs.Converter(detailed_validation=False)
    # Hooks that ignore their type argument: a field hook calls them
    # directly, without a closure passing the type along (decoding runs once
    # per request; a call saved per field adds up).
    blind: set[Callable[[Any, Any], Any]] = set()
    status = _status_hook(statuses)
    hooks: list[tuple[Any, Callable[[Any, Any], Any]]] = [
        (str, _strict(str, "a string")),
        (bool, _strict(bool, "a boolean")),
        (float, _number),
        (int, _integer),
        (datetime, _timestamp),
    ]
    for kind, hook in hooks:
        conv.register_structure_hook(kind, hook)
        blind.add(hook)
    status_type = statuses | str
    conv.register_structure_hook_func(lambda t: t == status_type, status)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, Any], _mapping)
    blind.update((status, _mapping))
    conv.register_unstructure_hook(datetime, _format_timestamp)
    conv.register_unstructure_hook(statuses, lambda s: s.value)
    overrides = field_hooks or {}
    for cls in records:
        record_hook: Callable[[object, object], Any] = _record_hook(
            conv, cls, overrides.get(cls, {}), blind, status_type
        )
        conv.register_structure_hook(cls, record_hook)
        blind.add(record_hook)
        conv.register_unstructure_hook(cls, _record_unhook(conv, cls))
    return conv


def _record_unhook(
    conv: cattrs.Converter, cls: type[T]
) -> Callable[[T], dict[str, Any]]:
    """Unstructure ``cls`` back to the provider's JSON shape, ``extra`` included.

    Fields holding raw JSON (``output``, ``input``, ``extra``) are passed
    through as they are: they came from ``json.loads``, and walking them
    value by value would fail on nesting far shallower than the decoder
    accepts (a few hundred levels).
    """
    attrs.resolve_types(cls)  # type: ignore[type-var]
    raw = {
        f.name: override(unstruct_hook=_same)
        for f in attrs.fields(cls)  # type: ignore[arg-type]
        if _holds_raw_json(f.type)
    }
    generated = make_dict_unstructure_fn(cls, conv, **raw)  # type: ignore[arg-type]

    def unstructure(record: T) -> dict[str, Any]:
        data = generated(record)
        extra = data.pop("extra", None)
        if extra:
            data.update(extra)
        return data

    return unstructure


def _holds_raw_json(kind: object) -> bool:
    if kind is Any:
        return True
    args = getattr(kind, "__args__", ())
    return kind == Mapping[str, Any] or (
        type(None) in args and any(_holds_raw_json(a) for a in args)
    )


def _same(value: object) -> object:
    return value


def _format_timestamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _record_hook(
    conv: cattrs.Converter,
    cls: type[T],
    overrides: FieldHooks,
    blind: set[Callable[[Any, Any], Any]],
    status_type: object,
) -> Callable[[object, object], T]:
    """Structure ``cls`` field by field, keeping unknown keys in ``extra``.

    ``null`` for any field means "not given", so the field's default applies;
    a value of the wrong type raises :class:`_FieldError` naming the field.
    """
    attrs.resolve_types(cls)  # type: ignore[type-var]
    fields = [f for f in attrs.fields(cls) if f.name != "extra"]  # type: ignore[arg-type]
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    hooks = {
        f.name: overrides.get(f.name) or _field_hook(conv, f, blind, status_type)
        for f in fields
    }

    def structure_record(data: object, _: object) -> T:
        if type(data) is not dict:
            raise _FieldError("", f"expected an object, got {_json_type(data)}")
        for name in required:
            if data.get(name) is None:
                raise _FieldError(name, "missing")
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] | None = None
        key = ""
        try:
            for key, value in data.items():
                hook = hooks.get(key)
                if hook is None:  # a key replipoll does not know: keep it
                    if extra is None:
                        extra = {}
                    extra[key] = value
                elif value is not None:
                    kwargs[key] = hook(value, None)
        except _FieldError as exc:
            raise _FieldError(f"{key}.{exc.field}".rstrip("."), str(exc)) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise _FieldError(key, str(exc)) from None
        except RecursionError:
            # Nesting json.loads accepted can still be too deep a few frames
            # further down (json.dumps in error_text): a bad field, no crash.
            raise _FieldError(key, "nested too deeply") from None
        if extra:
            kwargs["extra"] = extra
        return cls(**kwargs)

    return structure_record


def _field_hook(
    conv: cattrs.Converter,
    field: attrs.Attribute[Any],
    blind: set[Callable[[Any, Any], Any]],
    status_type: object,
) -> Callable[[Any, Any], Any]:
    kind = field.type
    if kind is Any:
        return _any
    # "X | None" fields: None never reaches the hook (it means "absent").
    args = getattr(kind, "__args__", ())
    if type(None) in args and kind != status_type:
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            kind = non_null[0]
    handler = conv.get_structure_hook(kind)
    if handler in blind:
        return handler
    return lambda value, _: handler(value, kind)


def structure(
    hook: Callable[[object, object], T],
    data: object,
    *,
    status: int | None = None,
    request_id: str | None = None,
    url: str = "",
    method: str = "GET",
    redact: Callable[[str], str] | None = None,
) -> T:
    """Run a record's structure ``hook`` (from :func:`make_converter`) on ``data``.

    The keyword arguments describe the answer the data came from; they are
    carried by the error. ``redact`` cleans the error's message (which may
    quote the server's words) before it is shortened.

    Raises:
        DecodeError: with ``field`` set to the dotted path that failed.
    """
    try:
        return hook(data, None)
    except _FieldError as exc:
        failure = exc
    # Raised here, not in the handler: the _FieldError would stay attached
    # as __context__, and its text may quote the body.
    where = f"field {failure.field!r}" if failure.field else "body"
    message = f"not a prediction: {where}: {failure}"
    if redact is not None:
        message = redact(message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    raise DecodeError(
        message,
        field=failure.field,
        status=status,
        request_id=request_id,
        url=url,
        method=method,
    )
