"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

from inferstack.core.definitions import DefinitionsFile
from inferstack.core.registry import Registry, plan


def registry_from(spec: dict[str, Any], base: Registry | None = None) -> Registry:
    parsed = DefinitionsFile.model_validate(spec)
    return plan(base or Registry(), parsed.entities, parsed.feature_groups).registry


def user_spec(*features: dict[str, Any], ttl: str | None = None) -> dict[str, Any]:
    group: dict[str, Any] = {"name": "profile", "entity": "user", "features": list(features)}
    if ttl is not None:
        group["ttl"] = ttl
    return {
        "entities": [{"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}],
        "feature_groups": [group],
    }
