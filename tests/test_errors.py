"""The exception tree: messages users read, and errors that survive pickling."""

from __future__ import annotations

import pickle
import traceback

import pytest
import replipoll
import replipoll.redis
from replipoll import (
    DecodeError,
    DownloadError,
    NotFoundError,
    PollTimeout,
    Prediction,
    RateLimitedError,
    RequestError,
    ServerError,
)


def test_a_request_error_with_no_details_is_just_its_message() -> None:
    """Nothing known beyond the message: str() adds no empty parentheses."""
    assert str(RequestError("the connection was refused")) == (
        "the connection was refused"
    )


def test_a_request_error_names_every_detail_it_has() -> None:
    """Method and URL, status, request id and attempts all appear in str()."""
    error = ServerError(
        "upstream is down",
        url="https://x/v1/predictions/abc",
        status=503,
        request_id="req_1",
        attempts=3,
    )
    assert str(error) == (
        "upstream is down (GET https://x/v1/predictions/abc, status 503, "
        "request id req_1, after 3 attempts)"
    )


@pytest.mark.parametrize(
    "error",
    [
        RequestError("refused", url="https://x/p/a", attempts=2),
        NotFoundError("gone", method="POST", url="https://x/p/a", status=404),
        RateLimitedError("slow down", status=429, request_id="r9", retry_after=2.5),
        DecodeError("not JSON", status=200, field="metrics.total", transient=True),
    ],
    ids=lambda e: type(e).__name__,
)
def test_request_errors_survive_pickling_with_every_attribute(
    error: RequestError,
) -> None:
    """Keyword-only state (status, request id, retry_after...) is not lost when an
    error crosses a process boundary (multiprocessing, a result cache)."""
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert vars(copy) == vars(error)
    assert str(copy) == str(error)
    assert copy.args == error.args


def test_a_poll_timeout_survives_pickling_with_its_last_record() -> None:
    last = Prediction.from_json({"id": "abc", "status": "processing"})
    error = PollTimeout("abc", 30.0, last)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, PollTimeout)
    assert (copy.prediction_id, copy.timeout, copy.last) == ("abc", 30.0, last)
    assert str(copy) == str(error)
    assert "last status: processing" in str(copy)


def test_a_poll_timeout_for_an_id_never_seen_says_so() -> None:
    error = PollTimeout("abc", 1.5, None)
    assert str(error) == (
        "prediction abc not terminal after 1.5s (last status: never seen)"
    )
    assert pickle.loads(pickle.dumps(error)).last is None


def test_a_manager_closed_error_is_its_id_and_a_message_written_when_shown() -> None:
    """A manager closed with a million ids makes a million of these: each
    holds its id as its one argument and nothing else."""
    error = replipoll.ManagerClosedError("abc123")
    assert error.args == ("abc123",)
    assert error.prediction_id == "abc123"
    assert str(error) == "the PollManager closed before prediction abc123 finished"
    assert repr(error) == "ManagerClosedError('abc123')"
    assert vars(error) == {}
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.prediction_id, str(copy)) == ("abc123", str(error))


@pytest.mark.parametrize("status", [403, None])
def test_a_download_error_survives_pickling(status: int | None) -> None:
    error = DownloadError("https://files/x/out.png", "expired", status=status)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, DownloadError)
    assert (copy.url, copy.reason, copy.status) == (error.url, "expired", status)
    assert str(copy) == str(error)


#: One instance of every public exception, with every attribute it can carry.
SAMPLES: dict[str, BaseException] = {
    "ReplipollError": replipoll.ReplipollError("root"),
    "ConfigurationError": replipoll.ConfigurationError("bad", option="burst"),
    "MissingAPIKeyError": replipoll.MissingAPIKeyError("REPLICATE_API_TOKEN"),
    "InvalidPredictionIdError": replipoll.InvalidPredictionIdError("a/b", "has /"),
    "ClientClosedError": replipoll.ClientClosedError(),
    "RequestError": RequestError("refused", url="https://x/p/a", attempts=2),
    "HTTPStatusError": replipoll.HTTPStatusError("teapot", status=418),
    "BadRequestError": replipoll.BadRequestError("bad", status=400),
    "AuthenticationError": replipoll.AuthenticationError("no", status=401),
    "NotFoundError": NotFoundError("gone", status=404, request_id="r1"),
    "RateLimitedError": RateLimitedError("slow", status=429, retry_after=2.5),
    "ServerError": ServerError("down", status=503, retry_after=4.0),
    "DecodeError": DecodeError("not JSON", status=200, field="x", transient=True),
    "TransportError": replipoll.TransportError("lost"),
    "ConnectError": replipoll.ConnectError("refused", url="https://x/p/a"),
    "RequestTimeoutError": replipoll.RequestTimeoutError("slow"),
    "PollTimeout": PollTimeout("abc", 2.0, Prediction(id="abc", status="starting")),
    "ManagerClosedError": replipoll.ManagerClosedError("abc"),
    "BatchStoppedError": replipoll.BatchStoppedError(
        "abc",
        replipoll.Diagnosis(
            "key", "the key was refused", replipoll.AuthenticationError("no"), 3
        ),
    ),
    "GatewayError": replipoll.GatewayError("no quota", status=200, request_id="g"),
    "MismatchedIdError": replipoll.MismatchedIdError(
        "mixed up", expected="a", received="b", status=200
    ),
    "BaseURLError": replipoll.BaseURLError("HTML", status=200, url="https://x/p/a"),
    "ResponseTooLargeError": replipoll.ResponseTooLargeError("big", limit=1024),
    "DownloadError": DownloadError("https://x/f.png", "gone", status=404),
    "WebhookVerificationError": replipoll.WebhookVerificationError(
        "no signature matches", reason="bad-signature", webhook_id="msg_1"
    ),
    "NoStreamError": replipoll.NoStreamError("abc", "ftp://x/stream/abc"),
    "PredictionMayExistError": replipoll.PredictionMayExistError(
        ServerError("down", status=502, request_id="r2"), sent_at=1.5e9
    ),
}


#: The same for replipoll.redis (which shows its errors as replipoll.redis.Name).
REDIS_SAMPLES: dict[str, BaseException] = {
    "RedisStoreError": replipoll.redis.RedisStoreError(
        "no", url="redis://h:6379/0", reason="READONLY"
    ),
    "RedisUnavailableError": replipoll.redis.RedisUnavailableError(
        "down", url="redis://h:6379/0", reason="Connection refused", key="k"
    ),
    "RedisBatchError": replipoll.redis.RedisBatchError(
        "refused", url="redis://h:6379/0", reason="WRONGPASS", batch="nightly"
    ),
    "UnknownBatchError": replipoll.redis.UnknownBatchError(
        "no ids", url="redis://h:6379/0", reason="no ids", batch="nightly"
    ),
}


def _exceptions(module: object) -> set[str]:
    return {
        name
        for name in module.__all__  # type: ignore[attr-defined]
        if isinstance(getattr(module, name), type)
        and issubclass(getattr(module, name), BaseException)
    }


def test_every_public_exception_has_a_sample() -> None:
    assert _exceptions(replipoll) == set(SAMPLES)
    assert _exceptions(replipoll.redis) == set(REDIS_SAMPLES)


def _state(error: BaseException) -> dict[str, object]:
    """An error's attributes, an error among them compared by its own state
    (exceptions compare by identity)."""
    return {
        name: _state(value) if isinstance(value, BaseException) else value
        for name, value in vars(error).items()
    }


@pytest.mark.parametrize(
    ("module", "name"),
    [("replipoll", name) for name in sorted(SAMPLES)]
    + [("replipoll.redis", name) for name in sorted(REDIS_SAMPLES)],
)
def test_every_public_exception_pickles_and_says_where_it_lives(
    module: str, name: str
) -> None:
    """A copy keeps its type, args, message and every attribute; its class
    shows as replipoll.Name in tracebacks, not by its private module."""
    error = (SAMPLES if module == "replipoll" else REDIS_SAMPLES)[name]
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert copy.args == error.args
    assert str(copy) == str(error)
    assert _state(copy) == _state(error)
    assert type(error).__module__ == module
    assert f"{module}.{name}" in "".join(
        traceback.format_exception_only(type(error), error)
    )
    assert isinstance(error, replipoll.ReplipollError)
