"""Inferflow clients, sync and asyncio: scores as numpy arrays, best candidates first.

with InferflowClient("127.0.0.1:6566") as client:
    scores = client.infer("ranker", {"user_id": 42, "product_ids": [1334, 7732, 18]})
    best = scores.top(10)                   # row indices, highest first output first
    scores["score"][best], scores.to_pandas()

Calls go round-robin over `connections` channels of their own (see `channels.py`), so one
client reaches several server workers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt

from inferstack.client.channels import AsyncPooledClient, PooledClient
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.proto.inferflow.v1 import inferflow_pb2_grpc as pb_grpc
from inferstack.wire.columns import column_from_proto, to_numpy
from inferstack.wire.inferflow import ContextValue, request_to_proto

if TYPE_CHECKING:
    import pandas as pd

Context = Mapping[str, ContextValue]


@dataclass
class Scores:
    """One response: outputs and features in candidate order (row i is candidate i)."""

    model: str
    version: int
    request_id: str
    count: int
    outputs: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    features: dict[str, npt.NDArray[Any]] = field(default_factory=dict)  # strings as str
    timings: list[tuple[str, float]] = field(default_factory=list)  # stage, ms; with explain
    defaults: dict[str, int] = field(default_factory=dict)  # feature -> rows; with explain

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        found = self.outputs.get(name)
        return found if found is not None else self.features[name]

    def top(self, k: int, by: str | None = None) -> npt.NDArray[np.intp]:
        """Indices of the k rows with the highest `by` (default: the first output), best
        first; ties keep candidate order and NaN comes last."""
        if by is None:
            if not self.outputs:
                raise ValueError("the response has no outputs to rank by")
            by = next(iter(self.outputs))
        values = self.outputs.get(by)
        if values is None:
            raise KeyError(f"no output '{by}' (outputs: {', '.join(self.outputs)})")
        order = np.argsort(-values, kind="stable")  # argsort puts NaN last
        return order[: max(k, 0)].astype(np.intp, copy=False)

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        data: dict[str, Any] = dict(self.outputs)
        for name, values in self.features.items():
            data[name] = list(values) if values.ndim > 1 else values
        return pd.DataFrame(data, index=pd.RangeIndex(self.count))


def decode_response(response: pb.InferResponse) -> Scores:
    """Columns as numpy views of the response's buffers (no copy for fixed-width types)."""
    count = response.count
    scores = Scores(response.model, response.version, response.request_id, count)
    for column in response.outputs:
        _, values = column_from_proto(column, count)
        assert isinstance(values, np.ndarray)  # outputs are float32
        scores.outputs[column.name] = values
    for column in response.features:
        feature_type, values = column_from_proto(column, count)
        scores.features[column.name] = to_numpy(feature_type, values)
    if response.HasField("explain"):
        scores.timings = [(s.name, s.milliseconds) for s in response.explain.stages]
        scores.defaults = {d.feature: d.rows for d in response.explain.defaults}
    return scores


class InferflowClient(PooledClient[pb_grpc.InferflowStub]):
    def _make_stub(self, channel: grpc.Channel) -> pb_grpc.InferflowStub:
        return pb_grpc.InferflowStub(channel)

    def infer(
        self,
        model: str,
        context: Context,
        return_features: Sequence[str] = (),
        explain: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Scores:
        """`timeout`: this call's deadline in seconds (default: the client's)."""
        request = request_to_proto(model, context, return_features, explain, request_id)
        return decode_response(
            self._call(lambda stub, left: stub.Infer(request, timeout=left), timeout)
        )


class AsyncInferflowClient(AsyncPooledClient[pb_grpc.InferflowStub]):
    def _make_stub(self, channel: grpc.aio.Channel) -> pb_grpc.InferflowStub:
        return pb_grpc.InferflowStub(channel)

    async def infer(
        self,
        model: str,
        context: Context,
        return_features: Sequence[str] = (),
        explain: bool = False,
        request_id: str = "",
        timeout: float | None = None,
    ) -> Scores:
        request = request_to_proto(model, context, return_features, explain, request_id)
        call = self._call(lambda stub, left: stub.Infer(request, timeout=left), timeout)
        return decode_response(await call)
