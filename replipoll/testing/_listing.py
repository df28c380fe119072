"""The list endpoint's logic: predictions sorted by creation, keyset cursors, dates.

Pure code, no clock and no I/O.  ``GET /predictions`` must page through
400,000 predictions without an O(n) step per page, so the server keeps a
:class:`CreatedIndex`: ids sorted by creation time (ties in the order they
were added), searched with :mod:`bisect`.

A cursor names a *boundary* between two entries of that order, not an offset:
``(time, rank)``, the point just before the ``rank``-th entry created at
``time`` (``rank`` past the last such entry: just after them all).  Entries
are never removed, and an entry added later with the same time goes after
its peers, so a boundary stays where it was while predictions are created:
pages do not shift under a client that is paging.  On the wire a cursor is
base64 of ``p=<time>`` (plus ``&o=<rank>`` when not 0, ``&r=1`` for a page
towards newer predictions), the shape of Replicate's own cursors.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import calendar
import datetime
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Final
from urllib.parse import parse_qsl, urlencode

import attrs

#: Results per page, as on Replicate.
PAGE_SIZE: Final = 100
#: Out-of-order additions merged one by one up to this many; more: a re-sort.
_MERGE_ONE_BY_ONE: Final = 32

_DATE_TIME: Final = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)"
    r"(?:[Tt ](\d\d):(\d\d)(?::(\d\d)(?:[.,](\d{1,9}))?)?"
    r"(?:([Zz])|([+ -])(\d\d)(?::?(\d\d))?)?)?"
)


@attrs.define
class CreatedIndex:
    """Prediction ids in creation order, for :func:`bisect` searches.

    Additions in order (the usual case: the server's clock only goes forward)
    are appended; out-of-order ones wait in a list that the next search
    merges, so a burst of them costs one sort.
    """

    _times: list[float] = attrs.field(factory=list)
    _ids: list[str] = attrs.field(factory=list)
    _late: list[tuple[float, str]] = attrs.field(factory=list)

    def __len__(self) -> int:
        return len(self._times) + len(self._late)

    def add(self, created: float, pid: str) -> None:
        """Record that *pid* was created at *created* (monotonic seconds)."""
        times = self._times
        if self._late or (times and created < times[-1]):
            # Everything after a late one waits too: ties keep their order.
            self._late.append((created, pid))
        else:
            times.append(created)
            self._ids.append(pid)

    def sorted(self) -> tuple[list[float], list[str]]:
        """The creation times (ascending) and the ids in that order."""
        late, times, ids = self._late, self._times, self._ids
        if len(late) <= _MERGE_ONE_BY_ONE:
            for created, pid in late:
                at = bisect.bisect_right(times, created)
                times.insert(at, created)
                ids.insert(at, pid)
        else:
            times.extend(created for created, _ in late)
            ids.extend(pid for _, pid in late)
            # sorted() is stable: equal times keep the order they came in.
            order = sorted(range(len(times)), key=times.__getitem__)
            self._times = times = [times[i] for i in order]
            self._ids = ids = [ids[i] for i in order]
        late.clear()
        return times, ids


@attrs.frozen
class Cursor:
    """A boundary in the creation order, and which way the page goes from it."""

    time: float
    rank: int = 0
    #: Towards newer predictions (a ``previous`` link) instead of older ones.
    newer: bool = False

    def encode(self) -> str:
        """The opaque string sent in ``?cursor=``."""
        fields = {"p": repr(self.time)}
        if self.rank:
            fields["o"] = str(self.rank)
        if self.newer:
            fields["r"] = "1"
        return base64.b64encode(urlencode(fields).encode()).decode()

    @classmethod
    def decode(cls, text: str) -> Cursor:
        """Read a cursor :meth:`encode` made.

        Raises:
            ValueError: It is not one.
        """
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True).decode()
            fields = dict(parse_qsl(raw, keep_blank_values=True, strict_parsing=True))
            position = float(fields.pop("p"))
        except (UnicodeError, binascii.Error, KeyError) as error:
            raise ValueError("not base64 of a query string with p=") from error
        rank = fields.pop("o", "0")
        newer = fields.pop("r", "0")
        if fields or not math.isfinite(position) or not rank.isdigit():
            raise ValueError("unexpected fields or values")
        if newer not in {"0", "1"}:
            raise ValueError("unexpected direction")
        return cls(position, int(rank), newer == "1")


@attrs.frozen
class Page:
    """One page of a listing: ids newest first, and the cursors around it."""

    ids: list[str]
    next: Cursor | None
    previous: Cursor | None


def select(
    times: list[float],
    ids: list[str],
    *,
    now: float,
    after: float | None = None,
    before: float | None = None,
    cursor: Cursor | None = None,
    wall: Callable[[float], float] = float,
    size: int = PAGE_SIZE,
) -> Page:
    """The page of *ids* (sorted by *times*) that a list request answers.

    Args:
        times: Creation times, ascending (monotonic seconds).
        ids: The ids in the same order.
        now: Predictions created later are not shown yet.
        after: Only predictions whose wall-clock creation time is at or after
            this (Unix seconds); ``None``: no bound.
        before: Only those created before this (Unix seconds, exclusive).
        cursor: Where the page starts; ``None``: the newest page.
        wall: Turns a creation time into Unix seconds, as the ``created_at``
            strings do (so that a ``created_at`` read from an answer, used as
            *after*, selects the prediction it came from).
        size: Page size.
    """
    lo = 0 if after is None else bisect.bisect_left(times, after, key=wall)
    hi = bisect.bisect_right(times, now)
    if before is not None:
        hi = min(hi, bisect.bisect_left(times, before, key=wall))
    lo = min(lo, hi)
    if cursor is None:
        start, end = max(lo, hi - size), hi
    else:
        at = bisect.bisect_left(times, cursor.time)
        ties = bisect.bisect_right(times, cursor.time, lo=at)
        mark = min(max(min(at + cursor.rank, ties), lo), hi)
        if cursor.newer:
            start, end = mark, min(hi, mark + size)
        else:
            start, end = max(lo, mark - size), mark
    # Older: from just before the oldest entry shown; newer: from just after
    # the newest one (for an empty page, from where it stands).
    older = _boundary(times, start, newer=False) if start > lo else None
    newer = None
    if end < hi:
        newer = _boundary(times, end, newer=True, after_previous=end > start)
    return Page(ids[start:end][::-1], older, newer)


def _rank(times: list[float], i: int) -> int:
    return i - bisect.bisect_left(times, times[i], hi=i)


def _boundary(
    times: list[float], i: int, *, newer: bool, after_previous: bool = False
) -> Cursor:
    """A cursor at the boundary before entry *i*, pinned to a neighbour.

    Pinned to entry *i* (it stays just before it), or with *after_previous*
    (or when there is no entry *i*) to entry ``i - 1`` (just after it).
    """
    if after_previous or i == len(times):
        return Cursor(times[i - 1], _rank(times, i - 1) + 1, newer)
    return Cursor(times[i], _rank(times, i), newer)


def parse_date_time(text: str) -> float:
    """Unix seconds of an ISO 8601 / RFC 3339 date-time (or a bare date).

    Accepts ``2026-11-27T15:00:00.123456Z``, ``+00:00`` or ``-0500`` offsets,
    up to 9 fraction digits, and a space instead of the offset's ``+`` (what
    an unescaped ``+`` in a query string turns into).  No offset means UTC.
    The result is the double nearest to the exact instant.

    Raises:
        ValueError: Anything else, or a date that does not exist.

    Example:
        >>> parse_date_time("1970-01-02T00:00:01.5+01:00")
        82801.5
    """
    match = _DATE_TIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ISO 8601 date-time: {text!r}")
    year, month, day, hour, minute, second, fraction = match.groups()[:7]
    zulu, sign, off_hours, off_minutes = match.groups()[7:]
    fields = (int(year), int(month), int(day), int(hour or 0), int(minute or 0))
    # datetime checks the ranges (no 31 April, no hour 24).
    moment = datetime.datetime(*fields, int(second or 0))
    seconds = Decimal(calendar.timegm(moment.timetuple()))
    if fraction:
        seconds += Decimal(f"0.{fraction}")
    if sign is not None and zulu is None:
        offset = int(off_hours) * 3600 + int(off_minutes or 0) * 60
        if int(off_hours) > 23 or int(off_minutes or 0) > 59:
            raise ValueError(f"bad UTC offset in {text!r}")
        seconds += -offset if sign in "+ " else offset
    return float(seconds)
