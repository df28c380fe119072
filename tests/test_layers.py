"""The layer contract covers the whole package: no module escapes the check.

``lint-imports`` (run in CI) checks the modules named in the contract; a new
module left out of it would be checked by nobody.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import replipoll

ROOT = Path(__file__).parent.parent


def test_every_module_of_the_package_is_in_a_layer() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    contracts = config["tool"]["importlinter"]["contracts"]
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    named = {
        name.strip()
        for layer in layers["layers"]
        for name in layer.replace(":", "|").split("|")
    }
    modules = {module.name for module in pkgutil.iter_modules(replipoll.__path__)}
    assert modules == named
