"""The results file of ``replipoll run``: what each input's lines say, and a plan.

``replipoll run --inputs FILE --out OUT`` writes, for each input (its
``input_index``: its place among the non-blank lines of FILE), lines of a
:class:`~replipoll._cli._resultlog.ResultLog`, each fsynced before the next:

* ``"creating"`` just before its create may go out (``sent_at``);
* ``"created"`` as soon as the prediction exists (its ``id``);
* its outcome: a final status, ``"error"`` (with the error), or
  ``"uncertain"`` when the create failed after it may have arrived
  (:class:`~replipoll.PredictionMayExistError`: ``sent_at``, request id).

A line for an input that has no prediction (yet) carries the placeholder id
``#input-N``, which no prediction id has (``#`` is refused in ids). Every
line carries ``input_digest`` (:func:`~replipoll._cli._inputs.input_digest`),
so that a rerun knows its N-th input is still the one recorded.

:func:`plan_resume` reads the last line of each input and says what a rerun
does with it: nothing (finished, or uncertain), poll its id (created, not
finished), or create it (never sent, or refused). Pure: no I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from ._resultlog import ResultLog, dumps

__all__ = [
    "CREATED",
    "CREATING",
    "UNCERTAIN",
    "Journal",
    "JournalError",
    "ResumePlan",
    "placeholder",
    "plan_resume",
    "read_lines",
]

#: The create of the input may be on its way (written before it is sent).
CREATING: Final = "creating"
#: The prediction exists; not finished yet.
CREATED: Final = "created"
#: The create failed after it may have arrived: the prediction may exist.
UNCERTAIN: Final = "uncertain"
#: The ``result`` of an input whose create or poll ended in an error.
ERROR: Final = "error"
_PLACEHOLDER: Final = "#input-"


def placeholder(index: int) -> str:
    """The ``id`` of the lines of an input that has no prediction id.

    Example:
        >>> placeholder(3)
        '#input-3'
    """
    return f"{_PLACEHOLDER}{index}"


class JournalError(ValueError):
    """The results file does not belong to these inputs; nothing was changed."""


@attrs.frozen
class ResumePlan:
    """What a run does with each input, given its results file.

    Attributes:
        create: Inputs to create (never sent, refused, or uncertain with
            ``recreate_uncertain``), in order.
        poll: Ids created by an earlier run and not finished, with their
            input's index: polled, never created again.
        done: Inputs finished in earlier runs: their outcome (a final
            status, ``"error"`` never), or ``"uncertain"`` for an input
            left alone because its prediction may exist.
        uncertain: The ``sent_at`` of each input left alone as uncertain
            (``None`` if the line has none).
        recreated: Uncertain inputs created again (``recreate_uncertain``).
    """

    create: list[int]
    poll: dict[str, int]
    done: dict[int, str]
    uncertain: dict[int, float | None] = attrs.Factory(dict)
    recreated: int = 0


def read_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a results file :meth:`ResultLog.open` has checked.

    Every complete line is then a JSON object (blank lines skipped); a torn
    last line has been cut off.
    """
    records = []
    with open(path, "rb") as file:
        for line in file:
            if line.strip() and line.endswith(b"\n"):
                records.append(json.loads(line))
    return records


def plan_resume(
    records: Iterable[Mapping[str, Any]],
    digests: Sequence[str],
    source: str,
    *,
    recreate_uncertain: bool = False,
) -> ResumePlan:
    """What to do with each input, from the lines an earlier run left.

    Args:
        records: The file's lines, in order (:func:`read_lines`).
        digests: The :func:`~replipoll._cli._inputs.input_digest` of each
            input of this run.
        source: The file's name, for messages.
        recreate_uncertain: Create again the inputs whose create may have
            made a prediction.

    Example:
        >>> def line(index, pid, result, **more):
        ...     digest = "abcd"[index]
        ...     return {"id": pid, "result": result, "input_index": index,
        ...             "input_digest": digest, **more}
        >>> lines = [
        ...     line(0, "p0", "created"),
        ...     line(0, "p0", "succeeded"),
        ...     line(1, "p1", "created"),
        ...     line(2, "#input-2", "uncertain", sent_at=1.5),
        ... ]
        >>> plan = plan_resume(lines, ["a", "b", "c", "d"], "out.jsonl")
        >>> plan.create, plan.poll, plan.done, plan.uncertain
        ([3], {'p1': 1}, {0: 'succeeded', 2: 'uncertain'}, {2: 1.5})

    Raises:
        JournalError: a line without an ``input_index`` (not a file of
            ``replipoll run``), with an index this run does not have, or
            recorded for another input or model.
    """
    last: dict[int, Mapping[str, Any]] = {}
    for number, record in enumerate(records, 1):
        index = record.get("input_index")
        where = f"{source} line {number}"
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise JournalError(
                f"{where} has no input_index: it is not a results file of "
                "replipoll run; choose another --out"
            )
        if index >= len(digests):
            raise JournalError(
                f"{where} records input {index}, but there are only "
                f"{len(digests)} inputs; is it the results file of another "
                "inputs file? Choose another --out"
            )
        if record.get("input_digest") != digests[index]:
            raise JournalError(
                f"{where} records input {index} (line {index + 1} among the "
                "inputs) with other inputs or another model than this run's; "
                "was the inputs file changed? Choose another --out"
            )
        last[index] = record
    create: list[int] = []
    poll: dict[str, int] = {}
    done: dict[int, str] = {}
    uncertain: dict[int, float | None] = {}
    recreated = 0
    for index in range(len(digests)):
        if index not in last:
            create.append(index)
            continue
        record = last[index]
        result, pid = record["result"], record["id"]
        if result in (CREATING, UNCERTAIN):
            if recreate_uncertain:
                create.append(index)
                recreated += 1
            else:
                done[index] = UNCERTAIN
                sent = record.get("sent_at")
                if isinstance(sent, bool) or not isinstance(sent, int | float):
                    sent = None
                uncertain[index] = sent
        elif result in (CREATED, ERROR):
            if pid.startswith(_PLACEHOLDER):
                create.append(index)  # refused: nothing was created
            else:
                poll[pid] = index
        else:
            done[index] = result  # a final status
    return ResumePlan(create, poll, done, uncertain, recreated)


class Journal:
    """Where a batch's lines go: a :class:`ResultLog` (durable) or standard output.

    Lines are written in order by one worker thread (polling goes on while
    a line is fsynced); :meth:`write_now` writes in the caller's thread,
    for a line that must be on disk before what follows it (a create).
    :meth:`close` waits for every line asked for, then closes the file.
    """

    def __init__(self, log: ResultLog | None, stdout: Any = None) -> None:
        self.log = log
        self._stdout = stdout
        self._lock = threading.Lock()
        self._worker = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="replipoll-journal"
        )

    def _append(self, record: Mapping[str, Any]) -> None:
        assert self.log is not None
        with self._lock:
            self.log.append(record)

    def write_now(self, record: Mapping[str, Any]) -> None:
        """Write a line to the file (if any) before returning.

        Raises:
            OSError: it could not be written (disk full...).
        """
        if self.log is not None:
            self._append(record)

    async def write(self, record: Mapping[str, Any], *, outcome: bool) -> None:
        """Write a line; an ``outcome`` line goes to standard output without a file.

        Without a file, lines that are not outcomes are dropped (there is
        nothing to resume from).
        """
        if self.log is None:
            if outcome:
                self._print(record)
            return
        loop = asyncio.get_running_loop()
        # Shielded: a cancelled caller must not leave a line half asked for;
        # close() waits for it.
        await asyncio.shield(loop.run_in_executor(self._worker, self._append, record))

    def _print(self, record: Mapping[str, Any]) -> None:
        # Looked up each time: a progress bar swaps sys.stdout for a proxy.
        out = sys.stdout if self._stdout is None else self._stdout
        out.write(dumps(record) + "\n")
        out.flush()

    def close(self) -> None:
        """Write every line asked for, then close the file. Idempotent."""
        self._worker.shutdown(wait=True)
        if self.log is not None:
            self.log.close()
