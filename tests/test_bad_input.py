"""Hostile input over real HTTP: ids, bodies, headers and base URLs.

Each input gets a clear typed error or a safe default, never an unhandled
exception, a hang, or a request to a path nobody meant. Unlike the pure tests
in ``test_sansio.py`` these go through the client (and the manager) to
:class:`~replipoll.testing.FakeReplicate`, and check what the server saw.
Hypothesis example counts are modest: every example is a real request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import pytest
import pytest_asyncio
import yarl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from replipoll import (
    BadRequestError,
    Client,
    ConfigurationError,
    DecodeError,
    InvalidPredictionIdError,
    NotFoundError,
    PollManager,
    Prediction,
    RateLimitedError,
    RetryPolicy,
)
from replipoll._sansio import decode_prediction, prediction_url
from replipoll.testing import FakeReplicate, Fault

from tests.stalls import WATCH

PREFIX = "/v1"
#: Real requests per example: keep the examples few.
NETWORK = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest_asyncio.fixture
async def one_try(fake_replicate: FakeReplicate) -> AsyncIterator[Client]:
    """A client that makes exactly one attempt: each answer is seen as it is."""
    async with Client(
        base_url=fake_replicate.base_url(PREFIX),
        api_key=fake_replicate.api_key,
        retry=RetryPolicy(max_attempts=1),
    ) as client:
        yield client


# -- ids ---------------------------------------------------------------------

NASTY_IDS = [
    "../etc/passwd",
    "..",
    ".",
    "%2F",
    "a%2Fb",
    "%2e%2e",
    "a b",
    " a",
    "a\x00b",
    "\x00",
    "\ud800",
    "x" * 10_000,
    "a/b",
    "a\\b",
    "a?b=1",
    "a#b",
    "a;b",
    "a&b",
    "{",
    "a{id}b",
    "+",
    "~",
    "%",
    "é",
    "日本語",
    "\U0001f600",
    "\u202eevil",
    "\ufeffbom",
    "a\u00a0b",
    "\uff0f",  # a fullwidth solidus is not a path separator
    "gm3qorzdhgbfurvjtvhg6dckhu",
    "0b1c2d3e-aaaa-bbbb-cccc-1234567890ab",
]

ids = st.one_of(
    st.sampled_from(NASTY_IDS),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=12),
    st.builds(lambda n: "x" * n, st.integers(200, 12_000)),
)


def _script(server: FakeReplicate, pid: str) -> bool:
    """Add a prediction with this id if the server can hold it; say if it did."""
    if not pid.isprintable() or "/" in pid:
        return False  # not servable (the client refuses these anyway)
    try:
        server.prediction_state(pid)
    except KeyError:
        pass
    else:
        return True
    try:
        server.add_prediction(pid, output="ok")
    except ValueError:  # the fake server refuses ids with "/"
        return False
    return True


def _check_one_request(
    server: FakeReplicate, before: int, pid: str, suffix: str = ""
) -> None:
    """Exactly one request arrived, for exactly ``{prefix}/predictions/{pid}``."""
    stats = server.stats
    assert stats.total_requests == before + 1
    last = stats.request_log[-1]
    # request_log holds the decoded path: the id came back whole...
    assert last.path == f"{PREFIX}/predictions/{pid}{suffix}"
    # ...and the router matched it as the one {id} segment.
    counted = stats.cancel_requests if suffix else stats.requests_per_id
    assert counted[pid] >= 1


async def _get_and_cancel(server: FakeReplicate, client: Client, pid: str) -> None:
    """Client.get and Client.cancel: a typed error, or one request to one segment."""
    known = _script(server, pid)
    for call, suffix in ((client.get, ""), (client.cancel, "/cancel")):
        before = server.stats.total_requests
        outcome: Prediction | Exception
        try:
            outcome = await call(pid)
        except (InvalidPredictionIdError, NotFoundError) as exc:
            outcome = exc
        if isinstance(outcome, InvalidPredictionIdError):
            assert "invalid prediction id" in str(outcome)
            assert len(str(outcome)) < 200  # a 10 kB id does not flood logs
            assert server.stats.total_requests == before  # nothing was sent
            continue
        if isinstance(outcome, NotFoundError):
            assert not known
        else:
            assert known
            assert outcome.id == pid
        _check_one_request(server, before, pid, suffix)


@pytest.mark.parametrize("pid", NASTY_IDS, ids=lambda pid: repr(pid[:20]))
async def test_nasty_ids_are_rejected_or_reach_exactly_their_own_path(
    fake_replicate: FakeReplicate, one_try: Client, pid: str
) -> None:
    await _get_and_cancel(fake_replicate, one_try, pid)


@NETWORK
@given(pid=ids)
async def test_any_id_is_rejected_or_reaches_exactly_its_own_path(
    fake_replicate: FakeReplicate, one_try: Client, pid: str
) -> None:
    await _get_and_cancel(fake_replicate, one_try, pid)


@settings(NETWORK, max_examples=25)
@given(batch=st.lists(ids, min_size=1, max_size=6))
async def test_any_id_through_the_manager_gets_one_result_and_its_own_path(
    fake_replicate: FakeReplicate, one_try: Client, batch: list[str]
) -> None:
    """PollManager.submit and poll_many: a typed error per bad id, never a crash."""
    server = fake_replicate
    known = {pid for pid in batch if _script(server, pid)}
    async with PollManager(one_try) as manager:
        for pid in batch:
            try:
                future = manager.submit(pid)
            except InvalidPredictionIdError:
                continue
            try:
                assert (await future).id == pid
            except NotFoundError:
                assert pid not in known
        server.reset_stats()
        results = await asyncio.wait_for(manager.poll_many(batch), 10)
    assert [r.id for r in results] == batch
    paths = {r.path for r in server.stats.request_log}
    for result in results:
        if isinstance(result.error, InvalidPredictionIdError):
            continue
        assert f"{PREFIX}/predictions/{result.id}" in paths
        if result.id in known:
            assert result.succeeded
        else:
            assert isinstance(result.error, NotFoundError)
    assert paths <= {f"{PREFIX}/predictions/{pid}" for pid in batch}


# -- response bodies ---------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = (
    "id",
    "status",
    "model",
    "version",
    "input",
    "output",
    "logs",
    "error",
    "created_at",
    "started_at",
    "completed_at",
    "data_removed",
    "urls",
    "metrics",
    "source",
    "deployment",
    "deadline",
)
plausible = st.sampled_from(
    [
        "abc",
        "succeeded",
        "processing",
        "",
        "2024-11-06T17:11:57.625316416Z",
        "2023-09-08T16:19:34Z",
        "not a date",
        "99999-01-01T00:00:00Z",
        0,
        -1,
        1.5,
        1e308,
        True,
        [],
        {},
        {"get": 1},
        {"predict_time": "fast"},
        {"image_count": 2.5},
    ]
)
near_predictions = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=10), json_values)},
    optional={name: st.one_of(plausible, json_values) for name in FIELDS[1:]},
)


def _deep(depth: int, leaf: str = "x") -> str:
    return "[" * depth + json.dumps(leaf) + "]" * depth


def _body(field: str, raw: str) -> bytes:
    return f'{{"id":"abc","status":"succeeded","{field}":{raw}}}'.encode()


ODD_BODIES = [
    b"",
    b"null",
    b"[]",
    b'"a string"',
    b"\xff\xfe not utf-8",
    b"\xef\xbb\xbf{}",  # a byte-order mark
    b'{"id":"abc","status":"succeeded"',  # cut off
    b"{" * 100_000,
    b"1" * 5000,  # more digits than Python converts
    b'{"id":"abc","status":"succeeded","output":NaN,"metrics":{"predict_time":Infinity}}',
    _body("output", json.dumps("x" * 2_000_000)),  # a 2 MB string
    _body("logs", json.dumps("é" * 300_000)),
    _body("output", _deep(200)),
    _body("output", _deep(5000)),
    _body("error", _deep(600)),
    _body("error", _deep(990)),
    _body("input", _deep(990)),
    _body("metrics", '{"extra":' + _deep(990) + "}"),
    _body("urls", '{"get":' + _deep(990) + "}"),
]


async def _serve(server: FakeReplicate, client: Client, body: bytes) -> None:
    """Serve ``body`` with a 200 and check what the client makes of it."""
    pid = "abc"
    server.add_fault(
        Fault.status(200, body, content_type="application/json"),
        prediction_id=pid,
    )
    outcome: Prediction | DecodeError
    try:
        outcome = await client.get(pid)
    except DecodeError as exc:
        outcome = exc
    repr(outcome)
    if isinstance(outcome, DecodeError):
        assert outcome.status == 200
        assert outcome.request_id is not None
        assert outcome.request_id.startswith("req_")
        assert len(str(outcome)) < 1000


@pytest.mark.parametrize("body", ODD_BODIES, ids=lambda b: repr(b[:30]))
async def test_odd_bodies_decode_or_raise_decode_error(
    fake_replicate: FakeReplicate, one_try: Client, body: bytes
) -> None:
    """Huge strings, deep nesting, bad bytes: a Prediction or a DecodeError."""
    await _serve(fake_replicate, one_try, body)


@NETWORK
@given(value=st.one_of(json_values, near_predictions))
async def test_any_json_body_decodes_or_raises_decode_error(
    fake_replicate: FakeReplicate, one_try: Client, value: Any
) -> None:
    """Arbitrary JSON and wrong-typed fields: a Prediction or a DecodeError."""
    await _serve(fake_replicate, one_try, json.dumps(value).encode())


def _at_stack_depth(frames: int, call: Callable[[], object]) -> object:
    return call() if frames == 0 else _at_stack_depth(frames - 1, call)


def test_nesting_near_the_recursion_limit_is_a_decode_error_at_any_depth() -> None:
    """json.loads may accept what a field hook cannot handle a few frames on."""
    for frames in range(0, 40, 3):
        for depth in range(900, 1000, 4):
            body = _body("error", _deep(depth))
            with contextlib.suppress(DecodeError):
                _at_stack_depth(
                    frames, functools.partial(decode_prediction, 200, {}, body)
                )


async def test_a_deeply_nested_output_survives_to_json(
    fake_replicate: FakeReplicate, one_try: Client
) -> None:
    """What the decoder accepts, Prediction.to_json (the CLI's result log) takes."""
    pid = fake_replicate.add_prediction(id="abc")
    for depth in (50, 400, 800):
        fake_replicate.add_fault(
            Fault.status(200, _body("output", _deep(depth))), prediction_id=pid
        )
        prediction = await one_try.get(pid)
        data = prediction.to_json()
        assert Prediction.from_json(data) == prediction


async def test_a_body_the_manager_cannot_decode_ends_that_id_only(
    fake_replicate: FakeReplicate, one_try: Client
) -> None:
    """In a batch, an undecodable answer is that id's DecodeError; others go on."""
    good = fake_replicate.add_prediction()
    bad = fake_replicate.add_prediction(id="abc")
    fake_replicate.add_fault(
        Fault.status(200, _body("error", _deep(990))), prediction_id=bad, times=None
    )
    fake_replicate.add_fault(
        Fault.status(200, b'{"id": 1, "status": {}}'), prediction_id=good
    )
    async with PollManager(one_try) as manager:
        first, second = await manager.poll_many([good, bad])
    assert isinstance(first.error, DecodeError)
    assert first.error.field == "id"
    assert isinstance(second.error, DecodeError)


# -- Retry-After -------------------------------------------------------------

CAP = 0.5  # RetryPolicy.max_retry_after in these tests: longer is "huge"


def _date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(time.time() + offset, UTC), True)


class Took(NamedTuple):
    """When a call began and ended (monotonic seconds)."""

    start: float
    end: float

    @property
    def wall(self) -> float:
        """The time it took: what a wait it made lasted at least."""
        return self.end - self.start

    @property
    def ran(self) -> float:
        """The time it took, without the stalls of the machine: for upper bounds."""
        return WATCH.ran(self.start, self.end)


async def _throttle_once(
    server: FakeReplicate, value: str, body: bytes = b'{"detail":"slow down"}'
) -> tuple[Prediction | RateLimitedError, Took]:
    pid = server.add_prediction()
    server.add_fault(
        Fault.status(429, body, headers={"Retry-After": value}), prediction_id=pid
    )
    async with Client(
        base_url=server.base_url(),
        api_key=server.api_key,
        retry=RetryPolicy(max_attempts=3, base_delay=0.01, max_retry_after=CAP),
    ) as client:
        start = time.monotonic()
        try:
            async with asyncio.timeout(5):  # never a hang
                outcome: Prediction | RateLimitedError = await client.get(pid)
        except RateLimitedError as error:
            outcome = error
        return outcome, Took(start, time.monotonic())


@pytest.mark.parametrize(
    ("value", "waits"),
    [
        ("-5", 0.0),
        ("-0.5", 0.0),
        ("0", 0.0),
        ("0.2", 0.2),
        (" 0.2 ", 0.2),
        ("garbage", 0.0),
        ("", 0.0),
        ("nan", 0.0),
        ("-inf", 0.0),
        ("0x10", 0.0),
        ("1e9", 0.0),  # not delta-seconds (digits only): garbage, not a billion
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past
        (_date(-3600), 0.0),
        (_date(0.3), 0.0),  # a second's resolution: anywhere in [0, 0.3]
        ("Mon, 99 Foo 2024 25:61:61 GMT", 0.0),
    ],
)
async def test_a_sane_retry_after_is_waited_then_retried(
    fake_replicate: FakeReplicate, value: str, waits: float
) -> None:
    """Negative, garbage, past dates: retried after a short wait, never a crash."""
    outcome, elapsed = await _throttle_once(fake_replicate, value)
    assert isinstance(outcome, Prediction)
    assert waits * 0.9 <= elapsed.wall
    assert elapsed.ran <= CAP + 1.0
    assert fake_replicate.stats.total_requests == 2


@pytest.mark.parametrize(
    "value",
    [
        "3600",
        "9" * 400,
        _date(86_400 * 365),
        "Fri, 31 Dec 9999 23:59:59 GMT",
    ],
)
async def test_a_huge_retry_after_is_a_rate_limited_error_at_once(
    fake_replicate: FakeReplicate, value: str
) -> None:
    """Longer than max_retry_after: RateLimitedError with it, after one request."""
    outcome, elapsed = await _throttle_once(fake_replicate, value)
    assert isinstance(outcome, RateLimitedError), outcome
    assert outcome.retry_after is not None
    assert outcome.retry_after > CAP
    assert outcome.attempts == 1
    assert outcome.status == 429
    assert outcome.request_id
    assert elapsed.ran < 1.0
    assert fake_replicate.stats.total_requests == 1


header_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-(10**30), 10**30).map(str),
    st.text(
        alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40
    ),
    st.builds(_date, st.floats(-1e9, 1e9)),
)


@settings(NETWORK, max_examples=30)
@given(value=header_values)
@example(value="1" * 400)
async def test_any_retry_after_is_retried_sanely_or_raised(
    fake_replicate: FakeReplicate, value: str
) -> None:
    """Whatever the header says: a retry within the cap, or RateLimitedError."""
    outcome, elapsed = await _throttle_once(fake_replicate, value)
    if isinstance(outcome, RateLimitedError):
        assert outcome.retry_after is not None
        assert outcome.retry_after > CAP
        assert elapsed.ran < 1.0
    else:
        assert elapsed.ran <= CAP + 1.0


async def test_retry_after_in_the_body_that_is_huge_or_nonsense(
    fake_replicate: FakeReplicate,
) -> None:
    """A body's retry_after: negative or a string is ignored, huge is raised."""
    for body, huge in [
        (b'{"detail":"x","retry_after":-3}', False),
        (b'{"detail":"x","retry_after":"soon"}', False),
        (b'{"detail":"x","retry_after":true}', False),
        (b'{"detail":"x","retry_after":1e300}', True),
        (b'{"detail":"resets in ~99999999999999999999s"}', True),
    ]:
        outcome, _ = await _throttle_once(fake_replicate, "", body)
        assert isinstance(outcome, RateLimitedError) is huge, body


# -- redirects ---------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_an_error_not_a_request_elsewhere(
    fake_replicate: FakeReplicate, one_try: Client, status: int
) -> None:
    """A gateway's 3xx is never followed: no request to a path nobody chose."""
    pid, other = fake_replicate.add_predictions(2)
    target = f"{PREFIX}/predictions/{other}"
    fault = Fault.status(status, headers={"Location": target})
    fake_replicate.add_fault(fault, prediction_id=pid, times=2)
    for call in (one_try.get, one_try.cancel):
        with pytest.raises(BadRequestError) as info:
            await call(pid)
        assert info.value.status == status
        assert info.value.request_id
    paths = [r.path for r in fake_replicate.stats.request_log]
    assert paths == [
        f"{PREFIX}/predictions/{pid}",
        f"{PREFIX}/predictions/{pid}/cancel",
    ]
    assert fake_replicate.prediction_state(other)["status"] == "succeeded"


# -- base URLs ---------------------------------------------------------------

BAD_BASES = [
    "api.replicate.com/v1",  # no scheme
    "localhost:8080/v1",
    "//api.replicate.com/v1",
    "https://api.replicate.com/v1?key=abc",
    "https://api.replicate.com/v1?",  # an empty query still swallows the path
    "https://api.replicate.com/v1#",
    "https://api.replicate.com/v1#/x",
    "https://user:s3cr3t@api.replicate.com/v1",
    "https://t0ken@api.replicate.com/v1",
    "https://:s3cr3t@api.replicate.com/v1",
    "https://api.replicate.com/v1/../admin",
    "https://api.replicate.com/./v1",
    "https://api.replicate.com/v1/%2e%2e/admin",
    "https://api .replicate.com/v1",
    "https://api.replicate.com/v 1",
    "https://api.rep\nlicate.com/v1",
    "https://api.replicate.com/v\t1",
    "https://api.replicate.com\\@evil.example/v1",
    "https://api.replicate.com/v1\\..\\admin",
    "https://api.replicate.com:99999/v1",
    "ftp://api.replicate.com/v1",
    "file:///etc/passwd",
    "https://",
    "",
    "   ",
]


@pytest.mark.parametrize("base", BAD_BASES)
def test_bad_base_urls_are_configuration_errors(base: str) -> None:
    """No scheme, a query, a fragment, credentials, dot segments, spaces: refused."""
    with pytest.raises(ConfigurationError) as info:
        Client(base_url=base, api_key="k")
    for secret in ("s3cr3t", "t0ken", "key=abc"):
        assert secret not in str(info.value)


def _where(base: str, pid: str = "abc") -> yarl.URL:
    client = Client(base_url=base, api_key="k")
    return yarl.URL(prediction_url(client.base_url, pid))


base_urls = st.builds(
    lambda scheme, auth, host, port, path, tail: (
        f"{scheme}{auth}{host}{port}{path}{tail}"
    ),
    st.sampled_from(["https://", "http://", "HTTPS://", "", "ftp://", "https:/"]),
    st.sampled_from(["", "", "", "u:p@", "u@", "@"]),
    st.sampled_from(["api.example.com", "127.0.0.1", "[::1]", "xn--bcher-kva.ch", ""]),
    st.sampled_from(["", "", ":8080", ":0", ":x", ":65536"]),
    st.text(max_size=30).map(lambda s: "/" + s),
    st.sampled_from(["", "", "/", "?", "?a=1", "#", "#x", "/..", "/."]),
)


@settings(max_examples=300, deadline=None)
@given(base=st.one_of(base_urls, st.text(max_size=40)))
def test_any_base_url_is_refused_or_requests_land_under_it(base: str) -> None:
    """An accepted base URL puts every request at {base}/predictions/{id}."""
    try:
        url = _where(base)
    except ConfigurationError:
        return
    parsed = yarl.URL(base.strip())
    segments = unquote(urlsplit(base.strip()).path).split("/")
    assert "." not in segments
    assert ".." not in segments
    assert url.scheme == parsed.scheme.lower()
    assert url.host == parsed.host
    assert url.port == parsed.port
    assert url.user is None
    assert url.password is None
    assert not url.query_string
    assert not url.fragment
    assert url.raw_path == parsed.raw_path.rstrip("/") + "/predictions/abc"


@pytest.mark.parametrize("suffix", ["?", "#", "?x=1", "/../v1", " /v1", "/v\t1"])
async def test_bad_base_urls_never_reach_the_server(
    fake_replicate: FakeReplicate, suffix: str
) -> None:
    """Refused at construction: the server sees nothing at all."""
    with pytest.raises(ConfigurationError):
        Client(base_url=fake_replicate.url + "/v1" + suffix, api_key="k")
    assert fake_replicate.stats.total_requests == 0


@pytest.mark.parametrize("base", ["/v1/", "/v1//", "/replicate/v1"])
async def test_good_base_urls_reach_the_server(
    fake_replicate: FakeReplicate, base: str
) -> None:
    pid = fake_replicate.add_prediction()
    async with Client(
        base_url=fake_replicate.url + base, api_key=fake_replicate.api_key
    ) as client:
        assert (await client.get(pid)).id == pid
    (record,) = fake_replicate.stats.request_log
    assert record.path == f"{base.rstrip('/')}/predictions/{pid}"


def test_unusable_keys_are_configuration_errors() -> None:
    for key in ("a\r\nX-Evil: 1", "a\x00b", "\u2028"):
        with pytest.raises(ConfigurationError) as info:
            Client(base_url="https://api.example.com/v1", api_key=key)
        assert key not in str(info.value)
