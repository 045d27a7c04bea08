"""Definitions users write: entities and feature groups (pydantic models).

These models are both the YAML schema users write and the form stored in the config
store, so what `inferstack apply` validates is exactly what servers load.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    field_validator,
)

from inferstack.core.durations import format_duration, parse_duration
from inferstack.core.types import KEY_TYPES, FeatureType, TypeParseError

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _parse_type(value: Any) -> FeatureType:
    if isinstance(value, FeatureType):
        return value
    if not isinstance(value, str):
        raise ValueError(f"type must be a string such as float32 or float32[16], got {value!r}")
    try:
        return FeatureType.parse(value)
    except TypeParseError as exc:
        raise ValueError(str(exc)) from exc


TypeField = Annotated[FeatureType, BeforeValidator(_parse_type), PlainSerializer(str)]
Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KeyColumn(_Model):
    name: Name
    type: TypeField

    @field_validator("type")
    @classmethod
    def _key_type(cls, value: FeatureType) -> FeatureType:
        if str(value) not in KEY_TYPES:
            raise ValueError(f"key type must be one of {', '.join(KEY_TYPES)}, got {value}")
        return value


class Entity(_Model):
    name: Name
    keys: list[KeyColumn] = Field(min_length=1, max_length=8)
    description: str = ""

    @field_validator("keys")
    @classmethod
    def _unique_keys(cls, keys: list[KeyColumn]) -> list[KeyColumn]:
        _reject_duplicates([k.name for k in keys], "key")
        return keys

    @property
    def key_names(self) -> list[str]:
        return [k.name for k in self.keys]


class Feature(_Model):
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


class CachePolicy(_Model):
    """How long a row may be served from caches without going back to storage."""

    enabled: bool = True
    ttl: Seconds = 60.0
    negative_ttl: Seconds = 10.0


class FeatureGroup(_Model):
    name: Name
    entity: Name
    features: list[Feature] = Field(min_length=1, max_length=4096)
    ttl: Seconds | None = None  # how long a written row lives; None = forever
    cache: CachePolicy = CachePolicy()
    description: str = ""

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[Feature]) -> list[Feature]:
        _reject_duplicates([f.name for f in features], "feature")
        return features

    def feature(self, name: str) -> Feature | None:
        return next((f for f in self.features if f.name == name), None)


class DefinitionsFile(_Model):
    """The top level of one YAML file; every section is optional."""

    entities: list[Entity] = []
    feature_groups: list[FeatureGroup] = []


def _reject_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} '{name}' is listed twice")
        seen.add(name)
