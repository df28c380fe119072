"""The web apps of docs/howto/web-apps.md answer as the page says.

The page shows ``docs/examples/web_aiohttp.py`` and ``web_fastapi.py`` whole
(MyST ``literalinclude``); these tests load those very files, serve each app
on 127.0.0.1 (aiohttp's ``TestServer``; uvicorn for FastAPI) in front of a
:class:`~replipoll.testing.FakeReplicate`, configured the way the page says
(``REPLIPOLL_BASE_URL`` and ``REPLICATE_API_TOKEN``), and ask them over real
HTTP. The FastAPI tests are skipped where fastapi or uvicorn is not installed.
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import replipoll
from aiohttp.test_utils import TestServer
from replipoll.testing import FakeReplicate, Fault

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "docs" / "examples"
PAGE = ROOT / "docs" / "howto" / "web-apps.md"

#: How long the apps under test wait for a prediction (theirs: 20 s).
WAIT = 0.5
#: The names both apps must define alike: the HTTP semantics.
SHARED = ("WAIT", "RETRY_AFTER", "REMEMBERED", "status_keeper", "running", "answer")


def load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` as the page shows it."""
    spec = importlib.util.spec_from_file_location(
        f"docs_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Service:
    """An app served on 127.0.0.1, asked through a real aiohttp session."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def get(self, prediction_id: str) -> tuple[int, Any, dict[str, str]]:
        async with self.session.get(f"{self.url}/predictions/{prediction_id}") as r:
            return r.status, await r.json(), dict(r.headers)


@pytest.fixture
def configured(
    fake_replicate: FakeReplicate, monkeypatch: pytest.MonkeyPatch
) -> FakeReplicate:
    """The environment the page describes, pointing at the fake server."""
    monkeypatch.setenv("REPLIPOLL_BASE_URL", fake_replicate.base_url())
    monkeypatch.setenv("REPLICATE_API_TOKEN", fake_replicate.api_key)
    return fake_replicate


@asynccontextmanager
async def serve_aiohttp() -> AsyncIterator[str]:
    server = TestServer(load("web_aiohttp").make_app(wait=WAIT), host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@asynccontextmanager
async def serve_fastapi() -> AsyncIterator[str]:
    pytest.importorskip("fastapi", reason="fastapi is not installed")
    uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")
    app = load("web_fastapi").make_app(wait=WAIT)
    with socket.socket() as sock:  # a free port on loopback
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, lifespan="on", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()  # raises what stopped it
                    pytest.fail("uvicorn stopped before it started")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


SERVERS = {"aiohttp": serve_aiohttp, "fastapi": serve_fastapi}


@pytest_asyncio.fixture(params=sorted(SERVERS))
async def service(
    request: pytest.FixtureRequest, configured: FakeReplicate
) -> AsyncIterator[Service]:
    """Each app of the page, started (its client and manager too) and served."""
    async with SERVERS[request.param]() as url, aiohttp.ClientSession() as session:
        yield Service(url, session)


async def test_a_finished_prediction_is_200_with_its_record(
    service: Service, configured: FakeReplicate
) -> None:
    pid = configured.add_prediction(duration=0.1, output="a cat")
    await asyncio.sleep(0.2)
    status, body, _ = await service.get(pid)
    assert status == 200
    record = replipoll.Prediction.from_json(body)
    assert (record.id, record.status, record.output) == (pid, "succeeded", "a cat")


async def test_a_running_prediction_is_202_with_its_status_and_retry_after(
    service: Service, configured: FakeReplicate
) -> None:
    pid = configured.add_prediction(duration=60)
    status, body, headers = await service.get(pid)
    assert status == 202
    assert body == {"id": pid, "status": "processing"}
    assert headers["Retry-After"] == "2"


async def test_waiters_share_one_poll_and_giving_up_leaves_it_running(
    service: Service, configured: FakeReplicate
) -> None:
    """Three requests for one id make one poll; their 202s do not stop it."""
    pid = configured.add_prediction(duration=0.5, output="done")
    answers = await asyncio.gather(*(service.get(pid) for _ in range(3)))
    assert [status for status, _, _ in answers] == [202, 202, 202]
    assert configured.stats.requests_per_id[pid] == 1
    # Nobody waits now, and the poll goes on: the manager polls it again
    # (after about 1.5 s, the default schedule).
    for _ in range(200):
        if configured.stats.requests_per_id[pid] >= 2:
            break
        await asyncio.sleep(0.05)
    assert configured.stats.requests_per_id[pid] >= 2, "the poll stopped"
    status, body, _ = await service.get(pid)
    assert (status, body["status"], body["output"]) == (200, "succeeded", "done")


async def test_an_unknown_id_is_404(service: Service) -> None:
    status, body, _ = await service.get("no-such-prediction")
    assert status == 404
    assert "no-such-prediction" in body["error"]


async def test_a_string_that_cannot_be_an_id_is_400(
    service: Service, configured: FakeReplicate
) -> None:
    status, body, _ = await service.get("not%20an%20id")
    assert status == 400
    assert body["error"].startswith("invalid prediction id")
    assert configured.stats.requests_per_id.get("not an id", 0) == 0


async def test_a_provider_failure_is_502_with_the_request_id(
    service: Service, configured: FakeReplicate
) -> None:
    pid = configured.add_prediction()
    configured.add_fault(Fault.status(403, "forbidden"), prediction_id=pid)
    status, body, _ = await service.get(pid)
    assert status == 502
    assert body["request_id"].startswith("req_")
    assert configured.api_key not in str(body)


def shared_code(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    source = path.read_text(encoding="utf-8")
    found = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found[node.name] = ast.get_source_segment(source, node) or ""
        elif isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = ast.get_source_segment(source, node) or ""
    return {name: code for name, code in found.items() if name in SHARED}


def test_both_apps_share_the_same_http_semantics() -> None:
    """The FastAPI app differs from the aiohttp one in its framework glue only."""
    aiohttp_code = shared_code(EXAMPLES / "web_aiohttp.py")
    assert set(aiohttp_code) == set(SHARED)
    assert shared_code(EXAMPLES / "web_fastapi.py") == aiohttp_code


def test_the_page_shows_the_tested_files() -> None:
    page = PAGE.read_text(encoding="utf-8")
    for name in ("web_aiohttp.py", "web_fastapi.py"):
        assert f"```{{literalinclude}} ../examples/{name}" in page
