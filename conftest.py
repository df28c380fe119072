"""Run the code examples of README.md, docs/ and docstrings with Sybil.

Examples that run cannot rot.

Every ```python block of those Markdown files runs on its own, in a fresh
namespace, as ``python block.py`` would run it (``__name__`` is
``"__main__"``): a block that forgets an import, or uses a name from an
earlier block, fails. ``tests/test_docs_snippets.py`` checks the same without
running anything.

- A ``>>>`` block is checked like a doctest; its ``>>>`` lines share the
  block's namespace, and nothing else.
- A ```text block right after a python block that printed something must
  match what it printed (``...`` matches anything; whitespace is normalised).
- A block that needs a real provider is preceded by a ``% skip: next``
  comment and does not run.
- A block that uses :mod:`replipoll.redis` talks to the Redis at
  ``REDIS_URL`` (``redis://127.0.0.1:6379/0`` by default, as the block
  itself reads it); without one there it is skipped, unless
  ``REPLIPOLL_REQUIRE_REDIS=1`` (CI), when it fails.
- A ``% invisible-code-block: python`` runs in the namespace of the python
  block just before it, to drive or clean up after that block (run the test
  function it defined, remove the log handler it added). It is not shown in
  the docs, so it must never be needed by a reader.

The ``>>>`` examples in the package's docstrings run too, as doctests in the
namespace of their module.

The examples talk only to :class:`replipoll.testing.FakeReplicate` on 127.0.0.1.

With ``REPLIPOLL_TEST_FAST_PATH=1`` (``nox -s tests-speed``, the second run
of CI) everything runs on the ``speed`` extra: every event loop is uvloop's
(the tests', the examples' ``asyncio.run``, the servers' threads) and JSON is
parsed by msgspec; the run stops at once if either is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import doctest
import importlib
import io
import os
import pkgutil
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import replipoll
from sybil import Document, Example, Region, Sybil
from sybil.evaluators.doctest import DocTestEvaluator
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.abstract.doctest import DocTestStringParser
from sybil.parsers.myst import CodeBlockParser, SkipParser
from sybil.parsers.rest import DocTestParser

#: A test that fails while the machine stands still runs again (tests/stalls.py).
pytest_plugins = ["tests.stalls"]

# Import every module of the package now: Sybil forgets modules first imported
# while it reads a file, and a second copy of a module means a second copy of
# its classes (and `except replipoll.ReplipollError` that catches nothing).
# (Not __main__, which runs a command line, nor the pytest plugin, which pytest
# itself must import first to rewrite its asserts.)
_SKIP = ("__main__", "pytest_plugin")
for _module in pkgutil.walk_packages(replipoll.__path__, "replipoll."):
    if not _module.name.endswith(_SKIP):
        importlib.import_module(_module.name)

# Keys of the page's own namespace (Sybil's, shared by every example of a
# page); no example code runs in it.
_PRINTED = "_sybil_printed"  # what the last python block printed
_CURRENT = "_sybil_block"  # (block key, namespace) of the last python block
_CHECKER = doctest.OutputChecker()
_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

Evaluator = Callable[[Example], Any]


def _fresh_namespace() -> dict[str, Any]:
    # Each block runs like a script: `if __name__ == "__main__":` is true.
    return {"__name__": "__main__"}


class _PythonBlocks:
    """Yield every python block of a page, each to run in a namespace of its own.

    A plain block is one example; a ``>>>`` block is one example per ``>>>``
    line, all of them in the block's namespace. An invisible block shares
    the namespace of the visible python block before it.
    """

    def __init__(self) -> None:
        self._blocks = CodeBlockParser("python")
        self._python = PythonEvaluator()
        self._doctests = DocTestStringParser(DocTestEvaluator())

    def __call__(self, document: Document) -> Iterable[Region]:
        # The lexers run one after the other: put the blocks in page order.
        blocks = sorted(self._blocks(document), key=lambda region: region.start)
        owner: int | None = None
        for block in blocks:
            directive = str(block.lexemes.get("directive") or "")
            invisible = directive.startswith("invisible-")
            if not invisible or owner is None:
                owner = block.start
            source = block.parsed
            if source.startswith(">>>"):
                for region in self._doctests(source, document.path):
                    region.adjust(block, source)
                    region.evaluator = self._isolated(
                        region.evaluator, owner, invisible
                    )
                    yield region
            else:
                block.evaluator = self._isolated(self._python, owner, invisible)
                yield block

    @staticmethod
    def _isolated(inner: Any, key: int, invisible: bool) -> Evaluator:
        """Run ``inner`` in the namespace of block ``key``; record what it printed."""

        def evaluate(example: Example) -> Any:
            if "replipoll.redis" in str(example.parsed):
                _need_redis()
            page = example.document.namespace
            current = page.get(_CURRENT)
            if current is None or current[0] != key:
                current = page[_CURRENT] = (key, _fresh_namespace())
            example.namespace = current[1]
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                outcome = inner(example)
            printed = buffer.getvalue()
            if printed or not invisible:
                page[_PRINTED] = printed
            return outcome

        return evaluate


def _need_redis() -> None:
    """Skip (or, with REPLIPOLL_REQUIRE_REDIS=1, fail) without a Redis to use."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    reason = _REDIS.get(url)
    if url not in _REDIS:
        try:
            import redis

            connection = redis.Redis.from_url(url, socket_connect_timeout=1)
            try:
                connection.ping()
            finally:
                connection.close()
        except Exception as exc:  # ImportError, or any RedisError
            reason = f"this example needs a Redis at {url} ({exc.__class__.__name__})"
        _REDIS[url] = reason
    if reason is not None:
        if os.environ.get("REPLIPOLL_REQUIRE_REDIS") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


#: Whether a Redis answered at a URL: None if it did, else why not.
_REDIS: dict[str, str | None] = {}


def _check_printed(example: Example) -> str | None:
    """Compare a ```text block with what the python block before it printed."""
    printed = example.document.namespace.pop(_PRINTED, "")
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
        example.document.namespace.pop(_PRINTED, None)


markdown = Sybil(
    parsers=[
        _PythonBlocks(),
        CodeBlockParser("text", _check_printed),
        _OtherFences(),
        SkipParser(),
    ],
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


#: Set (to anything) for the run on the fast path.
FAST_PATH = "REPLIPOLL_TEST_FAST_PATH"


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(FAST_PATH):
        return
    from replipoll import _speedups

    if _speedups.JSON_LOADER != "msgspec" or _speedups.loop_factory() is None:
        raise pytest.UsageError(
            f"{FAST_PATH} is set, but the fast path is not in use "
            f"({_speedups.speedups()})"
        )
    import uvloop

    # A policy, not pytest-asyncio's loop factories: asyncio.run() in the
    # examples and the loops of server threads are uvloop's too. (Policies
    # are deprecated from Python 3.14 on, not gone.)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def pytest_report_header(config: pytest.Config) -> str:
    from replipoll import _speedups

    loop = "uvloop" if os.environ.get(FAST_PATH) else "asyncio's"
    return f"replipoll: JSON by {_speedups.JSON_LOADER}, {loop} event loop"
