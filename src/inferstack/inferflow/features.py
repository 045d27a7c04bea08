"""Where inferflow gets features: the feature store in this process, or a remote one.

Both answer one stage of fetches in one go (one RetrieveBatch round trip when remote), so
the fetches a plan runs concurrently also travel together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from inferstack.core.queries import Query
from inferstack.core.rowformat import Column
from inferstack.featurestore.service import FeatureService

if TYPE_CHECKING:
    from inferstack.client.featurestore import AsyncFeatureStoreClient

FetchedColumn = Column | npt.NDArray[Any]  # VarColumn in process; str objects from a client


@dataclass(frozen=True)
class Fetched:
    count: int
    columns: Mapping[str, FetchedColumn]  # by "group.feature"
    status: Mapping[str, npt.NDArray[np.uint8]]  # per feature group, one RowStatus per key


class FeatureSource(Protocol):
    async def fetch(self, queries: Sequence[Query]) -> list[Fetched]:
        """One stage's fetches (features as "group.feature" selectors), answered in order."""
        ...

    async def close(self) -> None: ...


class LocalFeatureSource:
    """The feature store of this worker: no serialisation, no network."""

    def __init__(self, service: FeatureService) -> None:
        self.service = service

    async def fetch(self, queries: Sequence[Query]) -> list[Fetched]:
        results = await self.service.retrieve_all(queries)
        return [
            Fetched(result.count, {c.name: c.values for c in result.columns}, result.status)
            for result in results
        ]

    async def close(self) -> None:
        pass  # the feature service belongs to the worker


class RemoteFeatureSource:
    """A feature store served elsewhere (`inferflow.feature_store` in deploy.yaml)."""

    def __init__(self, client: AsyncFeatureStoreClient) -> None:
        self.client = client

    async def fetch(self, queries: Sequence[Query]) -> list[Fetched]:
        frames = await self.client.retrieve_batch(queries)
        return [Fetched(frame.count, frame.columns, frame.status) for frame in frames]

    async def close(self) -> None:
        await self.client.close()
