"""What callers send to the interaction store and what it answers, independent of any
transport: a batch of events of one type (Ingest) and one user's events of one type (Get)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inferstack.core.keys import KeyValues
from inferstack.core.rowformat import Column
from inferstack.core.types import FeatureType


@dataclass(frozen=True)
class EventBatch:
    """Events of one interaction type; every column has one value per event."""

    type: str
    event_ids: Sequence[str]
    users: KeyValues
    items: KeyValues
    timestamps: KeyValues  # unix milliseconds
    attributes: Mapping[str, Column | Sequence[Any]] = field(default_factory=dict)


@dataclass
class History:
    """Events of one type for one user, newest first, column by column."""

    type: str
    count: int
    columns: dict[str, Column]  # event_id, ts, the item key, attributes
    types: dict[str, FeatureType]
    hot: int = 0  # how many came from the hot tier
