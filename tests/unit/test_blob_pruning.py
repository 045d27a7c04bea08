"""What `inferstack models prune` deletes: unreferenced model files older than the grace
period, decided from the listing, the registry and the clock alone."""

from __future__ import annotations

import pytest

from inferstack.configstore.base import BlobInfo, blob_digest
from inferstack.configstore.pruning import (
    DEFAULT_GRACE_SECONDS,
    blobs_to_prune,
    referenced_digests,
)
from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.modelconfig import ModelConfig
from inferstack.core.registry import Registry, plan

NOW = 1_800_000_000.0
HOUR = 3600.0
OLD, OLDER, NEW = blob_digest(b"old"), blob_digest(b"older"), blob_digest(b"new")


def blob(digest: str, age: float, size: int = 100) -> BlobInfo:
    return BlobInfo(digest, size, NOW - age)


def test_unreferenced_blobs_older_than_the_grace_period_go_oldest_first() -> None:
    blobs = [blob(NEW, 10 * HOUR), blob(OLD, 2 * HOUR), blob(OLDER, 3 * HOUR)]
    chosen = blobs_to_prune(blobs, {NEW}, NOW, HOUR)
    assert [b.digest for b in chosen] == [OLDER, OLD]


def test_referenced_blobs_stay_however_old() -> None:
    blobs = [blob(OLD, 1000 * HOUR), blob(NEW, 1000 * HOUR)]
    assert blobs_to_prune(blobs, {OLD, NEW}, NOW, HOUR) == []


def test_blobs_younger_than_the_grace_period_stay_even_unreferenced() -> None:
    """An apply stores its files before the registry naming them: they look orphaned."""
    blobs = [blob(NEW, HOUR - 1), blob(OLD, HOUR)]
    assert blobs_to_prune(blobs, set(), NOW, HOUR) == [blob(OLD, HOUR)]


def test_a_blob_stored_after_now_stays() -> None:
    """A clock behind the store's (ZooKeeper's) must not make a fresh upload look old."""
    assert blobs_to_prune([blob(NEW, -5)], set(), NOW, 0) == []


def test_zero_grace_prunes_every_unreferenced_blob() -> None:
    blobs = [blob(OLD, 0), blob(NEW, 0.5), blob(OLDER, 7)]
    assert {b.digest for b in blobs_to_prune(blobs, {OLDER}, NOW, 0)} == {OLD, NEW}


def test_a_negative_grace_period_is_refused() -> None:
    with pytest.raises(ValueError, match="-1s"):
        blobs_to_prune([blob(OLD, HOUR)], set(), NOW, -1)


def test_the_default_grace_period_is_an_hour() -> None:
    assert DEFAULT_GRACE_SECONDS == HOUR


def test_referenced_digests_are_the_onnx_artifacts_of_every_model_config() -> None:
    user = Entity.model_validate({"name": "user", "keys": [{"name": "user_id", "type": "int64"}]})
    group = FeatureGroup.model_validate(
        {"name": "profile", "entity": "user", "features": [{"name": "spend", "type": "float32"}]}
    )

    def config(name: str, models: list[dict[str, object]]) -> ModelConfig:
        return ModelConfig.model_validate(
            {
                "name": name,
                "context": [
                    {"name": "user_id", "type": "int64"},
                    {"name": "item_ids", "type": "int64", "candidates": True},
                ],
                "fetches": [
                    {"name": "u", "entity": "user", "keys": ["context.user_id"], "features": ["*"]}
                ],
                "models": models,
                "response": {"outputs": [f"{model['name']}_out" for model in models]},
            }
        )

    def onnx(name: str, artifact: str) -> dict[str, object]:
        return {
            "name": name,
            "runtime": "onnx",
            "artifact": artifact,
            "inputs": ["u.spend"],
            "outputs": [f"{name}_out"],
        }

    remote = {
        "name": "remote",
        "runtime": "kserve",
        "endpoints": [{"address": "models:8081"}],
        "inputs": ["u.spend"],
        "outputs": ["remote_out"],
    }
    models = [
        config("ranker", [onnx("a", OLD), onnx("b", NEW)]),
        config("other", [onnx("c", OLD), remote]),
    ]
    registry = plan(Registry(), [user], [group], models).registry
    assert referenced_digests(registry) == {OLD, NEW}
    assert referenced_digests(Registry()) == set()
