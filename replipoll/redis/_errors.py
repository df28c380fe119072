"""The errors of :mod:`replipoll.redis`: Redis could not be used.

::

    ReplipollError
    └── RedisStoreError            Redis could not be used (url, reason)
        ├── RedisUnavailableError  no connection, or no answer in time (key)
        └── RedisBatchError        a batch's Redis answered with an error (batch)
            └── UnknownBatchError  the batch has no ids, and nobody loads any

Every message and attribute names Redis by its URL without credentials;
each error pickles, and shows as ``replipoll.redis.Name`` in tracebacks.
"""

from __future__ import annotations

from .._errors import ReplipollError

__all__ = [
    "RedisBatchError",
    "RedisStoreError",
    "RedisUnavailableError",
    "UnknownBatchError",
]


class RedisStoreError(ReplipollError):
    """Redis could not be used for what was shared there.

    Attributes:
        url: Where Redis is (``redis://host:port/db``; never a password).
        reason: What failed, in Redis's (or the connection's) words, with any
            credentials blanked out.
    """

    def __init__(self, message: str, *, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class RedisUnavailableError(RedisStoreError):
    """Redis did not answer: no connection, or no answer in time.

    What :meth:`RedisBudget.acquire <replipoll.redis.RedisBudget.acquire>`
    raises with ``on_unavailable="fail"`` (the default), no request having
    been sent, and what a :class:`~replipoll.redis.RedisBatch` raises when
    it cannot reach its Redis.

    Attributes:
        key: The key the call was for: the budget's key, or the batch's
            name.
    """

    def __init__(self, message: str, *, url: str, reason: str, key: str) -> None:
        super().__init__(message, url=url, reason=reason)
        self.key = key


class RedisBatchError(RedisStoreError):
    """A batch's Redis answered with an error (refused credentials, say).

    Attributes:
        batch: The batch's name.
    """

    def __init__(self, message: str, *, url: str, reason: str, batch: str) -> None:
        super().__init__(message, url=url, reason=reason)
        self.batch = batch


class UnknownBatchError(RedisBatchError):
    """The batch has no ids, and nobody is loading any (or it was deleted)."""


for _error in (
    RedisStoreError,
    RedisUnavailableError,
    RedisBatchError,
    UnknownBatchError,
):
    _error.__module__ = "replipoll.redis"
