"""The records replipoll returns: frozen, slotted attrs classes.

They are built from JSON by the one converter, made at the bottom of this
module by :func:`replipoll._decode.make_converter`. Every record keeps the
keys it does not know in ``extra``, so a provider that adds a field never
breaks decoding and nothing it sent is lost.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final

import attrs
import cattrs

from ._decode import error_text, make_converter, structure

__all__ = [
    "TERMINAL_STATUSES",
    "Prediction",
    "PredictionMetrics",
    "PredictionUrls",
    "Status",
    "converter",
    "structure_prediction",
]

_EMPTY: Mapping[str, Any] = {}


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


@attrs.frozen
class PredictionMetrics:
    """The ``metrics`` object of a prediction; filled in once it is terminal."""

    predict_time: float | None = None
    total_time: float | None = None
    image_count: int | None = None
    #: Keys the provider sent that replipoll does not know.
    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)


@attrs.frozen
class Prediction:
    """One prediction as the API reported it at one moment.

    Only ``id`` and ``status`` are required; every other field is optional
    because gateways omit some and Replicate adds more over time.

    Example:
        >>> from replipoll import Prediction
        >>> p = Prediction.from_json({"id": "a", "status": "succeeded", "output": [1]})
        >>> p.status == "succeeded", p.is_terminal, p.output
        (True, True, [1])
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
    error: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    #: True once the provider removed input, output and logs (after ~1 hour).
    data_removed: bool = False
    urls: PredictionUrls | None = attrs.field(default=None, repr=False)
    metrics: PredictionMetrics | None = None
    source: str | None = None
    deployment: str | None = None
    deadline: datetime | None = None
    #: Top-level keys the provider sent that replipoll does not know.
    extra: Mapping[str, Any] = attrs.field(default=_EMPTY, repr=False)

    @property
    def is_terminal(self) -> bool:
        """True for succeeded, failed, canceled and aborted; False otherwise."""
        return self.status in TERMINAL_STATUSES

    @property
    def is_documented_status(self) -> bool:
        """False when :attr:`status` is a string no provider documented."""
        return isinstance(self.status, Status)

    def output_urls(self) -> Iterator[str]:
        """Yield every ``http(s)`` URL found anywhere in :attr:`output`, in order.

        Works for one URL, a list of URLs, and nested objects holding URLs.
        """
        stack: list[Any] = [self.output]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                if item.startswith(("https://", "http://")):
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

        Timestamps become RFC 3339 strings and ``extra`` keys are merged back
        in, so ``Prediction.from_json(p.to_json()) == p``.
        """
        return converter.unstructure(self)  # type: ignore[no-any-return]


#: The converter every record in replipoll is structured with.
converter: Final[cattrs.Converter] = make_converter(
    (PredictionUrls, PredictionMetrics, Prediction),
    statuses=Status,
    field_hooks={Prediction: {"error": error_text}},
)
_structure_prediction: Final[Callable[[object, object], Prediction]] = (
    converter.get_structure_hook(Prediction)
)


def structure_prediction(
    data: object,
    *,
    status: int | None = None,
    request_id: str | None = None,
    url: str = "",
    method: str = "GET",
    redact: Callable[[str], str] | None = None,
) -> Prediction:
    """Structure a decoded JSON body into a :class:`Prediction`.

    The keyword arguments describe the answer the body came from; ``redact``
    cleans the error's message.

    Raises:
        DecodeError: with ``field`` set to the dotted path that failed.
    """
    return structure(
        _structure_prediction,
        data,
        status=status,
        request_id=request_id,
        url=url,
        method=method,
        redact=redact,
    )
