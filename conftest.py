"""Run the code examples of README.md, docs/ and docstrings with Sybil.

Examples that run cannot rot.

Every ```python block of those Markdown files runs, in page order, in one
namespace per page; ``>>>`` blocks are checked like doctests. A ```text block
right after a python block that printed something must match what it printed
(``...`` matches anything; whitespace is normalised). A block that needs a real
provider is preceded by a ``% skip: next`` comment and does not run.

The ``>>>`` examples in the package's docstrings run too, as doctests in the
namespace of their module.

The examples talk only to :class:`replipoll.testing.FakeReplicate` on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import io
import pkgutil
from collections.abc import Callable, Iterable
from typing import Any

import replipoll
from sybil import Document, Example, Region, Sybil
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

# Import every module of the package now: Sybil forgets modules first imported
# while it reads a file, and a second copy of a module means a second copy of
# its classes (and `except replipoll.ReplipollError` that catches nothing).
# (Not __main__, which runs a command line, nor the pytest plugin, which pytest
# itself must import first to rewrite its asserts.)
_SKIP = ("__main__", "pytest_plugin")
for _module in pkgutil.walk_packages(replipoll.__path__, "replipoll."):
    if not _module.name.endswith(_SKIP):
        importlib.import_module(_module.name)

_PRINTED = "_sybil_printed"
_CHECKER = doctest.OutputChecker()
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _capturing(
    parser: Callable[[Document], Iterable[Region]],
) -> Callable[[Document], Iterable[Region]]:
    """Wrap ``parser`` so each of its examples records what it printed."""

    def parse(document: Document) -> Iterable[Region]:
        for region in parser(document):
            inner = region.evaluator
            if inner is None:
                yield region
                continue

            def evaluate(example: Example, inner: Any = inner) -> Any:
                buffer = io.StringIO()
                with contextlib.redirect_stdout(buffer):
                    outcome = inner(example)
                example.namespace[_PRINTED] = buffer.getvalue()
                return outcome

            region.evaluator = evaluate
            yield region

    return parse


def _check_printed(example: Example) -> str | None:
    """Compare a ```text block with what the python block before it printed."""
    printed = example.namespace.pop(_PRINTED, "")
    if not printed:
        return None  # not program output: a log excerpt, a listing, ...
    want = str(example.parsed)
    if _CHECKER.check_output(want, printed, _FLAGS):
        return None
    return f"expected output:\n{want}\nprinted:\n{printed}"


class _OtherFences(CodeBlockParser):
    """Any other plain fence (console, toml, ...) ends the "printed" window."""

    language = "other"

    def __call__(self, document: Document) -> Iterable[Region]:
        for region in self.lexers(document):
            language = str(region.lexemes["arguments"])
            if language in {"python", "text"} or language.startswith("{"):
                continue
            region.parsed = region.lexemes["source"]
            region.evaluator = self.evaluate
            yield region

    def evaluate(self, example: Example) -> None:
        example.namespace.pop(_PRINTED, None)


def _parsers() -> list[Callable[[Document], Iterable[Region]]]:
    return [
        _capturing(PythonCodeBlockParser()),
        CodeBlockParser("text", _check_printed),
        _OtherFences(),
        SkipParser(),
    ]


def _setup(namespace: dict[str, Any]) -> None:
    # Each page runs like a script: `if __name__ == "__main__":` is true.
    namespace["__name__"] = "__main__"


markdown = Sybil(
    parsers=_parsers(),
    setup=_setup,
    patterns=["README.md", "docs/*.md", "docs/*/*.md"],
    excludes=["docs/_build/*", "bench/*"],
    name="docs",
)
docstrings = Sybil(
    parsers=[DocTestParser(optionflags=doctest.ELLIPSIS)],
    patterns=["replipoll/*.py", "replipoll/*/*.py"],
    excludes=["replipoll/*/__main__.py", "replipoll/testing/pytest_plugin.py"],
    name="docstrings",
)
pytest_collect_file = (markdown + docstrings).pytest()

collect_ignore = ["docs/_build", "docs/conf.py"]
