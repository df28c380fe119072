"""Webhook verification, the pure part: what passes, what is refused, and why.

No server here: :func:`replipoll.verify_webhook` gets headers and bodies as a
web framework would hand them over, with ``now`` injected (no sleeping).
The aiohttp handler and the fake server's deliveries are in
``test_webhook_handler.py``.
"""

from __future__ import annotations

import base64
import json
import pickle
from datetime import UTC, datetime
from typing import Any

import pytest
import replipoll
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict
from replipoll import (
    ConfigurationError,
    ReplayGuard,
    WebhookVerificationError,
    sign_webhook,
    verify_webhook,
)
from replipoll._webhooks import MAX_ID_LENGTH, parse_secret
from standardwebhooks.webhooks import Webhook

SECRET = "whsec_" + base64.b64encode(b"replipoll-test-webhook-key-0123").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another-account-webhook-key-987").decode()
#: The secret's base64 part and its key bytes: neither may show anywhere.
SECRET_PARTS = (SECRET, SECRET.removeprefix("whsec_"), "replipoll-test-webhook-key")
NOW = 1_760_000_000
#: Every reason a delivery (not the configuration) can be refused for.
REASONS = {
    "missing-header",
    "bad-header",
    "stale",
    "future",
    "bad-signature",
    "replay",
    "bad-body",
}
RECORD: dict[str, Any] = {
    "id": "p7yq2kq6d5rj40cjv0c8yw1mt4",
    "status": "succeeded",
    "output": ["https://replicate.delivery/x/out-0.png"],
    "created_at": "2026-03-12T11:27:18.258Z",
    "completed_at": "2024-11-06T17:11:57.625316416Z",
    "metrics": {"predict_time": 3, "total_time": 3.5},
    "x_future_field": {"kept": True},
}
BODY = json.dumps(RECORD).encode()


def signed(
    body: bytes | str = BODY,
    *,
    secret: str = SECRET,
    msg_id: str = "msg_2XQbnTbGmS4NKMpJuEN2Hc",
    timestamp: float = NOW,
) -> dict[str, str]:
    return sign_webhook(body, secret, msg_id=msg_id, timestamp=timestamp)


def refusal(headers: Any, body: bytes | str = BODY, **kw: Any) -> str:
    """Verify, expecting a refusal; return its reason."""
    kw.setdefault("now", NOW)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(headers, body, SECRET, **kw)
    return caught.value.reason


# -- what passes ----------------------------------------------------------------


def test_a_signed_delivery_gives_the_record_losslessly() -> None:
    prediction = verify_webhook(signed(), BODY, SECRET, now=NOW)
    assert prediction.id == RECORD["id"]
    assert prediction.status == replipoll.Status.SUCCEEDED
    assert prediction.output == RECORD["output"]
    assert prediction.extra == {"x_future_field": {"kept": True}}
    assert prediction.to_json() == RECORD  # 3 stays 3, timestamps as sent
    assert prediction.raw == RECORD


def test_the_body_may_be_given_as_text() -> None:
    text = BODY.decode()
    assert verify_webhook(signed(text), text, SECRET, now=NOW).id == RECORD["id"]


@pytest.mark.parametrize(
    "make",
    [
        lambda h: {k.upper(): v for k, v in h.items()},
        lambda h: {k.title(): v for k, v in h.items()},
        lambda h: CIMultiDict({k.title(): v for k, v in h.items()}),
    ],
    ids=["dict-upper", "dict-title", "aiohttp-CIMultiDict"],
)
def test_header_names_are_matched_in_any_case(make: Any) -> None:
    assert verify_webhook(make(signed()), BODY, SECRET, now=NOW).id == RECORD["id"]


def test_starlettes_headers_are_read_too() -> None:
    """FastAPI hands over ``request.headers``, a Starlette ``Headers``."""
    headers_module = pytest.importorskip("starlette.datastructures")
    raw = [(k.title().encode(), v.encode()) for k, v in signed().items()]
    headers = headers_module.Headers(raw=raw)
    assert verify_webhook(headers, BODY, SECRET, now=NOW).id == RECORD["id"]


def test_one_valid_signature_among_several_is_enough() -> None:
    """Key rotation: the sender signs with old and new keys; unknown versions,
    malformed entries and other keys' signatures are skipped, not fatal."""
    headers = signed()
    good = headers["webhook-signature"]
    others = signed(secret=OTHER_SECRET)["webhook-signature"]
    headers["webhook-signature"] = f"v2,abc nocomma v1,!!notbase64 {others}  {good}"
    assert verify_webhook(headers, BODY, SECRET, now=NOW).id == RECORD["id"]


def test_timestamps_at_the_edge_of_the_tolerance_pass() -> None:
    for now in (NOW - 60, NOW + 60):
        verify_webhook(signed(), BODY, SECRET, now=now, tolerance=60)


def test_sign_webhook_agrees_with_the_standardwebhooks_package() -> None:
    """What replipoll signs, the reference implementation accepts (on the real
    clock, its only one), and the other way round."""
    now = datetime.now(tz=UTC)
    headers = sign_webhook(BODY, SECRET, timestamp=now.timestamp())
    assert Webhook(SECRET).verify(BODY, headers) == RECORD
    theirs = Webhook(SECRET).sign("msg_theirs", now, BODY.decode())
    their_headers = {
        "webhook-id": "msg_theirs",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": theirs,
    }
    assert verify_webhook(their_headers, BODY, SECRET).id == RECORD["id"]


def test_sign_webhook_defaults_to_a_fresh_id_and_now() -> None:
    first, second = sign_webhook(BODY, SECRET), sign_webhook(BODY, SECRET)
    assert first["webhook-id"].startswith("msg_")
    assert first["webhook-id"] != second["webhook-id"]
    verify_webhook(first, BODY, SECRET)  # stamped now, on the real clock


# -- what is refused ------------------------------------------------------------


def test_a_wrong_signature_is_refused() -> None:
    headers = signed()
    headers["webhook-signature"] = "v1," + base64.b64encode(b"x" * 32).decode()
    assert refusal(headers) == "bad-signature"


def test_a_tampered_body_is_refused() -> None:
    tampered = BODY.replace(b"out-0.png", b"evil.png")
    assert refusal(signed(), tampered) == "bad-signature"


def test_a_delivery_signed_with_another_secret_is_refused() -> None:
    assert refusal(signed(secret=OTHER_SECRET)) == "bad-signature"


def test_a_changed_id_or_timestamp_breaks_the_signature() -> None:
    headers = signed()
    assert refusal({**headers, "webhook-id": "msg_other"}) == "bad-signature"
    assert refusal({**headers, "webhook-timestamp": str(NOW + 1)}) == "bad-signature"


@pytest.mark.parametrize(
    "name", ["webhook-id", "webhook-timestamp", "webhook-signature"]
)
def test_a_missing_or_empty_header_is_refused(name: str) -> None:
    headers = signed()
    del headers[name]
    assert refusal(headers) == "missing-header"
    assert refusal({**signed(), name: "  "}) == "missing-header"


@pytest.mark.parametrize(
    "entry",
    ["v1", "nocomma", "v1,", "v1,***", "v1,YWJj=bad", ",", "v1,\u00e9", "v1;abc"],
)
def test_a_malformed_signature_entry_is_a_bad_signature(entry: str) -> None:
    """The package would raise ValueError or binascii.Error on some of these."""
    assert refusal({**signed(), "webhook-signature": entry}) == "bad-signature"


@pytest.mark.parametrize(
    "stamp", ["1.7e9", "-1", "1760000000.5", "soon", "\u0661\u0667", "9" * 13]
)
def test_a_timestamp_that_is_not_whole_seconds_is_a_bad_header(stamp: str) -> None:
    assert refusal({**signed(), "webhook-timestamp": stamp}) == "bad-header"


def test_a_huge_webhook_id_is_a_bad_header() -> None:
    """Ids are remembered by the replay guard: their size is bounded."""
    long_id = "m" * (MAX_ID_LENGTH + 1)
    assert refusal(signed(msg_id=long_id)) == "bad-header"
    verify_webhook(signed(msg_id=long_id[1:]), BODY, SECRET, now=NOW)


def test_stale_and_future_timestamps_are_refused_against_the_injected_now() -> None:
    assert refusal(signed(), now=NOW + 301) == "stale"
    assert refusal(signed(), now=NOW - 301) == "future"
    assert refusal(signed(), now=NOW + 11, tolerance=10) == "stale"


def test_a_signed_body_that_is_not_a_prediction_is_a_bad_body() -> None:
    for body in (b"<html>", b'{"status": "succeeded"}', b"[1, 2]", b'{"id": 5}'):
        with pytest.raises(WebhookVerificationError) as caught:
            verify_webhook(signed(body), body, SECRET, now=NOW)
        assert caught.value.reason == "bad-body"
        assert caught.value.__context__ is None  # no parser error holding the body


def test_a_body_that_is_not_utf8_is_a_bad_body() -> None:
    assert refusal(signed(), b"\xff\xfe" + BODY) == "bad-body"


def test_a_replay_of_a_handled_delivery_is_refused() -> None:
    guard = ReplayGuard()
    headers = signed()
    verify_webhook(headers, BODY, SECRET, now=NOW, replays=guard)
    guard.remember(headers["webhook-id"], now=NOW)
    with pytest.raises(WebhookVerificationError) as caught:
        verify_webhook(headers, BODY, SECRET, now=NOW + 30, replays=guard)
    assert caught.value.reason == "replay"
    assert caught.value.webhook_id == headers["webhook-id"]


def test_a_retry_after_a_failed_handling_passes_the_guard() -> None:
    """Verifying alone does not mark the id: the sender's retry of a
    delivery our handler failed on (same id) must get through."""
    guard = ReplayGuard()
    first = signed(timestamp=NOW)
    verify_webhook(first, BODY, SECRET, now=NOW, replays=guard)
    # ... the handler failed, nothing remembered; the retry is re-stamped:
    retry = signed(timestamp=NOW + 5)
    verify_webhook(retry, BODY, SECRET, now=NOW + 5, replays=guard)
    assert len(guard) == 0


def test_a_forged_delivery_does_not_count_as_a_replay() -> None:
    """A bad signature is refused as such, even for an id the guard knows:
    an attacker learns nothing about which ids were handled."""
    guard = ReplayGuard()
    guard.remember("msg_2XQbnTbGmS4NKMpJuEN2Hc", now=NOW)
    assert refusal(signed(secret=OTHER_SECRET), replays=guard) == "bad-signature"


def test_a_guard_shorter_than_the_tolerance_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        verify_webhook(signed(), BODY, SECRET, now=NOW, replays=ReplayGuard(60))
    assert caught.value.option == "replays"


def test_the_error_is_a_value_error_in_the_tree_and_pickles() -> None:
    with pytest.raises(ValueError, match=r"bad-signature") as caught:
        verify_webhook(signed(secret=OTHER_SECRET), BODY, SECRET, now=NOW)
    error = caught.value
    assert isinstance(error, WebhookVerificationError)
    assert isinstance(error, replipoll.ReplipollError)
    assert type(error).__module__ == "replipoll"
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.webhook_id, str(again)) == (
        error.reason,
        error.webhook_id,
        str(error),
    )


# -- the secret -----------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "whsec_not base64!",
        "whsec_abcde",  # base64 cannot end there
        "whsec_\u00e9t\u00e9",
        "r8_SeCrEtKeY-an-api-token-by-mistake",
    ],
)
def test_a_malformed_secret_is_a_configuration_error_saying_where_to_get_one(
    secret: str,
) -> None:
    for call in (
        lambda: verify_webhook(signed(), BODY, secret, now=NOW),
        lambda: sign_webhook(BODY, secret),
    ):
        with pytest.raises(ConfigurationError) as caught:
            call()
        error = caught.value
        assert not isinstance(error, WebhookVerificationError)  # not a 401
        assert error.option == "secret"
        assert "GET https://api.replicate.com/v1/webhooks/default/secret" in str(error)
        assert error.__cause__ is None
        assert error.__context__ is None
        if len(secret) > 6:
            assert secret not in str(error) + repr(error)
            assert secret.removeprefix("whsec_") not in str(error) + repr(error)


def test_surrounding_whitespace_in_the_secret_is_forgiven() -> None:
    """A secret read from a file or an env var often ends with a newline."""
    verify_webhook(signed(), BODY, f"  {SECRET}\n", now=NOW)


def test_the_secret_never_shows_in_errors_keys_or_guards() -> None:
    key = parse_secret(SECRET)
    shown = [repr(key), str(key), repr(ReplayGuard())]
    for headers, body in [
        (signed(secret=OTHER_SECRET), BODY),
        (signed(), b"not json"),
        ({}, BODY),
    ]:
        with pytest.raises(WebhookVerificationError) as caught:
            verify_webhook(headers, body, SECRET, now=NOW)
        shown += [str(caught.value), repr(caught.value)]
    for text in shown:
        for part in SECRET_PARTS:
            assert part not in text


def test_a_secret_is_checked_once_and_its_key_kept() -> None:
    """A web app verifies every delivery with the same secret: it is
    decoded once; a bad one is refused every time (never cached)."""
    assert parse_secret(SECRET) is parse_secret(SECRET)
    for _ in range(2):
        with pytest.raises(ConfigurationError):
            parse_secret("whsec_!")
    with pytest.raises(ConfigurationError, match="must be a string"):
        parse_secret(b"whsec_abcd")  # type: ignore[arg-type]


# -- the replay guard -----------------------------------------------------------


def test_the_guard_forgets_ids_after_twice_the_tolerance() -> None:
    """A delivery stamped ``tolerance`` ahead of us stays acceptable until
    ``2 * tolerance`` from now: the guard keeps its id that long, no longer."""
    guard = ReplayGuard(tolerance=10)
    guard.remember("a", now=100.0)
    guard.remember("b", now=105.0)
    assert guard.seen("a", now=119.9)
    assert not guard.seen("a", now=120.0)
    assert guard.seen("b", now=120.0)
    assert len(guard) == 1  # "a" is gone, not just hidden


def test_the_guard_holds_at_most_max_size_ids_dropping_the_oldest() -> None:
    guard = ReplayGuard(max_size=3)
    for n in range(10):
        guard.remember(f"msg_{n}", now=NOW + n)
    assert len(guard) == 3
    assert [guard.seen(f"msg_{n}", now=NOW + 10) for n in (6, 7, 8, 9)] == [
        False,
        True,
        True,
        True,
    ]


def test_remembering_an_id_again_renews_it() -> None:
    guard = ReplayGuard(tolerance=10, max_size=2)
    guard.remember("a", now=0.0)
    guard.remember("b", now=1.0)
    guard.remember("a", now=2.0)  # renewed: now the newest
    guard.remember("c", now=3.0)  # drops "b", the oldest
    assert (guard.seen("a", now=3.0), guard.seen("b", now=3.0)) == (True, False)


@pytest.mark.parametrize(
    "kwargs", [{"tolerance": -1}, {"tolerance": float("nan")}, {"max_size": 0}]
)
def test_a_guard_with_bad_numbers_is_a_configuration_error(kwargs: Any) -> None:
    with pytest.raises(ConfigurationError):
        ReplayGuard(**kwargs)


# -- anything at all ------------------------------------------------------------

_HEADER_NAMES = st.sampled_from(
    ["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "content-type", "x"]
)
_HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"v1,[A-Za-z0-9+/=]{0,50}( v[0-9],[^ ]{0,20}){0,3}", fullmatch=True),
    st.from_regex(r"[0-9]{1,14}", fullmatch=True),
    st.integers(NOW - 400, NOW + 400).map(str),
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=5),
    body=st.one_of(st.binary(max_size=200), st.text(max_size=200)),
)
def test_any_headers_and_body_are_refused_only_with_the_verification_error(
    headers: dict[str, str], body: bytes | str
) -> None:
    refused: WebhookVerificationError | None = None
    try:
        verify_webhook(headers, body, SECRET, now=NOW, replays=ReplayGuard())
    except WebhookVerificationError as exc:
        refused = exc
    if refused is not None:
        assert refused.reason in REASONS
        for part in SECRET_PARTS:
            assert part not in str(refused)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=150, deadline=None)
@given(
    extra=st.dictionaries(st.text(max_size=10), _JSON, max_size=4),
    msg_id=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() == s),
    drift=st.integers(-300, 300),
)
def test_any_signed_record_comes_back_as_sent_and_any_change_is_refused(
    extra: dict[str, Any], msg_id: str, drift: int
) -> None:
    record = {**extra, "id": "p1", "status": "processing"}
    body = json.dumps(record, ensure_ascii=False).encode()
    headers = sign_webhook(body, SECRET, msg_id=msg_id, timestamp=NOW + drift)
    prediction = verify_webhook(headers, body, SECRET, now=NOW)
    assert prediction.to_json() == record
    with pytest.raises(WebhookVerificationError, match="bad-signature"):
        verify_webhook(headers, body + b" ", SECRET, now=NOW)
