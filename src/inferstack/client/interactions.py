"""Interaction store clients, sync and asyncio: events in, each type's history out as numpy
columns, newest first.

with InteractionsClient("127.0.0.1:6566") as client:
    client.ingest("click", ["e1", "e2"], users=[42, 42], items=[1334, 7732],
                  timestamps=[1714557600000, 1714557660000], source=["app", "web"])
    clicks = client.get(42, ["click"], limit=10)["click"]
    clicks.event_ids, clicks.timestamps, clicks["product_id"], clicks.to_pandas()

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
from inferstack.client.featurestore import column_of
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import EVENT_ID, TIMESTAMP
from inferstack.core.rowformat import VarColumn
from inferstack.core.types import FeatureType
from inferstack.proto.interactions.v1 import interactions_pb2 as pb
from inferstack.proto.interactions.v1 import interactions_pb2_grpc as pb_grpc
from inferstack.wire.columns import column_from_proto, column_to_proto, to_numpy
from inferstack.wire.interactions import batch_to_proto, get_to_proto, hydrate_to_proto

if TYPE_CHECKING:
    import pandas as pd

BYTES = FeatureType("bytes")
Values = Sequence[Any] | npt.NDArray[Any]


@dataclass
class EventHistory:
    """One user's events of one type, newest first (row 0 is the latest event)."""

    type: str
    count: int
    hot: int = 0  # how many of them came from the hot tier, the rest from the cold one
    # event_id (str objects), ts (int64 unix ms), the item key, then the type's attributes
    columns: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> npt.NDArray[Any]:
        return self.columns[name]

    def __len__(self) -> int:
        return self.count

    @property
    def event_ids(self) -> npt.NDArray[np.object_]:
        return self.columns[EVENT_ID]

    @property
    def timestamps(self) -> npt.NDArray[np.int64]:
        return self.columns[TIMESTAMP]

    def to_pandas(self) -> pd.DataFrame:
        """The columns as a DataFrame, with `ts` as UTC datetimes."""
        import pandas as pd

        frame = pd.DataFrame(self.columns, index=pd.RangeIndex(self.count))
        if TIMESTAMP in frame:
            frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], unit="ms", utc=True)
        return frame


@dataclass(frozen=True)
class SweepCounts:
    users: int  # users whose hot events moved to the cold tier
    events: int  # hot events moved
    lost_claims: int  # users another sweeper took over after this one's lease expired


def ingest_request(batches: Sequence[EventBatch]) -> pb.IngestRequest:
    """Attribute types come from the values' numpy dtypes (str -> string, int -> int64...);
    the server converts them to the declared types when that loses nothing."""
    request = pb.IngestRequest()
    for batch in batches:
        columns = {}
        for name, values in batch.attributes.items():
            # Encoded strings or bytes go as bytes: the server reads them as the declared type.
            feature_type, column = (
                (BYTES, values) if isinstance(values, VarColumn) else column_of(values)
            )
            columns[name] = column_to_proto(name, feature_type, column)
        batch_to_proto(batch, columns, request.batches.add())
    return request


def decode_histories(response: pb.GetResponse) -> dict[str, EventHistory]:
    """Columns as numpy views of the response's buffers (strings as str objects)."""
    histories: dict[str, EventHistory] = {}
    for message in response.histories:
        history = EventHistory(message.type, message.count, message.hot)
        for column in message.columns:
            feature_type, values = column_from_proto(column, message.count)
            history.columns[column.name] = to_numpy(feature_type, values)
        histories[message.type] = history
    return histories


def _batch(
    type: str,
    event_ids: Sequence[str],
    users: Values,
    items: Values,
    timestamps: Values,
    attributes: Mapping[str, Values],
) -> EventBatch:
    return EventBatch(type, list(event_ids), users, items, timestamps, dict(attributes))


class InteractionsClient(PooledClient[pb_grpc.InteractionsStub]):
    def _make_stub(self, channel: grpc.Channel) -> pb_grpc.InteractionsStub:
        return pb_grpc.InteractionsStub(channel)

    def ingest(
        self,
        type: str,
        event_ids: Sequence[str],
        users: Values,
        items: Values,
        timestamps: Values,
        **attributes: Values,
    ) -> int:
        """Store events of one type (timestamps in unix ms); returns how many were stored."""
        batch = _batch(type, event_ids, users, items, timestamps, attributes)
        return self.ingest_batches([batch])

    def ingest_batches(self, batches: Sequence[EventBatch]) -> int:
        """Store several batches in one call: all of them, or none."""
        request = ingest_request(batches)
        return int(self._call(lambda stub, left: stub.Ingest(request, timeout=left)).stored)

    def get(
        self,
        user: Any,
        types: Sequence[str] = (),
        limit: int | None = None,
        since: int | None = None,
    ) -> dict[str, EventHistory]:
        """The user's newest `limit` events per type and/or those since `since` (unix ms)."""
        request = get_to_proto(user, types, limit, since)
        return decode_histories(self._call(lambda stub, left: stub.Get(request, timeout=left)))

    def hydrate(self, user: Any, types: Sequence[str] = ()) -> dict[str, int]:
        """Load the user's cold history into the hot tier; events loaded per type."""
        response = self._call(
            lambda stub, left: stub.Hydrate(hydrate_to_proto(user, types), timeout=left)
        )
        return dict(response.loaded)

    def sweep(self, limit: int = 0) -> SweepCounts:
        """Move up to `limit` idle users (0: the server's default) to the cold tier now."""
        response = self._call(
            lambda stub, left: stub.Sweep(pb.SweepRequest(limit=limit), timeout=left)
        )
        return SweepCounts(response.users, response.events, response.lost_claims)


class AsyncInteractionsClient(AsyncPooledClient[pb_grpc.InteractionsStub]):
    def _make_stub(self, channel: grpc.aio.Channel) -> pb_grpc.InteractionsStub:
        return pb_grpc.InteractionsStub(channel)

    async def ingest(
        self,
        type: str,
        event_ids: Sequence[str],
        users: Values,
        items: Values,
        timestamps: Values,
        **attributes: Values,
    ) -> int:
        batch = _batch(type, event_ids, users, items, timestamps, attributes)
        return await self.ingest_batches([batch])

    async def ingest_batches(self, batches: Sequence[EventBatch]) -> int:
        request = ingest_request(batches)
        return int((await self._call(lambda stub, left: stub.Ingest(request, timeout=left))).stored)

    async def get(
        self,
        user: Any,
        types: Sequence[str] = (),
        limit: int | None = None,
        since: int | None = None,
    ) -> dict[str, EventHistory]:
        request = get_to_proto(user, types, limit, since)
        return decode_histories(
            await self._call(lambda stub, left: stub.Get(request, timeout=left))
        )

    async def hydrate(self, user: Any, types: Sequence[str] = ()) -> dict[str, int]:
        request = hydrate_to_proto(user, types)
        response = await self._call(lambda stub, left: stub.Hydrate(request, timeout=left))
        return dict(response.loaded)

    async def sweep(self, limit: int = 0) -> SweepCounts:
        response = await self._call(
            lambda stub, left: stub.Sweep(pb.SweepRequest(limit=limit), timeout=left)
        )
        return SweepCounts(response.users, response.events, response.lost_claims)
