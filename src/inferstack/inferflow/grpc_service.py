"""The gRPC face of inferflow: inferstack.inferflow.v1.Inferflow.

Errors map to status codes exactly as the feature store's do (`answer`): a user error
becomes its status with its message, anything else INTERNAL without a trace.
"""

from __future__ import annotations

from typing import Any

import grpc

from inferstack.featurestore.grpc_service import answer
from inferstack.inferflow.service import InferflowService
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.proto.inferflow.v1 import inferflow_pb2_grpc as pb_grpc
from inferstack.server import auth
from inferstack.wire.inferflow import request_from_proto, response_to_proto

INFERFLOW_SERVICE = pb.DESCRIPTOR.services_by_name["Inferflow"].full_name


class InferflowServicer(pb_grpc.InferflowServicer):  # type: ignore[misc]  # generated
    def __init__(self, service: InferflowService) -> None:
        self.service = service

    async def Infer(  # noqa: N802 (gRPC method names)
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InferResponse:
        async def work() -> pb.InferResponse:
            model, inputs, return_features = request_from_proto(request)
            request_id, result = await self.service.infer(
                model, inputs, return_features, request.request_id
            )
            return response_to_proto(request_id, result, request.explain)

        needs = [auth.reads("model", [request.model])]
        return await answer("Infer", context, work, lambda: needs)
