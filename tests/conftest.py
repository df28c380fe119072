from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import replipoll
from replipoll.testing import FakeReplicate

from tests.stalls import WATCH, StallWatch

pytest_plugins = ["replipoll.testing.pytest_plugin"]

#: A key that must never show up in any output; tests look for it.
SECRET_KEY = "r8_SeCrEtKeY-do-not-leak-7f3a9c"


@pytest.fixture
def stalls() -> StallWatch:
    """The session's watcher of host stalls (``tests/stalls.py`` starts it)."""
    return WATCH


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


# -- Redis -------------------------------------------------------------------
#
# The tests of replipoll.redis talk to a real Redis: a redis-server of their
# own, started once per test session on a free loopback port when the binary
# is there; otherwise the one at 127.0.0.1:6379 (or REPLIPOLL_TEST_REDIS_URL),
# each test under a key prefix of its own. Without either they are skipped,
# unless REPLIPOLL_REQUIRE_REDIS=1 (CI sets it): then they fail.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers_ping(url: str) -> bool:
    import redis

    try:
        connection = redis.Redis.from_url(url, socket_connect_timeout=1)
        try:
            return bool(connection.ping())
        finally:
            connection.close()
    except redis.RedisError:
        return False


def _no_redis(reason: str) -> None:
    if os.environ.get("REPLIPOLL_REQUIRE_REDIS") == "1":
        pytest.fail(f"REPLIPOLL_REQUIRE_REDIS=1, but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a real Redis for this test session (see above)."""
    try:
        import redis  # noqa: F401
    except ImportError:
        _no_redis("the redis package is not installed (pip install 'replipoll[redis]')")
    given = os.environ.get("REPLIPOLL_TEST_REDIS_URL")
    binary = shutil.which("redis-server")
    if given:
        if not _answers_ping(given):
            _no_redis(f"no Redis answers at REPLIPOLL_TEST_REDIS_URL={given}")
        yield given
        return
    if binary is None:
        url = "redis://127.0.0.1:6379/0"
        if not _answers_ping(url):
            _no_redis("no redis-server binary, and no Redis at 127.0.0.1:6379")
        yield url
        return
    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    server = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--logfile",
            "redis.log",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        for _ in range(200):
            if _answers_ping(url):
                break
            if server.poll() is not None:
                _no_redis(f"redis-server exited at start ({server.returncode})")
            time.sleep(0.025)
        else:
            _no_redis("redis-server did not answer within 5 s")
        yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """A real Redis's URL (shared by the session: use :func:`redis_prefix`)."""
    return redis_server_url


@pytest.fixture
def redis_prefix(redis_server_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    import redis

    prefix = f"replipoll-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    connection = redis.Redis.from_url(redis_server_url)
    try:
        keys = list(connection.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            connection.delete(*keys[start : start + 500])
    finally:
        connection.close()
