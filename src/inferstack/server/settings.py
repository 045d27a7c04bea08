"""Deployment settings: where to listen and which adapter serves each concern.

One YAML file (`inferstack serve --config deploy.yaml`) selects the adapters; every field
can be overridden by an environment variable named after its path, upper-case, sections
joined by double underscores: `INFERSTACK_STORAGE__CONTACT_POINTS='[10.0.0.5:9042]'`,
`INFERSTACK_WORKERS=4`. Values from the environment are read as YAML scalars or lists.
Errors name the file and line (or the variable) and the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import yaml
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError, model_validator

from inferstack.core import limits
from inferstack.core.errors import DefinitionError, located
from inferstack.core.yamlsource import load_yaml
from inferstack.kv.settings import CassandraSettings, RedisCacheSettings, Seconds
from inferstack.server.admission import (
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_QUEUE,
    DEFAULT_MAX_QUEUE_WAIT,
)

DEFAULT_GRPC_PORT = 6566
DEFAULT_HTTP_PORT = 6567
ENV_PREFIX = "INFERSTACK_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LmdbStorageSettings(_Section):
    type: Literal["lmdb"] = "lmdb"
    path: Path | None = None  # default: <data_dir>/lmdb


class LocalCacheSettings(_Section):
    # Per worker; 0 turns the cache off. Unset: 256 MiB in front of a network store, off in
    # front of LMDB, whose memory map already is an in-process cache (a cache lookup there
    # costs more than the read it saves: see bench/README.md).
    max_bytes: ByteSize = ByteSize(256 << 20)


class CacheSettings(_Section):
    local: LocalCacheSettings = LocalCacheSettings()
    shared: RedisCacheSettings | None = None


class FileConfigSettings(_Section):
    type: Literal["files"] = "files"


class ZooKeeperConfigSettings(_Section):
    type: Literal["zookeeper"]
    hosts: str  # host:port[,host:port...][/chroot]
    root: str = "/inferstack"
    connect_timeout: Seconds = 5.0
    request_timeout: Seconds = 5.0
    session_timeout: Seconds = 10.0


class InferenceLogSettings(_Section):
    """Where sampled inference records go (each model config sets its own sample rate)."""

    type: Literal["parquet", "kafka"] = "parquet"
    directory: Path | None = None  # parquet; default <data_dir>/inference-log
    rotate_bytes: ByteSize = ByteSize(64 << 20)
    rotate_seconds: Seconds = 300.0
    bootstrap: str | None = None  # kafka: host:port[,host:port]
    topic: str = "inferstack.inference-log"
    queue: int = Field(1000, ge=1)  # records waiting at most; beyond it they are dropped


class ClientTlsSettings(_Section):
    """TLS towards another inferstack server: `ca` verifies it (default: the system's
    roots); `cert` and `key` identify this server to it when it asks (mutual TLS)."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    @model_validator(mode="after")
    def _cert_with_key(self) -> Self:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")
        return self


class InferflowSettings(_Section):
    # host:port of a feature store served elsewhere; default: this worker's own, in process
    feature_store: str | None = None
    feature_store_timeout: Seconds = 1.0
    feature_store_tls: ClientTlsSettings | None = None  # None: plaintext
    # A file holding the caller token this server presents to the remote store: deploy.yaml
    # names where the secret is, never the secret. Default: $INFERSTACK_TOKEN, if set.
    feature_store_token_file: Path | None = None
    inference_log: InferenceLogSettings = InferenceLogSettings()


class HotTierSettings(_Section):
    """Where users' recent events live while they are active."""

    type: Literal["lmdb", "redis"] = "lmdb"
    path: Path | None = None  # lmdb; default <data_dir>/interactions/hot
    address: str | None = None  # redis: host:port or redis://...; needs appendfsync always
    prefix: str = "ih:"
    timeout: Seconds = 1.0


class SweeperSettings(_Section):
    enabled: bool = True  # every worker sweeps; claims keep them from flushing a user twice
    interval: Seconds = 1.0  # between sweeps while no user is due
    batch: int = Field(500, ge=1)  # users claimed per sweep
    lease: Seconds = 30.0  # a claim not released by then is taken over by another sweeper


class InteractionKafkaSettings(_Section):
    bootstrap: str  # host:port[,host:port]
    group: str = "inferstack-interactions"
    topic_prefix: str = "interactions."  # one topic per interaction type: <prefix><type>
    types: list[str] | None = None  # default: every type defined when the worker starts
    batch_size: int = Field(5000, ge=1, le=limits.MAX_EVENTS)  # events per ingest call
    consumer: dict[str, str | int | bool] = {}  # passed to librdkafka (security, timeouts)


class InteractionsSettings(_Section):
    hot: HotTierSettings = HotTierSettings()  # the cold tier follows `storage`
    sweeper: SweeperSettings = SweeperSettings()
    kafka: InteractionKafkaSettings | None = None  # consume events from Kafka too


class CompactionSettings(_Section):
    """Background removal of expired rows from embedded (LMDB) storage; one worker at a
    time does it (featurestore/compaction.py). `inferstack compact` does it at once."""

    enabled: bool = True
    rows_per_second: int = Field(2000, ge=1)  # rows examined per second
    batch: int = Field(500, ge=1)  # rows examined per write transaction
    pause: Seconds = 60.0  # between passes over every feature group


class AdmissionSettings(_Section):
    """Overload protection, per worker (server/admission.py): calls beyond these limits are
    refused at once (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) instead of answered late."""

    max_in_flight: int = Field(DEFAULT_MAX_IN_FLIGHT, ge=1)  # calls executing at once
    max_queue: int = Field(DEFAULT_MAX_QUEUE, ge=0)  # calls waiting for a slot; more: refused
    max_queue_wait: Seconds = Field(DEFAULT_MAX_QUEUE_WAIT, gt=0)  # for calls without deadline


class TlsSettings(_Section):
    """TLS on both ports (gRPC and HTTP). With `client_ca`, clients must present a
    certificate signed by it (mutual TLS); the token, if callers are configured, still
    decides what they may do."""

    cert: Path  # PEM certificate chain of the server
    key: Path  # PEM private key
    client_ca: Path | None = None


class ServeSettings(_Section):
    data_dir: Path = Path(".inferstack")
    host: str = "127.0.0.1"
    grpc_port: int = Field(DEFAULT_GRPC_PORT, ge=0, le=65535)
    http_port: int = Field(DEFAULT_HTTP_PORT, ge=-1, le=65535)  # -1 turns HTTP off
    workers: int = Field(1, ge=1, le=64)
    max_keys: int = Field(10_000, ge=1)
    max_message_bytes: int = Field(64 << 20, ge=1 << 20)  # gRPC, received and sent
    max_http_body_bytes: ByteSize = Field(ByteSize(16 << 20), ge=1 << 10)  # larger: 413
    # A body must arrive whole within this (408 after it): a slow or unfinished one holds
    # no admission slot meanwhile (bodies are read before admission) and not for longer.
    http_body_timeout: Seconds = Field(10.0, gt=0)
    log_format: Literal["text", "json"] = "text"  # json: one object per line (server/logs.py)
    access_log: bool = False  # a line per request; off: only failed ones, rate-limited
    shutdown_grace: Seconds = 5.0
    tls: TlsSettings | None = None
    # Serve a non-loopback address with no callers configured (anyone reaching it may do
    # anything): refused unless set (server/supervisor.py).
    insecure_open: bool = False
    admission: AdmissionSettings = AdmissionSettings()
    # CassandraSettings is the adapter's own model (kv/settings.py): it takes the section whole.
    storage: Annotated[LmdbStorageSettings | CassandraSettings, Field(discriminator="type")] = (
        LmdbStorageSettings()
    )
    cache: CacheSettings = CacheSettings()
    config: Annotated[FileConfigSettings | ZooKeeperConfigSettings, Field(discriminator="type")] = (
        FileConfigSettings()
    )
    inferflow: InferflowSettings = InferflowSettings()
    interactions: InteractionsSettings = InteractionsSettings()
    compaction: CompactionSettings = CompactionSettings()

    @property
    def local_cache_bytes(self) -> int:
        local = self.cache.local
        if "max_bytes" not in local.model_fields_set and isinstance(
            self.storage, LmdbStorageSettings
        ):
            return 0
        return int(local.max_bytes)

    @property
    def description(self) -> str:
        caches = ["in-process"] if self.local_cache_bytes else []
        if self.cache.shared:
            caches.append(f"redis {self.cache.shared.address}")
        return (
            f"storage {self.storage.type}, cache {' + '.join(caches) or 'off'}, "
            f"config {self.config.type}, data dir {self.data_dir}"
        )


def load_settings(
    path: Path | None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeSettings:
    """File, then INFERSTACK_* variables, then explicit overrides (CLI flags).

    Overrides are keyed by dotted path ("cache.local.max_bytes"); None values are ignored.
    """
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    document = None
    if path is not None:
        document = load_yaml(path)
        if document.data is not None and not isinstance(document.data, dict):
            raise DefinitionError([document.problem((), "expected a mapping of settings")])
        data = dict(document.data or {})
    from_env: dict[tuple[str, ...], str] = {}
    for name, text in environ.items():
        if not name.startswith(ENV_PREFIX) or name == "INFERSTACK_DATA_DIR":
            continue
        field_path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if field_path[0] not in ServeSettings.model_fields:
            continue  # other INFERSTACK_ variables (INFERSTACK_TARGET, test settings)
        _set(data, field_path, _env_value(text))
        from_env[field_path] = name
    if "data_dir" not in data and environ.get("INFERSTACK_DATA_DIR"):
        data["data_dir"] = environ["INFERSTACK_DATA_DIR"]
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(data, tuple(key.split(".")), value)
    try:
        return ServeSettings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            # Pydantic names the chosen member of a tagged union ("cassandra"); users did not.
            location = tuple(str(part) for part in error["loc"] if part not in _UNION_TAGS)
            field_name = ".".join(location)
            message = f"{field_name}: {error['msg'].removeprefix('Value error, ')}"
            variable = next((v for p, v in from_env.items() if location[: len(p)] == p), None)
            if variable is not None:
                problems.append(f"${variable}: {message}")
            elif document is not None:
                problems.append(document.problem(location, message))
            else:
                problems.append(located("settings", None, message))
        raise DefinitionError(problems) from exc


def _env_value(text: str) -> Any:
    """Lists and mappings as YAML flow ("[a, b]"); scalars as YAML unless that makes them
    something else ("it:" would become a mapping): then the text as it is."""
    try:
        value = yaml.safe_load(text) if text else text
    except yaml.YAMLError:
        return text
    if isinstance(value, list | dict) and text.lstrip()[:1] not in "[{":
        return text
    return value


_UNION_TAGS = {"lmdb", "cassandra", "scylla", "files", "zookeeper", "redis"}


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        child = data.get(part)
        if not isinstance(child, dict):
            child = data[part] = {}
        data = child
    data[path[-1]] = value
