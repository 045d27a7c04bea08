"""Settings models of the key-value systems, taken whole by their adapters.

Each model is one section of the deployment file (server/settings.py puts it in place:
`storage:` for Cassandra, `cache.shared:` for Redis) and its adapter (`kv/cassandra.py`,
`featurestore/cache/redis.py`) takes the model itself, so a setting is declared once.
Durations read as seconds or as text such as "250ms" and "5s". Checks that need the
driver (consistency names, replication options, contact points) stay in the adapter.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from inferstack.core.durations import parse_duration

Seconds = Annotated[float, BeforeValidator(parse_duration)]
DEFAULT_KEYSPACE = "inferstack"


class Section(BaseModel):
    """A section of the deployment file: unknown fields are refused, values never change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CassandraSettings(Section):
    """ScyllaDB or Apache Cassandra: the feature rows and the interactions' cold rows."""

    type: Literal["cassandra", "scylla"] = "cassandra"
    contact_points: list[str] = Field(min_length=1)  # host[:port], one port for all
    keyspace: str = DEFAULT_KEYSPACE
    replication: dict[str, str | int] | None = None  # default SimpleStrategy, factor 1
    local_dc: str | None = None
    read_consistency: str = "LOCAL_ONE"
    write_consistency: str = "LOCAL_QUORUM"
    request_timeout: Seconds = 1.0
    connect_timeout: Seconds = 5.0
    max_in_flight: int = Field(128, ge=1)


class RedisCacheSettings(Section):
    """Any Redis-protocol server: Redis, Dragonfly, Valkey, KeyDB."""

    type: Literal["redis"] = "redis"
    address: str  # host:port or redis://[user:password@]host:port/db
    prefix: str = "ifs:"
    timeout: Seconds = Field(0.05, gt=0)  # every call, bounded; then a miss
    ttl_jitter: float = Field(0.1, ge=0, lt=1)
    max_connections: int = Field(64, ge=1)
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown: Seconds = 1.0
