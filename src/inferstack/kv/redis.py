"""Connections to a Redis-protocol server, for every part that uses one: the feature store's
shared cache (featurestore/cache/redis.py), the interaction store's hot tier
(interactions/hot/redis.py) and the checks that ping them (server/components.py,
server/doctor.py, the console).

An address is "host:port" or a URL: redis://[user:password@]host:port/db, rediss://,
unix://. Messages and logs name a server by `redacted(address)`, never with its password.
The redis package is imported by `pooled_client` only, so the rest costs nothing to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import redis.asyncio as aioredis


def redis_url(address: str) -> str:
    """The URL of an address: "host:port" becomes redis://host:port, a URL stays as it is."""
    return address if "://" in address else f"redis://{address}"


def redacted(address: str) -> str:
    """An address (or URL) as messages may show it: user and password replaced by ***."""
    if "://" not in address:  # host:port, perhaps after user:password@
        return address if "@" not in address else "***@" + address.rpartition("@")[2]
    parts = urlsplit(address)
    if "@" not in parts.netloc:
        return address
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def pooled_client(address: str, *, timeout: float, max_connections: int) -> aioredis.Redis:
    """A client over a pool of at most `max_connections` connections to `address`.

    `timeout` bounds in seconds each wait: for a free pooled connection (callers beyond the
    pool wait), connecting, and every reply. The client never retries by itself: its user
    decides what is tried again (a cache's circuit breaker, the hot tier's one more go).
    `aclose(close_connection_pool=True)` closes the pool with it.
    """
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool: aioredis.BlockingConnectionPool = aioredis.BlockingConnectionPool.from_url(
        redis_url(address),
        max_connections=max_connections,
        timeout=timeout,  # waiting for a free pooled connection
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )
    return aioredis.Redis(connection_pool=pool)
