"""The sample ranker for end-to-end tests: data + trained models, and the scores it must give,
computed independently (feature store client reads + onnxruntime on the same rows)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import yaml

from inferstack.client import FeatureStoreClient, Query
from inferstack.sampledata.generate import generate
from inferstack.sampledata.models import train


def ranker_sample(out: Path, scale: float = 0.01) -> Path:
    """Sample data, pctr.onnx, pcvr.onnx and ranker.yaml in one folder: `apply -f out`."""
    generate(out, scale=scale)
    train(out, out, rows=5_000)
    return out


def ranker_config(sample: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((sample / "ranker.yaml").read_text())["models"][0]
    return config


def expected_scores(
    client: FeatureStoreClient, sample: Path, user_id: int, products: list[int]
) -> dict[str, npt.NDArray[np.float32]]:
    """pctr, pcvr and score for these candidates, without inferflow."""
    config = ranker_config(sample)
    fetches = {f["name"]: f for f in config["fetches"]}

    def selectors(name: str) -> list[str]:
        return list(fetches[name]["features"])

    user, items = client.retrieve_batch(
        [
            Query("user", {"user_id": [user_id]}, selectors("user")),
            Query("product", {"product_id": products}, selectors("product")),
        ]
    )
    categories = list(items["product_stats.category_id"])
    (affinity,) = client.retrieve_batch(
        [
            Query(
                "user_category",
                {"user_id": [user_id] * len(products), "category_id": categories},
                selectors("affinity"),
            )
        ]
    )
    frames = {"user": user, "product": items, "affinity": affinity}

    def column(reference: str, outputs: dict[str, Any]) -> npt.NDArray[np.float32]:
        if "." not in reference:
            return outputs[reference]  # type: ignore[no-any-return]
        fetch, _, feature = reference.partition(".")
        frame = frames[fetch]
        name = next(c for c in frame.columns if c.endswith(f".{feature}"))
        values = np.asarray(frame[name], dtype=np.float32)
        return np.broadcast_to(values, (len(products),)) if len(values) == 1 else values

    outputs: dict[str, Any] = {}
    for model in config["models"]:
        matrix = np.column_stack([column(r, outputs) for r in model["inputs"]]).astype(np.float32)
        session = ort.InferenceSession(str(sample / model["path"]))
        (result,) = session.run(None, {session.get_inputs()[0].name: matrix})
        outputs[model["outputs"][0]] = result[:, 0]
    outputs["score"] = outputs["pctr"] * outputs["pcvr"] ** np.float32(0.5)
    return outputs
