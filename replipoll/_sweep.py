"""List sweeps: one ``GET predictions`` page tells the status of up to 100 ids.

Polling each id with its own ``GET`` spends one request per id per poll.
Replicate's list endpoint answers the whole account's predictions, newest
first, 100 a page, filtered by creation time: a sweep of the window in which
the unfinished ids were created reports all of them in a few pages. The
:class:`Sweeper` runs those sweeps for a :class:`~replipoll.PollManager`:

* An id joins the sweeps after its first ``GET`` (which gives its
  ``created_at`` and catches an id finished already); once sweeps are
  running, a newly submitted id joins them at once, without that ``GET``,
  and is looked for near the top of the list.
* Each sweep pins ``created_before`` when it starts (pages stay stable while
  predictions are created) and follows ``next`` to ``created_after``.
* A terminal item resolves its id when it carries every key a single
  ``GET`` answered; otherwise (list items lack ``logs``) the id gets one
  ``GET`` for its whole record. Nothing is lost to a slim item.
* An id a sweep should have seen and did not (another account's, or older
  than the window) goes back to per-id polling.
* Whether sweeping pays is measured: after each sweep, its pages are
  compared with the ids it covered. Where the account's other predictions
  far outnumber the tracked ones, per-id polling is cheaper, and runs
  (tried again a minute later). A server that does not serve the list (404,
  405, an HTML page, not a page at all) gets per-id polling for good, said
  once in the log.

Pages spend the manager's rate budget like any request and obey the same
``Retry-After``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from ._errors import (
    BaseURLError,
    DecodeError,
    GatewayError,
    HTTPStatusError,
)
from ._models import Prediction
from ._pages import list_request

if TYPE_CHECKING:
    from ._manager import PollManager, _Track

__all__ = ["Sweeper", "sweep_pays", "sweep_window"]

logger: Final = logging.getLogger("replipoll")

#: A mode of a :class:`~replipoll.PollManager`, as :class:`PollStats` says it.
Mode = Literal["per-id", "sweep"]

#: Statuses that say the list endpoint is not served here.
_NOT_SERVED: Final = frozenset({400, 404, 405, 410, 501})
#: Seconds before sweeping is measured again after it did not pay.
PROBE_AGAIN: Final = 60.0
#: Sweeps an id may be missing from before it is polled on its own.
MAX_MISSES: Final = 2
#: Seconds before its submission that a new id is looked for in the list;
#: one created earlier is polled on its own after the sweep missed it.
NEW_ID_AGE: Final = 60.0
#: Slack around the window's edges, seconds: timestamps round differently.
_SLACK: Final = 0.001


def sweep_window(created: Iterable[float]) -> tuple[float, float] | None:
    """The window ``(oldest, newest)`` of creation times, or ``None`` if empty.

    Example:
        >>> sweep_window([5.0, 2.0, 9.5])
        (2.0, 9.5)
        >>> sweep_window([]) is None
        True
    """
    oldest, newest = math.inf, -math.inf
    for when in created:
        if when < oldest:
            oldest = when
        if when > newest:
            newest = when
    return None if oldest == math.inf else (oldest, newest)


def sweep_pays(pages: int, ids: int) -> bool:
    """Whether a sweep of ``pages`` pages beats polling ``ids`` ids once each.

    A poll of each id costs ``ids`` requests; a sweep costs its pages (and
    later one ``GET`` per finished id, as per-id polling would have spent
    on its last poll anyway). Sweeping is chosen when it costs at most half
    as much, so that a borderline account does not flip between modes.

    Example:
        >>> sweep_pays(pages=3, ids=500), sweep_pays(pages=400, ids=500)
        (True, False)
    """
    return pages * 2 <= ids


def _wall(when: datetime | None) -> float | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


class Sweeper:
    """The sweep side of a :class:`~replipoll.PollManager` (see the module).

    Args:
        manager: The manager whose ids are swept.
        always: Sweep whenever the list is served (``sweep=True``), rather
            than only where it measures cheaper (``sweep=None``).
        interval: Seconds from the start of one sweep to the next, at least.
        min_ids: Ids to sweep before a sweep is worth measuring; fewer are
            swept after ``interval`` all the same.
    """

    def __init__(
        self,
        manager: PollManager,
        *,
        always: bool,
        interval: float,
        min_ids: int = 20,
    ) -> None:
        self._manager = manager
        self._always = always
        self.interval = interval
        self._min_ids = min_ids
        #: Swept ids whose creation time is known: id -> Unix seconds.
        self._known: dict[str, float] = {}
        #: Swept ids not seen yet: id -> monotonic time they joined.
        self._unknown: dict[str, float] = {}
        self._misses: dict[str, int] = {}
        #: The keys a single GET answers (a list item needs them all).
        self._full_keys: frozenset[str] | None = None
        self._refused = False
        #: Sweeping measured as paying (or ``always``); until then, probing.
        self._paying: bool | None = None
        self._probe_at = 0.0
        self._wake = asyncio.Event()
        self._first_joined: float | None = None
        self.sweeps = self.pages = 0

    # -- what the manager asks ------------------------------------------------

    @property
    def mode(self) -> Mode:
        """``"sweep"`` while ids are being swept, else ``"per-id"``."""
        return "sweep" if self._known or self._unknown else "per-id"

    def takes_new(self) -> bool:
        """Whether a new id should join the sweeps without a first ``GET``."""
        # (Known ids give the window a start; sweep=True needs no measure.)
        paying = self._paying or (self._always and self._paying is None)
        return bool(paying) and bool(self._known) and not self._refused

    def join_new(self, pid: str, now: float) -> None:
        """Sweep a newly submitted id, looked for near the top of the list."""
        self._unknown[pid] = now
        self._wake.set()

    def adopt(self, track: _Track, record: Prediction, now: float) -> bool:
        """Sweep ``track``'s id from now on, if sweeping runs; True if taken."""
        if self._refused or track.request is not None:
            return False
        if self._paying is False and now < self._probe_at:
            return False
        if (
            self._paying is None
            and not self._always
            and len(self._manager._tracks) < self._min_ids
        ):
            return False  # a few ids: per-id polling costs little, no probe
        created = _wall(record.created_at)
        if created is None:
            return False
        if self._full_keys is None and record.raw:
            self._full_keys = frozenset(record.raw)
        self._known[track.id] = created
        if self._first_joined is None:
            self._first_joined = now
        self._wake.set()
        return True

    def claims(self, track: _Track, now: float) -> bool:
        """Whether a due poll of ``track``'s id is the sweeps' job, not a GET.

        True for a swept id, and for an id whose first GET is still due
        while sweeps pay (it joins them: the next sweep finds it).
        """
        pid = track.id
        if pid in self._known or pid in self._unknown:
            return True
        if track.counted == "unknown" and track.request is None and self.takes_new():
            self.join_new(pid, now)
            return True
        return False

    def _complete(self, record: Prediction) -> bool:
        """Whether a terminal list item may resolve its id as it is."""
        if not self._manager.full_records:
            return True
        keys = self._full_keys
        return keys is not None and keys.issubset(record.raw)

    def _take_listed(self, pid: str, record: Prediction) -> bool:
        """Sweep a tracked id found in a page, if it can be placed.

        Not one that ended and needs a GET for its whole record: its own
        poll (due, or queued) fetches it.
        """
        if self._refused or self._paying is False:
            return False
        if record.is_terminal and not self._complete(record):
            return False
        created = _wall(record.created_at)
        if created is None or self._full_keys is None:
            return False
        track = self._manager._tracks[pid]
        if track.request is not None:
            return False
        self._manager._polls.discard(pid)
        self._known[pid] = created
        return True

    def discard(self, pid: str) -> None:
        """The id ended: sweep it no more."""
        if self._known.pop(pid, None) is None:
            self._unknown.pop(pid, None)
        self._misses.pop(pid, None)

    # -- the sweeping task ----------------------------------------------------

    async def run(self) -> None:
        """Sweep, one sweep after another, while there are ids to sweep."""
        loop = asyncio.get_running_loop()
        while not self._refused:
            await self._wake.wait()
            self._wake.clear()
            if not self._known and not self._unknown:
                self._first_joined = None
                continue
            if self._paying is None:
                # Probing: wait for enough ids to measure, or for the interval.
                first = self._first_joined or loop.time()
                wait = first + self.interval - loop.time()
                if len(self._known) < self._min_ids and wait > 0:
                    await asyncio.sleep(wait)
            started = loop.time()
            try:
                await self._sweep(loop)
            except Exception as exc:  # the client closed, a callback raised...
                self._failed(exc, loop.time())
            rest = started + self.interval - loop.time()
            if rest > 0:
                await asyncio.sleep(rest)
            self._wake.set()

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        manager = self._manager
        window = sweep_window(self._known.values())
        began = loop.time()
        newest = time.time() + _SLACK  # pinned: later predictions are not asked
        if window is not None:
            oldest = window[0] - _SLACK
        else:  # only new ids: created shortly before they were submitted
            joined = min(self._unknown.values(), default=began)
            oldest = newest - (began - joined) - NEW_ID_AGE
        after = datetime.fromtimestamp(oldest, UTC)
        before = datetime.fromtimestamp(newest, UTC)
        covered = {pid for pid, when in self._known.items() if when <= newest}
        covered.update(pid for pid, when in self._unknown.items() if when <= began)
        seen: set[str] = set()
        pages = 0
        next_query: str | None = None
        while True:
            request = list_request(
                created_after=after, created_before=before, next_query=next_query
            )
            page = await manager._fetch_page(request)
            pages += 1
            self.pages += 1
            tracks = manager._tracks
            for record in page.results:
                pid = record.id
                if pid in covered:
                    seen.add(pid)
                    await self._heard(record, loop)
                elif pid in tracks and self._take_listed(pid, record):
                    # A tracked id polled on its own (its first GET still
                    # queued, say): the sweeps report it from now on.
                    seen.add(pid)
                    await self._heard(record, loop)
            next_query = page.next_query
            if next_query is None or not page.results:
                break
        self.sweeps += 1
        self._missed(covered - seen, loop.time())
        ids = len(seen)
        if self._always:
            self._paying = True
        elif ids >= self._min_ids or self._paying is not None:
            paying = sweep_pays(pages, ids)
            if paying != self._paying:
                logger.info(
                    "a sweep of the list took %d pages for %d ids: %s",
                    pages,
                    ids,
                    "sweeping"
                    if paying
                    else "polling each id (the account's other predictions "
                    "outnumber them)",
                )
            self._paying = paying
            if not paying:
                self._probe_at = loop.time() + PROBE_AGAIN
                self._release(list(self._known) + list(self._unknown), loop.time())

    async def _heard(self, record: Prediction, loop: asyncio.AbstractEventLoop) -> None:
        """A swept id's list item: its status, or a cue to fetch its record."""
        manager = self._manager
        pid = record.id
        track = manager._tracks.get(pid)
        if track is None:
            return
        self._misses.pop(pid, None)
        if pid in self._unknown:
            del self._unknown[pid]
            created = _wall(record.created_at)
            if created is None:  # no way to place it: poll it on its own
                self._release([pid], loop.time())
                return
            self._known[pid] = created
        if record.is_terminal:
            if self._complete(record):
                await manager._heard(track, record)
            else:  # a slim item: one GET for the whole record, first in line
                self.discard(pid)
                manager._poll_now(track, first=True)
            return
        await manager._heard(track, record)

    def _missed(self, missing: set[str], now: float) -> None:
        """Ids a sweep did not list: after a few sweeps, poll them on their own."""
        released = []
        for pid in missing:
            if pid in self._unknown:  # created before the window, or elsewhere
                released.append(pid)
                continue
            misses = self._misses.get(pid, 0) + 1
            if misses >= MAX_MISSES:
                released.append(pid)
            else:
                self._misses[pid] = misses
        self._release(released, now)

    def _failed(self, error: Exception, now: float) -> None:
        """A page failed for good: poll every swept id on its own."""
        if self._refused:
            return
        if _not_served(error):
            self._refused = True
            logger.warning(
                "the server does not serve the list of predictions (%s); "
                "polling each id instead",
                error,
            )
        else:
            logger.info(
                "a sweep failed (%s); polling each id instead for a while", error
            )
            self._paying = False
            self._probe_at = now + PROBE_AGAIN
        self._release(list(self._known) + list(self._unknown), now)

    def _release(self, pids: list[str], now: float) -> None:
        """Hand ``pids`` back to per-id polling, due at once."""
        manager = self._manager
        for pid in pids:
            self.discard(pid)
            track = manager._tracks.get(pid)
            if track is not None:
                manager._poll_now(track)


def _not_served(error: Exception) -> bool:
    if isinstance(error, BaseURLError | GatewayError):
        return True
    if isinstance(error, DecodeError):
        return not error.transient
    return isinstance(error, HTTPStatusError) and error.status in _NOT_SERVED
