"""The records replipoll returns: frozen, slotted attrs classes.

They are built from JSON by the one converter, made at the bottom of this
module by :func:`replipoll._decode.make_converter`. Decoding is lossless:
keys replipoll does not know are kept in ``extra``, values that do not fit
their field in ``invalid``, and the whole object in ``raw``, so a provider
that adds or garbles a field never costs a record, and
:meth:`Prediction.to_json` gives back exactly what was received.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final

import attrs
import cattrs

from ._decode import error_value, identifier, make_converter, structure

__all__ = [
    "TERMINAL_STATUSES",
    "Prediction",
    "PredictionMetrics",
    "PredictionUrls",
    "Status",
    "converter",
    "prediction_hook",
    "structure_prediction",
]

_EMPTY: Mapping[str, Any] = {}
#: How a file URL in an output begins (compared in lower case).
_FILE_SCHEMES = ("https://", "http://", "data:")


class Status(enum.StrEnum):
    """The documented prediction statuses.

    A status string that nobody documented is kept as a plain ``str`` on
    :attr:`Prediction.status` and counts as not terminal. Because this is a
    ``str`` enum, ``prediction.status == "succeeded"`` works either way.
    """

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    #: The deadline passed before the prediction started; not charged.
    ABORTED = "aborted"

    @property
    def is_terminal(self) -> bool:
        """Whether a prediction in this status will never change again."""
        return self in TERMINAL_STATUSES


#: The statuses after which a prediction never changes.
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {Status.SUCCEEDED, Status.FAILED, Status.CANCELED, Status.ABORTED}
)


@attrs.frozen
class PredictionUrls:
    """The ``urls`` object of a prediction.

    These point at the provider that created the prediction, which for a
    gateway is usually ``api.replicate.com``: replipoll never polls them, it
    builds URLs from the configured base instead.
    """

    get: str | None = None
    cancel: str | None = None
    stream: str | None = None
    web: str | None = None
    #: Keys the provider sent that replipoll does not know.
    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)
    #: Values sent for known keys that did not fit them, by key.
    invalid: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)


@attrs.frozen
class PredictionMetrics:
    """The ``metrics`` object of a prediction; filled in once it is terminal."""

    predict_time: float | None = None
    total_time: float | None = None
    image_count: int | None = None
    #: Keys the provider sent that replipoll does not know.
    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)
    #: Values sent for known keys that did not fit them, by key.
    invalid: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)


@attrs.frozen
class Prediction:
    """One prediction as the API reported it at one moment.

    Only ``id`` and ``status`` are required; every other field is optional
    because gateways omit some and Replicate adds more over time. A field
    that was not sent, or sent as ``null``, is ``None``; one whose value did
    not fit (a ``created_at`` of ``""``) is ``None`` too, and its value is in
    :attr:`invalid`.

    Example:
        >>> from replipoll import Prediction
        >>> p = Prediction.from_json(
        ...     {"id": "a", "status": "failed", "created_at": "", "error": "E1001"}
        ... )
        >>> p.status == "failed", p.is_terminal, p.error_message, dict(p.invalid)
        (True, True, 'E1001', {'created_at': ''})
        >>> p.to_json()
        {'id': 'a', 'status': 'failed', 'created_at': '', 'error': 'E1001'}
    """

    id: str
    #: A :class:`Status`, or the raw string for a status nobody documented.
    status: Status | str
    model: str | None = None
    #: ``"hidden"`` on the gateways.
    version: str | None = None
    input: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    #: The result, which may be any JSON value (a URL, a list of URLs, text...).
    output: Any = attrs.field(default=None, repr=False)
    logs: str | None = attrs.field(default=None, repr=False)
    #: What went wrong, as sent (a string as documented, or an object some
    #: gateways send, ``{"message": ...}``); :attr:`error_message` reads both.
    error: str | Mapping[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    #: True once the provider removed input, output and logs (after ~1 hour);
    #: ``None`` when it did not say.
    data_removed: bool | None = None
    urls: PredictionUrls | None = attrs.field(default=None, repr=False)
    metrics: PredictionMetrics | None = None
    source: str | None = None
    deployment: str | None = None
    deadline: datetime | None = None
    #: Top-level keys the provider sent that replipoll does not know.
    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)
    #: Values sent for known fields that did not fit them, by dotted name
    #: (``"created_at"``, ``"metrics.predict_time"``); those fields are ``None``.
    invalid: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)
    #: The JSON object this record was decoded from, as received; empty for
    #: a record built in code.
    raw: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False, eq=False)

    @property
    def error_message(self) -> str | None:
        """The error as text, whatever shape it was sent in; ``None`` if none.

        A string is returned as is; an object's ``message`` (or ``detail``,
        ``error``, ``msg``) if it has one, else the object as JSON text; any
        other JSON value (kept in :attr:`invalid`) as JSON text.
        """
        error: object = self.error
        if error is None:
            error = self.invalid.get("error")
            if error is None:
                return None
        if isinstance(error, str):
            return error
        if isinstance(error, Mapping):
            for key in ("message", "detail", "error", "msg"):
                text = error.get(key)
                if isinstance(text, str) and text:
                    return text
        return json.dumps(error, ensure_ascii=False, default=str)

    @property
    def is_terminal(self) -> bool:
        """True for succeeded, failed, canceled and aborted; False otherwise."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_documented_status(self) -> bool:
        """False when :attr:`status` is a string no provider documented."""
        return isinstance(self.status, Status)

    def output_urls(self) -> Iterator[str]:
        """Yield every file URL found anywhere in :attr:`output`, in order.

        File URLs are ``http://``, ``https://`` (in any case) and ``data:``
        URIs (a model may return a small file inline). Works for one URL, a
        list of URLs, and nested objects holding URLs.
        """
        stack: list[Any] = [self.output]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if item[:8].lower().startswith(_FILE_SCHEMES):
                    yield item
            elif isinstance(item, Mapping):
                stack.extend(reversed(list(item.values())))
            elif isinstance(item, list):
                stack.extend(reversed(item))

    @classmethod
    def from_json(cls, data: object) -> Prediction:
        """Build a record from a decoded JSON body.

        Raises:
            replipoll.DecodeError: ``data`` is not a prediction; ``field``
                says which field failed.
        """
        return structure_prediction(data)

    def to_json(self) -> dict[str, Any]:
        """Return the record as JSON-ready data, in the provider's shape.

        A record decoded from JSON gives back exactly the keys it was sent,
        with their JSON types (``3``, not ``3.0``; a timestamp in its own
        precision; an ``invalid`` value as it was): ``p.to_json() ==
        p.raw``. A record built or changed in code (``attrs.evolve``) is
        rendered from its fields: the fields that are set, timestamps as
        RFC 3339 strings, ``extra`` merged back in. Either way
        ``Prediction.from_json(p.to_json()) == p``.
        """
        raw = self.raw
        if raw and prediction_hook(raw, None) == self:
            return dict(raw)
        return converter.unstructure(self)  # type: ignore[no-any-return]


#: The converter every record in replipoll is structured with.
converter: Final[cattrs.Converter] = make_converter(
    (PredictionUrls, PredictionMetrics, Prediction),
    statuses=Status,
    field_hooks={Prediction: {"id": identifier, "error": error_value}},
)
#: The converter's hook for a prediction: ``prediction_hook(data, None)``
#: raises :class:`~replipoll._decode.FieldError` (see :func:`structure_prediction`).
prediction_hook: Final[Callable[[object, object], Prediction]] = (
    converter.get_structure_hook(Prediction)
)


def structure_prediction(data: object, **answer: Any) -> Prediction:
    """Structure a decoded JSON body into a :class:`Prediction`.

    The keyword arguments (``status``, ``request_id``, ``url``, ``method``,
    ``redact``) describe the answer the body came from: see
    :func:`replipoll._decode.structure`.

    Raises:
        DecodeError: with ``field`` set to the dotted path that failed.
    """
    return structure(prediction_hook, data, **answer)
