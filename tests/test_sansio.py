"""The pure HTTP core: ids, base URLs, Retry-After, request ids, error mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replipoll import (
    AuthenticationError,
    BadRequestError,
    BaseURLError,
    ConfigurationError,
    DecodeError,
    GatewayError,
    InvalidPredictionIdError,
    MismatchedIdError,
    NotFoundError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
)
from replipoll._sansio import (
    MAX_ID_LENGTH,
    decode_prediction,
    error_for_response,
    header,
    normalize_base_url,
    parse_retry_after,
    prediction_url,
    request_id_from,
    validate_prediction_id,
)

BASE = "https://api.example.com/replicate/v1"
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    "bad",
    [
        "",
        " ",
        "a b",
        "\t",
        "a/b",
        "../x",
        "..",
        ".",
        "a\\b",
        "a?b",
        "a#b",
        "a\x00b",
        "a\nb",
        "\x7f",
        "a\u200bb",
        "x" * (MAX_ID_LENGTH + 1),
        None,
        123,
        b"abc",
    ],
)
def test_bad_ids_are_rejected_before_any_request(bad: object) -> None:
    with pytest.raises(InvalidPredictionIdError) as info:
        validate_prediction_id(bad)
    assert isinstance(info.value, ValueError)
    assert len(str(info.value)) < 200  # a 10 kB id does not flood the message


@pytest.mark.parametrize(
    "good",
    [
        "gm3qorzdhgbfurvjtvhg6dckhu",
        "0b1c2d3e-aaaa-bbbb-cccc-1234567890ab",
        "a.b",
        "%2F",
        "ü",
    ],
)
def test_good_ids_pass_and_are_escaped_into_one_path_segment(good: str) -> None:
    assert validate_prediction_id(good) == good
    url = prediction_url(BASE, good)
    path = urlsplit(url).path
    assert path.startswith("/replicate/v1/predictions/")
    segment = path.rsplit("/", 1)[1]
    assert unquote(segment) == good


@settings(max_examples=300)
@given(st.text(max_size=300))
def test_any_text_id_is_rejected_or_stays_inside_predictions(pid: str) -> None:
    try:
        validate_prediction_id(pid)
    except InvalidPredictionIdError:
        return
    url = prediction_url(BASE, pid, "cancel")
    parts = urlsplit(url)
    assert parts.netloc == "api.example.com"
    assert not parts.query
    assert not parts.fragment
    segments = parts.path.split("/")
    assert segments[:4] == ["", "replicate", "v1", "predictions"]
    assert len(segments) == 6
    assert segments[-1] == "cancel"
    assert unquote(segments[4]) == pid


@pytest.mark.parametrize(
    ("given_url", "expected"),
    [
        ("https://api.replicate.com/v1", "https://api.replicate.com/v1"),
        ("https://api.replicate.com/v1/", "https://api.replicate.com/v1"),
        ("http://127.0.0.1:8080/replicate/v1//", "http://127.0.0.1:8080/replicate/v1"),
        (
            "https://gateway.ai.cloudflare.com/v1/acc/gw/replicate",
            "https://gateway.ai.cloudflare.com/v1/acc/gw/replicate",
        ),
    ],
)
def test_base_urls_are_normalised(given_url: str, expected: str) -> None:
    assert normalize_base_url(given_url) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "api.replicate.com/v1",
        "ftp://x/v1",
        "https://",
        "https://x/v1?key=1",
        "https://x/v1#frag",
        "https://user:secret@x/v1",
        "https://x:notaport/v1",
    ],
)
def test_bad_base_urls_raise_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        normalize_base_url(bad)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("30", 30.0),
        ("0.25", 0.25),
        (" 5 ", 5.0),
        ("9" * 401, float("inf")),  # more than any max_retry_after, not 0
        ("-3", None),  # not delta-seconds: garbage, not "now"
        ("1e3", None),
        ("0x10", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
        ("x" * 5000, None),
        # The three forms of an HTTP-date (RFC 9110, 5.6.7), in the past: now.
        ("Sun, 06 Nov 1994 08:49:37 GMT", 0.0),
        ("Sunday, 06-Nov-94 08:49:37 GMT", 0.0),
        ("Sun Nov  6 08:49:37 1994", 0.0),
        (format_datetime(datetime.fromtimestamp(NOW + 12, UTC), usegmt=True), 12.0),
        (format_datetime(datetime.fromtimestamp(NOW - 100, UTC), usegmt=True), 0.0),
        # asctime has no zone: HTTP dates are GMT.
        (datetime.fromtimestamp(NOW + 12, UTC).strftime("%a %b %d %H:%M:%S %Y"), 12.0),
        (
            datetime.fromtimestamp(NOW + 12, UTC).strftime("%A, %d-%b-%y %H:%M:%S GMT"),
            12.0,
        ),
    ],
)
def test_retry_after_as_seconds_or_http_date(
    value: str | None, expected: float | None
) -> None:
    assert parse_retry_after(value, NOW) == expected


@settings(max_examples=300)
@given(st.text(max_size=60))
def test_retry_after_never_raises_and_is_never_negative(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0


def test_request_id_from_headers_then_comet_message() -> None:
    assert request_id_from({"X-Request-Id": "abc"}) == "abc"
    assert request_id_from({"X-Oneapi-Request-Id": "one"}) == "one"
    assert request_id_from({}, "boom (request id: 20260312abc)") == "20260312abc"
    assert request_id_from({}, "no id here") is None


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, NotFoundError),
        (422, BadRequestError),
        (429, RateLimitedError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (524, ServerError),
        (418, BadRequestError),
    ],
)
def test_status_maps_to_error_class(status: int, cls: type[Exception]) -> None:
    error = error_for_response(status, {"X-Request-Id": "r1"}, b"", now=NOW, url="u")
    assert type(error) is cls
    assert error.status == status
    assert error.request_id == "r1"


def test_problem_json_detail_becomes_the_message() -> None:
    body = json.dumps(
        {"title": "Not found", "detail": "Prediction not found", "status": 404}
    ).encode()
    error = error_for_response(404, {}, body, now=NOW)
    assert error.message == "Prediction not found"


def test_comet_envelope_message_and_request_id() -> None:
    body = json.dumps(
        {
            "error": {
                "message": "upstream failed (request id: 2026031211abc)",
                "type": "comet_api_error",
                "param": "",
                "code": "",
            }
        }
    ).encode()
    error = error_for_response(503, {}, body, now=NOW)
    assert isinstance(error, ServerError)
    assert error.request_id == "2026031211abc"
    assert "upstream failed" in error.message


def test_html_error_page_message_is_its_title() -> None:
    body = (
        b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head>"
        b"<body>...</body></html>"
    )
    error = error_for_response(502, {}, body, now=NOW)
    assert error.message == "HTML page: 502 Bad Gateway"


def test_a_json_string_body_is_the_message_without_its_quotes() -> None:
    """Some gateways answer an error with a bare JSON string: that is the message."""
    error = error_for_response(503, {}, b'"model is warming up"', now=NOW)
    assert isinstance(error, ServerError)
    assert error.message == "model is warming up"


def test_empty_body_names_the_reason() -> None:
    error = error_for_response(504, {}, b"", now=NOW, reason="Gateway Timeout")
    assert error.message == "Gateway Timeout (empty body)"


def test_429_retry_after_from_header_body_or_detail_text() -> None:
    throttled = b'{"detail":"Request was throttled. Your rate limit resets in ~30s."}'
    from_header = error_for_response(429, {"Retry-After": "2"}, throttled, now=NOW)
    assert isinstance(from_header, RateLimitedError)
    assert from_header.retry_after == 2.0
    from_body = error_for_response(
        429, {}, b'{"detail":"slow down","retry_after":7}', now=NOW
    )
    assert isinstance(from_body, RateLimitedError)
    assert from_body.retry_after == 7.0
    from_text = error_for_response(429, {}, throttled, now=NOW)
    assert isinstance(from_text, RateLimitedError)
    assert from_text.retry_after == 30.0
    none = error_for_response(429, {}, b"{}", now=NOW)
    assert isinstance(none, RateLimitedError)
    assert none.retry_after is None


@pytest.mark.parametrize("body", [b'{"id": "x", "stat', b"", b"\xff\xfe"])
def test_unparseable_200_is_a_transient_decode_error(body: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        decode_prediction(200, {"X-Request-Id": "r9"}, body, url="u")
    assert info.value.transient
    assert info.value.status == 200
    assert info.value.request_id == "r9"


def test_an_html_page_with_200_is_a_base_url_error_not_retried() -> None:
    """What a base URL without /v1 (or a proxy's login page) serves."""
    with pytest.raises(BaseURLError) as info:
        decode_prediction(200, {}, b"<html><title>Login</title></html>", url="u")
    assert not info.value.transient
    assert isinstance(info.value, ConfigurationError)
    assert info.value.option == "base_url"
    assert "HTML page: Login" in str(info.value)
    assert not RetryPolicy().is_retryable(info.value)


@pytest.mark.parametrize(
    ("body", "headers", "message", "request_id"),
    [
        (
            b'{"success": false, "message": "insufficient quota"}',
            {"x-request-id": "gw-1"},
            "insufficient quota",
            "gw-1",
        ),
        (
            b'{"error": {"message": "bad key (request id: 2026ab)", "type": "x"}}',
            {},
            "bad key (request id: 2026ab)",
            "2026ab",
        ),
        (b'{"error": "model not allowed"}', {}, "model not allowed", None),
        (b'{"detail": "Not authenticated"}', {}, "Not authenticated", None),
        (b'{"ok": false, "code": 7}', {}, '{"ok": false, "code": 7}', None),
    ],
)
def test_a_gateway_error_sent_with_200_keeps_its_message_and_request_id(
    body: bytes, headers: dict[str, str], message: str, request_id: str | None
) -> None:
    """Not "field 'id': missing": the gateway's own words and request id."""
    with pytest.raises(GatewayError) as info:
        decode_prediction(200, headers, body, url="u")
    assert message in info.value.message
    assert info.value.request_id == request_id
    assert info.value.status == 200
    assert not RetryPolicy().is_retryable(info.value)


def test_a_failed_prediction_with_an_error_object_is_no_gateway_error() -> None:
    body = b'{"id": "p", "status": "failed", "error": {"message": "OOM"}}'
    assert decode_prediction(200, {}, body).error_message == "OOM"


def test_a_record_of_another_id_is_an_error_never_filed_under_this_one() -> None:
    body = b'{"id": "other", "status": "succeeded"}'
    with pytest.raises(MismatchedIdError) as info:
        decode_prediction(200, {}, body, expected_id="mine")
    assert (info.value.expected, info.value.received) == ("mine", "other")
    assert info.value.transient
    assert decode_prediction(200, {}, body, expected_id="other").id == "other"


def test_header_names_are_read_in_any_case_from_a_plain_dict() -> None:
    """aiohttp's headers ignore case; a plain mapping is read the same way."""
    lower = {"retry-after": "3", "x-request-id": "r1"}
    error = error_for_response(429, lower, b"{}", now=NOW)
    assert (error.retry_after, error.request_id) == (3.0, "r1")
    assert request_id_from({"cf-ray": "8f00aa"}) == "8f00aa"
    assert header({"RETRY-AFTER": "1"}, "Retry-After") == "1"
    assert header({}, "Retry-After") is None


@pytest.mark.parametrize(
    ("status", "headers", "body", "expected"),
    [
        (503, {"Retry-After": "4"}, b"", 4.0),
        (429, {"retry-after-ms": "1500"}, b"", 1.5),
        (429, {"Retry-After": "soon", "retry-after-ms": "250"}, b"", 0.25),
        (429, {}, b'{"retry_after": ' + b"9" * 401 + b"}", float("inf")),
        (429, {}, b'{"retry_after": -1}', None),
        (500, {}, b'{"detail": "x"}', None),
    ],
)
def test_retry_after_is_read_from_any_status_header_or_body(
    status: int, headers: dict[str, str], body: bytes, expected: float | None
) -> None:
    """503s carry Retry-After too (RFC 9110); retry-after-ms; no exception ever
    escapes (a 401-digit retry_after once raised OverflowError)."""
    assert error_for_response(status, headers, body, now=NOW).retry_after == expected


def test_deeply_nested_json_is_a_decode_error_not_a_crash() -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(DecodeError):
        decode_prediction(200, {}, body)


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_any_error_body_maps_to_a_typed_error(body: bytes) -> None:
    error = error_for_response(500, {}, body, now=NOW)
    assert isinstance(error, ServerError)
    assert len(error.message) <= 400
