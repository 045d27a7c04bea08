"""`inferstack apply` of model configs: model files stored by digest, versions, and every
refusal naming the file, line and field while storing nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.onnx_models import linear_onnx
from tests.servers import inferstack

DEFS = """\
entities:
  - name: user
    keys: [{name: user_id, type: int64}]
  - name: product
    keys: [{name: product_id, type: int64}]
feature_groups:
  - name: profile
    entity: user
    features:
      - {name: spend, type: float32}
      - {name: city, type: string}
  - name: stats
    entity: product
    features:
      - {name: price, type: float32}
      - {name: sold, type: int64}
"""

MODEL = """\
models:
  - name: ranker
    context:
      - {name: user_id, type: int64}
      - {name: product_ids, type: int64, candidates: true}
    fetches:
      - name: user
        entity: user
        keys: [context.user_id]
        features: [profile.spend]
      - name: item
        entity: product
        keys: [context.product_ids]
        features: [stats.*]
    models:
      - name: ctr
        runtime: onnx
        path: ctr.onnx
        inputs:
          - user.spend
          - item.price
          - item.sold
        outputs: [p]
    expressions:
      score: p * 2
    response:
      outputs: [score]
"""


def write(tmp_path: Path, model: str = MODEL, width: int = 3) -> Path:
    folder = tmp_path / "defs"
    folder.mkdir(exist_ok=True)
    (folder / "features.yaml").write_text(DEFS)
    (folder / "ranker.yaml").write_text(model)
    (folder / "ctr.onnx").write_bytes(linear_onnx(np.linspace(-1, 1, width)))
    return folder


def registry(data: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((data / "config" / "registry.json").read_text())  # type: ignore[no-any-return]


def test_a_model_config_is_applied_with_its_file_and_versioned(tmp_path: Path) -> None:
    folder, data = write(tmp_path), tmp_path / "data"
    first = inferstack("apply", "-f", str(folder), data_dir=data)
    assert "+ model ranker (v1)" in first.stdout
    stored = registry(data)["models"]["ranker"]
    digest = stored["definition"]["models"][0]["artifact"]
    assert (data / "config" / "blobs" / digest).read_bytes() == (folder / "ctr.onnx").read_bytes()

    again = inferstack("apply", "-f", str(folder), data_dir=data)
    assert "No changes." in again.stdout

    # A retrained model file is a new version of the config; the old file stays stored.
    (folder / "ctr.onnx").write_bytes(linear_onnx(np.linspace(-2, 2, 3)))
    changed = inferstack("apply", "-f", str(folder), data_dir=data)
    assert "~ model ranker (v1 -> v2; model ctr: new file)" in changed.stdout
    assert registry(data)["models"]["ranker"]["version"] == 2
    assert (data / "config" / "blobs" / digest).exists()


def refused(tmp_path: Path, model: str, width: int = 3) -> str:
    folder, data = write(tmp_path, MODEL, 3), tmp_path / "data"
    inferstack("apply", "-f", str(folder), data_dir=data)
    before = registry(data)
    folder = write(tmp_path, model, width)
    result = inferstack("apply", "-f", str(folder), data_dir=data, check=False)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert registry(data) == before  # nothing stored
    return result.stderr.replace("\n", " ")


def test_an_unknown_feature_is_refused_at_its_line(tmp_path: Path) -> None:
    stderr = refused(tmp_path, MODEL.replace("- item.sold", "- item.weight"))
    assert "ranker.yaml:22: models.0.models.0.inputs.2:" in stderr
    assert "fetch 'item' has no feature 'weight'" in stderr


def test_a_model_file_of_another_width_is_refused(tmp_path: Path) -> None:
    stderr = refused(tmp_path, MODEL, width=4)
    assert "ranker.yaml:19: models.0.models.0.inputs:" in stderr
    assert "takes 4 columns" in stderr and "give 3" in stderr


def test_a_missing_model_file_is_refused(tmp_path: Path) -> None:
    stderr = refused(tmp_path, MODEL.replace("path: ctr.onnx", "path: gone.onnx"))
    assert "ranker.yaml:18: models.0.models.0.path:" in stderr and "gone.onnx" in stderr


def test_a_string_feature_fed_to_a_model_is_refused(tmp_path: Path) -> None:
    model = MODEL.replace("features: [profile.spend]", "features: [profile.spend, profile.city]")
    stderr = refused(tmp_path, model.replace("- item.sold", "- user.city"))
    assert "models.0.models.0.inputs.2" in stderr and "take numbers" in stderr


def test_a_cycle_is_refused(tmp_path: Path) -> None:
    stderr = refused(tmp_path, MODEL.replace("score: p * 2", "score: p * score"))
    assert "models.0.expressions.score" in stderr and "cycle" in stderr


def test_a_key_of_the_wrong_arity_is_refused(tmp_path: Path) -> None:
    stderr = refused(
        tmp_path,
        MODEL.replace("keys: [context.user_id]", "keys: [context.user_id, context.user_id]"),
    )
    assert "ranker.yaml:9: models.0.fetches.0.keys:" in stderr and "has 1 key(s)" in stderr


def test_removing_a_feature_a_stored_model_uses_is_refused(tmp_path: Path) -> None:
    folder, data = write(tmp_path), tmp_path / "data"
    inferstack("apply", "-f", str(folder), data_dir=data)
    (folder / "features.yaml").write_text(DEFS.replace("      - {name: sold, type: int64}\n", ""))
    result = inferstack("apply", "-f", str(folder), data_dir=data, check=False)
    assert result.returncode == 1
    assert "ranker.yaml" in result.stderr and "'sold'" in result.stderr
