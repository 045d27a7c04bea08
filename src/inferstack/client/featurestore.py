"""Feature store clients, sync and asyncio, sharing request building and decoding.

with FeatureStoreClient("127.0.0.1:6566") as client:
    frame = client.retrieve("user", {"user_id": [1, 2]}, ["user_profile"])
    frame["user_profile.age"], frame.found(), frame.to_pandas()

Calls go round-robin over `connections` channels of their own (see `channels.py`), so one
client reaches several server workers. Every call carries a deadline (`timeout`, seconds;
per client, or per call), which the server uses to refuse at once what it cannot serve in
time (DEADLINE_EXCEEDED) rather than answer late. Fixed-width features come back as numpy
views of the response's buffers; strings are decoded when first read (`client/columns.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import numpy.typing as npt

from inferstack.client.channels import AsyncPooledClient, PooledClient
from inferstack.client.columns import Columns, decode_columns
from inferstack.core.queries import Query as Query  # re-exported: the client's Query
from inferstack.core.rowformat import Column, RowStatus, var_column
from inferstack.core.types import NUMERIC_DTYPES, FeatureType
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc
from inferstack.wire.columns import column_to_proto, fill_keys, keys_to_proto

if TYPE_CHECKING:
    import pandas as pd

FOUND = int(RowStatus.FOUND)  # a plain int: numpy compares it faster than the enum
Keys = Mapping[str, Sequence[Any] | npt.NDArray[Any]]


@dataclass
class FeatureFrame:
    """Features of one entity for a batch of keys, in key order."""

    entity: str
    count: int
    # feature name ("group.feature") -> values; strings are decoded when first read
    columns: MutableMapping[str, npt.NDArray[Any]] = field(default_factory=Columns)
    status: dict[str, npt.NDArray[np.uint8]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.columns[name]

    def found(self, group: str | None = None) -> npt.NDArray[np.bool_]:
        """True where the row was found: of one feature group, or of every group asked."""
        groups = [group] if group is not None else list(self.status)
        if not groups:
            return np.ones(self.count, dtype=np.bool_)
        found: npt.NDArray[np.bool_] = self.status[groups[0]] == FOUND
        for name in groups[1:]:
            found &= self.status[name] == FOUND
        return found

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        data: dict[str, Any] = {}
        for name, values in self.columns.items():
            data[name] = list(values) if values.ndim > 1 else values
        return pd.DataFrame(data)


def build_request(query: Query) -> pb.RetrieveRequest:
    request = pb.RetrieveRequest(entity=query.entity, features=query.features)
    fill_keys(request.keys, query.keys)
    return request


def build_batch(queries: Sequence[Query]) -> pb.RetrieveBatchRequest:
    """Built in place: copying finished sub-messages in would cost as much again."""
    batch = pb.RetrieveBatchRequest()
    add = batch.requests.add
    for query in queries:
        fill_keys(add(entity=query.entity, features=query.features).keys, query.keys)
    return batch


def decode_response(response: pb.RetrieveResponse) -> FeatureFrame:
    count = response.count
    status = {g.feature_group: np.frombuffer(g.status, dtype=np.uint8) for g in response.groups}
    return FeatureFrame(response.entity, count, decode_columns(response.columns, count), status)


def build_persist(
    feature_group: str,
    keys: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    features: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
) -> pb.PersistRequest:
    columns = []
    for name, values in features.items():
        feature_type, column = column_of(values)
        columns.append(column_to_proto(name, feature_type, column))
    return pb.PersistRequest(feature_group=feature_group, keys=keys_to_proto(keys), columns=columns)


def column_of(values: Sequence[Any] | npt.NDArray[Any]) -> tuple[FeatureType, Column]:
    """Infer the wire type from the array's dtype; the server checks it against the group."""
    array = np.asarray(values)
    if array.dtype.kind in "OUS":
        items = array.tolist()
        if all(isinstance(v, bytes) for v in items):
            return FeatureType("bytes"), var_column(items)
        return FeatureType("string"), var_column([str(v).encode("utf-8") for v in items])
    base = "bool" if array.dtype == np.bool_ else array.dtype.name
    if base not in NUMERIC_DTYPES:
        raise TypeError(f"unsupported dtype {array.dtype}")
    length = array.shape[1] if array.ndim == 2 else 0
    return FeatureType(base, length), array.astype(array.dtype.newbyteorder("<"), copy=False)


class FeatureStoreClient(PooledClient[pb_grpc.FeatureStoreStub]):
    """Blocking client; thread-safe. Constructor arguments: see PooledClient."""

    def _make_stub(self, channel: grpc.Channel) -> pb_grpc.FeatureStoreStub:
        return pb_grpc.FeatureStoreStub(channel)

    def retrieve(
        self,
        entity: str,
        keys: Keys,
        features: Sequence[str] = (),
        timeout: float | None = None,
    ) -> FeatureFrame:
        request = build_request(Query(entity, keys, features))
        response = self._call(lambda stub, left: stub.Retrieve(request, timeout=left), timeout)
        return decode_response(response)

    def retrieve_batch(
        self, queries: Sequence[Query], timeout: float | None = None
    ) -> list[FeatureFrame]:
        request = build_batch(queries)
        response = self._call(lambda stub, left: stub.RetrieveBatch(request, timeout=left), timeout)
        return [decode_response(r) for r in response.responses]

    def persist(
        self,
        feature_group: str,
        keys: Keys,
        features: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        timeout: float | None = None,
    ) -> int:
        request = build_persist(feature_group, keys, features)
        return int(
            self._call(lambda stub, left: stub.Persist(request, timeout=left), timeout).written
        )


class AsyncFeatureStoreClient(AsyncPooledClient[pb_grpc.FeatureStoreStub]):
    """asyncio client. Constructor arguments: see PooledClient."""

    def _make_stub(self, channel: grpc.aio.Channel) -> pb_grpc.FeatureStoreStub:
        return pb_grpc.FeatureStoreStub(channel)

    async def retrieve(
        self,
        entity: str,
        keys: Keys,
        features: Sequence[str] = (),
        timeout: float | None = None,
    ) -> FeatureFrame:
        request = build_request(Query(entity, keys, features))
        response = await self._call(
            lambda stub, left: stub.Retrieve(request, timeout=left), timeout
        )
        return decode_response(response)

    async def retrieve_batch(
        self, queries: Sequence[Query], timeout: float | None = None
    ) -> list[FeatureFrame]:
        request = build_batch(queries)
        call = self._call(lambda stub, left: stub.RetrieveBatch(request, timeout=left), timeout)
        return [decode_response(r) for r in (await call).responses]

    async def persist(
        self,
        feature_group: str,
        keys: Keys,
        features: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        timeout: float | None = None,
    ) -> int:
        request = build_persist(feature_group, keys, features)
        call = self._call(lambda stub, left: stub.Persist(request, timeout=left), timeout)
        return int((await call).written)
