"""Test web_aiohttp.py against replipoll's fake server: run it with pytest.

Put it beside web_aiohttp.py; it needs pytest and pytest-asyncio.
"""

import pytest
from aiohttp.test_utils import TestClient, TestServer
from replipoll.testing import FakeReplicate
from web_aiohttp import make_app


@pytest.mark.asyncio
async def test_the_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeReplicate() as fake:  # on 127.0.0.1
        finished = fake.add_prediction(output="a cat")
        running = fake.add_prediction(duration=60)
        monkeypatch.setenv("REPLIPOLL_BASE_URL", fake.base_url())
        monkeypatch.setenv("REPLICATE_API_TOKEN", fake.api_key)

        async with TestClient(TestServer(make_app(wait=0.5))) as http:
            answer = await http.get(f"/predictions/{finished}")
            assert answer.status == 200
            assert (await answer.json())["output"] == "a cat"

            answer = await http.get(f"/predictions/{running}")
            assert answer.status == 202
            assert answer.headers["Retry-After"] == "2"

            answer = await http.get("/predictions/no-such-prediction")
            assert answer.status == 404
