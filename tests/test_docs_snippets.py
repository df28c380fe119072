"""Every python example of the docs is a complete program, on its own.

Sybil (the root ``conftest.py``) runs each ```python block of README.md and
docs/ in a fresh namespace; this checks the same promise without running
anything, and says more precisely what is wrong: each block that is not
preceded by a ``% skip: next`` comment must compile by itself (no top-level
``await``, no ``async with`` outside a function) and use no name it does not
define, import, or get from ``builtins``. A snippet that relies on an earlier
block of its page fails here.

A ``>>>`` block is checked as the program its ``>>>`` lines make together.
"""

from __future__ import annotations

import builtins
import doctest
import re
import symtable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    page for page in (ROOT / "docs").rglob("*.md") if "_build" not in page.parts
)
PAGES = [ROOT / "README.md", *DOCS]

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>[^\n]*)$")
SKIP = re.compile(r"^[ \t]*%[ \t]*skip:[ \t]*next\b")
# Names a script has without defining them.
MODULE_NAMES = frozenset({"__name__", "__file__", "__doc__", "__builtins__"})
BUILTINS = frozenset(dir(builtins)) | MODULE_NAMES


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    source: str
    skipped: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def program(self) -> str:
        """The block as a program: the code of its ``>>>`` lines, or itself."""
        if not self.source.startswith(">>>"):  # as Sybil decides
            return self.source
        examples = doctest.DocTestParser().get_examples(self.source)
        return "".join(example.source for example in examples)


def fenced_blocks(page: Path) -> list[Block]:
    """The fenced ```python blocks of a Markdown page, skip markers noted.

    A ``% skip: next`` comment applies to the next fenced block, whatever
    its language (as in Sybil, where every fence is an example).
    """
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    skip_next = False
    i = 0
    while i < len(lines):
        if SKIP.match(lines[i]):
            skip_next = True
            i += 1
            continue
        opening = FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        language = opening["info"].strip().split(" ")[0]
        body: list[str] = []
        i += 1
        while i < len(lines):
            closing = FENCE.match(lines[i])
            if (
                closing is not None
                and closing["fence"][0] == fence[0]
                and len(closing["fence"]) >= len(fence)
                and not closing["info"].strip()
            ):
                break
            body.append(lines[i].removeprefix(indent))
            i += 1
        start = i - len(body)  # 1-based line of the opening fence
        if language == "python":
            source = "\n".join(body) + "\n"
            blocks.append(Block(page, start, source, skip_next))
        skip_next = False
        i += 1
    return blocks


def undefined_names(source: str, filename: str) -> set[str]:
    """Names ``source`` reads that it never binds, imports, or gets as a builtin."""
    top = symtable.symtable(source, filename, "exec")
    bound: set[str] = set()
    read: set[str] = set()
    tables = [top]
    while tables:
        table = tables.pop()
        tables.extend(table.get_children())
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if table is top:
                if symbol.is_assigned() or symbol.is_imported():
                    bound.add(name)
            elif symbol.is_declared_global() and symbol.is_assigned():
                bound.add(name)  # `global name` in a function that sets it
            # At module level a name is bound or it is not; below, only names
            # that resolve to the module's globals can be missing (a class
            # body's names are not visible in its methods or comprehensions).
            if symbol.is_referenced() and (table is top or symbol.is_global()):
                read.add(name)
    return read - bound - BUILTINS


BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
CHECKED = [block for block in BLOCKS if not block.skipped]


def test_the_pages_have_examples() -> None:
    """The parser finds the examples (a broken parser would check nothing)."""
    assert {page.name for page in PAGES} >= {"README.md", "index.md", "tutorial.md"}
    assert len(CHECKED) >= 30
    # Skipped examples (real providers, fragments) stay the exception.
    assert len(BLOCKS) - len(CHECKED) <= len(CHECKED) // 5


@pytest.mark.parametrize("block", CHECKED, ids=[b.where for b in CHECKED])
def test_each_example_is_a_complete_program(block: Block) -> None:
    """The block compiles alone and uses only names it defines or imports."""
    program = block.program()
    try:
        compile(program, block.where, "exec", dont_inherit=True)
    except SyntaxError as error:
        pytest.fail(f"{block.where} does not compile on its own: {error}")
    missing = undefined_names(program, block.where)
    assert not missing, (
        f"{block.where} uses {sorted(missing)} without defining or importing "
        "them: each example must be a complete program (see CONTRIBUTING.md)"
    )


@pytest.mark.parametrize(
    ("source", "missing"),
    [
        ("import asyncio\nasyncio.run(main())\n", {"main"}),
        ("async def main():\n    await asyncio.sleep(0)\n", {"asyncio"}),
        ("def f():\n    return [x for x in items]\n", {"items"}),
        # A class body's names are not visible in its comprehensions.
        ("class A:\n    y = 1\n    z = [y for _ in range(2)]\n", {"y"}),
        ("import json as j\nfrom os import path\nprint(j, path, len)\n", set()),
        ("def f(a, *, b=1):\n    global g\n    g = a + b\n\nf(1)\nprint(g)\n", set()),
        ("try:\n    pass\nexcept ValueError as e:\n    print(e)\n", set()),
        ("with open(__file__) as f:\n    print(f, undefined)\n", {"undefined"}),
    ],
)
def test_the_name_check_itself(source: str, missing: set[str]) -> None:
    """The checker catches a name from nowhere and accepts what Python binds."""
    assert undefined_names(source, "<test>") == missing


def test_a_fragment_relying_on_an_earlier_block_is_caught(tmp_path: Path) -> None:
    """The point of it all: a block using an earlier block's names fails."""
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nimport asyncio\n```\n\n"
        "```python\nasyncio.run(asyncio.sleep(0))\n```\n\n"
        "% skip: next\n\n```python\nawait client.get(pid)\n```\n\n"
        "```python\n>>> x = 1\n>>> x + y\n```\n",
        encoding="utf-8",
    )
    first, second, third, fourth = fenced_blocks(page)
    assert not undefined_names(first.program(), "first")
    assert undefined_names(second.program(), "second") == {"asyncio"}
    assert third.skipped
    assert undefined_names(fourth.program(), "fourth") == {"y"}
