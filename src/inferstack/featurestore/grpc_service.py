"""The gRPC face of the feature store: inferstack.featurestore.v1.FeatureStore."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import inferstack_native

from inferstack import metrics
from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from inferstack.core.rowformat import Column
from inferstack.featurestore.service import FeatureService, Query, RetrieveResult
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc
from inferstack.server import admission, auth, logs
from inferstack.wire.columns import column_from_proto, keys_from_proto

log = logging.getLogger(__name__)
T = TypeVar("T")


def status_of(error: InferstackError) -> grpc.StatusCode:
    return grpc.StatusCode[error.status]


async def answer(
    method: str,
    context: grpc.aio.ServicerContext[Any, Any],
    work: Callable[[], Awaitable[T]],
    needs: auth.Needs | None = None,
) -> T:
    """Run one call once admission control lets it in (server/admission.py: a refusal is
    RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED at once); user errors become their status,
    anything else INTERNAL without a trace. When callers are configured the call's token
    must name one whose grants allow `needs` (server/auth.py), checked before admission."""
    started = time.perf_counter()
    gate = admission.current()
    try:
        if auth.current().required:
            caller = await auth.authenticate(method, _authorization(context))
            auth.authorize(method, caller, needs)
        admitted = started if gate.try_enter() else await gate.wait(method, context.time_remaining)
        try:
            result = await work()
        finally:
            gate.leave(method, time.perf_counter() - admitted)
    except InferstackError as exc:
        # Counted before abort: abort sends the status at once, and a caller that reads
        # /metrics right after must find its call there.
        _count(method, exc.status, started)
        await context.abort(status_of(exc), str(exc))
    except asyncio.CancelledError:  # the caller cancelled, or its deadline passed
        _count(method, "CANCELLED", started)
        raise
    except Exception:
        logs.rate_limited_exception(log, "internal error")  # a caller may trigger it at will
        _count(method, "INTERNAL", started)
        await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
    else:
        _count(method, "OK", started)
        return result
    raise AssertionError("abort returned")  # pragma: no cover


def _authorization(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return value if isinstance(value, str) else None
    return None


def _count(method: str, code: str, started: float) -> None:
    metrics.count_request(method, code, time.perf_counter() - started)


class FeatureStoreServicer(pb_grpc.FeatureStoreServicer):  # type: ignore[misc]  # generated
    def __init__(self, service: FeatureService) -> None:
        self.service = service

    async def Retrieve(  # noqa: N802 (gRPC method names)
        self, request: pb.RetrieveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:  # an encoded RetrieveResponse (server/grpc_handlers.py sends it as it is)
        async def work() -> bytes:
            return encode_responses([await self._retrieve(request)], batch=False)

        return await answer("Retrieve", context, work, lambda: self._reads(request))

    async def RetrieveBatch(  # noqa: N802
        self, request: pb.RetrieveBatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:  # an encoded RetrieveBatchResponse
        async def work() -> bytes:
            total = sum(max((_key_count(k) for k in r.keys), default=0) for r in request.requests)
            if total > self.service.max_keys:
                raise ResourceExhaustedError(
                    f"{total} keys requested in one batch; the maximum is {self.service.max_keys}"
                )
            results = await self.service.retrieve_all(
                [
                    Query(query.entity, keys_from_proto(query.keys), list(query.features))
                    for query in request.requests
                ]
            )
            return encode_responses(results, batch=True)

        def needs() -> list[auth.Need]:
            return [need for query in request.requests for need in self._reads(query)]

        return await answer("RetrieveBatch", context, work, needs)

    def _reads(self, request: pb.RetrieveRequest) -> list[auth.Need]:
        return [
            auth.reads("feature_group", groups_read(self.service, request.entity, request.features))
        ]

    async def _retrieve(self, request: pb.RetrieveRequest) -> RetrieveResult:
        return await self.service.retrieve(
            request.entity, keys_from_proto(request.keys), list(request.features)
        )

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

        needs = [auth.writes("feature_group", [request.feature_group])]
        return await answer("Persist", context, work, lambda: needs)


def groups_read(service: FeatureService, entity: str, features: Sequence[str]) -> list[str]:
    """The feature groups a Retrieve reads: those its selectors name, or every group of the
    entity when it names none (an unknown entity: NOT_FOUND, as the Retrieve would be)."""
    if features:
        return auth.distinct(feature.partition(".")[0] for feature in features)
    return [selection.group for selection in service.catalog.select(entity, [])]


def encode_responses(results: Sequence[RetrieveResult], batch: bool) -> bytes:
    """The protobuf bytes of a RetrieveResponse (one result) or a RetrieveBatchResponse, in
    one native call: each column's values are copied once, straight from the decoded rows."""
    return inferstack_native.encode_retrieve_responses(
        [(r.entity, r.count, r.columns, list(r.status.items())) for r in results], batch
    )


def _key_count(column: pb.KeyColumn) -> int:
    return len(column.int64_values) + len(column.uint64_values) + len(column.string_values)
