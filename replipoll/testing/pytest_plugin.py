"""Pytest fixtures for :class:`~replipoll.testing.FakeReplicate`.

Enable them in a ``conftest.py``::

    pytest_plugins = ["replipoll.testing.pytest_plugin"]

then ask for ``fake_replicate`` in an async test (pytest-asyncio).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio

from ._server import FakeReplicate


@pytest_asyncio.fixture
async def fake_replicate() -> AsyncIterator[FakeReplicate]:
    """A started :class:`FakeReplicate` on ``127.0.0.1`` (free port), closed after.

    Its key is ``"test-key"``; use ``fake_replicate.base_url()`` as the base URL.
    """
    async with FakeReplicate() as server:
        yield server
