"""The one cattrs converter, and turning JSON into records.

Decoding is strict about types (a ``status`` that is an object is an error, a
``data_removed`` of ``"false"`` is not silently ``True``) and lenient about
shape (unknown keys are kept in ``extra``, missing optional keys are ``None``,
unknown status strings are kept as strings).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import DecodeError
from ._models import Prediction, PredictionMetrics, PredictionUrls, Status

__all__ = ["converter", "parse_timestamp", "structure_prediction"]

T = TypeVar("T")


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


def _error_text(value: object, _: object) -> str:
    # Documented as a string; keep anything else readable rather than fail.
    if type(value) is str:
        return value
    import json

    return json.dumps(value, ensure_ascii=False)


def _status(value: object, _: object) -> Status | str:
    if not isinstance(value, str):
        raise TypeError(f"expected a status string, got {_json_type(value)}")
    return _STATUSES.get(value, str(value))


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


_STATUSES: Final = {s.value: s for s in Status}

#: Fields decoded by a hook of their own rather than by their type's.
_FIELD_OVERRIDES: Final[dict[tuple[type, str], Callable[[Any, Any], Any]]] = {
    (Prediction, "error"): _error_text,
}


#: Structure hooks registered below that ignore their type argument: a field
#: hook calls them directly, without a closure that passes the type along
#: (decoding runs once per request; a call saved per field adds up).
_TYPE_BLIND: Final[set[Callable[[Any, Any], Any]]] = set()


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=False)
    hooks: list[tuple[Any, Callable[[Any, Any], Any]]] = [
        (str, _strict(str, "a string")),
        (bool, _strict(bool, "a boolean")),
        (float, _number),
        (int, _integer),
        (datetime, _timestamp),
    ]
    for kind, hook in hooks:
        conv.register_structure_hook(kind, hook)
        _TYPE_BLIND.add(hook)
    conv.register_structure_hook_func(lambda t: t == Status | str, _status)
    conv.register_structure_hook_func(lambda t: t == Mapping[str, Any], _mapping)
    _TYPE_BLIND.update((_status, _mapping))
    conv.register_unstructure_hook(datetime, _format_timestamp)
    conv.register_unstructure_hook(Status, lambda s: s.value)
    for cls in (PredictionUrls, PredictionMetrics, Prediction):
        record_hook = _record_hook(conv, cls)
        conv.register_structure_hook(cls, record_hook)
        _TYPE_BLIND.add(record_hook)
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


def _record_hook(conv: cattrs.Converter, cls: type[T]) -> Callable[[object, object], T]:
    """Structure ``cls`` field by field, keeping unknown keys in ``extra``.

    ``null`` for any field means "not given", so the field's default applies;
    a value of the wrong type raises :class:`_FieldError` naming the field.
    """
    attrs.resolve_types(cls)  # type: ignore[type-var]
    fields = [f for f in attrs.fields(cls) if f.name != "extra"]  # type: ignore[arg-type]
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    hooks = {
        f.name: _FIELD_OVERRIDES.get((cls, f.name)) or _field_hook(conv, f)
        for f in fields
    }

    def structure(data: object, _: object) -> T:
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
            # further down (json.dumps in _error_text): a bad field, no crash.
            raise _FieldError(key, "nested too deeply") from None
        if extra:
            kwargs["extra"] = extra
        return cls(**kwargs)

    return structure


def _field_hook(
    conv: cattrs.Converter, field: attrs.Attribute[Any]
) -> Callable[[Any, Any], Any]:
    kind = field.type
    if kind is Any:
        return _any
    # "X | None" fields: None never reaches the hook (it means "absent").
    args = getattr(kind, "__args__", ())
    if type(None) in args and kind != (Status | str):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            kind = non_null[0]
    handler = conv.get_structure_hook(kind)
    if handler in _TYPE_BLIND:
        return handler
    return lambda value, _: handler(value, kind)


#: The converter every record in replipoll is structured with.
converter: Final[cattrs.Converter] = _make_converter()
_structure_prediction: Final = converter.get_structure_hook(Prediction)


def structure_prediction(
    data: object,
    *,
    status: int | None = None,
    request_id: str | None = None,
    url: str = "",
    method: str = "GET",
) -> Prediction:
    """Structure a decoded JSON body into a :class:`Prediction`.

    Raises:
        DecodeError: with ``field`` set to the dotted path that failed.
    """
    try:
        return _structure_prediction(data, Prediction)  # type: ignore[no-any-return]
    except _FieldError as exc:
        where = f"field {exc.field!r}" if exc.field else "body"
        raise DecodeError(
            f"not a prediction: {where}: {exc}",
            field=exc.field,
            status=status,
            request_id=request_id,
            url=url,
            method=method,
        ) from None
