"""Reading what a subprocess draws on a pseudo-terminal (a progress bar)."""

from __future__ import annotations

import os
import select
import subprocess
import time


def read_terminal(
    controller: int, proc: subprocess.Popen[bytes], *, timeout: float = 60
) -> str:
    """Read ``controller`` until ``proc`` ends (or ``timeout``); close it.

    A process still running at the timeout is killed, so a hang shows as
    a failure, not as a test that never ends.
    """
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            try:
                data = os.read(controller, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(controller)
    if proc.poll() is None:
        proc.kill()
    return b"".join(chunks).decode("utf-8", "replace")
