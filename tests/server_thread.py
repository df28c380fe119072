"""A FakeReplicate on a thread of its own, for tests of the CLI in subprocesses."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from replipoll.testing import FakeReplicate

T = TypeVar("T")


class ServerThread:
    """A FakeReplicate served from a background thread's event loop."""

    def __init__(self, server: FakeReplicate) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``func`` on the server's loop (the only thread touching it)."""

        async def run() -> T:
            return func(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def base_url(self) -> str:
        return self.server.base_url()

    def add(self, n: int, **kwargs: Any) -> list[str]:
        return self.call(self.server.add_predictions, n, **kwargs)

    def requests_for(self, pid: str) -> int:
        return self.call(lambda: self.server.stats.requests_per_id[pid])
