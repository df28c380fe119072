"""The list endpoint, ``GET predictions``: build its requests, decode its pages.

Pure, like :mod:`replipoll._sansio`. Replicate answers a list request with
the account's predictions, newest first, 100 a page::

    {"next": "https://api.replicate.com/v1/predictions?cursor=...",
     "previous": null, "results": [{...}, ...]}

filtered by ``created_after`` and ``created_before`` (ISO 8601). The
``next`` link is never followed as a URL: only its query (the cursor) is
kept and asked below the configured base URL, so the key goes nowhere a
server names. Items are slimmer than a single ``GET`` (``logs`` and
``version`` have been seen missing): a page tells a status, not always the
whole record.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from ._decode import FieldError
from ._errors import DecodeError
from ._models import Prediction, prediction_hook
from ._sansio import (
    NOT_JSON,
    ApiRequest,
    Redactor,
    _not_a_prediction,
    parse_json,
    request_id_from,
)

__all__ = ["PredictionPage", "decode_page", "list_request", "timestamp_param"]

_NO_REDACTION: Final = Redactor(None)
#: The list endpoint's query parameters replipoll sends.
_FILTERS: Final = ("created_after", "created_before")


@attrs.frozen
class PredictionPage:
    """One page of ``GET predictions``.

    Attributes:
        results: The items that are predictions, in the order sent (newest
            first on Replicate).
        next_query: The query string of the ``next`` link (its cursor), to
            ask below the configured base URL; ``None`` on the last page.
        skipped: Items that were not predictions (no ``id`` or ``status``):
            left out, never fatal.
    """

    results: tuple[Prediction, ...]
    next_query: str | None
    skipped: int = 0


def timestamp_param(when: datetime) -> str:
    """An ISO 8601 UTC timestamp for a list filter, microseconds and ``Z``.

    Example:
        >>> from datetime import datetime, UTC
        >>> timestamp_param(datetime(2026, 11, 27, 15, 0, 1, 5, tzinfo=UTC))
        '2026-11-27T15:00:01.000005Z'
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def list_request(
    *,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    next_query: str | None = None,
) -> ApiRequest:
    """The request for a page of ``GET predictions``.

    The first page is asked with the filters; a later one with the query of
    the previous page's ``next`` link, to which the filters are added again
    where the link dropped them.

    Example:
        >>> from datetime import datetime, UTC
        >>> list_request(created_after=datetime(2026, 1, 1, tzinfo=UTC)).path
        'predictions?created_after=2026-01-01T00%3A00%3A00.000000Z'
        >>> list_request(next_query="cursor=abc").path
        'predictions?cursor=abc'
    """
    params: dict[str, str] = {}
    if next_query:
        params.update(parse_qsl(next_query, keep_blank_values=True))
    for name, value in zip(_FILTERS, (created_after, created_before), strict=True):
        if value is not None and name not in params:
            params[name] = timestamp_param(value)
    query = urlencode(params)
    return ApiRequest("GET", f"predictions?{query}" if query else "predictions", "")


def decode_page(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    data: Any = NOT_JSON,
    url: str = "",
    redact: Redactor = _NO_REDACTION,
) -> PredictionPage:
    """Decode a 2xx answer of ``GET predictions`` into a :class:`PredictionPage`.

    Tolerant: an item that is not a prediction is skipped and counted; a
    ``next`` that is not a link with a query ends the listing.

    Raises:
        BaseURLError: the body is an HTML page.
        GatewayError: the body is a gateway's error envelope.
        DecodeError: the body is not a page (no ``results`` list): this
            server does not serve the list endpoint as Replicate does.
    """
    if data is NOT_JSON:
        data = parse_json(body)
    if data is NOT_JSON or not isinstance(data, dict):
        if data is NOT_JSON or not isinstance(data, list):
            raise _not_a_prediction(status, headers, body, data, "GET", url, redact)
        data = {"results": data}  # a bare list: tolerated
    results = data.get("results")
    if not isinstance(results, list):
        if "error" in data or "success" in data or "detail" in data:
            raise _not_a_prediction(status, headers, body, data, "GET", url, redact)
        raise DecodeError(
            "the answer is not a page of predictions (no results list)",
            status=status,
            request_id=request_id_from(headers, redact=redact),
            method="GET",
            url=url,
        )
    records: list[Prediction] = []
    skipped = 0
    for item in results:
        try:
            records.append(prediction_hook(item, None))
        except FieldError:
            skipped += 1
    return PredictionPage(tuple(records), _next_query(data.get("next")), skipped)


def _next_query(link: object) -> str | None:
    if not isinstance(link, str) or not link:
        return None
    query = urlsplit(link).query if "?" in link else ""
    return query or None
