"""A fake Replicate-compatible server to test code that polls predictions.

:class:`FakeReplicate` is a real :mod:`aiohttp.web` app on loopback that serves
Replicate's prediction API under ``/v1`` and the gateways' copy (DeerAPI,
CometAPI) under ``/replicate/v1``.  Predictions are scripted (``starting`` for
so long, ``processing`` for so long, then an outcome) against a clock you may
drive by hand, and faults -- rate limits, HTML error pages, resets, truncated
bodies -- can be queued for the next requests or sprinkled at random with a
seed.  :attr:`FakeReplicate.stats` counts what clients did (peak concurrency,
requests made too early after a 429, ...). (:mod:`replipoll.testing.chaos`
holds the machinery of replipoll's own chaos tests; you do not need it.)

Example:
    >>> import asyncio, aiohttp
    >>> from replipoll.testing import FakeReplicate, Fault
    >>> async def main() -> list[object]:
    ...     async with FakeReplicate(api_key="k") as server:
    ...         pid = server.add_prediction(duration=0)
    ...         server.add_fault(Fault.rate_limited(0.1), prediction_id=pid)
    ...         url = f"{server.base_url()}/predictions/{pid}"
    ...         headers = {"Authorization": "Bearer k"}
    ...         async with aiohttp.ClientSession(headers=headers) as session:
    ...             async with session.get(url) as first:
    ...                 seen = [first.status, first.headers["Retry-After"]]
    ...             async with session.get(url) as second:
    ...                 seen.append((await second.json())["status"])
    ...         return [*seen, server.stats.early_requests]
    >>> asyncio.run(main())
    [429, '0.1', 'succeeded', 1]

Pass ``clock=FakeClock()`` to step statuses by hand instead of sleeping.
Command line: ``python -m replipoll.testing --scenario demo``.  Pytest: add
``pytest_plugins = ["replipoll.testing.pytest_plugin"]`` for a
``fake_replicate`` fixture.
"""

from ._cli import main, run_server
from ._create import CreateRecord
from ._faults import (
    ANSWER_FAULTS,
    CHAOS_FAULTS,
    HOSTILE_FAULTS,
    LOST_ANSWER_FAULTS,
    Fault,
)
from ._http import PREFIXES, ErrorStyle
from ._records import Timeline
from ._scenarios import SCENARIOS, load_scenario
from ._server import DEFAULT_API_KEY, LIST_OMITS, FakeReplicate
from ._stats import FakeClock, RequestRecord, ServerStats, WebhookRecord
from ._workload import DEFAULT_MODELS, ModelProfile, add_workload

__all__ = [
    "ANSWER_FAULTS",
    "CHAOS_FAULTS",
    "DEFAULT_API_KEY",
    "DEFAULT_MODELS",
    "HOSTILE_FAULTS",
    "LIST_OMITS",
    "LOST_ANSWER_FAULTS",
    "PREFIXES",
    "SCENARIOS",
    "CreateRecord",
    "ErrorStyle",
    "FakeClock",
    "FakeReplicate",
    "Fault",
    "ModelProfile",
    "RequestRecord",
    "ServerStats",
    "Timeline",
    "WebhookRecord",
    "add_workload",
    "load_scenario",
    "main",
    "run_server",
]
