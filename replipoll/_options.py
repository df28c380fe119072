"""Checks for options: each refusal is a ConfigurationError naming the option.

Used by the attrs policies (as validators) and by the constructors of
:class:`~replipoll.Client` and :class:`~replipoll.PollManager` (as plain
calls), so a bad option reads the same wherever it is given, e.g.
``PollManager: burst must be an integer of at least 1, got 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ._errors import ConfigurationError

__all__ = [
    "at_least",
    "check_at_least",
    "check_callable",
    "check_fraction",
    "check_non_negative",
    "check_positive",
    "fraction",
    "non_negative",
    "positive",
]


def _refuse(owner: str, option: str, must: str, value: object) -> ConfigurationError:
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigurationError(
        f"{owner}: {option} must be {must}, got {shown}", option=option
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_positive(
    owner: str, option: str, value: object, *, none: bool = False
) -> None:
    """Refuse anything but a number above 0 (or ``None`` when ``none``)."""
    if value is None and none:
        return
    if not (_is_number(value) and value > 0):  # type: ignore[operator]
        must = "a positive number" + (" or None" if none else "")
        raise _refuse(owner, option, must, value)


def check_non_negative(owner: str, option: str, value: object) -> None:
    """Refuse anything but a finite number of at least 0."""
    if not (_is_number(value) and 0 <= value < math.inf):  # type: ignore[operator]
        raise _refuse(owner, option, "a finite number of at least 0", value)


def check_at_least(owner: str, option: str, value: object, minimum: int) -> None:
    """Refuse anything but an integer of at least ``minimum``."""
    if not (
        isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    ):
        raise _refuse(owner, option, f"an integer of at least {minimum}", value)


def check_fraction(owner: str, option: str, value: object) -> None:
    """Refuse anything but a number from 0 to 1."""
    if not (_is_number(value) and 0 <= value <= 1):  # type: ignore[operator]
        raise _refuse(owner, option, "a number from 0 to 1", value)


def check_callable(owner: str, option: str, value: object) -> None:
    """Refuse anything but a callable or ``None``."""
    if value is not None and not callable(value):
        raise _refuse(owner, option, "a callable or None", value)


# -- the same checks as attrs validators ---------------------------------------

_Validator = Callable[[Any, Any, Any], None]


def positive(*, none: bool = False) -> _Validator:
    """An attrs validator: a number above 0 (or ``None`` when ``none``)."""

    def validate(instance: object, attribute: Any, value: object) -> None:
        check_positive(type(instance).__name__, attribute.name, value, none=none)

    return validate


def non_negative(instance: object, attribute: Any, value: object) -> None:
    """An attrs validator: a finite number of at least 0."""
    check_non_negative(type(instance).__name__, attribute.name, value)


def at_least(minimum: int) -> _Validator:
    """An attrs validator: an integer of at least ``minimum``."""

    def validate(instance: object, attribute: Any, value: object) -> None:
        check_at_least(type(instance).__name__, attribute.name, value, minimum)

    return validate


def fraction(instance: object, attribute: Any, value: object) -> None:
    """An attrs validator: a number from 0 to 1."""
    check_fraction(type(instance).__name__, attribute.name, value)
