"""Feature store clients, sync and asyncio, sharing request building and decoding.

with FeatureStoreClient("127.0.0.1:6566") as client:
    frame = client.retrieve("user", {"user_id": [1, 2]}, ["user_profile"])
    frame["user_profile.age"], frame.found(), frame.to_pandas()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import grpc
import numpy as np
import numpy.typing as npt

from inferstack.core.rowformat import Column, RowStatus, var_column
from inferstack.core.types import NUMERIC_DTYPES, FeatureType
from inferstack.featurestore.wire import column_from_proto, column_to_proto, keys_to_proto, to_numpy
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    import pandas as pd

DEFAULT_TARGET = "127.0.0.1:6566"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


@dataclass(frozen=True)
class Query:
    """One entity's keys and the features wanted ("group", "group.*", "group.feature")."""

    entity: str
    keys: Mapping[str, Sequence[Any] | npt.NDArray[Any]]
    features: Sequence[str] = ()


@dataclass
class FeatureFrame:
    """Features of one entity for a batch of keys, in key order."""

    entity: str
    count: int
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    status: dict[str, npt.NDArray[np.uint8]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.columns[name]

    def found(self, group: str | None = None) -> npt.NDArray[np.bool_]:
        """True where the row was found: of one feature group, or of every group asked."""
        groups = [group] if group is not None else list(self.status)
        found = np.ones(self.count, dtype=np.bool_)
        for name in groups:
            found &= self.status[name] == RowStatus.FOUND
        return found

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        data: dict[str, Any] = {}
        for name, values in self.columns.items():
            data[name] = list(values) if values.ndim > 1 else values
        return pd.DataFrame(data)


def build_request(query: Query) -> pb.RetrieveRequest:
    return pb.RetrieveRequest(
        entity=query.entity, keys=keys_to_proto(query.keys), features=list(query.features)
    )


def decode_response(response: pb.RetrieveResponse) -> FeatureFrame:
    frame = FeatureFrame(response.entity, response.count)
    for column in response.columns:
        feature_type, values = column_from_proto(column, response.count)
        frame.columns[column.name] = to_numpy(feature_type, values)
    for group in response.groups:
        frame.status[group.feature_group] = np.frombuffer(group.status, dtype=np.uint8)
    return frame


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


class FeatureStoreClient:
    def __init__(self, target: str = DEFAULT_TARGET, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.FeatureStoreStub(self._channel)

    def retrieve(
        self,
        entity: str,
        keys: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] = (),
    ) -> FeatureFrame:
        request = build_request(Query(entity, keys, features))
        return decode_response(self._stub.Retrieve(request, timeout=self.timeout))

    def retrieve_batch(self, queries: Sequence[Query]) -> list[FeatureFrame]:
        request = pb.RetrieveBatchRequest(requests=[build_request(q) for q in queries])
        response = self._stub.RetrieveBatch(request, timeout=self.timeout)
        return [decode_response(r) for r in response.responses]

    def persist(
        self,
        feature_group: str,
        keys: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    ) -> int:
        request = build_persist(feature_group, keys, features)
        return int(self._stub.Persist(request, timeout=self.timeout).written)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFeatureStoreClient:
    def __init__(self, target: str = DEFAULT_TARGET, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.FeatureStoreStub(self._channel)

    async def retrieve(
        self,
        entity: str,
        keys: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Sequence[str] = (),
    ) -> FeatureFrame:
        request = build_request(Query(entity, keys, features))
        return decode_response(await self._stub.Retrieve(request, timeout=self.timeout))

    async def retrieve_batch(self, queries: Sequence[Query]) -> list[FeatureFrame]:
        request = pb.RetrieveBatchRequest(requests=[build_request(q) for q in queries])
        response = await self._stub.RetrieveBatch(request, timeout=self.timeout)
        return [decode_response(r) for r in response.responses]

    async def persist(
        self,
        feature_group: str,
        keys: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
        features: Mapping[str, Sequence[Any] | npt.NDArray[Any]],
    ) -> int:
        request = build_persist(feature_group, keys, features)
        return int((await self._stub.Persist(request, timeout=self.timeout)).written)

    async def close(self) -> None:
        await self._channel.close(grace=None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
