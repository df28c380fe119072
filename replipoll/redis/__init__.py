"""replipoll past one process, through Redis (``pip install 'replipoll[redis]'``).

The processes that use one API key share, through a Redis they already run:

- :class:`RedisBudget`: the key's rate budget, a drop-in for
  :class:`~replipoll.RateBudget` (one ``Retry-After`` pauses them all);
- :class:`RedisShare`: the polling of ids and the records learned, so that
  each id is polled by one process at a time and a webhook that lands on
  any of them resolves the id wherever it is awaited;
- :class:`RedisBatch`: one batch of ids spread over workers on any number
  of hosts, none lost or done twice when a worker dies.

See :doc:`/howto/redis`.
"""

from __future__ import annotations

from ._batch import RedisBatch
from ._batch_values import (
    BatchKeys,
    BatchResult,
    BatchStatus,
    WorkerReport,
    batch_record,
)
from ._budget import RedisBudget
from ._errors import (
    RedisBatchError,
    RedisStoreError,
    RedisUnavailableError,
    UnknownBatchError,
)
from ._share import RedisShare

__all__: list[str] = [
    "BatchKeys",
    "BatchResult",
    "BatchStatus",
    "RedisBatch",
    "RedisBatchError",
    "RedisBudget",
    "RedisShare",
    "RedisStoreError",
    "RedisUnavailableError",
    "UnknownBatchError",
    "WorkerReport",
    "batch_record",
]
