"""Field types shared by every definition users write (entities, groups, model configs)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from inferstack.core.durations import format_duration, parse_duration
from inferstack.core.types import FeatureType, TypeParseError

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def parse_type(value: Any) -> FeatureType:
    if isinstance(value, FeatureType):
        return value
    if not isinstance(value, str):
        raise ValueError(f"type must be a string such as float32 or float32[16], got {value!r}")
    try:
        return FeatureType.parse(value)
    except TypeParseError as exc:
        raise ValueError(str(exc)) from exc


TypeField = Annotated[FeatureType, BeforeValidator(parse_type), PlainSerializer(str)]
Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(format_duration)]


class FrozenModel(BaseModel):
    """Strict (unknown fields are errors) and immutable, as stored definitions must be."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def reject_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{what} '{name}' is listed twice")
        seen.add(name)
