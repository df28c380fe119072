"""tqdm-style progress logs, computed from the elapsed time alone.

Pure code.  A prediction scripted with ``progress_steps`` keeps no log text:
its logs are rebuilt on every GET from how long it has been running, so that
400,000 of them cost no more memory than any others.

The lines are tqdm's default format (``{l_bar}{bar}{r_bar}``, a bar of 10
cells drawn with Unicode eighths), one for step 0 and then one every
:func:`line_every` steps and at the last step, each as tqdm would have drawn
it when that step ended.  In a terminal tqdm redraws one line with ``\\r``;
Replicate's logs show the successive draws as lines, which is what is served.
"""

from __future__ import annotations

import functools
from typing import Final

#: At most this many seconds of post-processing follow 100% (and at most a
#: tenth of the run): the outputs being written, say.
TAIL: Final = 0.5
#: tqdm's bar: 10 cells, each filled in eighths.
_CELLS: Final = 10
_EIGHTHS: Final = " " + "".join(map(chr, range(0x258F, 0x2587, -1)))
#: About this many lines at most per bar (plus the first and the last).
_LINES: Final = 50


def line_every(steps: int) -> int:
    """How many steps apart two progress lines are (1 up to 50 steps)."""
    return max(1, -(-steps // _LINES))


def tail(duration: float) -> float:
    """Seconds between the bar reaching 100% and the end of a *duration* run."""
    return min(TAIL, duration / 10)


def interval(seconds: float) -> str:
    """Format *seconds* as tqdm does: ``MM:SS``, or ``H:MM:SS`` from an hour."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours:d}:{minutes:02d}:{secs:02d}"
    return f"{minutes:02d}:{secs:02d}"


def bar(n: int, total: int) -> str:
    """Tqdm's 10-cell bar for *n* of *total* steps (``████▌     `` for 46%)."""
    eighths = len(_EIGHTHS) - 1
    full, part = divmod(int(n / total * _CELLS * eighths), eighths)
    if full >= _CELLS:
        return _EIGHTHS[-1] * _CELLS
    return _EIGHTHS[-1] * full + _EIGHTHS[part] + " " * (_CELLS - full - 1)


def line(n: int, total: int, step: float) -> str:
    """The line tqdm draws when step *n* of *total* ends, steps *step* s apart.

    Example:
        >>> line(23, 50, 0.25)
        ' 46%|████▌     | 23/50 [00:05<00:06,  4.00it/s]'
        >>> line(0, 50, 0.25)
        '  0%|          | 0/50 [00:00<?, ?it/s]'
    """
    elapsed = n * step
    head = f"{100 * n / total:3.0f}%|{bar(n, total)}| {n}/{total} [{interval(elapsed)}<"
    if n == 0 or step <= 0:
        return f"{head}?, ?it/s]"
    remaining = interval((total - n) * step)
    # tqdm shows s/it once an iteration takes more than a second.
    rate = f"{step:5.2f}s/it" if step > 1 else f"{1 / step:5.2f}it/s"
    return f"{head}{remaining}, {rate}]"


def progress_logs(steps: int, duration: float, elapsed: float) -> str:
    """The progress lines of a *duration*-second run, *elapsed* seconds in.

    The bar covers the run but its :func:`tail`; every line ends with ``\\n``.

    Example:
        >>> print(progress_logs(4, 2.0, 1.0), end="")
          0%|          | 0/4 [00:00<?, ?it/s]
         25%|██▌       | 1/4 [00:00<00:01,  2.22it/s]
         50%|█████     | 2/4 [00:00<00:00,  2.22it/s]
    """
    step = (duration - tail(duration)) / steps
    done = steps if step <= 0 else min(steps, int(max(elapsed, 0.0) / step))
    lines = _lines(steps, step)
    every = line_every(steps)
    # Lines 0, every, 2 * every, ... up to done, and the last one at the end.
    return "".join(lines[: done // every + 1 if done < steps else len(lines)])


@functools.lru_cache(maxsize=2048)
def _lines(steps: int, step: float) -> tuple[str, ...]:
    """Every line of a bar (a client polls the same prediction again and again)."""
    shown = list(range(0, steps + 1, line_every(steps)))
    if shown[-1] != steps:
        shown.append(steps)
    return tuple(f"{line(n, steps, step)}\n" for n in shown)
