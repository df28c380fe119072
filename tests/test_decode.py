"""The decoder: seed bodies, timestamps, unknown fields, and bad bodies."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replipoll import TERMINAL_STATUSES, DecodeError, Prediction, Status
from replipoll._decode import parse_timestamp
from replipoll._models import structure_prediction

# The example body of both seed documents (DeerAPI and CometAPI).
SEED_BODY: dict[str, Any] = {
    "id": "<string>",
    "input": {},
    "model": "<string>",
    "output": ["<string>"],
    "status": "<string>",
    "created_at": "2026-03-12T11:27:18.258Z",
    "data_removed": True,
    "logs": "<string>",
    "urls": {"get": "<string>", "cancel": "<string>", "stream": "<string>"},
    "error": "<string>",
    "metrics": {"image_count": 123, "predict_time": 123},
    "version": "<string>",
    "started_at": "2023-09-08T16:19:34.765994Z",
    "completed_at": "2024-11-06T17:11:57.625316416Z",
}

REPLICATE_BODY: dict[str, Any] = {
    "id": "gm3qorzdhgbfurvjtvhg6dckhu",
    "model": "replicate/hello-world",
    "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
    "input": {"text": "Alice"},
    "logs": "",
    "output": "hello Alice",
    "data_removed": False,
    "error": None,
    "status": "succeeded",
    "created_at": "2023-09-08T16:19:34.765994Z",
    "started_at": "2023-09-08T16:19:34.779176Z",
    "completed_at": "2023-09-08T16:19:34.791859Z",
    "source": "api",
    "deployment": None,
    "deadline": None,
    "urls": {
        "web": "https://replicate.com/p/gm3qorzdhgbfurvjtvhg6dckhu",
        "get": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu",
        "cancel": "https://api.replicate.com/v1/predictions/gm3qorzdhgbfurvjtvhg6dckhu/cancel",
        "stream": "https://stream.replicate.com/v1/files/abc",
    },
    "metrics": {"predict_time": 0.012683, "total_time": 0.026},
}


def test_seed_example_body_decodes_with_every_field() -> None:
    p = Prediction.from_json(SEED_BODY)
    assert p.id == "<string>"
    assert p.status == "<string>"  # not a documented status: kept as a string
    assert not p.is_terminal
    assert not p.is_documented_status
    assert p.output == ["<string>"]
    assert p.data_removed is True
    assert p.metrics is not None
    assert p.metrics.image_count == 123
    assert p.metrics.predict_time == 123.0
    assert p.urls is not None
    assert p.urls.stream == "<string>"
    assert p.error == "<string>"


def test_replicate_body_decodes_with_replicate_extras() -> None:
    p = Prediction.from_json(REPLICATE_BODY)
    assert p.status is Status.SUCCEEDED
    assert p.is_terminal
    assert p.source == "api"
    assert p.urls is not None
    assert p.urls.web == "https://replicate.com/p/gm3qorzdhgbfurvjtvhg6dckhu"
    assert p.metrics is not None
    assert p.metrics.total_time == 0.026
    assert p.output == "hello Alice"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2023-09-08T16:19:34.765994Z", datetime(2023, 9, 8, 16, 19, 34, 765994, UTC)),
        ("2026-03-12T11:27:18.258Z", datetime(2026, 3, 12, 11, 27, 18, 258000, UTC)),
        (
            "2024-11-06T17:11:57.625316416Z",
            datetime(2024, 11, 6, 17, 11, 57, 625316, UTC),
        ),
        ("2024-11-06T17:11:57Z", datetime(2024, 11, 6, 17, 11, 57, tzinfo=UTC)),
        (
            "2024-11-06T17:11:57.5+02:00",
            datetime(2024, 11, 6, 17, 11, 57, 500000, timezone(timedelta(hours=2))),
        ),
        (
            "2024-11-06T17:11:57.123456789",
            datetime(2024, 11, 6, 17, 11, 57, 123456, UTC),
        ),
    ],
)
def test_timestamps_of_every_precision_become_aware_datetimes(
    text: str, expected: datetime
) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is not None


@pytest.mark.parametrize("status", list(Status))
def test_every_documented_status_is_an_enum_member(status: Status) -> None:
    p = Prediction.from_json({"id": "x", "status": status.value})
    assert p.status is status
    assert p.is_terminal == (status not in {Status.STARTING, Status.PROCESSING})


@pytest.mark.parametrize("status", list(Status))
def test_status_is_terminal_agrees_with_terminal_statuses(status: Status) -> None:
    """Status.is_terminal works on the enum alone, without a record."""
    assert status.is_terminal == (status in TERMINAL_STATUSES)
    assert status.is_terminal == (status not in {Status.STARTING, Status.PROCESSING})


def test_aborted_is_terminal() -> None:
    assert Prediction.from_json({"id": "x", "status": "aborted"}).is_terminal


def test_unknown_fields_are_kept_everywhere_and_round_trip() -> None:
    body = dict(REPLICATE_BODY)
    body["x_new_field"] = {"nested": [1, 2]}
    body["urls"] = {**REPLICATE_BODY["urls"], "events": "https://e"}
    body["metrics"] = {**REPLICATE_BODY["metrics"], "gpu_seconds": 3}
    p = Prediction.from_json(body)
    assert p.extra == {"x_new_field": {"nested": [1, 2]}}
    assert p.urls is not None
    assert p.urls.extra == {"events": "https://e"}
    assert p.metrics is not None
    assert p.metrics.extra == {"gpu_seconds": 3}
    again = Prediction.from_json(json.loads(json.dumps(p.to_json())))
    assert again == p


def test_nulls_mean_absent() -> None:
    p = Prediction.from_json(
        {
            "id": "x",
            "status": "starting",
            "urls": None,
            "metrics": None,
            "data_removed": None,
            "started_at": None,
            "input": None,
        }
    )
    assert p.urls is None
    assert p.metrics is None
    assert p.data_removed is None  # "not said", which False cannot tell apart
    assert p.started_at is None
    assert not p.invalid


def test_an_integer_sent_as_a_whole_float_is_an_integer() -> None:
    """``"image_count": 2.0`` (some JSON encoders write every number as a float)
    decodes to the int 2, while 1.5 is refused (see the bad-body cases)."""
    p = Prediction.from_json(
        {"id": "x", "status": "succeeded", "metrics": {"image_count": 2.0}}
    )
    assert p.metrics is not None
    assert p.metrics.image_count == 2
    assert type(p.metrics.image_count) is int


def test_an_error_object_is_kept_as_sent_and_read_as_text() -> None:
    """Some gateways send ``error`` as an object: it stays one (and goes back
    as one), and error_message finds its words."""
    body = {"id": "x", "status": "failed", "error": {"message": "OOM", "code": 1}}
    p = Prediction.from_json(body)
    assert p.error == {"message": "OOM", "code": 1}
    assert p.error_message == "OOM"
    assert p.to_json() == body
    coded = Prediction.from_json({"id": "x", "status": "failed", "error": {"c": 2}})
    assert coded.error_message == '{"c": 2}'
    listed = Prediction.from_json({"id": "x", "status": "failed", "error": ["E1"]})
    assert listed.error is None
    assert listed.error_message == '["E1"]'
    assert Prediction.from_json({"id": "x", "status": "x"}).error_message is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], ""),
        ("<html>", ""),
        ({"status": "succeeded"}, "id"),
        ({"id": "x"}, "status"),
        ({"id": 1, "status": "x"}, "id"),
        ({"id": "x", "status": {"a": 1}}, "status"),
        ({"id": "", "status": "x"}, "id"),
        ({"id": None, "status": "x"}, "id"),
    ],
)
def test_bodies_without_a_usable_id_or_status_raise_decode_error(
    body: Any, field: str
) -> None:
    """Only a record's id and status are strict: without them it is no record."""
    with pytest.raises(DecodeError) as info:
        structure_prediction(body, status=200, request_id="req-1")
    assert info.value.field == field
    assert info.value.status == 200
    assert info.value.request_id == "req-1"
    assert not info.value.transient
    if field:
        assert repr(field) in str(info.value)


@pytest.mark.parametrize(
    ("extra", "name"),
    [
        ({"data_removed": "false"}, "data_removed"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"created_at": ""}, "created_at"),
        ({"completed_at": "2024-01-01T00:00:00." + "9" * 1_000_000}, "completed_at"),
        ({"metrics": {"predict_time": "1s"}}, "metrics.predict_time"),
        ({"metrics": {"image_count": 1.5}}, "metrics.image_count"),
        ({"metrics": {"predict_time": True}}, "metrics.predict_time"),
        ({"urls": []}, "urls"),
        ({"urls": {"get": 5}}, "urls.get"),
        ({"input": "prompt"}, "input"),
        ({"error": 42}, "error"),
        ({"model": ["a"]}, "model"),
    ],
)
def test_a_field_that_does_not_fit_is_kept_never_the_loss_of_the_record(
    extra: dict[str, Any], name: str
) -> None:
    """A failed prediction with ``"created_at": ""`` (as one official client's
    own tests serve it) is still a failed prediction, with its error; the odd
    value is kept in ``invalid`` and sent back by to_json as it came."""
    body = {"id": "x", "status": "failed", "error": "E1001 out of memory", **extra}
    if name == "error":
        body = {"id": "x", "status": "failed", **extra}
    start = time.perf_counter()
    p = structure_prediction(body)
    assert time.perf_counter() - start < 0.05  # a megabyte of digits included
    assert p.status == "failed"
    assert name in p.invalid
    top, _, sub = name.partition(".")
    assert p.invalid[name] == (extra[top][sub] if sub else extra[top])
    if not sub:
        assert getattr(p, name) is None
    assert p.to_json() == body
    assert Prediction.from_json(p.to_json()) == p


def test_output_urls_walks_nested_json_in_order() -> None:
    p = Prediction.from_json(
        {
            "id": "x",
            "status": "succeeded",
            "output": {
                "images": ["https://a/1.png", "not a url", "http://a/2.png"],
                "meta": {"thumb": "https://a/t.png", "n": 3},
            },
        }
    )
    assert list(p.output_urls()) == [
        "https://a/1.png",
        "http://a/2.png",
        "https://a/t.png",
    ]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
prediction_keys = st.sampled_from(
    [
        "id",
        "status",
        "output",
        "input",
        "created_at",
        "started_at",
        "metrics",
        "urls",
        "data_removed",
        "error",
        "logs",
        "version",
        "model",
        "deadline",
    ]
)
near_predictions = st.dictionaries(
    prediction_keys | st.text(max_size=8), json_values, max_size=10
).map(lambda d: {"id": "abc", "status": "processing", **d})


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, near_predictions))
def test_arbitrary_json_yields_a_prediction_or_decode_error(data: Any) -> None:
    try:
        p = structure_prediction(data)
    except DecodeError as exc:
        field = exc.field
        assert isinstance(field, str)
    else:
        assert isinstance(p, Prediction)
        assert isinstance(p.id, str)
        assert isinstance(p.status, str)


field_values = (
    json_values
    | st.sampled_from(["2025-01-01T00:00:00.123456789Z", "2025-01-01T00:00:00+02:00"])
    | st.sampled_from([status.value for status in Status])
    | st.dictionaries(
        st.sampled_from(["get", "cancel", "predict_time", "image_count", "x"]),
        json_values | st.floats(0, 100),
        max_size=4,
    )
)
known_records = st.dictionaries(prediction_keys, field_values, max_size=12).map(
    lambda d: {"id": "abc", "status": "processing", **d}
)


@settings(max_examples=300, deadline=None)
@given(known_records)
def test_the_one_pass_decoder_and_the_walk_agree(data: dict[str, Any]) -> None:
    """Every key known (one pass) or one more unknown key (the walk): same record."""
    try:
        walked = structure_prediction({**data, "zz_unknown": 1})
    except DecodeError as refused:
        field = refused.field
    else:
        field = None
    if field is not None:
        with pytest.raises(DecodeError) as info:
            structure_prediction(data)
        assert info.value.field == field
        return
    assert walked.extra == {"zz_unknown": 1}
    one_pass = structure_prediction(data)
    assert one_pass.extra == {}
    assert one_pass == attrs.evolve(walked, extra={})
    assert one_pass.invalid == walked.invalid
    assert one_pass.raw is data
