"""Deployment files: the examples load, env overrides apply, mistakes name file/line/field."""

from __future__ import annotations

from pathlib import Path

import pytest

from inferstack.core.errors import DefinitionError
from inferstack.kv.settings import CassandraSettings
from inferstack.server.settings import (
    LmdbStorageSettings,
    ServeSettings,
    ZooKeeperConfigSettings,
    load_settings,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_embedded_example_is_the_default() -> None:
    spelled_out = load_settings(DEPLOY / "embedded.yaml", environ={})
    default = ServeSettings()
    # The file says "no in-process cache" outright; the default gets there from the storage.
    assert spelled_out.local_cache_bytes == default.local_cache_bytes == 0
    assert spelled_out.model_copy(update={"cache": default.cache}) == default


def test_the_in_process_cache_defaults_on_for_cassandra_only() -> None:
    cassandra = load_settings(DEPLOY / "distributed.yaml", environ={})
    assert cassandra.local_cache_bytes == 256 << 20
    explicit = load_settings(None, {"cache.local.max_bytes": 1 << 20}, environ={})
    assert explicit.local_cache_bytes == 1 << 20


def test_distributed_example_and_env_overrides() -> None:
    settings = load_settings(
        DEPLOY / "distributed.yaml",
        environ={
            "INFERSTACK_STORAGE__CONTACT_POINTS": "[10.1.1.1:9042, 10.1.1.2:9042]",
            "INFERSTACK_CACHE__SHARED__TIMEOUT": "20ms",
            "INFERSTACK_WORKERS": "4",
            "INFERSTACK_TARGET": "ignored:1",
        },
    )
    assert isinstance(settings.storage, CassandraSettings)
    assert settings.storage.contact_points == ["10.1.1.1:9042", "10.1.1.2:9042"]
    assert settings.cache.shared is not None and settings.cache.shared.timeout == 0.02
    assert int(settings.cache.local.max_bytes) == 256 << 20
    assert isinstance(settings.config, ZooKeeperConfigSettings)
    assert settings.workers == 4


def test_flags_override_file_and_environment(tmp_path: Path) -> None:
    settings = load_settings(
        DEPLOY / "embedded.yaml",
        {"workers": 3, "cache.local.max_bytes": 1 << 20, "grpc_port": None},
        environ={"INFERSTACK_WORKERS": "2", "INFERSTACK_DATA_DIR": str(tmp_path)},
    )
    assert settings.workers == 3 and int(settings.cache.local.max_bytes) == 1 << 20
    assert settings.grpc_port == 6566
    assert settings.data_dir == Path(".inferstack")  # the file wins over INFERSTACK_DATA_DIR
    assert isinstance(settings.storage, LmdbStorageSettings)


def test_malformed_file_names_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text(
        "workers: 2\nstorage:\n  type: cassandra\n  contact_points: []\ncache:\n  loca: {}\n"
    )
    with pytest.raises(DefinitionError) as caught:
        load_settings(path, environ={})
    problems = "\n".join(caught.value.problems)
    assert f"{path}:4: storage.contact_points: List should have at least 1 item" in problems
    assert f"{path}:6: cache.loca: Extra inputs are not permitted" in problems


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(DefinitionError, match=r"\$INFERSTACK_GRPC_PORT: grpc_port"):
        load_settings(None, environ={"INFERSTACK_GRPC_PORT": "seventy"})


def test_environment_text_that_looks_like_yaml_stays_text() -> None:
    settings = load_settings(
        DEPLOY / "distributed.yaml",
        environ={"INFERSTACK_CACHE__SHARED__PREFIX": "run1:", "INFERSTACK_CONFIG__ROOT": "/a: b"},
    )
    assert settings.cache.shared is not None and settings.cache.shared.prefix == "run1:"
    assert isinstance(settings.config, ZooKeeperConfigSettings) and settings.config.root == "/a: b"


def test_cassandra_adapters_take_the_storage_section_whole(tmp_path: Path) -> None:
    from inferstack.interactions.cold.cassandra import CassandraColdStore
    from inferstack.kv.cassandra import CassandraStorage
    from inferstack.server.components import open_cold_store, open_storage

    settings = load_settings(
        DEPLOY / "distributed.yaml",
        environ={
            "INFERSTACK_STORAGE__TYPE": "scylla",
            "INFERSTACK_STORAGE__KEYSPACE": "ks_2",
            "INFERSTACK_STORAGE__REQUEST_TIMEOUT": "250ms",
            "INFERSTACK_STORAGE__MAX_IN_FLIGHT": "7",
        },
    )
    assert isinstance(settings.storage, CassandraSettings) and settings.storage.type == "scylla"
    storage = open_storage(settings)  # nothing connects before the first call
    assert isinstance(storage, CassandraStorage) and storage.settings is settings.storage
    assert (storage.keyspace, storage.request_timeout, storage.max_in_flight) == ("ks_2", 0.25, 7)
    cold = open_cold_store(settings)
    assert isinstance(cold, CassandraColdStore)
    assert (cold.keyspace, cold.where) == ("ks_2", storage.where)

    # The file format is the one it always was: `type` picks the adapter and is required.
    path = tmp_path / "deploy.yaml"
    path.write_text("storage:\n  contact_points: [db1:9042]\n")
    with pytest.raises(DefinitionError, match="storage"):
        load_settings(path, environ={})
