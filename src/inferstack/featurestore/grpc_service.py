"""The gRPC face of the feature store: inferstack.featurestore.v1.FeatureStore."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from inferstack.core.rowformat import Column
from inferstack.featurestore.service import FeatureService, RetrieveResult
from inferstack.featurestore.wire import column_from_proto, column_to_proto, keys_from_proto
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_OF: dict[type[InferstackError], grpc.StatusCode] = {
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
}


def status_of(error: InferstackError) -> grpc.StatusCode:
    for kind, code in STATUS_OF.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


async def answer(
    context: grpc.aio.ServicerContext[Any, Any], work: Callable[[], Awaitable[T]]
) -> T:
    """Run one call; user errors become their status, anything else INTERNAL without a trace."""
    try:
        return await work()
    except InferstackError as exc:
        await context.abort(status_of(exc), str(exc))
    except Exception:
        log.exception("internal error")
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    raise AssertionError("abort returned")  # pragma: no cover


class FeatureStoreServicer(pb_grpc.FeatureStoreServicer):  # type: ignore[misc]  # generated
    def __init__(self, service: FeatureService) -> None:
        self.service = service

    async def Retrieve(  # noqa: N802 (gRPC method names)
        self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RetrieveResponse:
        return await answer(context, lambda: self._retrieve(request))

    async def RetrieveBatch(  # noqa: N802
        self, request: pb.RetrieveBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RetrieveBatchResponse:
        async def work() -> pb.RetrieveBatchResponse:
            total = sum(max((_key_count(k) for k in r.keys), default=0) for r in request.requests)
            if total > self.service.max_keys:
                raise ResourceExhaustedError(
                    f"{total} keys requested in one batch; the maximum is {self.service.max_keys}"
                )
            responses = [await self._retrieve(r) for r in request.requests]
            return pb.RetrieveBatchResponse(responses=responses)

        return await answer(context, work)

    async def _retrieve(self, request: pb.RetrieveRequest) -> pb.RetrieveResponse:
        result = await self.service.retrieve(
            request.entity, keys_from_proto(request.keys), list(request.features)
        )
        return result_to_proto(result)

    async def Persist(  # noqa: N802
        self, request: pb.PersistRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PersistResponse:
        async def work() -> pb.PersistResponse:
            keys = keys_from_proto(request.keys)
            count = max((len(v) for v in keys.values()), default=0)
            group = self.service.catalog.group(request.feature_group)
            columns: dict[str, Column] = {}
            for column in request.columns:
                if column.name in columns:
                    raise InvalidArgumentError(f"column '{column.name}' is given twice")
                feature = group.feature(column.name)
                if feature is None:
                    raise NotFoundError(f"feature '{group.name}.{column.name}' not found")
                sent_type, values = column_from_proto(column, count)
                if sent_type != feature.type:
                    raise InvalidArgumentError(
                        f"feature '{group.name}.{column.name}' is {feature.type}, "
                        f"the column is {sent_type}"
                    )
                columns[column.name] = values
            written = await self.service.persist(request.feature_group, keys, columns)
            return pb.PersistResponse(written=written)

        return await answer(context, work)


def result_to_proto(result: RetrieveResult) -> pb.RetrieveResponse:
    return pb.RetrieveResponse(
        entity=result.entity,
        count=result.count,
        columns=[column_to_proto(c.name, c.type, c.values) for c in result.columns],
        groups=[
            pb.GroupStatus(feature_group=group, status=status.tobytes())
            for group, status in result.status.items()
        ],
    )


def _key_count(column: pb.KeyColumn) -> int:
    return len(column.int64_values) + len(column.uint64_values) + len(column.string_values)
