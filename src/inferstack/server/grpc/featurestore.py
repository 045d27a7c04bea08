"""The feature store over gRPC (inferstack.featurestore.v1.FeatureStore): endpoints that
decode each message, call the transport-free FeatureService and encode its answer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import inferstack_native
from inferstack.core import limits
from inferstack.core.callers import Need
from inferstack.featurestore.service import FeatureService, Query, RetrieveResult
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.server.pipeline import Endpoint
from inferstack.wire.columns import column_from_proto, keys_from_proto

SERVICE = pb.DESCRIPTOR.services_by_name["FeatureStore"]


def endpoints(service: FeatureService) -> dict[str, Endpoint[Any, Any]]:
    async def retrieve(request: pb.RetrieveRequest) -> bytes:
        # An encoded RetrieveResponse (server/grpc/registration.py sends it as it is).
        result = await service.retrieve(
            request.entity, keys_from_proto(request.keys), list(request.features)
        )
        return encode_responses([result], batch=False)

    def retrieve_touches(request: pb.RetrieveRequest) -> list[Need]:
        return service.retrieve_needs(request.entity, request.features)

    async def retrieve_batch(request: pb.RetrieveBatchRequest) -> bytes:
        limits.check(len(request.requests), limits.MAX_QUERIES_PER_BATCH, "queries")
        queries = [
            Query(query.entity, keys_from_proto(query.keys), list(query.features))
            for query in request.requests
        ]
        return encode_responses(await service.retrieve_all(queries), batch=True)

    def retrieve_batch_touches(request: pb.RetrieveBatchRequest) -> list[Need]:
        limits.check(len(request.requests), limits.MAX_QUERIES_PER_BATCH, "queries")
        return [need for query in request.requests for need in retrieve_touches(query)]

    async def persist(request: pb.PersistRequest) -> pb.PersistResponse:
        keys = keys_from_proto(request.keys)
        count = max((len(v) for v in keys.values()), default=0)
        columns = [(column.name, *column_from_proto(column, count)) for column in request.columns]
        return pb.PersistResponse(
            written=await service.persist_typed(request.feature_group, keys, columns)
        )

    def persist_touches(request: pb.PersistRequest) -> list[Need]:
        return service.persist_needs(request.feature_group)

    return {
        "Retrieve": Endpoint(retrieve, retrieve_touches),
        "RetrieveBatch": Endpoint(retrieve_batch, retrieve_batch_touches),
        "Persist": Endpoint(persist, persist_touches),
    }


def encode_responses(results: Sequence[RetrieveResult], batch: bool) -> bytes:
    """The protobuf bytes of a RetrieveResponse (one result) or a RetrieveBatchResponse, in
    one native call: each column's values are copied once, straight from the decoded rows."""
    return inferstack_native.encode_retrieve_responses(
        [(r.entity, r.count, r.columns, list(r.status.items())) for r in results], batch
    )
