"""Run one request through a compiled plan.

    context -> keys of stage 1 -> fetch (concurrently) -> keys of stage 2 -> ... -> matrix
    -> models and expressions in dependency order -> outputs and features in candidate order

Per-row keys are de-duplicated before a fetch and scattered back after it, so 100 candidates
in 12 categories cost 12 user x category lookups. Missing rows read as their defaults (the
feature store does that) and are counted per feature for `explain`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.errors import (
    InferstackError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from inferstack.core.keys import KeyValues, coerce_values
from inferstack.core.queries import Query
from inferstack.core.rowformat import RowStatus, VarColumn
from inferstack.inferflow.features import FeatureSource, FetchedColumn
from inferstack.inferflow.graph import (
    Equals,
    ExecutionPlan,
    ExpressionStep,
    FeatureRef,
    FetchNode,
    InteractionNode,
    KeyPart,
    ModelStep,
    group_refs,
)
from inferstack.inferflow.recent import InteractionSource, NoInteractionSource, aggregate
from inferstack.inferflow.runtimes.base import ModelRuntime

KeyArray = npt.NDArray[Any]  # integers, or str objects


@dataclass(frozen=True)
class ReadyModel:
    """A compiled plan with its loaded model runtimes: what one model version serves with."""

    plan: ExecutionPlan
    runtimes: Mapping[str, ModelRuntime]


@dataclass
class InferResult:
    model: str
    version: int
    count: int
    outputs: dict[str, npt.NDArray[np.float32]]
    features: dict[str, tuple[FeatureRef, FetchedColumn]]  # in candidate order
    timings: list[tuple[str, float]]  # stage -> seconds
    defaults: dict[str, int]  # feature -> rows that read as defaults
    matrix: npt.NDArray[np.float32]
    candidates: KeyArray
    context: dict[str, KeyArray] = field(default_factory=dict)
    # feature -> which rows read as its default: a mask per row, or one bool for every row
    defaulted: dict[str, npt.NDArray[np.bool_] | bool] = field(default_factory=dict)


@dataclass
class _Fetch:
    values: Mapping[str, FetchedColumn]  # by selector, one row per distinct key
    status: Mapping[str, npt.NDArray[np.uint8]]
    inverse: npt.NDArray[np.intp] | None  # candidate row -> fetched row; None: one row for all


class _Clock:
    def __init__(self) -> None:
        self.timings: list[tuple[str, float]] = []
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings.append((stage, now - self.last))
        self.last = now


async def execute(
    ready: ReadyModel,
    source: FeatureSource,
    context: Mapping[str, KeyValues],
    return_features: Sequence[str] = (),
    recent: InteractionSource | None = None,
) -> InferResult:
    plan = ready.plan
    clock = _Clock()
    values, candidates = _check_context(plan, context)
    extra = _extra_features(plan, return_features)
    rows = len(candidates)
    clock.lap("context")

    fetched: dict[str, _Fetch] = {}
    for number, stage in enumerate(plan.stages, start=1):
        await _fetch_stage(stage, source, values, fetched, rows, extra)
        clock.lap(f"fetch {number}: {', '.join(node.name for node in stage)}")

    for node in plan.interactions:
        fetched[node.name] = await _recent(
            node, recent or NoInteractionSource(), values, fetched, rows
        )
        clock.lap(f"interactions {node.name}")

    matrix = np.empty((rows, plan.width), dtype=np.float32)
    for placed in plan.feature_columns:
        ref = placed.ref
        _scatter(fetched[ref.fetch], ref, matrix[:, placed.start : placed.start + ref.width])
    clock.lap("matrix")

    for step in plan.steps:
        if isinstance(step, ModelStep):
            await _run_model(plan.model, step, ready.runtimes[step.name].for_request(), matrix)
            clock.lap(f"model {step.name}")
        else:
            _run_expression(step, matrix)
            clock.lap(f"expression {step.name}")

    outputs = {name: matrix[:, plan.outputs[name]].copy() for name in plan.response_outputs}
    features: dict[str, tuple[FeatureRef, FetchedColumn]] = {}
    for ref in (*plan.response_features, *extra):
        features[ref.name] = (ref, _gather(fetched[ref.fetch], ref, rows))
    defaults, defaulted = _count_defaults(plan, fetched, rows, extra)
    clock.lap("response")
    return InferResult(
        plan.model,
        plan.version,
        rows,
        outputs,
        features,
        clock.timings,
        defaults,
        matrix,
        candidates,
        values,
        defaulted,
    )


def _check_context(
    plan: ExecutionPlan, context: Mapping[str, KeyValues]
) -> tuple[dict[str, KeyArray], KeyArray]:
    inputs = {c.name: c for c in plan.definition.context}
    for name in context:
        if name not in inputs:
            raise InvalidArgumentError(
                f"model '{plan.model}' has no context input '{name}' (inputs: {', '.join(inputs)})"
            )
    values: dict[str, KeyArray] = {}
    for name, spec in inputs.items():
        given = context.get(name)
        if given is None:
            raise InvalidArgumentError(f"context input '{name}' of model '{plan.model}' is missing")
        if spec.candidates:
            if len(given) > spec.max_rows:
                raise ResourceExhaustedError(
                    f"{len(given)} candidates in '{name}'; model '{plan.model}' takes at most "
                    f"{spec.max_rows}"
                )
        elif len(given) != 1:
            raise InvalidArgumentError(f"context input '{name}' takes one value, got {len(given)}")
        coerced = coerce_values(f"context input '{name}'", spec.type, given)
        values[name] = np.asarray(coerced, dtype=object) if isinstance(coerced, list) else coerced
    return values, values[plan.candidates.name]


def _extra_features(plan: ExecutionPlan, names: Sequence[str]) -> list[FeatureRef]:
    extra: list[FeatureRef] = []
    for name in names:
        fetch, _, feature = name.partition(".")
        available = plan.available.get(fetch)
        if available is None:
            raise NotFoundError(
                f"model '{plan.model}' has no fetch '{fetch}' (fetches: "
                f"{', '.join(plan.available)}); return_features are fetch.feature"
            )
        ref = available.get(feature)
        if ref is None:
            raise NotFoundError(
                f"fetch '{fetch}' of model '{plan.model}' has no feature '{feature}'"
            )
        if ref.name not in {r.name for r in (*plan.response_features, *extra)}:
            extra.append(ref)
    return extra


async def _fetch_stage(
    stage: Sequence[FetchNode],
    source: FeatureSource,
    context: Mapping[str, KeyArray],
    fetched: dict[str, _Fetch],
    rows: int,
    extra: Sequence[FeatureRef],
) -> None:
    queries: list[Query] = []
    inverses: list[npt.NDArray[np.intp] | None] = []
    for node in stage:
        keys, inverse = _keys_of(node, context, fetched, rows)
        selectors = dict.fromkeys(node.selectors)
        selectors.update((ref.selector, None) for ref in extra if ref.fetch == node.name)
        queries.append(Query(node.entity, keys, list(selectors)))
        inverses.append(inverse)
    results = await source.fetch(queries)
    for node, result, inverse in zip(stage, results, inverses, strict=True):
        fetched[node.name] = _Fetch(result.columns, result.status, inverse)


def _keys_of(
    node: FetchNode, context: Mapping[str, KeyArray], fetched: Mapping[str, _Fetch], rows: int
) -> tuple[dict[str, KeyArray], npt.NDArray[np.intp] | None]:
    if not node.per_row:
        return {part.key: _key_values(part, context, fetched, None) for part in node.keys}, None
    # Only the parts that vary by row decide which rows are distinct; request-wide parts
    # (the user of user x category) are repeated over the distinct rows afterwards.
    varying = [part for part in node.keys if _varies(part, fetched)]
    unique, inverse = _distinct([_key_values(part, context, fetched, rows) for part in varying])
    distinct = dict(zip((part.key for part in varying), unique, strict=True))
    count = len(unique[0])
    return {
        part.key: distinct[part.key]
        if part.key in distinct
        else np.repeat(_key_values(part, context, fetched, None), count)
        for part in node.keys
    }, inverse


def _varies(part: KeyPart, fetched: Mapping[str, _Fetch]) -> bool:
    if part.context is not None:
        return part.per_row
    assert part.feature is not None
    return fetched[part.feature.fetch].inverse is not None


def _key_values(
    part: KeyPart, context: Mapping[str, KeyArray], fetched: Mapping[str, _Fetch], rows: int | None
) -> KeyArray:
    """One key column: one value (rows=None), or one per candidate row."""
    if part.context is not None:
        values = context[part.context]
        per_row = part.per_row
    else:
        assert part.feature is not None
        parent = fetched[part.feature.fetch]
        values = _as_keys(parent.values[part.feature.selector])
        per_row = parent.inverse is not None
        if per_row:
            assert parent.inverse is not None
            values = values[parent.inverse]
    if rows is None or per_row:
        return values
    return np.repeat(values, rows)  # a request-wide value broadcast to every row


def _as_keys(column: FetchedColumn) -> KeyArray:
    if isinstance(column, VarColumn):
        return np.asarray([v.decode("utf-8") for v in column.to_list()], dtype=object)
    return column


def _distinct(columns: list[KeyArray]) -> tuple[list[KeyArray], npt.NDArray[np.intp]]:
    """The distinct rows of a composite key and, per row, the index of its distinct row."""
    if len(columns) == 1:
        unique, inverse = _factorize(columns[0])
        return [unique], inverse
    combined = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        levels, codes = _factorize(column)
        combined = combined * len(levels) + codes
    _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    return [column[first] for column in columns], inverse.astype(np.intp, copy=False)


def _factorize(column: KeyArray) -> tuple[KeyArray, npt.NDArray[np.intp]]:
    """Distinct values and each row's index into them."""
    if column.dtype.kind != "O":
        unique, inverse = np.unique(column, return_inverse=True)
        return unique, inverse.astype(np.intp, copy=False)
    # Strings: a dict beats sorting Python objects.
    index: dict[Any, int] = {}
    codes = [index.setdefault(value, len(index)) for value in column.tolist()]
    return np.fromiter(index, dtype=object, count=len(index)), np.asarray(codes, dtype=np.intp)


async def _recent(
    node: InteractionNode,
    source: InteractionSource,
    context: Mapping[str, KeyArray],
    fetched: Mapping[str, _Fetch],
    rows: int,
) -> _Fetch:
    """The user's recent events of one type as float32 columns, one row per candidate."""
    now_ms = int(time.time() * 1000)
    since = now_ms - int(node.window * 1000) if node.window is not None else None
    user = context[node.user].tolist()[0]
    events = await source.recent(node.type, user, node.last, since)
    columns: dict[str, FetchedColumn] = {}
    for feature in node.features:
        per_row = _equals_values(feature.equals, context, fetched, rows) if feature.equals else None
        columns[f"{node.name}.{feature.name}"] = aggregate(
            events, feature.aggregate, feature.match, per_row, rows, node.never, now_ms
        )
    status = {node.name: np.zeros(rows, dtype=np.uint8)}  # computed, never missing
    return _Fetch(columns, status, np.arange(rows, dtype=np.intp))


def _equals_values(
    equals: Equals, context: Mapping[str, KeyArray], fetched: Mapping[str, _Fetch], rows: int
) -> KeyArray:
    if equals.context is not None:
        values = context[equals.context]
        return values if len(values) == rows else np.repeat(values, rows)
    assert equals.feature is not None
    parent = fetched[equals.feature.fetch]
    values = _as_keys(parent.values[equals.feature.selector])
    return values[parent.inverse] if parent.inverse is not None else np.repeat(values, rows)


def _scatter(fetch: _Fetch, ref: FeatureRef, out: npt.NDArray[np.float32]) -> None:
    values = fetch.values[ref.selector]
    assert isinstance(values, np.ndarray)
    if fetch.inverse is None:
        out[...] = values[0]
    elif ref.type.length:
        out[...] = values[fetch.inverse]
    else:
        out[:, 0] = values[fetch.inverse]


def _gather(fetch: _Fetch, ref: FeatureRef, rows: int) -> FetchedColumn:
    values = fetch.values[ref.selector]
    index = fetch.inverse if fetch.inverse is not None else np.zeros(rows, dtype=np.intp)
    if isinstance(values, VarColumn):
        items = values.to_list()
        lengths = values.lengths[index]
        return VarColumn(lengths.astype(np.uint32), b"".join([items[i] for i in index.tolist()]))
    return values[index]


async def _run_model(
    config: str, step: ModelStep, runtime: ModelRuntime, matrix: npt.NDArray[np.float32]
) -> None:
    model = step.definition
    rows = len(matrix)
    if rows == 0:
        for _, column in step.outputs:
            matrix[:, column] = 0
        return
    inputs = matrix[:, step.columns]  # a view when the layout made the inputs contiguous
    if model.dtype == "float64":
        inputs = inputs.astype(np.float64)
    parts = [inputs[i : i + model.max_rows] for i in range(0, rows, model.max_rows)]
    where = f"model '{step.name}' of '{config}'"
    try:
        async with asyncio.timeout(model.timeout):
            if len(parts) == 1:
                results = [await runtime.infer(parts[0])]
            else:
                # A TaskGroup cancels the other parts as soon as one fails.
                async with asyncio.TaskGroup() as group:
                    tasks = [group.create_task(runtime.infer(p)) for p in parts]
                results = [task.result() for task in tasks]
    except TimeoutError as exc:
        raise UnavailableError(
            f"{where} ({runtime.description}) did not answer within {model.timeout:g}s"
        ) from exc
    except BaseExceptionGroup as group_error:
        raise _model_error(where, group_error.exceptions[0]) from group_error
    except Exception as exc:
        raise _model_error(where, exc) from exc
    for position, (spec, column) in enumerate(step.outputs):
        pieces = []
        for result in results:
            names = list(result)
            tensor_name = spec.tensor if spec.tensor is not None else _positional(names, position)
            if tensor_name not in result:
                raise UnavailableError(
                    f"model '{step.name}' returned no tensor '{tensor_name}' "
                    f"(got {', '.join(names)})"
                )
            tensor = np.asarray(result[tensor_name])
            if tensor.ndim == 2:
                tensor = tensor[:, spec.index or 0]
            elif tensor.ndim != 1 or spec.index:
                raise UnavailableError(
                    f"model '{step.name}' output '{tensor_name}' has shape {tensor.shape}"
                )
            pieces.append(tensor)
        scores = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if len(scores) != rows:  # never hand back scores shifted against their candidates
            raise UnavailableError(
                f"model '{step.name}' returned {len(scores)} rows for {rows} candidates"
            )
        matrix[:, column] = scores


def _model_error(where: str, error: BaseException) -> InferstackError:
    """The runtime's error, prefixed with the model config and step it happened in."""
    if isinstance(error, InferstackError):
        failed = InferstackError(f"{where}: {error}")
        failed.status = error.status  # keep NOT_FOUND, INVALID_ARGUMENT, UNAVAILABLE...
        return failed
    return UnavailableError(f"{where} failed: {error}")


def _positional(names: list[str], position: int) -> str:
    return names[position] if position < len(names) else f"#{position}"


def _run_expression(step: ExpressionStep, matrix: npt.NDArray[np.float32]) -> None:
    values = {name: matrix[:, column] for name, column in step.inputs.items()}
    matrix[:, step.column] = step.expression.evaluate(values, len(matrix))


def _count_defaults(
    plan: ExecutionPlan, fetched: Mapping[str, _Fetch], rows: int, extra: Sequence[FeatureRef]
) -> tuple[dict[str, int], dict[str, npt.NDArray[np.bool_] | bool]]:
    """Per feature: how many rows read as its default, and which (kept for explain)."""
    counts: dict[str, int] = {}
    which: dict[str, npt.NDArray[np.bool_] | bool] = {}
    reported = plan.reported
    if extra:
        used = [*(placed.ref for placed in plan.feature_columns), *plan.response_features]
        reported = group_refs([*used, *extra])
    for fetch_name, group, names in reported:
        fetch = fetched[fetch_name]
        absent = fetch.status[group] != RowStatus.FOUND
        rows_absent: npt.NDArray[np.bool_] | bool
        if fetch.inverse is None:
            rows_absent = bool(absent[0])
            missing = rows if rows_absent else 0
        else:
            rows_absent = absent[fetch.inverse]
            missing = int(np.count_nonzero(rows_absent))
        counts.update(dict.fromkeys(names, missing))
        which.update(dict.fromkeys(names, rows_absent))
    return counts, which
