"""Sphinx configuration for replipoll's documentation.

Built with warnings as errors and ``-n`` (nitpicky) by ``nox -s docs``. The
build must pass offline (CI reaches PyPI only), so intersphinx is off unless
``REPLIPOLL_DOCS_INTERSPHINX=1`` or Read the Docs (``READTHEDOCS``) says the
network is there; offline, references into other projects' docs are ignored
instead of failing the build.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import replipoll
import replipoll.testing
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

HERE = Path(__file__).parent

# -- Project -----------------------------------------------------------------

project = "replipoll"
author = "The replipoll developers"
copyright = "The replipoll developers"
release = metadata.version("replipoll")
version = release.rsplit(".", 1)[0]

# -- General -----------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

ONLINE = bool(
    os.environ.get("REPLIPOLL_DOCS_INTERSPHINX") == "1" or os.environ.get("READTHEDOCS")
)
if ONLINE:
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "aiohttp": ("https://docs.aiohttp.org/en/stable", None),
        "attrs": ("https://www.attrs.org/en/stable", None),
    }

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "conftest.py", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist", "smartquotes"]
myst_heading_anchors = 3

nitpicky = True
# Names from other projects. Those whose docs have an inventory above are
# resolved by intersphinx when online and ignored when offline (a build without
# network must still pass with -W -n); the others are always ignored.
_WITH_INVENTORY = (
    r"(aiohttp|asyncio|attrs|attr|collections|concurrent|contextlib|datetime"
    r"|enum|json|logging|os|pathlib|random|types|typing)(\..+)?"
)
_WITHOUT_INVENTORY = (
    r"(backoff|cattrs|click|multidict|pytest|pytest_asyncio|redis|web"
    r"|Redis|PubSub)(\..+)?"
)
nitpick_ignore_regex = [(r"py:.*", _WITHOUT_INVENTORY)]
if not ONLINE:
    nitpick_ignore_regex.append((r"py:.*", _WITH_INVENTORY))
# Targets that are never documented anywhere: type variables and private names.
nitpick_ignore_regex += [(r"py:.*", r"(.+\.)?_[A-Za-z].*"), (r"py:.*", r"T")]
nitpick_ignore = [
    # A private alias in PollManager's signature (a callable taking a record).
    ("py:class", "UpdateCallback"),
    # Napoleon reads "Any JSON: ..." in Prediction.output's doc comment as a type.
    ("py:class", "Any JSON"),
]

#: Pages written alongside the code they describe; index.md lists them, and
#: _drop_missing_pages() leaves out those that do not exist (yet).
OPTIONAL_PAGES = {"howto/save-outputs", "howto/resume-batch", "cli", "benchmarks"}

# -- autodoc -----------------------------------------------------------------

autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autoclass_content = "class"
python_use_unqualified_type_names = True
add_module_names = False

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML --------------------------------------------------------------------

html_theme = "furo"
html_title = f"replipoll {release}"
html_static_path: list[str] = []

# -- Consistency checks ------------------------------------------------------

log = logging.getLogger("replipoll-docs")

_PUBLIC = {
    "replipoll": replipoll.__all__,
    "replipoll.testing": replipoll.testing.__all__,
}


def _check_api_page(app: Sphinx, env: Any) -> None:
    """Warn (an error under -W) for a public name the API reference leaves out."""
    documented = set(env.get_domain("py").objects)
    for module, names in _PUBLIC.items():
        for name in names:
            if name != "__version__" and f"{module}.{name}" not in documented:
                log.warning(
                    "the API reference does not document %s.%s (it is in __all__)",
                    module,
                    name,
                )


def _public_alias(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve ``replipoll._module.Name`` to the documented ``replipoll.Name``.

    Type hints name the defining (private) module; the docs document each
    public name where users import it from.
    """
    target = node.get("reftarget", "")
    match = re.fullmatch(r"(replipoll(?:\.testing)?)\._\w+\.(\w+)(\..+)?", target)
    if node.get("refdomain") != "py" or match is None:
        return None
    package, name, rest = match.groups()
    if name not in _PUBLIC[package]:
        return None
    domain = env.get_domain("py")
    new_target = f"{package}.{name}{rest or ''}"
    return domain.resolve_xref(  # type: ignore[no-any-return]
        env,
        node["refdoc"],
        app.builder,
        node["reftype"],
        new_target,
        node,
        contnode,
    )


def _data_doc_comments(
    app: Sphinx, what: str, name: str, obj: object, options: Any, lines: list[str]
) -> None:
    """Give a re-exported constant the ``#:`` comment of its private module.

    Without this, ``autodata`` of ``replipoll.PROVIDERS`` finds no comment in
    ``replipoll/__init__.py`` and shows the docstring of ``dict`` instead.
    """
    package, _, attr = name.rpartition(".")
    if what != "data" or package not in _PUBLIC:
        return
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if not info.name.startswith("_") or info.name.startswith("__"):
            continue
        analyzer = ModuleAnalyzer.for_module(f"{package}.{info.name}")
        comment = analyzer.find_attr_docs().get(("", attr))
        if comment:
            lines[:] = [*comment, ""]
            return
    lines[:] = []


def _drop_missing_pages(app: Sphinx, docname: str, source: list[str]) -> None:
    """Remove toctree lines of optional pages whose file is not there."""
    if docname != "index":
        return
    missing = {page for page in OPTIONAL_PAGES if not (HERE / f"{page}.md").exists()}
    if missing:
        lines = source[0].splitlines(keepends=True)
        source[0] = "".join(line for line in lines if line.strip() not in missing)


def setup(app: Sphinx) -> None:
    app.connect("source-read", _drop_missing_pages)
    app.connect("autodoc-process-docstring", _data_doc_comments)
    app.connect("env-check-consistency", _check_api_page)
    app.connect("missing-reference", _public_alias)
