"""The Try it page: a person's context -> Infer through the inferflow service (the same call,
limits and checks as any client's) -> a ranked table, the stage timings as a waterfall and,
cell by cell, which feature values fell back to their defaults."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from inferstack.console.values import Shown, column_values
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.modelconfig import ModelConfig
from inferstack.core.types import FeatureType
from inferstack.inferflow.service import InferflowService

RANDOM_CHOICES = (10, 100, 1000)
_INTEGER_SEPARATORS = re.compile(r"[\s,;]+")
_FLOAT32 = FeatureType("float32")


@dataclass(frozen=True)
class Cell:
    shown: Shown
    defaulted: bool = False  # the feature store had no live row: this is the default


@dataclass(frozen=True)
class RankedRow:
    rank: int
    candidate: str
    outputs: list[Cell]
    features: list[Cell]


@dataclass(frozen=True)
class StageBar:
    name: str
    milliseconds: float
    start: float  # fraction of the total where the bar starts, 0..1
    width: float  # fraction of the total, 0..1


@dataclass(frozen=True)
class TryResult:
    model: str
    version: int
    request_id: str
    ranked_by: str
    candidate_name: str
    outputs: list[str]
    features: list[str]
    rows: list[RankedRow]
    stages: list[StageBar]
    total_milliseconds: float
    defaults: list[tuple[str, int]]  # features with rows read as defaults


def values_of(text: str, integers: bool) -> list[str]:
    """Values typed in a box: one per line; integers may also be split by commas or spaces."""
    if integers:
        return [v for v in _INTEGER_SEPARATORS.split(text) if v]
    return [line.strip() for line in text.splitlines() if line.strip()]


def context_of(config: ModelConfig, texts: Mapping[str, str]) -> dict[str, list[str]]:
    """The request's context from the form: each input's values as text (the service parses
    them by the input's declared type and names the input when one is wrong)."""
    context: dict[str, list[str]] = {}
    for spec in config.context:
        values = values_of(texts.get(spec.name, ""), spec.type.base != "string")
        if not values:
            raise InvalidArgumentError(f"context input '{spec.name}' needs a value")
        context[spec.name] = values
    return context


def random_ids(count: int, highest: int, rng: np.random.Generator) -> list[int]:
    """`count` distinct ids drawn uniformly from 1..highest (fewer if there are not as many)."""
    if highest < 1:
        raise InvalidArgumentError(f"the highest candidate id must be at least 1, got {highest}")
    drawn = rng.choice(highest, size=min(count, highest), replace=False) + 1
    return [int(v) for v in drawn.tolist()]


async def try_model(
    service: InferflowService,
    model: str,
    context: dict[str, list[str]],
    return_features: Sequence[str],
) -> TryResult:
    candidate_name = service.ready(model).plan.candidates.name
    request_id, result = await service.infer(model, context, return_features)
    outputs = list(result.outputs)
    ranked_by = outputs[0]
    order = np.argsort(-result.outputs[ranked_by], kind="stable")  # best first, NaN last
    output_cells = {
        name: [Cell(c) for c in column_values(_FLOAT32, values)]
        for name, values in result.outputs.items()
    }
    feature_cells: dict[str, list[Cell]] = {}
    for name, (ref, column) in result.features.items():
        mask = result.defaulted.get(name, False)
        flags = np.broadcast_to(np.asarray(mask, dtype=bool), (result.count,)).tolist()
        feature_cells[name] = [
            Cell(c, flag) for c, flag in zip(column_values(ref.type, column), flags, strict=True)
        ]
    candidates = [str(v) for v in result.candidates.tolist()]
    rows = [
        RankedRow(
            rank,
            candidates[row],
            [output_cells[name][row] for name in outputs],
            [feature_cells[name][row] for name in feature_cells],
        )
        for rank, row in enumerate(order.tolist(), start=1)
    ]
    milliseconds = [(name, seconds * 1e3) for name, seconds in result.timings]
    total = sum(ms for _, ms in milliseconds)
    stages: list[StageBar] = []
    start = 0.0
    for name, ms in milliseconds:
        stages.append(StageBar(name, ms, start / total if total else 0, ms / total if total else 0))
        start += ms
    return TryResult(
        result.model,
        result.version,
        request_id,
        ranked_by,
        candidate_name,
        outputs,
        list(feature_cells),
        rows,
        stages,
        total,
        [(name, rows) for name, rows in result.defaults.items() if rows],
    )
