"""Retrieve and Persist, independent of any transport (gRPC, HTTP, in-process)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, cast

import numpy as np
import numpy.typing as npt

from inferstack import metrics
from inferstack.core import limits
from inferstack.core.callers import Need, distinct, reads, writes
from inferstack.core.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)
from inferstack.core.keys import KeyValues, encode_keys
from inferstack.core.queries import Query as Query  # re-exported for the transports
from inferstack.core.rowformat import Column, GroupCodec, VarColumn
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog, Selection
from inferstack.featurestore.rows import RowSource

DEFAULT_MAX_KEYS = 10_000


class ResultColumn(NamedTuple):
    """One column of a result; a tuple because a response builds dozens of them per call."""

    name: str  # "group.feature"
    type: FeatureType
    values: Column
    type_name: str  # str(type), computed once per catalog rather than per response


@dataclass
class RetrieveResult:
    entity: str
    count: int
    columns: list[ResultColumn]
    status: dict[str, npt.NDArray[np.uint8]]  # per feature group, one RowStatus per key


class FeatureService:
    def __init__(self, rows: RowSource, catalog: Catalog, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        self.rows = rows
        self.catalog = catalog
        self.max_keys = max_keys

    def use_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog  # one reference swap: requests in flight keep the old one

    # What each request touches, for the caller's grants (checked before it runs).

    def retrieve_needs(self, entity: str, features: Sequence[str]) -> list[Need]:
        """A Retrieve reads the feature groups its selectors name, or every group of the
        entity when it names none (an unknown entity: NOT_FOUND, as the Retrieve would be)."""
        limits.check(len(features), limits.MAX_SELECTORS, "feature selectors")
        if features:
            groups = distinct(feature.partition(".")[0] for feature in features)
        else:
            groups = [selection.group for selection in self.catalog.select(entity, [])]
        return [reads("feature_group", groups)]

    def persist_needs(self, group: str) -> list[Need]:
        return [writes("feature_group", [group])]

    async def retrieve(
        self, entity: str, keys: Mapping[str, KeyValues], features: Sequence[str] = ()
    ) -> RetrieveResult:
        limits.check(len(features), limits.MAX_SELECTORS, "feature selectors")
        catalog = self.catalog
        definition = catalog.entity(entity)
        selections = catalog.select(entity, features)
        count = max((len(v) for v in keys.values()), default=0)
        if count > self.max_keys:
            raise ResourceExhaustedError(
                f"{count} keys requested; the maximum per request is {self.max_keys}"
            )
        encoded = encode_keys(definition, dict(keys))
        now = time.time()
        if len(selections) == 1:
            decoded = [await self._read_group(catalog, selections[0], encoded, now)]
        else:
            decoded = list(
                await asyncio.gather(
                    *(self._read_group(catalog, s, encoded, now) for s in selections)
                )
            )
        columns: list[ResultColumn] = []
        status: dict[str, npt.NDArray[np.uint8]] = {}
        for selection, (group_status, group_columns) in zip(selections, decoded, strict=True):
            status[selection.group] = group_status
            columns += [
                ResultColumn(c.name, c.type, group_columns[c.feature], c.type_name)
                for c in selection.columns
            ]
        return RetrieveResult(entity, len(encoded), columns, status)

    async def retrieve_all(self, queries: Sequence[Query]) -> list[RetrieveResult]:
        """Independent retrieves, answered in order; the first that fails raises. Their
        storage reads overlap, unless storage reads inline (LMDB): reads that never yield
        cannot overlap, and tasks would only add their own cost. The batch as a whole may
        ask for at most `max_keys` keys."""
        limits.check(len(queries), limits.MAX_QUERIES_PER_BATCH, "queries")
        total = sum(max((len(v) for v in query.keys.values()), default=0) for query in queries)
        if total > self.max_keys:
            raise ResourceExhaustedError(
                f"{total} keys requested in one batch; the maximum is {self.max_keys}"
            )
        if len(queries) == 1 or self.rows.storage.reads_inline:
            return [await self.retrieve(q.entity, q.keys, q.features) for q in queries]
        results = await asyncio.gather(
            *(self.retrieve(q.entity, q.keys, q.features) for q in queries),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return cast(list[RetrieveResult], results)

    async def _read_group(
        self, catalog: Catalog, selection: Selection, keys: list[bytes], now: float
    ) -> tuple[npt.NDArray[np.uint8], dict[str, Column]]:
        codec = catalog.codecs[selection.group]
        metrics.count_keys(selection.group, len(keys))
        rows = await self.rows.read(selection.group, keys, codec.definition.cache)
        decoded = codec.decode(rows, selection.features, now)
        return decoded.status, decoded.columns

    async def persist(
        self, group: str, keys: Mapping[str, KeyValues], columns: Mapping[str, Column]
    ) -> int:
        """Write whole rows of one feature group; all of them or, on a bad value, none."""
        catalog = self.catalog
        definition = catalog.group(group)
        codec = catalog.codecs[group]
        encoded_keys = encode_keys(catalog.entity(definition.entity), dict(keys))
        count = len(encoded_keys)
        check_columns(codec, columns, count)
        rows = codec.current.encode(dict(columns), count, codec.expiry_for(time.time()))
        await self.rows.storage.write(
            group, list(zip(encoded_keys, rows, strict=True)), definition.ttl
        )
        await self.rows.invalidate(group, encoded_keys)
        return count

    async def persist_typed(
        self,
        group: str,
        keys: Mapping[str, KeyValues],
        columns: Sequence[tuple[str, FeatureType, Column]],
    ) -> int:
        """`persist` of columns that say their own type (as they arrive over the wire): each
        must name a feature of the group, once, of the feature's type."""
        definition = self.catalog.group(group)
        checked: dict[str, Column] = {}
        for name, sent_type, values in columns:
            if name in checked:
                raise InvalidArgumentError(f"column '{name}' is given twice")
            feature = definition.feature(name)
            if feature is None:
                raise NotFoundError(f"feature '{definition.name}.{name}' not found")
            if sent_type != feature.type:
                raise InvalidArgumentError(
                    f"feature '{definition.name}.{name}' is {feature.type}, "
                    f"the column is {sent_type}"
                )
            checked[name] = values
        return await self.persist(group, keys, checked)


def check_columns(codec: GroupCodec, columns: Mapping[str, Column], count: int) -> None:
    """Every feature of the group present, of its type and length; errors name the feature."""
    group = codec.definition.name
    unknown = [name for name in columns if name not in codec.types]
    if unknown:
        raise InvalidArgumentError(f"feature group '{group}' has no feature '{unknown[0]}'")
    for name, feature_type in codec.types.items():
        column = columns.get(name)
        if column is None:
            raise InvalidArgumentError(f"feature '{group}.{name}' is missing from the rows")
        if feature_type.is_variable != isinstance(column, VarColumn):
            raise InvalidArgumentError(f"feature '{group}.{name}' has values of the wrong kind")
        length = len(column.lengths) if isinstance(column, VarColumn) else len(column)
        if length != count:
            raise InvalidArgumentError(
                f"feature '{group}.{name}' has {length} values for {count} keys"
            )
        if not isinstance(column, VarColumn):
            expected = feature_type.storage_dtype
            if column.shape[1:] != expected.shape:
                raise InvalidArgumentError(
                    f"feature '{group}.{name}' is {feature_type}; "
                    f"values have shape {column.shape[1:]}"
                )
