"""The sample pCTR/pCVR models: joins, labels, ONNX export, the ranker config, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from inferstack.cli.main import app
from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.core.types import FeatureType
from inferstack.sampledata.generate import SampleFiles, definitions_text, generate
from inferstack.sampledata.models import (
    TrainedModel,
    TrainedModels,
    draw_impressions,
    impression_features,
    onnx_probabilities,
    train,
)

SAMPLE_GROUPS = {
    group.name: group
    for group in DefinitionsFile.model_validate(yaml.safe_load(definitions_text())).feature_groups
}
GROUP_OF_ENTITY = {group.entity: group.name for group in SAMPLE_GROUPS.values()}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleFiles:
    return generate(tmp_path_factory.mktemp("sample"), scale=0.02)


@pytest.fixture(scope="module")
def trained(sample: SampleFiles, tmp_path_factory: pytest.TempPathFactory) -> TrainedModels:
    return train(sample.definitions.parent, tmp_path_factory.mktemp("models"))


def both(trained: TrainedModels) -> list[TrainedModel]:
    return [trained.pctr, trained.pcvr]


def test_onnx_files_match_scikit_learn_on_held_out_rows(trained: TrainedModels) -> None:
    for model in both(trained):
        session = onnxruntime.InferenceSession(str(model.path))
        [given], [returned] = session.get_inputs(), session.get_outputs()
        assert (given.name, given.type, given.shape[1]) == (
            "features",
            "tensor(float)",
            len(model.inputs),
        )
        assert (returned.name, returned.shape[1]) == ("probability", 1)
        expected = model.estimator.predict_proba(model.holdout_features.astype(np.float64))[:, 1]
        actual = onnx_probabilities(model.path, model.holdout_features)
        assert len(actual) == len(model.holdout_labels) > 100
        np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)


def test_models_learn_the_rule_on_held_out_rows(trained: TrainedModels) -> None:
    for model in both(trained):
        auc = roc_auc_score(
            model.holdout_labels, onnx_probabilities(model.path, model.holdout_features)
        )
        assert auc > 0.6, (model.name, auc)
        assert model.auc == pytest.approx(auc, abs=1e-4)
    report = trained.report()
    assert set(report["models"]) == {"pctr", "pcvr"}
    assert report["models"]["pcvr"]["inputs"][-1] == "pctr"


def test_base_rates_are_realistic(trained: TrainedModels) -> None:
    assert 0.05 <= trained.ctr <= 0.15
    assert 0.10 <= trained.cvr <= 0.30
    # pCVR trains on clicks only, pCTR on every impression not held out.
    assert trained.pctr.train_rows + len(trained.pctr.holdout_labels) == trained.impressions
    pcvr_rows = trained.pcvr.train_rows + len(trained.pcvr.holdout_labels)
    assert pcvr_rows == pytest.approx(trained.impressions * trained.ctr, abs=1)


def test_ranker_config_validates_and_names_the_training_columns(trained: TrainedModels) -> None:
    definitions = DefinitionsFile.model_validate(yaml.safe_load(trained.config.read_text()))
    [config] = definitions.models
    assert config.name == "ranker"
    assert [(c.name, c.candidates) for c in config.context] == [
        ("user_id", False),
        ("product_ids", True),
    ]
    fetches = {fetch.name: fetch for fetch in config.fetches}
    assert fetches["affinity"].keys == ["context.user_id", "product.category_id"]

    def check_feature(reference: str) -> FeatureType:
        fetch_name, feature = reference.split(".")
        fetch = fetches[fetch_name]
        group = GROUP_OF_ENTITY[fetch.entity]
        assert f"{group}.{feature}" in fetch.features, reference
        found = SAMPLE_GROUPS[group].feature(feature)
        assert found is not None, reference
        return found.type

    assert check_feature("product.category_id") == FeatureType("string")
    for feature in config.response.features:
        check_feature(feature)
    outputs_so_far: list[str] = []
    for step, model in zip(config.models, both(trained), strict=True):
        assert (step.name, step.runtime, step.inputs) == (model.name, "onnx", list(model.inputs))
        assert step.path is not None
        assert (trained.config.parent / step.path).resolve() == model.path.resolve()
        for reference in step.inputs:
            if "." in reference:
                assert check_feature(reference).base.startswith("float"), reference
            else:  # another model's output, computed before this one
                assert reference in outputs_so_far, reference
        outputs_so_far += [output.name for output in step.output_specs]
    assert config.models[1].inputs[-1] == "pctr"
    assert set(config.response.outputs) >= {"score", "pctr", "pcvr"}
    assert config.expressions["score"] == "pctr * pcvr ** 0.5"
    assert config.logging.sample_rate == 0


def test_joined_features_match_a_direct_lookup_with_store_defaults(sample: SampleFiles) -> None:
    pairs = pq.read_table(sample.user_category)
    user_id = 3
    own = pairs.filter(pc.equal(pairs["user_id"], user_id))
    own_categories = set(own["category_id"].to_pylist())
    products = pq.read_table(sample.product, columns=["product_id", "category_id"]).to_pylist()
    in_own = next(p for p in products if p["category_id"] in own_categories)
    elsewhere = next(p for p in products if p["category_id"] not in own_categories)
    impressions = pd.DataFrame(
        {"user_id": [user_id] * 2, "product_id": [in_own["product_id"], elsewhere["product_id"]]}
    )

    frame = impression_features(sample.definitions.parent, impressions)

    assert list(frame["product.category_id"]) == [in_own["category_id"], elsewhere["category_id"]]
    row = own.filter(pc.equal(own["category_id"], in_own["category_id"])).to_pylist()[0]
    for name in ("affinity", "recency_days", "orders_30d", "spend_90d", "clicks_30d"):
        assert frame[f"affinity.{name}"].iloc[0] == pytest.approx(row[name])
    # No user x category row: the feature store's defaults, 0 and recency 365.
    assert frame["affinity.affinity"].iloc[1] == 0
    assert frame["affinity.recency_days"].iloc[1] == 365
    users = pq.read_table(sample.user, columns=["user_id", "price_sensitivity"]).to_pylist()
    price_sensitivity = next(u for u in users if u["user_id"] == user_id)["price_sensitivity"]
    assert list(frame["user.price_sensitivity"]) == pytest.approx([price_sensitivity] * 2)


def test_about_half_the_impressions_come_from_the_users_own_categories(
    sample: SampleFiles,
) -> None:
    sample_dir = sample.definitions.parent
    frame = impression_features(
        sample_dir, draw_impressions(sample_dir, 20_000, np.random.default_rng(1))
    )
    share_with_affinity = float((frame["affinity.recency_days"] != 365).mean())
    # Own-category draws always have a row; random ones rarely (5 of 400 categories).
    assert 0.45 <= share_with_affinity <= 0.6


def test_training_is_deterministic_for_a_seed(
    sample: SampleFiles, trained: TrainedModels, tmp_path: Path
) -> None:
    again = train(sample.definitions.parent, tmp_path / "again")
    for first, second in zip(both(trained), both(again), strict=True):
        assert first.path.read_bytes() == second.path.read_bytes()
    assert trained.config.read_text() == again.config.read_text()
    other = train(sample.definitions.parent, tmp_path / "other", seed=12, rows=5_000)
    assert other.pctr.path.read_bytes() != trained.pctr.path.read_bytes()


def test_cli_train_prints_the_report_as_json(sample: SampleFiles, tmp_path: Path) -> None:
    args = ["sample", "train", "--data", str(sample.definitions.parent), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--rows", "5000", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["impressions"] == 5_000
    assert report["config"] == str(tmp_path / "ranker.yaml")
    assert (tmp_path / "pctr.onnx").is_file() and (tmp_path / "pcvr.onnx").is_file()
    assert 0.5 < report["models"]["pctr"]["auc"] <= 1


def test_too_few_rows_is_refused(sample: SampleFiles, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="rows: at least 1,000"):
        train(sample.definitions.parent, tmp_path, rows=999)
    assert not (tmp_path / "pctr.onnx").exists()


def test_missing_sample_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"user\.parquet"):
        train(tmp_path, tmp_path / "out")
    result = CliRunner().invoke(
        app, ["sample", "train", "--data", str(tmp_path), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1 and "user.parquet" in result.output
