"""Small builders shared by tests."""

from __future__ import annotations

from typing import Any

import yaml
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import RoundRobinPolicy

from inferstack.core.documents import DefinitionsFile
from inferstack.core.registry import Registry, plan
from inferstack.featurestore.storage.cassandra import parse_contact_point
from inferstack.sampledata.generate import definitions_text

#: Every feature of the sample's user x category group, in definition order.
AFFINITY_FEATURES = tuple(
    feature.name
    for group in DefinitionsFile.model_validate(yaml.safe_load(definitions_text())).feature_groups
    if group.name == "user_category_affinity"
    for feature in group.features
)


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


def drop_keyspace(endpoint: str, keyspace: str) -> None:
    """Remove a test keyspace with a plain driver session (blocking; run it in a thread)."""
    host, port = parse_contact_point(endpoint)
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=60.0)
    cluster = Cluster(
        contact_points=[(host, port)], port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    try:
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {keyspace}")
    finally:
        cluster.shutdown()
