"""The cattrs machinery that turns JSON into records; it knows no record.

:func:`make_converter` builds the one converter (called once, by
:mod:`replipoll._models`, with the record classes) and :func:`structure`
runs it. Nothing here imports the records, so the records can use it
without an import cycle.

Decoding is strict where a record cannot exist without a field and tolerant
everywhere else, and it never loses what was sent:

* a record's required fields (a prediction's ``id`` and ``status``) must be
  there with the right JSON type, or the body is no record at all
  (:class:`~replipoll.DecodeError` naming the field);
* any other field whose value does not fit (a ``created_at`` of ``""``, a
  ``data_removed`` of ``"false"``) is left at its default, and its value is
  kept in the record's ``invalid`` mapping under its dotted name;
* keys nobody knows are kept in ``extra``, undocumented status strings as
  plain strings, and the whole object as received in ``raw`` (for records
  that have that field), so a record turns back into exactly its JSON.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from ._errors import DecodeError

__all__ = [
    "FieldError",
    "decode_error",
    "error_value",
    "identifier",
    "make_converter",
    "parse_timestamp",
    "structure",
]

T = TypeVar("T")

#: The longest message a DecodeError carries.
_MAX_MESSAGE: Final = 300
#: No RFC 3339 timestamp is longer (nanoseconds and an offset take 35).
_MAX_TIMESTAMP: Final = 64
#: Fields that hold what the decoder found, not what the provider sent.
_BOOKKEEPING: Final = frozenset({"extra", "invalid", "raw"})
#: What a field hook raises for a value that does not fit.
_MISFITS: Final = (TypeError, ValueError, OverflowError, RecursionError)


class FieldError(Exception):
    """A required field is missing or of the wrong type; names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def parse_timestamp(value: object) -> datetime:
    """Parse an RFC 3339 timestamp into an aware ``datetime``.

    Accepts millisecond, microsecond and nanosecond precision (nanoseconds are
    truncated to microseconds), ``Z`` or a numeric offset; a timestamp with no
    offset is taken as UTC. Anything longer than 64 characters is refused
    at once, whatever it holds (a megabyte of digits takes no time).

    Raises:
        ValueError: ``value`` is not such a timestamp.
    """
    if type(value) is not str:
        raise ValueError(f"expected a timestamp string, got {_json_type(value)}")
    text = value
    if len(text) > _MAX_TIMESTAMP:
        raise ValueError(f"not a timestamp: {len(text)} characters long")
    dot = text.find(".")
    # More than 6 digits after the dot: more than datetime keeps, and more
    # than fromisoformat takes before Python 3.12. Trim to 6.
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


_STRICT_STR: Final = _strict(str, "a string")
_STRICT_BOOL: Final = _strict(bool, "a boolean")
#: Hooks that only check the JSON type: inlined by the generated fast path.
_TYPE_CHECKS: Final[Mapping[Callable[[Any, Any], Any], str]] = {
    _STRICT_STR: "str",
    _STRICT_BOOL: "bool",
}


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


def error_value(value: object, _: object) -> str | Mapping[str, Any]:
    """A prediction's ``error``: a string as documented, or a gateway's object."""
    if type(value) is str or type(value) is dict:
        return value
    raise TypeError(f"expected a string or an object, got {_json_type(value)}")


def identifier(value: object, _: object) -> str:
    """An id: a non-empty string."""
    if type(value) is not str or not value:
        raise TypeError(f"expected a non-empty string, got {_json_type(value)}")
    return value


def _status_hook(statuses: type[enum.StrEnum]) -> Callable[[object, object], Any]:
    known: Final = {s.value: s for s in statuses}

    def status(value: object, _: object) -> Any:
        if type(value) is not str:
            raise TypeError(f"expected a status string, got {_json_type(value)}")
        return known.get(value, value)

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
    if type(value) is str and not value:
        return "an empty string"
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
        records: The record classes. Fields without a default are required;
            optional bookkeeping fields receive the unknown keys
            (``extra``), the values that did not fit (``invalid``) and the
            object as received (``raw``).
        statuses: The enum of documented statuses; a field typed
            ``statuses | str`` keeps an undocumented status as a plain string.
        field_hooks: Fields decoded by a hook of their own rather than by
            their type's, e.g. ``{Prediction: {"error": error_value}}``.
    """
    conv = cattrs.Converter(detailed_validation=False)
    # Hooks that ignore their type argument: a field hook calls them
    # directly, without a closure passing the type along (decoding runs once
    # per request; a call saved per field adds up).
    blind: set[Callable[[Any, Any], Any]] = set()
    status = _status_hook(statuses)
    hooks: list[tuple[Any, Callable[[Any, Any], Any]]] = [
        (str, _STRICT_STR),
        (bool, _STRICT_BOOL),
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
    nested: set[type] = set()
    for cls in records:
        record_hook: Callable[[object, object], Any] = _record_hook(
            conv, cls, overrides.get(cls, {}), blind, status_type, nested
        )
        conv.register_structure_hook(cls, record_hook)
        blind.add(record_hook)
        conv.register_unstructure_hook(cls, _record_unhook(conv, cls))
        nested.add(cls)
    return conv


def _record_unhook(
    conv: cattrs.Converter, cls: type[T]
) -> Callable[[T], dict[str, Any]]:
    """Unstructure ``cls`` from its fields: the keys that are set.

    The values of ``invalid`` and ``extra`` go back as they were received.
    Fields holding raw JSON (``output``, ``input``, ``extra``...) are passed
    through as they are: they came from ``json.loads``, and walking them
    value by value would fail on nesting far shallower than the decoder
    accepts (a few hundred levels).
    """
    attrs.resolve_types(cls)  # type: ignore[type-var]
    raw = {
        f.name: override(unstruct_hook=_same)
        for f in attrs.fields(cls)  # type: ignore[arg-type]
        if _holds_raw_json(f.type) or f.name in _BOOKKEEPING
    }
    generated = make_dict_unstructure_fn(cls, conv, **raw)  # type: ignore[arg-type]

    def unstructure(record: T) -> dict[str, Any]:
        data = generated(record)
        extra = data.pop("extra", None)
        invalid = data.pop("invalid", None)
        data.pop("raw", None)
        data = {key: value for key, value in data.items() if value is not None}
        if invalid:
            # Values that did not fit go back as they came: this record's own
            # (a nested record puts back its own when it is unstructured).
            data.update((k, v) for k, v in invalid.items() if "." not in k)
        if extra:
            data.update(extra)
        return data

    return unstructure


def _holds_raw_json(kind: object) -> bool:
    if kind is Any:
        return True
    args = getattr(kind, "__args__", ())
    return kind == Mapping[str, Any] or any(_holds_raw_json(a) for a in args)


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
    nested: set[type],
) -> Callable[[object, object], T]:
    """Structure ``cls`` field by field; see the module docstring for the rules.

    ``null`` for any field means "not given", so the field's default applies.
    """
    attrs.resolve_types(cls)  # type: ignore[type-var]
    all_fields = attrs.fields(cls)  # type: ignore[arg-type]
    fields = [f for f in all_fields if f.name not in _BOOKKEEPING]
    has = {f.name for f in all_fields if f.name in _BOOKKEEPING}
    required = frozenset(f.name for f in fields if f.default is attrs.NOTHING)
    hooks = {
        f.name: overrides.get(f.name) or _field_hook(conv, f, blind, status_type)
        for f in fields
    }
    # Fields holding a record whose own misfits are listed under this one's.
    holds_record = frozenset(f.name for f in fields if _record_type(f.type) in nested)
    keep_raw = "raw" in has
    known = frozenset(hooks)
    fits = _fast_fields(cls, hooks, required)

    def structure_record(data: object, _: object) -> T:
        if type(data) is not dict:
            raise FieldError("", f"expected an object, got {_json_type(data)}")
        extra: dict[str, Any] | None = None
        invalid: dict[str, Any] | None = None
        kwargs: dict[str, Any] | None = None
        if data.keys() <= known:
            # The usual record: every key known. One pass that stops at the
            # first value that does not fit; such a record (and any error)
            # is left to the field-by-field walk below.
            try:
                kwargs = fits(data)
            except Exception:
                kwargs = None
        if kwargs is None:
            kwargs, extra, invalid = walk(data)
        for key in holds_record:  # what did not fit inside, under dotted names
            inner = kwargs.get(key)
            if inner is not None and inner.invalid:
                if invalid is None:
                    invalid = {}
                for name, bad in inner.invalid.items():
                    invalid[f"{key}.{name}"] = bad
        if extra:
            kwargs["extra"] = extra
        if invalid and "invalid" in has:
            kwargs["invalid"] = invalid
        if keep_raw:
            kwargs["raw"] = data
        return cls(**kwargs)

    def walk(
        data: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any] | None]:
        """Each key in turn: the fields, the unknown keys, the misfits."""
        for name in required:
            if data.get(name) is None:
                raise FieldError(name, "missing")
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] | None = None
        invalid: dict[str, Any] | None = None
        for key, value in data.items():
            hook = hooks.get(key)
            if hook is None:  # a key replipoll does not know: keep it
                if extra is None:
                    extra = {}
                extra[key] = value
            elif value is not None:
                try:
                    kwargs[key] = hook(value, None)
                except (FieldError, *_MISFITS) as exc:
                    if key in required:
                        deep = isinstance(exc, RecursionError)
                        message = "nested too deeply" if deep else str(exc)
                        raise FieldError(key, message) from None
                    if invalid is None:
                        invalid = {}
                    invalid[key] = value
        return kwargs, extra, invalid

    return structure_record


def _fast_fields(
    cls: type,
    hooks: Mapping[str, Callable[[Any, Any], Any]],
    required: frozenset[str],
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Generate the one-pass decoder of ``cls``'s fields, for known keys only.

    It returns the keyword arguments of the fields given (``null`` being
    not given), and raises at the first value that does not fit, or a
    required field missing: the caller then walks the record key by key.
    Type checks are inlined, every other hook called; the generated
    source names fields only through ``repr`` of attrs' field names.
    """
    names: dict[str, Any] = {"_Misfit": _Misfit}
    lines = ["def fits(data):", "    get = data.get", "    kwargs = {}"]
    for n, (name, hook) in enumerate(hooks.items()):
        key = repr(name)
        lines.append(f"    value = get({key})")
        check = _TYPE_CHECKS.get(hook)
        if check is not None:
            names[check] = {"str": str, "bool": bool}[check]
            convert = [
                f"if type(value) is not {check}: raise _Misfit",
                f"kwargs[{key}] = value",
            ]
        else:
            names[f"hook{n}"] = hook
            convert = [f"kwargs[{key}] = hook{n}(value, None)"]
        if name in required:
            lines.append("    if value is None: raise _Misfit")
            lines.extend(f"    {line}" for line in convert)
        else:
            lines.append("    if value is not None:")
            lines.extend(f"        {line}" for line in convert)
    lines.append("    return kwargs")
    # Generated from attrs field names, as attrs and cattrs generate theirs.
    exec(
        compile("\n".join(lines), f"<replipoll fields of {cls.__qualname__}>", "exec"),
        names,
    )
    fits: Callable[[dict[str, Any]], dict[str, Any]] = names["fits"]
    return fits


class _Misfit(Exception):
    """A value the one-pass decoder leaves to the walk (never escapes)."""


def _record_type(kind: object) -> object:
    args = [a for a in getattr(kind, "__args__", ()) if a is not type(None)]
    return args[0] if len(args) == 1 else kind


def _field_hook(
    conv: cattrs.Converter,
    field: attrs.Attribute[Any],
    blind: set[Callable[[Any, Any], Any]],
    status_type: object,
) -> Callable[[Any, Any], Any]:
    kind: object = field.type
    if kind is Any:
        return _any
    # "X | None" fields: None never reaches the hook (it means "absent").
    if kind != status_type:
        kind = _record_type(kind)
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
    carried by the error (see :func:`decode_error`).

    Raises:
        DecodeError: a required field is missing or unusable; ``field``
            names it (``""`` when the body is not an object at all).
    """
    try:
        return hook(data, None)
    except FieldError as exc:
        failure = exc
    # Raised here, not in the handler: the FieldError would stay attached
    # as __context__, and its text may quote the body.
    raise decode_error(
        failure,
        status=status,
        request_id=request_id,
        url=url,
        method=method,
        redact=redact,
    )


def decode_error(
    failure: FieldError,
    *,
    status: int | None = None,
    request_id: str | None = None,
    url: str = "",
    method: str = "GET",
    redact: Callable[[str], str] | None = None,
) -> DecodeError:
    """The :class:`DecodeError` for a record's required field that failed.

    ``redact`` cleans the message (which may quote the server's words)
    before it is shortened. Raise it outside the handler that caught
    ``failure``, whose text may quote the body.
    """
    where = f"field {failure.field!r}" if failure.field else "body"
    message = f"not a prediction: {where}: {failure}"
    if redact is not None:
        message = redact(message)
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return DecodeError(
        message,
        field=failure.field,
        status=status,
        request_id=request_id,
        url=url,
        method=method,
    )
