"""Train the sample ranking models (pCTR, pCVR), export them to ONNX and write their config.

`make demo`, the tests and the inferflow benchmark need two real models over the sample data.
Labels are synthesised from the features by a known rule plus noise (`click_logit`,
`purchase_logit`), so the models learn something real and their held-out AUC means something.

Impressions are (user, product) pairs; features are joined the way the `ranker` config makes
inferflow fetch them (user, product, then user x the product's category), with the feature
store's defaults where a row is absent. Matrix columns are named by the references the config
uses (`affinity.recency_days`), so the YAML inputs are the training columns by construction.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime
import pandas as pd
import pyarrow.parquet as pq
import yaml
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.sampledata.generate import DEFINITIONS_FILE, GROUP_FILES, definitions_text

#: Fetch name in the ranker config -> the feature group it reads.
FETCH_GROUPS = {
    "user": "user_profile",
    "product": "product_stats",
    "affinity": "user_category_affinity",
}
#: Model inputs in training column order (= the order written to ranker.yaml).
PCTR_INPUTS = (
    "user.price_sensitivity",
    "user.clicks_7d",
    "user.recency_days",
    "product.price",
    "product.rating",
    "product.ctr_7d",
    "product.popularity",
    "product.quality_score",
    "product.discount",
    "affinity.affinity",
    "affinity.clicks_30d",
    "affinity.recency_days",
)
PCVR_FEATURES = (
    "user.discount_affinity",
    "user.price_sensitivity",
    "product.price",
    "product.cvr_7d",
    "product.discount",
    "product.return_rate",
    "affinity.orders_30d",
    "affinity.spend_90d",
)
PCVR_INPUTS = (*PCVR_FEATURES, "pctr")  # pCVR reads pCTR's output as its last column
#: Fetched for the derived user x category key and the response, not only for models.
OTHER_FETCHED = ("product.category_id", "product.price")
TEMPLATE = "ranker.yaml"
OPSET = 17  # well inside what onnxruntime 1.31 runs
HOLDOUT_SHARE = 0.2
MIN_ROWS = 1_000
OWN_CATEGORY_SHARE = 0.5
LOGIT_NOISE = 0.5  # standard deviation of the noise added to each rule's logit


@dataclass(frozen=True)
class TrainedModel:
    name: str
    path: Path
    inputs: tuple[str, ...]
    estimator: Pipeline  # StandardScaler + LogisticRegression
    holdout_features: npt.NDArray[np.float32]  # rows the model never saw, inputs in order
    holdout_labels: npt.NDArray[np.int8]
    train_rows: int
    positive_rate: float  # among its training rows
    auc: float  # on the held-out rows

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "inputs": list(self.inputs),
            "train_rows": self.train_rows,
            "holdout_rows": len(self.holdout_labels),
            "positive_rate": round(self.positive_rate, 4),
            "auc": round(self.auc, 4),
        }


@dataclass(frozen=True)
class TrainedModels:
    config: Path  # ranker.yaml
    pctr: TrainedModel
    pcvr: TrainedModel
    impressions: int
    ctr: float  # clicks / impressions
    cvr: float  # purchases / clicks

    def report(self) -> dict[str, Any]:
        return {
            "config": str(self.config),
            "impressions": self.impressions,
            "base_rates": {"ctr": round(self.ctr, 4), "cvr_given_click": round(self.cvr, 4)},
            "models": {"pctr": self.pctr.summary(), "pcvr": self.pcvr.summary()},
        }


def train(
    sample_dir: Path,
    out_dir: Path,
    seed: int = 11,
    rows: int = 60_000,
    progress: Callable[[str], None] = lambda step: None,
) -> TrainedModels:
    """Train pCTR and pCVR on `rows` synthetic impressions; write ONNX files and ranker.yaml."""
    if rows < MIN_ROWS:  # fewer leaves too few purchases to fit and score pCVR
        raise InvalidArgumentError(f"rows: at least {MIN_ROWS:,} impressions, got {rows:,}")
    rng = np.random.default_rng(seed)
    progress("drawing impressions and joining features")
    frame = impression_features(sample_dir, draw_impressions(sample_dir, rows, rng))
    progress("synthesising labels")
    clicked, bought = synthesise_labels(frame, rng)
    held_out = np.zeros(rows, dtype=bool)
    held_out[rng.permutation(rows)[: int(rows * HOLDOUT_SHARE)]] = True

    out_dir.mkdir(parents=True, exist_ok=True)
    progress("training pctr")
    ctr_matrix = frame[list(PCTR_INPUTS)].to_numpy(np.float32)
    pctr = _fit_and_export("pctr", PCTR_INPUTS, ctr_matrix, clicked, held_out, out_dir)
    progress("training pcvr")
    # pCVR learns from pCTR's output (as float32), which is what inferflow will hand it.
    pctr_column = pctr.estimator.predict_proba(ctr_matrix.astype(np.float64))[:, 1]
    cvr_matrix = np.column_stack([frame[list(PCVR_FEATURES)], pctr_column]).astype(np.float32)
    pcvr = _fit_and_export(
        "pcvr", PCVR_INPUTS, cvr_matrix[clicked], bought[clicked], held_out[clicked], out_dir
    )
    progress("writing ranker.yaml")
    config = out_dir / TEMPLATE
    config.write_text(render_config())
    clicks = int(clicked.sum())
    return TrainedModels(
        config, pctr, pcvr, rows, clicks / rows, int(bought.sum()) / max(clicks, 1)
    )


def draw_impressions(sample_dir: Path, rows: int, rng: np.random.Generator) -> pd.DataFrame:
    """(user_id, product_id) pairs: about half from one of the user's own categories, the
    rest at random, like the candidates `generate.candidate_products` gives the demo."""
    users = _read(sample_dir, "user_profile", ["user_id"])["user_id"].to_numpy()
    products = _read(sample_dir, "product_stats", ["product_id", "category_id"])
    pairs = _read(sample_dir, "user_category_affinity", ["user_id", "category_id"])
    user_ids = rng.choice(users, rows)
    random_products = rng.choice(products["product_id"].to_numpy(), rows)

    # One of the user's categories, uniformly, via sorted runs of user ids.
    pairs = pairs.sort_values(["user_id", "category_id"], kind="stable")
    pair_users = pairs["user_id"].to_numpy()
    first = np.searchsorted(pair_users, user_ids, "left")
    count = np.searchsorted(pair_users, user_ids, "right") - first
    pick = np.minimum(first + (rng.random(rows) * count).astype(np.int64), len(pairs) - 1)
    categories = pairs["category_id"].to_numpy(dtype=str)[pick]

    # Then one product of that category, uniformly, the same way.
    products = products.sort_values(["category_id", "product_id"], kind="stable")
    product_categories = products["category_id"].to_numpy(dtype=str)
    first = np.searchsorted(product_categories, categories, "left")
    in_category = np.searchsorted(product_categories, categories, "right") - first
    pick = np.minimum(first + (rng.random(rows) * in_category).astype(np.int64), len(products) - 1)
    own_products = products["product_id"].to_numpy()[pick]

    own = (rng.random(rows) < OWN_CATEGORY_SHARE) & (count > 0) & (in_category > 0)
    return pd.DataFrame(
        {"user_id": user_ids, "product_id": np.where(own, own_products, random_products)}
    )


def impression_features(sample_dir: Path, impressions: pd.DataFrame) -> pd.DataFrame:
    """One row per impression, one column per feature reference the models or config use."""
    needed = _features_by_fetch((*PCTR_INPUTS, *PCVR_FEATURES, *OTHER_FETCHED))
    defaults = _defaults(sample_dir)

    def join(frame: pd.DataFrame, fetch: str, keys: list[str]) -> pd.DataFrame:
        """Left join one fetch's features, renamed `fetch.feature`; absent rows get the
        feature store's defaults."""
        group, features = FETCH_GROUPS[fetch], needed[fetch]
        table = _read(sample_dir, group, [*keys, *features]).drop_duplicates(keys)
        table = table.rename(columns={name: f"{fetch}.{name}" for name in features})
        joined = frame.merge(table, how="left", on=keys, validate="many_to_one")
        return joined.fillna({f"{fetch}.{name}": defaults[group][name] for name in features})

    frame = join(join(impressions, "user", ["user_id"]), "product", ["product_id"])
    frame["category_id"] = frame["product.category_id"]  # the derived key of the third hop
    return join(frame, "affinity", ["user_id", "category_id"])


def synthesise_labels(
    frame: pd.DataFrame, rng: np.random.Generator
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(clicked, bought) per impression: Bernoulli draws from the rules below, with noise on
    the logits so no model can be perfect."""
    rows = len(frame)
    clicked = rng.random(rows) < _sigmoid(click_logit(frame) + rng.normal(0, LOGIT_NOISE, rows))
    buy = rng.random(rows) < _sigmoid(purchase_logit(frame) + rng.normal(0, LOGIT_NOISE, rows))
    return clicked, clicked & buy


def click_logit(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    """The known click rule: interest in the category, the product's appeal, price pain."""
    f = _numeric(frame)
    return np.asarray(
        -4.6
        + 0.30 * f["affinity.affinity"]
        - 0.002 * f["affinity.recency_days"]
        + 0.25 * f["product.ctr_7d"]
        + 0.15 * f["product.quality_score"]
        + 0.08 * f["product.rating"]
        - 0.08 * f["user.price_sensitivity"] * np.log1p(f["product.price"])
    )


def purchase_logit(frame: pd.DataFrame) -> npt.NDArray[np.float64]:
    """The known purchase-after-click rule: conversion history, discounts for those who like
    them, past orders in the category, price."""
    f = _numeric(frame)
    return np.asarray(
        -2.9
        + 0.25 * f["product.cvr_7d"]
        + 0.04 * f["product.discount"] * f["user.discount_affinity"]
        + 0.15 * f["affinity.orders_30d"]
        - 0.10 * f["product.price"]
        - 0.10 * f["product.return_rate"]
    )


def render_config() -> str:
    """ranker.yaml from the template: each `$name` line becomes that list, one item a line."""
    references = (*PCTR_INPUTS, *PCVR_FEATURES, *OTHER_FETCHED)
    by_fetch = _features_by_fetch(references)
    lists = {
        f"{fetch}_features": [f"{FETCH_GROUPS[fetch]}.{name}" for name in by_fetch[fetch]]
        for fetch in FETCH_GROUPS
    }
    lists |= {"pctr_inputs": list(PCTR_INPUTS), "pcvr_inputs": list(PCVR_INPUTS)}
    template = resources.files("inferstack.sampledata").joinpath(TEMPLATE).read_text()

    def block(match: re.Match[str]) -> str:
        indent, name = match.groups()
        return "\n".join(f"{indent}- {item}" for item in lists[name])

    return re.sub(r"^( *)\$(\w+)$", block, template, flags=re.MULTILINE)


def to_onnx(name: str, estimator: Pipeline, inputs: Sequence[str]) -> onnx.ModelProto:
    """sigmoid(((features - mean) / scale) @ weights + bias) as a plain ONNX graph."""
    scaler: StandardScaler = estimator.named_steps["standardscaler"]
    logistic: LogisticRegression = estimator.named_steps["logisticregression"]
    width = len(inputs)
    initializers = [
        numpy_helper.from_array(scaler.mean_.astype(np.float32), "mean"),
        numpy_helper.from_array(scaler.scale_.astype(np.float32), "scale"),
        numpy_helper.from_array(logistic.coef_.T.astype(np.float32), "weights"),  # (width, 1)
        numpy_helper.from_array(logistic.intercept_.astype(np.float32), "bias"),  # (1,)
    ]
    nodes = [
        helper.make_node("Sub", ["features", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["scaled"]),
        helper.make_node("MatMul", ["scaled", "weights"], ["weighted"]),
        helper.make_node("Add", ["weighted", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["probability"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["N", 1])],
        initializers,
    )
    opsets = [helper.make_opsetid("", OPSET)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="inferstack")
    model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(model, {"inferstack.inputs": json.dumps(list(inputs))})
    onnx.checker.check_model(model, full_check=True)
    return model


def onnx_probabilities(model: onnx.ModelProto | Path, matrix: npt.NDArray[np.float32]) -> Any:
    """Run a model on a matrix with onnxruntime: one probability per row."""
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["probability"], {"features": matrix})[0][:, 0]


def _fit_and_export(
    name: str,
    inputs: Sequence[str],
    matrix: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_],
    held_out: npt.NDArray[np.bool_],
    out_dir: Path,
) -> TrainedModel:
    train_x, train_y = matrix[~held_out], labels[~held_out]
    test_x, test_y = matrix[held_out], labels[held_out].astype(np.int8)
    estimator = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1_000))
    estimator.fit(train_x.astype(np.float64), train_y)
    expected = estimator.predict_proba(test_x.astype(np.float64))[:, 1]
    model = to_onnx(name, estimator, inputs)
    worst = float(np.max(np.abs(onnx_probabilities(model, test_x) - expected), initial=0.0))
    if worst > 1e-5:  # the export is ours, so a mismatch is a bug here, never bad input
        raise RuntimeError(f"{name}: ONNX differs from scikit-learn by {worst:.2e}")
    path = out_dir / f"{name}.onnx"
    onnx.save_model(model, path)
    auc = float(roc_auc_score(test_y, expected)) if 0 < test_y.sum() < len(test_y) else 0.5
    positive_rate = float(train_y.mean())
    return TrainedModel(
        name, path, tuple(inputs), estimator, test_x, test_y, len(train_y), positive_rate, auc
    )


def _features_by_fetch(references: Sequence[str]) -> dict[str, list[str]]:
    """{"user": [features in first-use order], ...} for `fetch.feature` references."""
    by_fetch: dict[str, list[str]] = {fetch: [] for fetch in FETCH_GROUPS}
    for reference in references:
        fetch, _, name = reference.partition(".")
        if name and name not in by_fetch[fetch]:
            by_fetch[fetch].append(name)
    return by_fetch


def _defaults(sample_dir: Path) -> dict[str, dict[str, Any]]:
    path = sample_dir / DEFINITIONS_FILE
    text = path.read_text() if path.is_file() else definitions_text()
    definitions = DefinitionsFile.model_validate(yaml.safe_load(text))
    return {g.name: {f.name: f.default for f in g.features} for g in definitions.feature_groups}


def _read(sample_dir: Path, group: str, columns: list[str]) -> pd.DataFrame:
    path = sample_dir / GROUP_FILES[group]
    if not path.is_file():
        raise NotFoundError(f"{path}: no such file; run `inferstack sample generate` first")
    missing = sorted(set(columns) - set(pq.read_schema(path).names))
    if missing:
        raise InvalidArgumentError(f"{path}: no column {', '.join(missing)}")
    frame: pd.DataFrame = pq.read_table(path, columns=columns).to_pandas()
    return frame


def _numeric(frame: pd.DataFrame) -> dict[str, npt.NDArray[np.float64]]:
    """The numeric feature columns as float64 arrays, by reference."""
    return {
        name: frame[name].to_numpy(np.float64)
        for name in frame.columns
        if "." in name and pd.api.types.is_numeric_dtype(frame[name])
    }


def _sigmoid(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))
