"""What a PollManager needs of a request budget and of peers it shares ids with.

Two seams, as protocols: a :class:`Budget` is what every request spends
(:class:`~replipoll.RateBudget` in one process; a budget kept in Redis,
:class:`replipoll.redis.RedisBudget`, across many). A :class:`Share` joins
the managers of several processes: one of them polls each id, and a record
any of them learns (by a poll, or a webhook pushed to it) reaches all the
others. Without a share a manager polls every id it tracks, as one process.

Pure: protocols only, no I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._models import Prediction

__all__ = ["Budget", "Share", "ShareHooks"]


@runtime_checkable
class Budget(Protocol):
    """A request budget: what :class:`~replipoll.RateBudget` offers a client.

    Times are ``time.monotonic()`` seconds of this process: a budget kept
    elsewhere converts them (a pause is a duration from now).
    """

    #: Requests per second (``None``: no limit), and bursts; a client slows
    #: them down to what a 429 states.
    rate: float | None
    burst: int

    @property
    def paused_until(self) -> float:
        """The time before which no request may go, as far as is known here."""
        ...

    def try_acquire(self, now: float) -> bool:
        """Take a slot for a request sent at ``now``, if that needs no waiting."""
        ...

    async def acquire(self, *, urgent: bool = False) -> float:
        """Wait for a slot; return the seconds waited."""
        ...

    def pause_until(self, when: float) -> None:
        """Hand out no slot before ``when`` (a ``Retry-After``)."""
        ...

    def heed(self, remaining: int, reset: float, now: float) -> None:
        """Slow down to a server's word: ``remaining`` requests in ``reset`` s."""
        ...

    def is_paused(self, now: float) -> bool:
        """Whether a pause is still running at ``now``."""
        ...


class ShareHooks(Protocol):
    """What a manager offers the :class:`Share` it is attached to."""

    def deliver(self, prediction: Prediction) -> None:
        """A record a peer learned: apply it as a push (not published again)."""
        ...

    def poll_now(self, prediction_id: str) -> None:
        """Poll the id at once: this process took it over (it may poll it now)."""
        ...


@runtime_checkable
class Share(Protocol):
    """Peers that share the polling of ids and the records learned.

    A :class:`~replipoll.PollManager` given a share calls :meth:`attach` as
    it starts, :meth:`track` for each id it begins to follow and
    :meth:`untrack` as it stops (resolved, failed, cancelled), asks
    :meth:`may_poll` before each request for an id, and :meth:`publish`\\ es
    every terminal record it learns by a poll and every record pushed to it.
    The share calls back through :class:`ShareHooks`. Every call is made
    on the manager's event loop and must not block.
    """

    def attach(self, hooks: ShareHooks) -> None:
        """A manager starts: deliver records to ``hooks`` from now on."""
        ...

    def detach(self, hooks: ShareHooks) -> None:
        """The manager closes: forget it (its ids were untracked first)."""
        ...

    def track(self, prediction_id: str) -> None:
        """The manager follows this id now."""
        ...

    def untrack(self, prediction_id: str) -> None:
        """The manager stopped following this id (whatever the reason)."""
        ...

    def may_poll(self, prediction_id: str) -> bool:
        """Whether this process is the one to poll the id now."""
        ...

    def publish(self, prediction: Prediction) -> None:
        """A record learned here, for every peer awaiting its id."""
        ...
