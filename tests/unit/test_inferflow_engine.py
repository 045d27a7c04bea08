"""The graph compiler and the executor, on a real in-process feature store (LMDB) and real
ONNX Runtime: results are checked value by value against a direct read + onnxruntime."""

from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import (
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import RowStatus
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.rows import RowSource
from inferstack.featurestore.service import FeatureService
from inferstack.inferflow.executor import ReadyModel, execute
from inferstack.inferflow.features import LocalFeatureSource
from inferstack.inferflow.graph import GraphError, ModelStep, compile_plan
from inferstack.inferflow.runtimes.onnx import OnnxRuntime
from inferstack.inferflow.runtimes.weighted import WeightedRuntime
from inferstack.kv.lmdb import LmdbStorage
from tests.onnx_models import linear_onnx

SPEC: dict[str, Any] = {
    "entities": [
        {"name": "user", "keys": [{"name": "user_id", "type": "int64"}]},
        {"name": "product", "keys": [{"name": "product_id", "type": "int64"}]},
        {
            "name": "user_category",
            "keys": [{"name": "user_id", "type": "int64"}, {"name": "category", "type": "string"}],
        },
    ],
    "feature_groups": [
        {
            "name": "profile",
            "entity": "user",
            "features": [
                {"name": "spend", "type": "float32", "default": 1.5},
                {"name": "emb", "type": "float32[3]"},
            ],
        },
        {
            "name": "stats",
            "entity": "product",
            "features": [
                {"name": "price", "type": "float32", "default": 0},
                {"name": "sold", "type": "int64", "default": 0},
                {"name": "category", "type": "string", "default": "none"},
            ],
        },
        {
            "name": "affinity",
            "entity": "user_category",
            "features": [{"name": "clicks", "type": "float32", "default": -1}],
        },
    ],
}

MODEL: dict[str, Any] = {
    "name": "ranker",
    "context": [
        {"name": "user_id", "type": "int64"},
        {"name": "product_ids", "type": "int64", "candidates": True, "max_rows": 50},
    ],
    "fetches": [
        {
            "name": "aff",
            "entity": "user_category",
            "keys": ["context.user_id", "item.category"],
            "features": ["affinity.clicks"],
        },
        {"name": "user", "entity": "user", "keys": ["context.user_id"], "features": ["profile"]},
        {
            "name": "item",
            "entity": "product",
            "keys": ["context.product_ids"],
            "features": ["stats.*"],
        },
    ],
    "models": [
        {
            "name": "second",
            "runtime": "onnx",
            "path": "second.onnx",
            "inputs": ["first_out", "item.price"],
            "outputs": ["second_out"],
        },
        {
            "name": "first",
            "runtime": "onnx",
            "path": "first.onnx",
            "inputs": ["user.spend", "user.emb", "item.price", "item.sold", "aff.clicks"],
            "outputs": ["first_out"],
        },
    ],
    "expressions": {"score": "first_out * second_out ** 0.5", "position": "rank(score)"},
    "response": {
        "outputs": ["score", "first_out", "second_out", "position"],
        "features": ["item.category"],
    },
}


FIRST = linear_onnx(np.array([0.1, 0.2, -0.1, 0.05, 0.01, -0.02, 0.3], dtype=np.float32))
SECOND = linear_onnx(np.array([2.0, -0.01], dtype=np.float32))


def registry_with(model: dict[str, Any]) -> Registry:
    parsed = DefinitionsFile.model_validate({**SPEC, "models": [model]})
    configs = [
        c.model_copy(
            update={"models": [m.model_copy(update={"artifact": m.name}) for m in c.models]}
        )
        for c in parsed.models
    ]
    return plan(Registry(), parsed.entities, parsed.feature_groups, configs).registry


def compile_model(model: dict[str, Any]) -> Any:
    registry = registry_with(model)
    return compile_plan(registry.models["ranker"].definition, Catalog(registry), 1)


def changed(**edits: Any) -> dict[str, Any]:
    model = copy.deepcopy(MODEL)
    for path, value in edits.items():
        target: Any = model
        parts = path.split("__")
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last = parts[-1]
        target[int(last) if last.isdigit() else last] = value
    return model


# -- the compiler ---------------------------------------------------------------------------


def test_stages_follow_derived_keys_and_steps_follow_references() -> None:
    compiled = compile_model(MODEL)
    assert [[f.name for f in stage] for stage in compiled.stages] == [["user", "item"], ["aff"]]
    assert compiled.fetches["aff"].per_row and not compiled.fetches["user"].per_row
    names = [step.name for step in compiled.steps]
    assert names.index("first") < names.index("second") < names.index("score")
    assert names.index("score") < names.index("position")
    first = next(s for s in compiled.steps if s.name == "first")
    assert isinstance(first, ModelStep) and first.is_view and first.width == 7
    # 'second' reads an output and a feature placed apart: it gets a copy, not a view.
    second = next(s for s in compiled.steps if s.name == "second")
    assert isinstance(second, ModelStep) and not second.is_view


@pytest.mark.parametrize(
    ("edits", "location", "message"),
    [
        ({"fetches__0__keys": ["context.user_id"]}, ("fetches", 0, "keys"), "has 2 key(s)"),
        (
            {"fetches__0__keys": ["item.category", "context.user_id"]},
            ("fetches", 0, "keys", 0),
            "is int64",
        ),
        ({"fetches__0__entity": "shop"}, ("fetches", 0, "entity"), "unknown entity 'shop'"),
        ({"fetches__1__features": ["profile.nope"]}, ("fetches", 1, "features"), "not found"),
        (
            {"models__1__inputs": ["item.category"]},
            ("models", 1, "inputs", 0),
            "models and expressions take numbers",
        ),
        (
            {"models__1__inputs": ["user.height"]},
            ("models", 1, "inputs", 0),
            "has no feature 'height'",
        ),
        (
            {"models__0__inputs": ["nothing"]},
            ("models", 0, "inputs", 0),
            "not a model output or expression",
        ),
        ({"models__1__inputs": ["second_out"]}, ("models",), "cycle: "),
        ({"expressions": {"score": "score + 1"}}, ("expressions", "score"), "cycle"),
        ({"expressions": {"score": "log(first_out"}}, ("expressions", "score"), ""),
        ({"response": {"outputs": ["bogus"]}}, ("response", "outputs", 0), "'bogus'"),
        ({"fetches__2__keys": ["aff.clicks"]}, ("fetches", 2, "keys", 0), "is float32"),
    ],
)
def test_bad_configs_name_the_field(
    edits: dict[str, Any], location: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(GraphError) as caught:
        compile_model(changed(**edits))
    assert caught.value.location[: len(location)] == location
    assert message in caught.value.message


def test_a_cycle_between_fetches_is_refused() -> None:
    model = changed(
        fetches__2__keys=["aff.clicks"],  # product keyed by an affinity, affinity by product
    )
    model["fetches"][2]["entity"] = "product"
    with pytest.raises(GraphError):
        compile_model(model)


# -- the executor ---------------------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    registry = registry_with(MODEL)
    storage = LmdbStorage(tmp_path / "lmdb")
    await storage.prepare(registry)
    service = FeatureService(RowSource(storage, None), Catalog(registry))
    rng = np.random.default_rng(3)
    products = np.arange(1, 41, dtype=np.int64)
    categories = [f"c{p % 4}" for p in products]
    await service.persist(
        "stats",
        {"product_id": products},
        {
            "price": rng.uniform(1, 100, 40).astype(np.float32),
            "sold": rng.integers(0, 1000, 40),
            "category": _var([c.encode() for c in categories]),
        },
    )
    await service.persist(
        "profile",
        {"user_id": [7]},
        {"spend": np.array([42.5], np.float32), "emb": np.array([[0.5, -1, 2]], np.float32)},
    )
    # user 7 has an affinity for c0 and c1 only: c2 and c3 read as the default (-1).
    await service.persist(
        "affinity",
        {"user_id": [7, 7], "category": ["c0", "c1"]},
        {"clicks": np.array([3.0, 9.0], np.float32)},
    )
    yield registry, service
    await storage.close()


def _var(values: list[bytes]) -> Any:
    from inferstack.core.rowformat import var_column

    return var_column(values)


def ready_model(registry: Registry) -> ReadyModel:
    compiled = compile_plan(registry.models["ranker"].definition, Catalog(registry), 1)
    runtimes = {"first": OnnxRuntime("first", FIRST), "second": OnnxRuntime("second", SECOND)}
    return ReadyModel(compiled, runtimes)


async def test_scores_equal_a_direct_read_and_onnxruntime(store: Any) -> None:
    registry, service = store
    ready = ready_model(registry)
    candidates = [5, 12, 99, 5, 40, 8]  # a repeat, and 99 that does not exist
    result = await execute(
        ready,
        LocalFeatureSource(service),
        {"user_id": [7], "product_ids": candidates},
        return_features=["item.sold", "user.spend"],
    )

    # The same features read directly, row by row.
    user = await service.retrieve("user", {"user_id": [7]}, ["profile"])
    items = await service.retrieve("product", {"product_id": candidates}, ["stats"])
    item = {c.name: c.values for c in items.columns}
    categories = [v.decode() for v in item["stats.category"].to_list()]
    aff = await service.retrieve(
        "user_category", {"user_id": [7] * 6, "category": categories}, ["affinity"]
    )
    clicks = aff.columns[0].values
    spend, emb = user.columns[0].values[0], user.columns[1].values[0]
    x = np.column_stack(
        [
            np.full(6, spend),
            np.tile(emb, (6, 1)),
            item["stats.price"],
            item["stats.sold"].astype(np.float32),
            clicks,
        ]
    ).astype(np.float32)
    first = ort.InferenceSession(FIRST).run(None, {"x": x})[0][:, 0]
    second_in = np.column_stack([first, item["stats.price"]]).astype(np.float32)
    second = ort.InferenceSession(SECOND).run(None, {"x": second_in})[0][:, 0]
    score = first * second**0.5

    np.testing.assert_array_equal(result.outputs["first_out"], first)
    np.testing.assert_array_equal(result.outputs["second_out"], second)
    np.testing.assert_allclose(result.outputs["score"], score, rtol=1e-6)
    assert result.outputs["position"].tolist() == (
        (np.argsort(np.argsort(-score, kind="stable"), kind="stable") + 1).tolist()
    )
    assert result.count == 6
    assert [c.decode() for c in result.features["item.category"][1].to_list()] == categories
    np.testing.assert_array_equal(result.features["item.sold"][1], item["stats.sold"])
    assert result.features["user.spend"][1].tolist() == [42.5] * 6
    # Product 99 is missing, and so are the affinities of categories c2 and c3.
    assert result.defaults["item.price"] == 1
    expected_aff_defaults = sum(1 for s in aff.status["affinity"] if s != RowStatus.FOUND)
    assert result.defaults["aff.clicks"] == expected_aff_defaults > 0
    assert clicks[candidates.index(99)] == -1
    stages = [name for name, _ in result.timings]
    assert stages[:3] == ["context", "fetch 1: user, item", "fetch 2: aff"]
    assert "model first" in stages and "expression score" in stages


async def test_derived_keys_are_fetched_once_per_distinct_key(store: Any) -> None:
    registry, service = store
    source = LocalFeatureSource(service)
    seen: list[int] = []
    original = service.retrieve

    async def counting(entity: str, keys: Any, features: Any = ()) -> Any:
        if entity == "user_category":
            seen.append(len(next(iter(keys.values()))))
        return await original(entity, keys, features)

    service.retrieve = counting  # type: ignore[method-assign]
    await execute(
        ready_model(registry), source, {"user_id": [7], "product_ids": list(range(1, 41))}
    )
    assert seen == [4]  # 40 products in 4 categories


@pytest.mark.parametrize(
    ("context", "error", "message"),
    [
        ({"user_id": [7]}, InvalidArgumentError, "'product_ids'"),
        ({"user_id": ["x"], "product_ids": [1]}, InvalidArgumentError, "context input 'user_id'"),
        ({"user_id": [7, 8], "product_ids": [1]}, InvalidArgumentError, "takes one value"),
        ({"user_id": [7], "product_ids": [1], "shop": [1]}, InvalidArgumentError, "'shop'"),
        ({"user_id": [7], "product_ids": list(range(51))}, ResourceExhaustedError, "at most 50"),
    ],
)
async def test_bad_context_is_refused_naming_it(
    store: Any, context: dict[str, Any], error: type[Exception], message: str
) -> None:
    registry, service = store
    with pytest.raises(error, match=message):
        await execute(ready_model(registry), LocalFeatureSource(service), context)


async def test_unknown_return_feature_is_not_found(store: Any) -> None:
    registry, service = store
    with pytest.raises(NotFoundError, match="'weight'"):
        await execute(
            ready_model(registry),
            LocalFeatureSource(service),
            {"user_id": [7], "product_ids": [1]},
            return_features=["item.weight"],
        )


async def test_no_candidates_gives_an_empty_answer(store: Any) -> None:
    registry, service = store
    result = await execute(
        ready_model(registry), LocalFeatureSource(service), {"user_id": [7], "product_ids": []}
    )
    assert result.count == 0 and len(result.outputs["score"]) == 0


class _ShortModel:
    """A model that answers one row short: the executor must refuse to misalign rows."""

    description = "short"

    def for_request(self) -> _ShortModel:
        return self

    async def infer(self, matrix: Any) -> dict[str, Any]:
        return {"p": np.zeros((len(matrix) - 1, 1), np.float32)}

    async def close(self) -> None:
        pass


async def test_a_model_answering_the_wrong_row_count_fails_the_request(store: Any) -> None:
    registry, service = store
    ready = ready_model(registry)
    broken = ReadyModel(ready.plan, {**ready.runtimes, "first": _ShortModel()})
    with pytest.raises(UnavailableError, match="returned 2 rows for 3"):
        await execute(
            broken, LocalFeatureSource(service), {"user_id": [7], "product_ids": [1, 2, 3]}
        )


def test_batches_larger_than_max_rows_are_split(store: Any) -> None:
    # Covered end to end with MLServer; here: the plan keeps max_rows per model.
    compiled = compile_model(changed(models__1__max_rows=16))
    first = next(s for s in compiled.steps if s.name == "first")
    assert isinstance(first, ModelStep) and first.definition.max_rows == 16


class _Arm:
    """One arm of an A/B split: scores every row with its own constant."""

    def __init__(self, score: float) -> None:
        self.score = score
        self.description = f"arm {score}"

    def for_request(self) -> _Arm:
        return self

    async def infer(self, matrix: Any) -> dict[str, Any]:
        return {"p": np.full((len(matrix), 1), self.score, np.float32)}

    async def close(self) -> None:
        pass


async def test_an_ab_split_scores_all_parts_of_a_request_with_one_arm(store: Any) -> None:
    _, service = store
    registry = registry_with(changed(models__1__max_rows=2))  # 6 candidates: 3 parts
    compiled = compile_plan(registry.models["ranker"].definition, Catalog(registry), 1)
    split = WeightedRuntime([(_Arm(0.25), 1), (_Arm(0.75), 1)], rng=random.Random(4))
    ready = ReadyModel(compiled, {"first": split, "second": OnnxRuntime("second", SECOND)})
    seen = set()
    for _ in range(20):
        result = await execute(
            ready, LocalFeatureSource(service), {"user_id": [7], "product_ids": list(range(1, 7))}
        )
        arms = set(result.outputs["first_out"].tolist())
        assert len(arms) == 1  # never a mix of arms within one response
        seen |= arms
    assert seen == {0.25, 0.75}


RECENT_TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes: [{name: category, type: string, default: none}]
"""


async def test_recent_interactions_become_per_candidate_features(
    store: Any, tmp_path: Path
) -> None:
    import yaml

    from inferstack.core.documents import DefinitionsFile
    from inferstack.core.events import EventBatch
    from inferstack.inferflow.recent import LocalInteractionSource
    from inferstack.interactions.cold.lmdb import LmdbColdStore
    from inferstack.interactions.events import InteractionCatalog
    from inferstack.interactions.hot.lmdb import LmdbHotTier
    from inferstack.interactions.service import InteractionService

    _, service = store
    parsed = DefinitionsFile.model_validate({**SPEC, **yaml.safe_load(RECENT_TYPES)})
    model = changed(
        expressions={"score": "first_out * second_out ** 0.5", "position": "rank(score)",
                     "seen": "recent.clicked + recent.in_category"},
        response={"outputs": ["score", "seen"],
                  "features": ["recent.clicked", "recent.in_category", "recent.since_clicked",
                               "recent.total"]},
    )  # fmt: skip
    model["interactions"] = [
        {
            "name": "recent",
            "type": "click",
            "user": "context.user_id",
            "window": "1h",
            "features": [
                {"name": "clicked", "match": "product_id", "equals": "context.product_ids"},
                {"name": "in_category", "match": "category", "equals": "item.category"},
                {"name": "since_clicked", "aggregate": "recency", "match": "product_id",
                 "equals": "context.product_ids"},
                {"name": "total"},
            ],
        }
    ]  # fmt: skip
    parsed = DefinitionsFile.model_validate({**SPEC, **yaml.safe_load(RECENT_TYPES),
                                             "models": [model]})  # fmt: skip
    configs = [
        c.model_copy(
            update={"models": [m.model_copy(update={"artifact": m.name}) for m in c.models]}
        )
        for c in parsed.models
    ]
    registry = plan(
        Registry(), parsed.entities, parsed.feature_groups, configs, parsed.interaction_types
    ).registry
    cold = LmdbColdStore(tmp_path / "cold")
    await cold.prepare(registry)
    interactions = InteractionService(
        LmdbHotTier(tmp_path / "hot"), cold, InteractionCatalog(registry)
    )
    now = int(time.time() * 1000)
    # User 7 clicked product 5 twice (categories: product p is in c{p % 4}), product 6 once,
    # and product 9 two hours ago (outside the one-hour window).
    await interactions.ingest(
        [
            EventBatch(
                "click",
                ["a", "b", "c", "d"],
                [7, 7, 7, 7],
                [5, 5, 6, 9],
                [now - 60_000, now - 30_000, now - 10_000, now - 7_200_000],
                {"category": ["c1", "c1", "c2", "c1"]},
            )
        ]
    )
    compiled = compile_plan(registry.models["ranker"].definition, Catalog(registry), 1)
    runtimes = {"first": OnnxRuntime("first", FIRST), "second": OnnxRuntime("second", SECOND)}
    result = await execute(
        ReadyModel(compiled, runtimes),
        LocalFeatureSource(service),
        {"user_id": [7], "product_ids": [5, 6, 9, 13]},
        recent=LocalInteractionSource(interactions),
    )
    features = {name: column.tolist() for name, (_, column) in result.features.items()}
    assert features["recent.clicked"] == [2, 1, 0, 0]
    assert features["recent.in_category"] == [2, 1, 2, 2]  # 5, 9 and 13 are all in c1
    assert features["recent.total"] == [3, 3, 3, 3]
    since = features["recent.since_clicked"]
    assert 29 <= since[0] <= 40 and 9 <= since[1] <= 20 and since[2] == since[3] == 3600
    assert result.outputs["seen"].tolist() == [4, 2, 2, 2]
    stages = [name for name, _ in result.timings]
    assert "interactions recent" in stages
    await interactions.close()
