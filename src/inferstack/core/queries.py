"""What a Retrieve asks for, the same for the feature store's clients, its server and
inferflow's fetches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from inferstack.core.keys import KeyValues


@dataclass(frozen=True)
class Query:
    """One entity's keys and the features wanted ("group", "group.*", "group.feature").

    keys: key part name -> its values (a sequence or a numpy array), one per entity key;
    no features: every feature of every group of the entity.
    """

    entity: str
    keys: Mapping[str, KeyValues]
    features: Sequence[str] = ()
