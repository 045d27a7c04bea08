"""The gRPC face of the interaction store: inferstack.interactions.v1.Interactions.

Errors map to status codes exactly as the feature store's do (`answer`): a user error
becomes its status with its message, anything else INTERNAL without a trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from inferstack.core.callers import ALL
from inferstack.featurestore.grpc_service import answer
from inferstack.interactions.service import InteractionService
from inferstack.proto.interactions.v1 import interactions_pb2 as pb
from inferstack.proto.interactions.v1 import interactions_pb2_grpc as pb_grpc
from inferstack.server import auth
from inferstack.wire.interactions import (
    batches_from_proto,
    get_from_proto,
    histories_to_proto,
    hydrate_from_proto,
    sweep_limit,
)

INTERACTIONS_SERVICE = pb.DESCRIPTOR.services_by_name["Interactions"].full_name
Context = grpc.aio.ServicerContext[Any, Any]


class InteractionsServicer(pb_grpc.InteractionsServicer):  # type: ignore[misc]  # generated
    def __init__(self, service: InteractionService) -> None:
        self.service = service

    async def Ingest(  # noqa: N802 (gRPC method names)
        self, request: pb.IngestRequest, context: Context
    ) -> pb.IngestResponse:
        async def work() -> pb.IngestResponse:
            batches = batches_from_proto(request.batches, self.service.catalog)
            return pb.IngestResponse(stored=await self.service.ingest(batches))

        def needs() -> list[auth.Need]:
            types = auth.distinct(batch.type for batch in request.batches)
            return [auth.writes("interaction_type", types)]

        return await answer("Interactions/Ingest", context, work, needs)

    async def Get(self, request: pb.GetRequest, context: Context) -> pb.GetResponse:  # noqa: N802
        async def work() -> pb.GetResponse:
            user, types, limit, since = get_from_proto(request, self.service.catalog)
            return histories_to_proto(await self.service.get(user, types, limit, since))

        needs = [auth.reads("interaction_type", types_named(request.types))]
        return await answer("Interactions/Get", context, work, lambda: needs)

    async def Hydrate(  # noqa: N802
        self, request: pb.HydrateRequest, context: Context
    ) -> pb.HydrateResponse:
        async def work() -> pb.HydrateResponse:
            user, types = hydrate_from_proto(request, self.service.catalog)
            return pb.HydrateResponse(loaded=await self.service.hydrate(user, types))

        needs = [auth.writes("interaction_type", types_named(request.types))]
        return await answer("Interactions/Hydrate", context, work, lambda: needs)

    async def Sweep(  # noqa: N802
        self, request: pb.SweepRequest, context: Context
    ) -> pb.SweepResponse:
        async def work() -> pb.SweepResponse:
            limit = sweep_limit(request.limit)
            swept = await (self.service.sweep(limit) if limit else self.service.sweep())
            return pb.SweepResponse(
                users=swept.users, events=swept.events, lost_claims=swept.lost_claims
            )

        needs = [auth.writes("interaction_type", [ALL])]  # a sweep moves every type
        return await answer("Interactions/Sweep", context, work, lambda: needs)


def types_named(types: Sequence[str]) -> list[str]:
    """The interaction types a request names; none named means every type."""
    return auth.distinct(types) if types else [ALL]
