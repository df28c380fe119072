from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
import replipoll
from replipoll.testing import FakeReplicate

pytest_plugins = ["replipoll.testing.pytest_plugin"]

#: A key that must never show up in any output; tests look for it.
SECRET_KEY = "r8_SeCrEtKeY-do-not-leak-7f3a9c"


@pytest.fixture
def fast_retry() -> replipoll.RetryPolicy:
    """Retries with tiny waits so tests of retry paths stay fast."""
    return replipoll.RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)


@pytest_asyncio.fixture
async def secret_server() -> AsyncIterator[FakeReplicate]:
    """A fake server whose key is :data:`SECRET_KEY`."""
    async with FakeReplicate(api_key=SECRET_KEY) as server:
        yield server


@pytest_asyncio.fixture
async def client(
    fake_replicate: FakeReplicate, fast_retry: replipoll.RetryPolicy
) -> AsyncIterator[replipoll.Client]:
    """A client of the fake server under ``/v1``, with fast retries."""
    async with replipoll.Client(
        base_url=fake_replicate.base_url(),
        api_key=fake_replicate.api_key,
        retry=fast_retry,
    ) as c:
        yield c
