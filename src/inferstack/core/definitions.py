"""Definitions users write: entities and feature groups (pydantic models).

These models are both the YAML schema users write and the form stored in the config
store, so what `inferstack apply` validates is exactly what servers load.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from inferstack.core.fields import FrozenModel, Name, Seconds, TypeField, reject_duplicates
from inferstack.core.types import KEY_TYPES, FeatureType


class KeyColumn(FrozenModel):
    name: Name
    type: TypeField

    @field_validator("type")
    @classmethod
    def _key_type(cls, value: FeatureType) -> FeatureType:
        if str(value) not in KEY_TYPES:
            raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}, got {value}")
        return value


class Entity(FrozenModel):
    name: Name
    keys: list[KeyColumn] = Field(min_length=1, max_length=8)
    description: str = ""

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, keys: list[KeyColumn]) -> list[KeyColumn]:
        reject_duplicates([k.name for k in keys], "key")
        return keys

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.keys]


class Feature(FrozenModel):
    name: Name
    type: TypeField
    default: Any = Field(default=None, validate_default=True)
    description: str = ""

    @field_validator("default")
    @classmethod
    def _canonical_default(cls, value: Any, info: ValidationInfo) -> Any:
        feature_type = info.data.get("type")
        if feature_type is None:  # the type itself was invalid and is reported already
            return value
        return feature_type.coerce_default(value)


class CachePolicy(FrozenModel):
    """How long a row may be served from caches without going back to storage."""

    enabled: bool = True
    ttl: Seconds = 60.0
    negative_ttl: Seconds = 10.0


class FeatureGroup(FrozenModel):
    name: Name
    entity: Name
    features: list[Feature] = Field(min_length=1, max_length=4096)
    ttl: Seconds | None = None  # how long a written row lives; None = forever
    cache: CachePolicy = CachePolicy()
    description: str = ""

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[Feature]) -> list[Feature]:
        reject_duplicates([f.name for f in features], "feature")
        return features

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)
