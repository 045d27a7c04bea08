"""Interaction types users write: what one kind of user event (click, order...) carries and
how long it stays hot and cold.

Each event is stored as a row of the feature store's row format (`core/rowformat.py`): its
layout is `event_id, ts, <item key>, <attributes...>`, versioned like a feature group's, so
adding an attribute later keeps old events readable (they read the attribute's default).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from inferstack.core.definitions import Feature, FeatureGroup, KeyColumn
from inferstack.core.fields import FrozenModel, Name, Seconds, reject_duplicates

EVENT_ID = "event_id"
TIMESTAMP = "ts"  # unix milliseconds
RESERVED = (EVENT_ID, TIMESTAMP)
DAY = 86_400.0


class Retention(FrozenModel):
    """How much cold history is kept per user and type: the newest `count`, none older
    than `age`."""

    count: int = Field(1_000, ge=1, le=1_000_000)
    age: Seconds | None = 90 * DAY


class InteractionType(FrozenModel):
    name: Name
    user: KeyColumn  # e.g. {name: user_id, type: int64}
    item: KeyColumn  # e.g. {name: product_id, type: int64}
    attributes: list[Feature] = Field(default_factory=list, max_length=16)
    hot_cap: int = Field(200, ge=1, le=100_000)  # most recent events kept hot per user
    retention: Retention = Retention()
    inactivity: Seconds = 45 * 60.0  # a user idle this long is swept to the cold tier
    description: str = ""

    @field_validator("attributes")
    @classmethod
    def _plain_attributes(cls, attributes: list[Feature]) -> list[Feature]:
        reject_duplicates([a.name for a in attributes], "attribute")
        for attribute in attributes:
            if attribute.type.length:
                raise ValueError(f"attribute '{attribute.name}': vectors are not supported")
            if attribute.name in RESERVED:
                raise ValueError(f"attribute name '{attribute.name}' is reserved")
        return attributes

    @model_validator(mode="after")
    def _distinct_names(self) -> InteractionType:
        names = [self.user.name, self.item.name, *(a.name for a in self.attributes)]
        reject_duplicates(names, "field")
        if self.item.name in RESERVED or self.user.name in RESERVED:
            raise ValueError(f"'{EVENT_ID}' and '{TIMESTAMP}' are reserved field names")
        if self.inactivity <= 0:
            raise ValueError("inactivity must be a positive duration")
        return self

    def as_feature_group(self) -> FeatureGroup:
        """The event layout as a feature group, so rows encode and version like features."""
        return FeatureGroup(
            name=self.name,
            entity=self.name,  # not an entity of the registry: events are keyed by user
            features=[
                Feature(name=EVENT_ID, type="string"),
                Feature(name=TIMESTAMP, type="int64"),
                Feature(name=self.item.name, type=self.item.type),
                *self.attributes,
            ],
        )

    @property
    def field_names(self) -> list[str]:
        return [self.user.name, self.item.name, *(a.name for a in self.attributes)]
