"""The version, read from the package metadata (written once, in pyproject.toml)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Final

__all__ = ["VERSION"]


def _installed_version() -> str:
    try:
        return version("replipoll")
    except PackageNotFoundError:  # pragma: no cover - a tree never installed
        return "0+unknown"


#: This replipoll's version, e.g. ``"0.1.0"``.
VERSION: Final = _installed_version()
