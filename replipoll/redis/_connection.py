"""Naming a Redis in messages without its credentials.

Every message, log line and error of :mod:`replipoll.redis` names Redis by
:func:`where` (its address, from the connection's options) and passes any
text that came from redis-py through :func:`scrub`; a URL a user gave is
shown as :func:`redact_url` makes it.
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["redact_url", "scrub", "secrets_of", "where"]

#: A password given in a URL's query (``unix://...?password=...``).
_QUERY_PASSWORD: Final = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


def _options(connection: object) -> dict[str, Any]:
    pool = getattr(connection, "connection_pool", None)
    options = getattr(pool, "connection_kwargs", None)
    return options if isinstance(options, dict) else {}


def where(connection: object) -> str:
    """Redis's address as a URL without credentials, for messages.

    Example:
        >>> from redis.asyncio import Redis
        >>> where(Redis.from_url("redis://:s3cret@cache:6380/2"))
        'redis://cache:6380/2'
    """
    options = _options(connection)
    if "path" in options:
        return f"unix://{options['path']}?db={options.get('db', 0)}"
    host, port = options.get("host", "localhost"), options.get("port", 6379)
    return f"redis://{host}:{port}/{options.get('db', 0)}"


def secrets_of(connection: object) -> list[str]:
    """The passwords a connection holds, to cut out of any message."""
    password = _options(connection).get("password")
    return [password] if isinstance(password, str) and password else []


def scrub(text: str, connection: object) -> str:
    """``text`` with every password of ``connection`` replaced by ``***``."""
    for secret in secrets_of(connection):
        text = text.replace(secret, "***")
    return text


def redact_url(url: str) -> str:
    """``url`` with its password (in the authority or the query) replaced by ``***``.

    Example:
        >>> redact_url("redis://user:s3cret@cache:6380/2")
        'redis://user:***@cache:6380/2'
        >>> redact_url("unix:///run/redis.sock?db=1&password=s3cret")
        'unix:///run/redis.sock?db=1&password=***'
        >>> redact_url("redis://localhost")
        'redis://localhost'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        name, colon, _ = userinfo.partition(":")
        authority = f"{name}:***@{host}" if colon else f"***@{host}"
    tail = _QUERY_PASSWORD.sub(r"\1***", tail)
    return f"{scheme}{sep}{authority}{tail}"
