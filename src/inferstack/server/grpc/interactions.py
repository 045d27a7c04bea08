"""The interaction store over gRPC (inferstack.interactions.v1.Interactions): decode, call
the transport-free InteractionService, encode."""

from __future__ import annotations

from typing import Any

from inferstack.core.callers import Need
from inferstack.interactions.service import InteractionService
from inferstack.proto.interactions.v1 import interactions_pb2 as pb
from inferstack.server.pipeline import Endpoint
from inferstack.wire.interactions import (
    batches_from_proto,
    get_from_proto,
    histories_to_proto,
    hydrate_from_proto,
    sweep_limit,
)

SERVICE = pb.DESCRIPTOR.services_by_name["Interactions"]
LABEL_PREFIX = "Interactions/"  # their metric labels, apart from the feature store's


def endpoints(service: InteractionService) -> dict[str, Endpoint[Any, Any]]:
    async def ingest(request: pb.IngestRequest) -> pb.IngestResponse:
        batches = batches_from_proto(request.batches, service.catalog)
        return pb.IngestResponse(stored=await service.ingest(batches))

    def ingest_touches(request: pb.IngestRequest) -> list[Need]:
        return service.ingest_needs(batch.type for batch in request.batches)

    async def get(request: pb.GetRequest) -> pb.GetResponse:
        user, types, limit, since = get_from_proto(request, service.catalog)
        return histories_to_proto(await service.get(user, types, limit, since))

    async def hydrate(request: pb.HydrateRequest) -> pb.HydrateResponse:
        user, types = hydrate_from_proto(request, service.catalog)
        return pb.HydrateResponse(loaded=await service.hydrate(user, types))

    async def sweep(request: pb.SweepRequest) -> pb.SweepResponse:
        limit = sweep_limit(request.limit)
        swept = await (service.sweep(limit) if limit else service.sweep())
        return pb.SweepResponse(
            users=swept.users, events=swept.events, lost_claims=swept.lost_claims
        )

    return {
        "Ingest": Endpoint(ingest, ingest_touches),
        "Get": Endpoint(get, lambda request: service.get_needs(request.types)),
        "Hydrate": Endpoint(hydrate, lambda request: service.hydrate_needs(request.types)),
        "Sweep": Endpoint(sweep, lambda request: service.sweep_needs()),
    }
