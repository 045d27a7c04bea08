"""Limits on what one request may carry (core/limits.py), checked before the work they would
cost: each of these used to be accepted and to stall a worker's loop for up to seconds
(20k one-event batches, 300k key columns, 5k queries, 1M selectors or return_features)."""

from __future__ import annotations

from typing import Any

import pytest

from inferstack.core import limits
from inferstack.core.errors import ResourceExhaustedError
from inferstack.core.queries import Query
from inferstack.featurestore.service import FeatureService
from inferstack.inferflow.service import InferflowService
from inferstack.proto.featurestore.v1 import featurestore_pb2 as fpb
from inferstack.proto.interactions.v1 import interactions_pb2 as ipb
from inferstack.wire.columns import keys_from_proto
from inferstack.wire.interactions import batches_from_proto
from tests.unit.test_keys_and_catalog import CATALOG

NOWHERE: Any = None  # the limits are checked before any storage would be touched


def test_key_columns_over_the_limit_are_refused_before_decoding() -> None:
    columns = [fpb.KeyColumn(name=f"k{i}") for i in range(limits.MAX_KEY_COLUMNS + 1)]
    with pytest.raises(ResourceExhaustedError, match=r"65 key columns in one request; .* 64"):
        keys_from_proto(columns)
    assert len(keys_from_proto(columns[:2])) == 2


def test_event_batches_and_events_over_the_limits_are_refused() -> None:
    batches = [ipb.EventBatch(type="click") for _ in range(limits.MAX_EVENT_BATCHES + 1)]
    with pytest.raises(ResourceExhaustedError, match="101 event batches"):
        batches_from_proto(batches, NOWHERE)
    many = [ipb.EventBatch(type="click", event_ids=["e"] * (limits.MAX_EVENTS + 1))]
    with pytest.raises(ResourceExhaustedError, match="5001 events"):
        batches_from_proto(many, NOWHERE)


async def test_queries_and_selectors_over_the_limits_are_refused() -> None:
    service = FeatureService(NOWHERE, CATALOG)
    queries = [Query("user", {"user_id": [1]})] * (limits.MAX_QUERIES_PER_BATCH + 1)
    with pytest.raises(ResourceExhaustedError, match="101 queries"):
        await service.retrieve_all(queries)
    selectors = ["a.x"] * (limits.MAX_SELECTORS + 1)
    with pytest.raises(ResourceExhaustedError, match="1001 feature selectors"):
        service.retrieve_needs("user", selectors)
    with pytest.raises(ResourceExhaustedError, match="1001 feature selectors"):
        await service.retrieve("user", {"user_id": [1]}, selectors)


def test_return_features_over_the_limit_are_refused_after_the_model_grant() -> None:
    service = InferflowService.__new__(InferflowService)  # no registry: the check comes first
    service.models = {}
    needs = service.infer_needs("ranker", ["user.x"] * (limits.MAX_RETURN_FEATURES + 1))
    assert next(needs).kind == "model"  # a caller without the model learns nothing more
    with pytest.raises(ResourceExhaustedError, match="1001 return_features"):
        next(needs)
