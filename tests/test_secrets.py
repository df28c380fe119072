"""The API key never shows up: not in logs, errors, reprs or their chains.

A whole chaos run (and wrong-key runs, malformed answers, a gateway that
echoes the request back) is made with :data:`~tests.conftest.SECRET_KEY`
while every logger (replipoll's, aiohttp's, backoff's, asyncio's in debug
mode) records at DEBUG; then every log line, every error with its
``__cause__``/``__context__`` chain and traceback, every ``PollResult``,
``PollStats`` and the client's repr are searched for the key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterable, Iterator

import pytest
import replipoll
from replipoll import (
    AuthenticationError,
    Client,
    PollManager,
    PollResult,
    PollTimeout,
    RetryPolicy,
)
from replipoll.testing import FakeReplicate, Fault

from .conftest import SECRET_KEY
from .test_chaos import run_chaos, watched

#: A second recognisable key: the wrong one a client may be given.
WRONG_KEY = "r8_WrOnGkEy-must-not-leak-either-11d2"
LOGGERS = ("", "replipoll", "aiohttp", "backoff", "asyncio")


class Recorder(logging.Handler):
    """Keeps every record, formatted, with its arguments and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.texts: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.texts.append(self.format(record))  # exc_info and stack_info too
        self.texts.append(repr(record.args))
        self.texts.append(repr(record.msg))


@contextlib.contextmanager
def every_log_line() -> Iterator[Recorder]:
    """Route every logger to one recorder at DEBUG; restore them afterwards."""
    recorder = Recorder()
    saved = [
        (
            logging.getLogger(n),
            logging.getLogger(n).level,
            logging.getLogger(n).disabled,
        )
        for n in LOGGERS
    ]
    root = logging.getLogger()
    root.addHandler(recorder)
    for logger, _, _ in saved:
        logger.setLevel(logging.DEBUG)
        logger.disabled = False
    try:
        yield recorder
    finally:
        root.removeHandler(recorder)
        for logger, level, disabled in saved:
            logger.setLevel(level)
            logger.disabled = disabled


def exception_texts(error: BaseException) -> Iterator[str]:
    """str, repr, traceback and attributes of ``error`` and of its whole chain."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        yield str(exc)
        yield repr(exc)
        yield repr(exc.args)
        yield "".join(traceback.format_exception(exc))
        yield repr(getattr(exc, "__dict__", {}))
        if isinstance(exc, PollTimeout) and exc.last is not None:
            yield repr(exc.last)
        stack.extend(e for e in (exc.__cause__, exc.__context__) if e is not None)


def result_texts(results: Iterable[PollResult]) -> Iterator[str]:
    for result in results:
        yield repr(result)
        if result.error is not None:
            yield from exception_texts(result.error)


def assert_no_secret(texts: Iterable[str], *keys: str) -> int:
    """Fail, showing where, if a key is in any text; return how many were read."""
    count = 0
    for text in texts:
        count += 1
        for key in keys:
            assert key not in text, f"key leaked in: {text[:2000]}"
    return count


@contextlib.asynccontextmanager
async def raw_server(payload: bytes) -> AsyncIterator[str]:
    """A loopback server that answers every request with ``payload`` as is."""

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(payload)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.slow
async def test_a_whole_chaos_run_never_shows_the_key(
    secret_server: FakeReplicate,
) -> None:
    """Logs at DEBUG, errors and chains, results, stats, repr: no key anywhere."""
    with every_log_line() as logs:
        async with watched() as watch:
            run = await run_chaos(
                secret_server, 400, seed=3, watch=watch, api_key=SECRET_KEY
            )
    assert logs.count > 100  # retries were logged, so the search means something
    texts = [
        *logs.texts,
        *result_texts(run.results),
        *result_texts(run.late),
        repr(run.stats),
        repr(run.late_stats),
        run.client_repr,
    ]
    assert any("status 429" in t for t in texts)
    assert any("request id" in t for t in texts)
    # About 900 texts from replipoll's log lines and the results alone;
    # asyncio's debug lines come on top (uvloop's loop writes none).
    assert assert_no_secret(texts, SECRET_KEY) > 800


async def test_wrong_keys_never_show_either_key(secret_server: FakeReplicate) -> None:
    """401s both ways: the server's key and the rejected one stay hidden."""
    ids = secret_server.add_predictions(20)
    texts: list[str] = []
    with every_log_line() as logs:
        async with FakeReplicate(api_key="some-other-key") as other:
            other_ids = other.add_predictions(20)
            for base, key, batch in (
                (secret_server.base_url("/replicate/v1"), WRONG_KEY, ids),
                (secret_server.base_url("/v1"), WRONG_KEY, ids),
                (other.base_url("/v1"), SECRET_KEY, other_ids),
                (other.base_url("/replicate/v1"), SECRET_KEY, other_ids),
            ):
                async with Client(base_url=base, api_key=key) as client:
                    texts.append(repr(client))
                    for call in (client.get, client.cancel):
                        with pytest.raises(AuthenticationError) as info:
                            await call(batch[0])
                        assert info.value.status == 401
                        texts.extend(exception_texts(info.value))
                    async with PollManager(client) as manager:
                        results = await manager.poll_many(batch)
                        texts.append(repr(manager.stats))
                    assert all(
                        isinstance(r.error, AuthenticationError) for r in results
                    )
                    texts.extend(result_texts(results))
    texts.extend(logs.texts)
    assert_no_secret(texts, SECRET_KEY, WRONG_KEY)


@pytest.mark.parametrize(
    "payload",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 302 Found\r\nLocation: /v1/predictions/abc\r\n"
        b"Content-Length: 0\r\n\r\n",
    ],
    ids=["bad-length", "not-http", "bad-chunk", "redirect-loop"],
)
async def test_malformed_answers_keep_the_key_out_of_the_error_chain(
    payload: bytes,
) -> None:
    """aiohttp's errors hold the request headers; they must not ride along."""
    with every_log_line() as logs:
        async with (
            raw_server(payload) as base,
            Client(
                base_url=base,
                api_key=SECRET_KEY,
                retry=RetryPolicy(max_attempts=2, base_delay=0.01),
            ) as client,
        ):
            with pytest.raises(replipoll.RequestError) as info:
                await client.get("abc")
            async with PollManager(client) as manager:
                results = await manager.poll_many(["abc", "def"])
    assert all(r.error is not None for r in results)
    assert_no_secret(
        [
            *exception_texts(info.value),
            *result_texts(results),
            *logs.texts,
        ],
        SECRET_KEY,
    )


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(
            502,
            f"<html><head><title>502: upstream refused Authorization: Bearer "
            f"{SECRET_KEY}</title></head></html>",
            content_type="text/html",
        ),
        Fault.status(400, json.dumps({"detail": f"bad token {SECRET_KEY}"})),
        Fault.status(
            401,
            json.dumps(
                {"error": {"message": f"bad {SECRET_KEY} (request id: {SECRET_KEY})"}}
            ),
        ),
        Fault.status(200, f"<html><title>echo: {SECRET_KEY}</title></html>"),
        Fault.status(200, f"Bearer {SECRET_KEY}"),
    ],
    ids=["html-title", "problem-detail", "comet-envelope", "html-200", "text-200"],
)
async def test_a_gateway_that_echoes_the_key_does_not_put_it_in_errors(
    secret_server: FakeReplicate, fault: Fault
) -> None:
    """Error pages that quote the request back: the key is redacted."""
    pid = secret_server.add_prediction()
    secret_server.add_fault(fault, prediction_id=pid, times=None)
    with every_log_line() as logs:
        async with Client(
            base_url=secret_server.base_url(),
            api_key=SECRET_KEY,
            retry=RetryPolicy(max_attempts=2, base_delay=0.01),
        ) as client:
            with pytest.raises(replipoll.RequestError) as info:
                await client.get(pid)
            async with PollManager(client) as manager:
                (result,) = await manager.poll_many([pid])
    assert info.value.request_id
    assert_no_secret(
        [*exception_texts(info.value), *result_texts([result]), *logs.texts],
        SECRET_KEY,
    )


# -- an echoed key, at every offset around every cut ---------------------------

#: A key as long as Replicate's (40 characters).
LONG_KEY = "r8_EchoedKeyTest-0123456789abcdefghijklm"
#: Where replipoll shortens server text: messages at 300 characters (and a
#: DecodeError's at 300), request ids at 200.
CUTS = {"detail": 300, "comet": 300, "html": 300, "header": 200, "status": 64}


def fragments(key: str, size: int = 8) -> set[str]:
    return {key[i : i + size] for i in range(len(key) - size + 1)}


def assert_no_fragment(texts: Iterable[str], key: str) -> int:
    """Fail if any 8 consecutive characters of ``key`` are in any text."""
    pieces = fragments(key)
    count = 0
    for text in texts:
        count += 1
        found = [piece for piece in pieces if piece in text]
        assert not found, f"{found[0]!r} of the key is in: {text[:400]}"
    return count


def offsets(cut: int) -> list[int]:
    """Every offset that puts the key across, just before or just after ``cut``."""
    return [0, 1, *range(max(cut - len(LONG_KEY) - 5, 2), cut + 6)]


@pytest.mark.parametrize("where", sorted(CUTS))
async def test_a_key_echoed_at_any_offset_leaves_no_fragment_anywhere(
    where: str,
) -> None:
    """The key echoed in a message, an envelope, a page title, a request id or
    a status, at every offset around the cut replipoll makes: no 8 characters
    of it in the error (str, repr, attributes, chain), the retry warning, the
    manager's status warning and counts, or the PollResult."""
    seen = 0
    async with (
        FakeReplicate(api_key=LONG_KEY) as server,
        Client(
            base_url=server.base_url(),
            api_key=LONG_KEY,
            retry=RetryPolicy(max_attempts=2, base_delay=0, max_delay=0),
        ) as client,
    ):
        for offset in offsets(CUTS[where]):
            pid = server.add_prediction(duration=30)
            fault = Fault.echoed_key(503, offset=offset, where=where)
            server.add_fault(fault, prediction_id=pid, times=2)
            with every_log_line() as logs:
                texts: list[str] = []
                if where == "status":
                    async with PollManager(client, timeout=0.3) as manager:
                        (result,) = await manager.poll_many([pid])
                        texts.append(repr(manager.stats))
                    texts.extend(result_texts([result]))
                else:
                    with pytest.raises(replipoll.RequestError) as info:
                        await client.get(pid)
                    texts.extend(exception_texts(info.value))
            seen += assert_no_fragment([*texts, *logs.texts], LONG_KEY)
            assert logs.count >= 1  # the retry, or the undocumented status
    assert seen > 100
