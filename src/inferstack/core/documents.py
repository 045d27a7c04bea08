"""The top level of a definitions YAML file: every kind of definition, each optional."""

from __future__ import annotations

from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.fields import FrozenModel
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.modelconfig import ModelConfig


class DefinitionsFile(FrozenModel):
    """The top level of one YAML file; every section is optional."""

    entities: list[Entity] = []
    feature_groups: list[FeatureGroup] = []
    models: list[ModelConfig] = []
    interaction_types: list[InteractionType] = []
