"""Features from a user's recent interactions: counts and recency, per candidate or overall.

A model config's `interactions:` entry reads the user's newest events of one type (from the
interaction store of this worker, or the one served next to a remote feature store) and turns
them into float32 columns of the matrix, e.g. "clicked this product in the last 7 days" or
"clicks on this candidate's category".
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import UnavailableError
from inferstack.core.rowformat import VarColumn

if TYPE_CHECKING:
    from inferstack.client.interactions import AsyncInteractionsClient

NEVER_SECONDS = 365 * 86_400.0  # recency when nothing matched and the fetch has no window


@dataclass(frozen=True)
class RecentEvents:
    """One user's events of one type, newest first."""

    timestamps: npt.NDArray[np.int64]  # unix ms
    fields: dict[str, npt.NDArray[Any]]  # item key and attributes; strings as str objects


class InteractionSource(Protocol):
    async def recent(
        self, type_name: str, user: Any, last: int, since_ms: int | None
    ) -> RecentEvents: ...


class LocalInteractionSource:
    """The interaction store of this worker."""

    def __init__(self, service: Any) -> None:  # InteractionService; Any avoids an import cycle
        self.service = service

    async def recent(
        self, type_name: str, user: Any, last: int, since_ms: int | None
    ) -> RecentEvents:
        (history,) = await self.service.get(user, [type_name], limit=last, since=since_ms)
        fields = {
            name: _as_values(column)
            for name, column in history.columns.items()
            if name not in ("event_id", "ts")
        }
        stamps = np.asarray(history.columns["ts"], dtype=np.int64)
        return RecentEvents(stamps, fields)


class RemoteInteractionSource:
    """The interaction store served at `target` (next to a remote feature store)."""

    def __init__(self, client: AsyncInteractionsClient) -> None:
        self.client = client

    async def recent(
        self, type_name: str, user: Any, last: int, since_ms: int | None
    ) -> RecentEvents:
        histories = await self.client.get(user, [type_name], limit=last, since=since_ms)
        history = histories[type_name]
        fields = {
            name: np.asarray(values)
            for name, values in history.columns.items()
            if name not in ("event_id", "ts")
        }
        return RecentEvents(np.asarray(history.columns["ts"], dtype=np.int64), fields)


class NoInteractionSource:
    async def recent(
        self, type_name: str, user: Any, last: int, since_ms: int | None
    ) -> RecentEvents:
        raise UnavailableError("this server has no interaction store to read recent events from")


def _as_values(column: Any) -> npt.NDArray[Any]:
    if isinstance(column, VarColumn):
        return np.asarray([v.decode("utf-8") for v in column.to_list()], dtype=object)
    return np.asarray(column)


def aggregate(
    events: RecentEvents,
    kind: str,
    match: str | None,
    values: npt.NDArray[Any] | None,
    rows: int,
    never: float,
    now_ms: int | None = None,
) -> npt.NDArray[np.float32]:
    """count or recency (seconds since the newest) over all events or, per row, over the
    events whose `match` field equals the row's value."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    stamps = events.timestamps
    if match is None or values is None:
        if kind == "count":
            return np.full(rows, len(stamps), dtype=np.float32)
        seconds = (now_ms - int(stamps[0])) / 1000 if len(stamps) else never
        return np.full(rows, seconds, dtype=np.float32)
    field = events.fields[match]
    if field.dtype == object or values.dtype == object:
        return _by_dict(field, stamps, kind, values, never, now_ms)
    unique, first, counts = np.unique(field, return_index=True, return_counts=True)
    if not len(unique):
        return np.full(rows, 0 if kind == "count" else never, dtype=np.float32)
    index = np.clip(np.searchsorted(unique, values), 0, len(unique) - 1)
    hit = unique[index] == values
    if kind == "count":
        return np.where(hit, counts[index], 0).astype(np.float32)
    # Events are newest first, so a value's first occurrence is its newest.
    ages = (now_ms - stamps[first[index]]) / 1000
    return np.where(hit, ages, never).astype(np.float32)


def _by_dict(
    field: npt.NDArray[Any],
    stamps: npt.NDArray[np.int64],
    kind: str,
    values: npt.NDArray[Any],
    never: float,
    now_ms: int,
) -> npt.NDArray[np.float32]:
    keys: Sequence[Any] = field.tolist()
    if kind == "count":
        counts = Counter(keys)
        return np.asarray([counts.get(v, 0) for v in values.tolist()], dtype=np.float32)
    newest: dict[Any, int] = {}
    for key, ts in zip(keys, stamps.tolist(), strict=True):
        newest.setdefault(key, ts)  # newest first: the first seen is the latest
    return np.asarray(
        [(now_ms - newest[v]) / 1000 if v in newest else never for v in values.tolist()],
        dtype=np.float32,
    )
