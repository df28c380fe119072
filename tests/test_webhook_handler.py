"""Webhooks end to end on loopback: the fake server sends, the handler receives.

Every delivery here is real: :class:`~replipoll.testing.FakeReplicate` POSTs
signed records (signed by the ``standardwebhooks`` package, not by
replipoll) to a :func:`replipoll.webhook_handler` served on 127.0.0.1 by a
real aiohttp server, and the receiver is a small class that records what it
was handed. Forged deliveries are sent with a real ``ClientSession``.
Waits are for events, with generous bounds; no test sleeps to let
something happen, except to show that nothing more does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import replipoll
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from replipoll import ConfigurationError, Prediction, ReplayGuard, sign_webhook
from replipoll.testing import FakeClock, FakeReplicate

#: Generous: a loaded 2-core machine is slow, and nothing here should be.
PATIENCE = 15.0


async def eventually(check: Callable[[], bool]) -> None:
    """Wait until ``check()`` is true; fail after :data:`PATIENCE` seconds."""
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {PATIENCE} s")
        await asyncio.sleep(0.01)


class Inbox:
    """A webhook receiver that records every record pushed, and can fail.

    ``failures`` pushes raise before the inbox starts taking records (the
    handler then answers 500, and the sender retries).
    """

    def __init__(self, failures: int = 0) -> None:
        self.pushed: list[Prediction] = []
        self.refused = 0
        self.failures = failures

    def push(self, prediction: Prediction) -> bool:
        if self.failures:
            self.failures -= 1
            self.refused += 1
            raise RuntimeError("the database is down")
        self.pushed.append(prediction)
        return True

    async def until(self, done: Callable[[list[Prediction]], bool]) -> None:
        await eventually(lambda: done(self.pushed))

    def statuses(self, prediction_id: str) -> list[str]:
        return [str(p.status) for p in self.pushed if p.id == prediction_id]


class Receiver:
    """A web app on 127.0.0.1 with a webhook handler at ``/webhooks/replicate``."""

    def __init__(self, server: BaseTestServer, session: aiohttp.ClientSession) -> None:
        self.server = server
        self.session = session
        self.url = str(server.make_url("/webhooks/replicate"))

    async def post(self, body: bytes | str, headers: dict[str, str]) -> tuple[int, str]:
        async with self.session.post(self.url, data=body, headers=headers) as answer:
            return answer.status, await answer.text()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def serve(handler: Any) -> TestServer:
    app = web.Application()
    app.router.add_post("/webhooks/replicate", handler)
    return TestServer(app, host="127.0.0.1")


async def create(
    server: FakeReplicate, webhook: str, duration: float = 0.2, **body: Any
) -> str:
    """``POST /v1/predictions`` with a webhook, as a client would."""
    payload = {
        "version": "v1",
        "input": {"replipoll_duration": duration},
        "webhook": webhook,
        **body,
    }
    headers = {"Authorization": f"Bearer {server.api_key}"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{server.base_url()}/predictions", json=payload, headers=headers) as r,
    ):
        assert r.status == 201, await r.text()
        return str((await r.json())["id"])


async def logged(server: FakeReplicate, attempts: int) -> None:
    """Wait until the server logged that many attempts (a push happens
    while the handler answers, before the sender hears the answer)."""
    await eventually(lambda: len(server.stats.webhook_log) >= attempts)


def has_terminal(prediction_id: str) -> Callable[[list[Prediction]], bool]:
    return lambda pushed: any(p.id == prediction_id and p.is_terminal for p in pushed)


# -- real deliveries ------------------------------------------------------------


async def test_the_fake_servers_signed_deliveries_reach_the_receiver(
    session: aiohttp.ClientSession,
) -> None:
    inbox = Inbox()
    async with FakeReplicate() as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            receiver = Receiver(web_server, session)
            pid = await create(server, receiver.url, duration=0.3)
            await inbox.until(has_terminal(pid))
            await logged(server, 4)
            final = server.prediction_state(pid)
            stats = server.stats
    assert inbox.statuses(pid) == [
        "processing",
        "processing",
        "processing",
        "succeeded",
    ]
    last = inbox.pushed[-1]
    assert last.to_json() == final  # the record as a GET renders it, losslessly
    assert last.extra["webhook"] == receiver.url
    events = [(r.event, r.attempt, r.status) for r in stats.webhook_log]
    assert events == [
        ("start", 1, 204),
        ("logs", 1, 204),
        ("logs", 1, 204),
        ("completed", 1, 204),
    ]
    assert len({r.webhook_id for r in stats.webhook_log}) == 4
    assert (stats.webhooks_sent, stats.webhook_failures, stats.webhooks_lost) == (
        4,
        0,
        0,
    )


async def test_only_the_events_of_the_filter_are_sent(
    session: aiohttp.ClientSession,
) -> None:
    inbox = Inbox()
    async with FakeReplicate() as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = await create(server, url, webhook_events_filter=["completed"])
            scripted = server.add_prediction(
                duration=0.2, webhook=url, webhook_events_filter=["start"]
            )
            await inbox.until(has_terminal(pid))
            await inbox.until(lambda pushed: scripted in {p.id for p in pushed})
            await logged(server, 2)
            log = list(server.stats.webhook_log)
    assert inbox.statuses(pid) == ["succeeded"]
    assert inbox.statuses(scripted) == ["processing"]
    assert sorted(r.event for r in log) == ["completed", "start"]


async def test_a_cancel_sends_the_completed_webhook_at_once(
    session: aiohttp.ClientSession,
) -> None:
    """The fake follows its script as it changes: a prediction cancelled
    while running completes then (``canceled``), not when it would have."""
    inbox = Inbox()
    async with FakeReplicate() as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = server.add_prediction(duration=600, webhook=url)
            await inbox.until(lambda pushed: bool(pushed))  # started
            headers = {"Authorization": f"Bearer {server.api_key}"}
            cancel = f"{server.base_url()}/predictions/{pid}/cancel"
            async with session.post(cancel, headers=headers) as answer:
                assert answer.status == 200
            await inbox.until(has_terminal(pid))
    assert inbox.statuses(pid) == ["processing", "canceled"]


async def test_with_a_fake_clock_deliveries_go_out_as_the_clock_is_advanced(
    session: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    inbox = Inbox()
    async with FakeReplicate(clock=clock) as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = server.add_prediction(
                queue=5, duration=10, webhook=url, webhook_events_filter=["completed"]
            )
            await asyncio.sleep(0.3)  # real time passes; the clock does not
            assert inbox.pushed == []
            clock.advance(15)
            await inbox.until(has_terminal(pid))
            await logged(server, 1)
    (record,) = server.stats.webhook_log
    assert record.time == 15


# -- refusals -------------------------------------------------------------------


async def test_a_forged_delivery_is_refused_with_401_and_logged(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    secret = "whsec_" + base64.b64encode(b"the-real-secret-of-this-account").decode()
    forger = "whsec_" + base64.b64encode(b"a-guess-by-someone-else-entirely").decode()
    body = json.dumps({"id": "p1", "status": "succeeded", "output": "evil"})
    caplog.set_level(logging.WARNING, logger="replipoll")
    async with serve(replipoll.webhook_handler(inbox, secret)) as web_server:
        receiver = Receiver(web_server, session)
        answers = [
            await receiver.post(body, sign_webhook(body, forger)),
            await receiver.post(body, {}),
            await receiver.post(
                body, {**sign_webhook(body, secret), "webhook-id": "x"}
            ),
        ]
    assert answers == [
        (401, "bad-signature"),
        (401, "missing-header"),
        (401, "bad-signature"),
    ]
    assert inbox.pushed == []
    refusals = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refusals) == 3
    for record in refusals:
        text = record.getMessage()
        assert "401" in text
        for part in (secret, secret[6:], forger, forger[6:]):
            assert part not in text


async def test_a_stale_delivery_is_refused(session: aiohttp.ClientSession) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = '{"id": "p1", "status": "succeeded"}'
    old = sign_webhook(body, secret, timestamp=time.time() - 301)
    inbox = Inbox()
    async with serve(replipoll.webhook_handler(inbox, secret)) as web_server:
        assert await Receiver(web_server, session).post(body, old) == (401, "stale")


async def test_a_signed_body_that_is_no_prediction_is_a_400(
    session: aiohttp.ClientSession,
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    inbox = Inbox()
    async with serve(replipoll.webhook_handler(inbox, secret)) as web_server:
        receiver = Receiver(web_server, session)
        for body in ("[]", '{"status": "succeeded"}', "<html>"):
            answer = await receiver.post(body, sign_webhook(body, secret))
            assert answer == (400, "bad-body")
    assert inbox.pushed == []


async def test_a_body_over_the_limit_is_a_413_unread(
    session: aiohttp.ClientSession,
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = json.dumps({"id": "p1", "status": "succeeded", "output": "x" * 5000})
    inbox = Inbox()
    handler = replipoll.webhook_handler(inbox, secret, max_body_size=4096)
    async with serve(handler) as web_server:
        receiver = Receiver(web_server, session)
        assert await receiver.post(body, sign_webhook(body, secret)) == (
            413,
            "too-large",
        )

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length
            for start in range(0, len(body), 1000):
                yield body[start : start + 1000].encode()

        async with session.post(
            receiver.url, data=chunked(), headers=sign_webhook(body, secret)
        ) as answer:
            assert answer.status == 413
    assert inbox.pushed == []


async def test_a_replay_is_answered_204_and_not_pushed_again(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2xx tells a Standard Webhooks sender to stop: a duplicate needs no
    retry. The record is handed over once."""
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = '{"id": "p1", "status": "succeeded"}'
    headers = sign_webhook(body, secret)
    inbox = Inbox()
    caplog.set_level(logging.INFO, logger="replipoll")
    async with serve(replipoll.webhook_handler(inbox, secret)) as web_server:
        receiver = Receiver(web_server, session)
        assert await receiver.post(body, headers) == (204, "")
        assert await receiver.post(body, headers) == (204, "")
    assert [p.id for p in inbox.pushed] == ["p1"]
    assert any("handled already" in r.getMessage() for r in caplog.records)


async def test_the_senders_duplicates_are_pushed_once(
    session: aiohttp.ClientSession,
) -> None:
    inbox = Inbox()
    async with FakeReplicate(webhook_duplicates=1.0) as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = await create(
                server, url, webhook_events_filter=["start", "completed"]
            )
            await inbox.until(has_terminal(pid))
            await logged(server, 4)
            stats = server.stats
    assert inbox.statuses(pid) == ["processing", "succeeded"]
    assert stats.webhooks_sent == 4
    assert [r.event for r in stats.webhook_log] == [
        "start",
        "start",
        "completed",
        "completed",
    ]


async def test_a_shared_guard_refuses_a_delivery_another_handler_took(
    session: aiohttp.ClientSession,
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    guard = ReplayGuard()
    inbox = Inbox()
    body = '{"id": "p1", "status": "succeeded"}'
    headers = sign_webhook(body, secret)
    first = serve(replipoll.webhook_handler(inbox, secret, replays=guard))
    second = serve(replipoll.webhook_handler(inbox, secret, replays=guard))
    async with first as one, second as two:
        assert await Receiver(one, session).post(body, headers) == (204, "")
        assert await Receiver(two, session).post(body, headers) == (204, "")
    assert len(inbox.pushed) == 1
    assert len(guard) == 1


# -- loss and retries -----------------------------------------------------------


async def test_a_lost_webhook_is_not_delivered(session: aiohttp.ClientSession) -> None:
    inbox = Inbox()
    async with FakeReplicate(webhook_loss=1.0) as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = await create(server, url, duration=0.1)
            await eventually(lambda: server.stats.webhooks_lost == 4)
            assert server.prediction_state(pid)["status"] == "succeeded"
            await asyncio.sleep(0.3)  # and nothing comes late
            stats = server.stats
    assert inbox.pushed == []
    assert (stats.webhooks_lost, stats.webhooks_sent) == (4, 0)
    assert list(stats.webhook_log) == []


async def test_the_completed_webhook_is_retried_after_a_500_until_taken(
    session: aiohttp.ClientSession,
) -> None:
    """The receiver fails twice (the handler answers 500 and remembers
    nothing); the retries, with the same webhook-id, get the record in."""
    inbox = Inbox(failures=2)
    async with FakeReplicate(webhook_retry_window=30) as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = await create(server, url, webhook_events_filter=["completed"])
            await inbox.until(has_terminal(pid))
            await logged(server, 3)
            log = list(server.stats.webhook_log)
            failures = server.stats.webhook_failures
    assert [(r.attempt, r.status) for r in log] == [(1, 500), (2, 500), (3, 204)]
    assert len({r.webhook_id for r in log}) == 1
    assert failures == 2
    assert inbox.statuses(pid) == ["succeeded"]


async def test_retries_stop_once_the_window_has_passed(
    session: aiohttp.ClientSession,
) -> None:
    """A receiver that never takes the record: the completed webhook is
    retried until ``webhook_retry_window`` after completion, then never
    again (Replicate's window is about a minute). Other events are sent
    once, whatever the answer."""
    inbox = Inbox(failures=1_000)
    async with FakeReplicate(webhook_retry_window=0.8) as server:
        handler = replipoll.webhook_handler(inbox, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = await create(server, url, duration=0.1)
            completed = server.timeline(pid).completed
            await eventually(lambda: server.now() > completed + 0.8 + 1.0)
            seen = list(server.stats.webhook_log)
            await asyncio.sleep(1.0)
            later = list(server.stats.webhook_log)
    assert later == seen  # nothing after the window
    final = [r for r in seen if r.event == "completed"]
    assert [r.attempt for r in final] == list(range(1, len(final) + 1))
    # At about 0, 0.1, 0.3 and 0.7 s after completion; the next would be at
    # 1.5 s, after the window.
    assert 3 <= len(final) <= 5
    assert all(r.status == 500 for r in final)
    others = [r for r in seen if r.event != "completed"]
    assert [(r.event, r.attempt, r.status) for r in others] == [
        ("start", 1, 500),
        ("logs", 1, 500),
        ("logs", 1, 500),
    ]


async def test_a_webhook_off_this_machine_is_never_called() -> None:
    async with FakeReplicate() as server:
        with pytest.raises(ValueError, match="on this machine"):
            server.add_prediction(webhook="https://example.com/hook")
        pid = await create(server, "https://example.com/hook", duration=0)
        await eventually(lambda: server.stats.webhooks_refused == 2)  # start, end
        await asyncio.sleep(0.2)
        stats = server.stats
    assert server.prediction_state(pid)["status"] == "succeeded"
    assert stats.webhooks_sent == 0
    assert list(stats.webhook_log) == []


# -- receivers and configuration ------------------------------------------------


async def test_plain_and_async_functions_are_receivers_too(
    session: aiohttp.ClientSession,
) -> None:
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    plain: list[str] = []
    awaited: list[str] = []

    async def take(prediction: Prediction) -> None:
        await asyncio.sleep(0)
        awaited.append(prediction.id)

    body = '{"id": "p1", "status": "succeeded"}'
    async with (
        serve(replipoll.webhook_handler(lambda p: plain.append(p.id), secret)) as a,
        serve(replipoll.webhook_handler(take, secret)) as b,
    ):
        assert await Receiver(a, session).post(body, sign_webhook(body, secret)) == (
            204,
            "",
        )
        assert await Receiver(b, session).post(body, sign_webhook(body, secret)) == (
            204,
            "",
        )
    assert (plain, awaited) == (["p1"], ["p1"])


def test_a_bad_secret_or_receiver_fails_when_the_app_is_built() -> None:
    with pytest.raises(ConfigurationError) as caught:
        replipoll.webhook_handler(Inbox(), "r8_an-api-token-by-mistake")
    assert caught.value.option == "secret"
    assert "r8_an-api-token-by-mistake" not in str(caught.value)
    with pytest.raises(ConfigurationError) as caught:
        replipoll.webhook_handler(object(), "whsec_" + "a" * 32)  # type: ignore[arg-type]
    assert caught.value.option == "receiver"
    with pytest.raises(ConfigurationError) as caught:
        replipoll.webhook_handler(
            Inbox(), "whsec_" + "a" * 32, replays=ReplayGuard(tolerance=10)
        )
    assert caught.value.option == "replays"


# -- with a real PollManager ----------------------------------------------------


async def test_a_webhook_resolves_the_managers_wait_without_more_polling(
    session: aiohttp.ClientSession,
) -> None:
    """The manager's first GET sees the prediction running; the webhook,
    pushed by the handler, ends the wait. No safety poll was needed (the
    first is 30 s away)."""
    async with (
        FakeReplicate() as server,
        replipoll.Client(base_url=server.base_url(), api_key=server.api_key) as client,
        replipoll.PollManager(client, safety_interval=30) as manager,
    ):
        handler = replipoll.webhook_handler(manager, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = server.add_prediction(
                duration=0.5, webhook=url, webhook_events_filter=["completed"]
            )
            async with asyncio.timeout(PATIENCE):
                done = await manager.submit(pid, webhook=True)
            polls = server.stats.requests_per_id[pid]
            pushed = manager.stats.pushed
            final = server.prediction_state(pid)
    assert done.status == replipoll.Status.SUCCEEDED
    assert done.to_json() == final
    assert (polls, pushed) == (1, 1)


async def test_a_lost_webhook_costs_delay_never_the_result(
    session: aiohttp.ClientSession,
) -> None:
    """Every webhook is lost: the manager's safety poll finds the result."""
    async with (
        FakeReplicate(webhook_loss=1.0) as server,
        replipoll.Client(base_url=server.base_url(), api_key=server.api_key) as client,
        replipoll.PollManager(client, safety_interval=0.5) as manager,
    ):
        handler = replipoll.webhook_handler(manager, server.webhook_secret)
        async with serve(handler) as web_server:
            url = Receiver(web_server, session).url
            pid = server.add_prediction(duration=0.2, webhook=url)
            async with asyncio.timeout(PATIENCE):
                done = await manager.submit(pid, webhook=True)
            lost = server.stats.webhooks_lost
    assert done.status == replipoll.Status.SUCCEEDED
    assert manager.stats.pushed == 0
    assert lost >= 1
