"""A seeded chaos batch: every outcome and fault at once, and what each id owes."""

from __future__ import annotations

import random
import types
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar

import attrs

from ._faults import Fault

if TYPE_CHECKING:
    from ._server import FakeReplicate

__all__ = ["ChaosBatch"]


@attrs.frozen(repr=False, eq=False)
class ChaosBatch:
    """A batch scripted on a fake server to go wrong in every way.

    :meth:`script` makes it: predictions ending in every outcome, a few that
    sit in an undocumented status for ever, a few that fail every request, a
    few whose first answer is slower than your client's timeout, ids that do
    not exist, ids that are not ids, duplicates, and a random fault on a share
    of all requests. The fields say what each id should end as, so a test (or
    a soak) polls :attr:`batch` with its own code and checks every result
    against them.

    Example:
        >>> from replipoll.testing import FakeReplicate
        >>> from replipoll.testing.chaos import ChaosBatch
        >>> server = FakeReplicate()
        >>> chaos = ChaosBatch.script(server, 800, seed=1, slow_beyond=3.0)
        >>> chaos  # doctest: +NORMALIZE_WHITESPACE
        ChaosBatch(batch=810 ids, expected=800, undocumented=8, permanent=4,
                   beyond=4, missing=2, invalid=3, hostile=3+3+3+3)
        >>> sorted(set(chaos.expected.values()))
        ['aborted', 'canceled', 'failed', 'succeeded']
        >>> pid = sorted(chaos.permanent)[0]
        >>> chaos.expected[pid], pid in chaos.batch, pid in chaos.beyond
        ('succeeded', True, False)
        >>> server.prediction_state(chaos.undocumented[0])["status"]
        'expired_by_gateway'

        The same seeds (this one and the server's) script the same batch:

        >>> again = ChaosBatch.script(FakeReplicate(), 800, seed=1, slow_beyond=3.0)
        >>> again.batch == chaos.batch
        True
    """

    #: The outcomes of the scripted ids, in these proportions (12 successes,
    #: 3 failures, 2 cancels and 2 aborts in every 19), shuffled.
    OUTCOMES: ClassVar[tuple[str, ...]] = (
        ("succeeded",) * 12 + ("failed",) * 3 + ("canceled",) * 2 + ("aborted",) * 2
    )
    #: The status the :attr:`undocumented` ids stay in (none of Replicate's).
    UNDOCUMENTED: ClassVar[str] = "expired_by_gateway"
    #: The faults the :attr:`permanent` ids get on every request, in turn.
    PERMANENT_FAULTS: ClassVar[tuple[Fault, ...]] = (
        Fault.server_error(),
        Fault.unavailable_comet(),
        Fault.truncated_json(),
        Fault.cloudflare_timeout(),
    )

    #: The ids to submit, in this order (the scripted ids, the
    #: :attr:`missing` and :attr:`invalid` ones and the duplicates,
    #: shuffled). Each entry should get one result.
    batch: tuple[str, ...]
    #: The outcome the server ends each scripted id with (the
    #: :attr:`permanent` ones too, though no request for them gets it).
    expected: Mapping[str, str]
    #: Ids that stay in :attr:`UNDOCUMENTED` for ever, not in :attr:`batch`
    #: (poll them with a deadline).
    undocumented: tuple[str, ...]
    #: Successes whose every request fails, so they end with exhausted retries.
    permanent: frozenset[str]
    #: Successes whose first answer comes after ``slow_beyond`` seconds.
    beyond: frozenset[str]
    #: Valid ids the server does not know (it answers ``404``).
    missing: frozenset[str]
    #: Ids that are not prediction ids (refused before any request).
    invalid: frozenset[str]
    #: Successes every answer of which is too big (a body larger than
    #: ``oversize``, a gzip bomb unpacking to it, a body that never ends);
    #: they end with the client's size-limit error.
    oversized: frozenset[str] = frozenset()
    #: Successes whose first answer is another prediction's record; retried,
    #: they end as :attr:`expected`.
    mixed_up: frozenset[str] = frozenset()
    #: Successes whose first answer trickles in a byte every 50 ms, slower
    #: than any per-request timeout; retried, they end as :attr:`expected`.
    trickled: frozenset[str] = frozenset()
    #: Successes every answer of which is a 401 echoing the client's key
    #: around the 300-character cut of error messages.
    echoed: frozenset[str] = frozenset()

    @classmethod
    def script(
        cls,
        server: FakeReplicate,
        n: int,
        *,
        seed: int,
        slow_beyond: float,
        faults: Iterable[Fault] | None = None,
        probability: float = 0.2,
        invalid_ids: bool = True,
        duplicates: int = 5,
        hostile: bool = True,
        oversize: int = 17 * 2**20,
    ) -> ChaosBatch:
        """Script *n* ids of every outcome on *server*, arm every fault; return them.

        Besides the *n* ids (see :attr:`OUTCOMES`; each queued up to 0.3 s,
        then processing up to 1 s), it scripts ``max(4, n // 100)``
        :attr:`undocumented` ids, picks ``max(4, n // 400)`` successes to
        fail every request (:attr:`PERMANENT_FAULTS`) and as many others
        whose first answer takes *slow_beyond* seconds, adds
        ``max(2, n // 500)`` :attr:`missing` ids, and turns chaos on
        (:meth:`~replipoll.testing.FakeReplicate.set_chaos`). With *hostile*,
        it also picks ``max(3, n // 20_000)`` successes for each of
        :attr:`oversized`, :attr:`mixed_up`, :attr:`trickled` and
        :attr:`echoed`. The same *seed* scripts the same batch on a new
        server with the same seed of its own.

        Args:
            server: The fake server (started or not); its other predictions
                and faults are left alone.
            n: How many ids to script; at least 8.
            seed: Seeds the timings, the shuffles, the picks and the chaos.
            slow_beyond: Seconds before the first answer to a :attr:`beyond`
                id; make it longer than your client's per-request timeout.
            faults: What chaos draws from; default: all of
                :data:`~replipoll.testing.CHAOS_FAULTS`.
            probability: The share of requests chaos spoils.
            invalid_ids: Whether :attr:`batch` holds :attr:`invalid` ids.
            duplicates: How many of the scripted ids :attr:`batch` holds twice.
            hostile: Whether to script the hostile-answer ids.
            oversize: Bytes of an :attr:`oversized` answer (unpacked, for the
                bomb); make it larger than your client's ``max_answer_size``.

        Raises:
            ValueError: *n* is below 8 or *duplicates* below 0, or
                :meth:`~replipoll.testing.FakeReplicate.set_chaos` refuses
                *probability* or *faults*.
        """
        if n < 8:
            raise ValueError("a chaos batch needs at least 8 ids")
        if duplicates < 0:
            raise ValueError("duplicates must be 0 or more")
        rng = random.Random(seed)
        outcomes = [cls.OUTCOMES[i % len(cls.OUTCOMES)] for i in range(n)]
        rng.shuffle(outcomes)
        ids = server.add_predictions(
            n,
            lambda i: {
                "queue": round(rng.uniform(0, 0.3), 3),
                "duration": round(rng.uniform(0, 1.0), 3),
                "outcome": outcomes[i],
            },
        )
        expected = dict(zip(ids, outcomes, strict=True))
        undocumented = server.add_predictions(
            max(4, n // 100), outcome=cls.UNDOCUMENTED
        )
        succeeded = [pid for pid in ids if expected[pid] == "succeeded"]
        few = max(4, n // 400)
        hostile_few = max(3, n // 20_000) if hostile else 0
        picked = rng.sample(succeeded, 2 * few + 4 * hostile_few)
        permanent = sorted(picked[: 2 * few : 2])
        beyond = sorted(picked[1 : 2 * few : 2])
        hostile_ids = picked[2 * few :]
        oversized, mixed_up, trickled, echoed = (
            sorted(hostile_ids[k::4]) for k in range(4)
        )
        for i, pid in enumerate(permanent):
            fault = cls.PERMANENT_FAULTS[i % len(cls.PERMANENT_FAULTS)]
            server.add_fault(fault, prediction_id=pid, times=None)
        for pid in beyond:
            server.add_fault(Fault.slow(slow_beyond), prediction_id=pid)
        too_big = (
            Fault.huge_body(oversize),
            Fault.gzip_bomb(oversize),
            Fault.endless_body(),
        )
        for i, pid in enumerate(oversized):
            server.add_fault(too_big[i % 3], prediction_id=pid, times=None)
        for pid in mixed_up:
            server.add_fault(Fault.mismatched_id(), prediction_id=pid)
        for pid in trickled:
            server.add_fault(Fault.trickle(0.05), prediction_id=pid)
        for i, pid in enumerate(echoed):
            echo = Fault.echoed_key(401, offset=270 + 7 * i)
            server.add_fault(echo, prediction_id=pid, times=None)
        missing = [f"missing{i:06d}" for i in range(max(2, n // 500))]
        invalid = ["../etc", "a b", "x" * 300] if invalid_ids else []
        batch = [*ids, *missing, *invalid, *ids[:duplicates]]
        rng.shuffle(batch)
        server.set_chaos(probability, faults, seed=seed)
        return cls(
            batch=tuple(batch),
            expected=types.MappingProxyType(expected),
            undocumented=tuple(undocumented),
            permanent=frozenset(permanent),
            beyond=frozenset(beyond),
            missing=frozenset(missing),
            invalid=frozenset(invalid),
            oversized=frozenset(oversized),
            mixed_up=frozenset(mixed_up),
            trickled=frozenset(trickled),
            echoed=frozenset(echoed),
        )

    def __repr__(self) -> str:
        # The fields hold up to hundreds of thousands of ids: count them.
        return (
            f"ChaosBatch(batch={len(self.batch)} ids, expected={len(self.expected)}, "
            f"undocumented={len(self.undocumented)}, permanent={len(self.permanent)}, "
            f"beyond={len(self.beyond)}, missing={len(self.missing)}, "
            f"invalid={len(self.invalid)}, hostile={len(self.oversized)}+"
            f"{len(self.mixed_up)}+{len(self.trickled)}+{len(self.echoed)})"
        )
