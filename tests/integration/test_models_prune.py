"""`inferstack models prune` on an embedded data dir: model files a re-apply left behind are
deleted once older than the grace period, the current ones never, and servers keep serving."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from inferstack.client.inferflow import InferflowClient
from tests.integration.test_inferflow_apply import registry, write
from tests.onnx_models import linear_onnx
from tests.servers import inferstack, start_server

HOUR = 3600


def applied_artifact(folder: Path, data: Path, weights: np.ndarray) -> str:
    """Apply the ranker with a model file of these weights; the digest it is stored under."""
    (folder / "ctr.onnx").write_bytes(linear_onnx(weights))
    inferstack("apply", "-f", str(folder), data_dir=data)
    digest: str = registry(data)["models"]["ranker"]["definition"]["models"][0]["artifact"]
    return digest


def blobs(data: Path) -> dict[str, int]:
    """Stored model files by digest, with their sizes."""
    return {path.name: path.stat().st_size for path in (data / "config" / "blobs").glob("[!.]*")}


def prune(data: Path, *options: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        inferstack("models", "prune", *options, "--json", data_dir=data).stdout
    )
    return report


def pruned(report: dict[str, Any]) -> list[str]:
    return [row["digest"] for row in report["prunable"] if row["deleted"]]


def test_prune_deletes_only_unreferenced_files_older_than_the_grace_period(
    tmp_path: Path,
) -> None:
    folder, data = write(tmp_path), tmp_path / "data"
    inferstack("apply", "-f", str(folder), data_dir=data)
    first = registry(data)["models"]["ranker"]["definition"]["models"][0]["artifact"]
    second = applied_artifact(folder, data, np.linspace(-2, 2, 3))  # retrained twice
    current = applied_artifact(folder, data, np.linspace(-3, 3, 3))
    sizes = blobs(data)
    assert set(sizes) == {first, second, current}
    # The first file was stored two hours ago; the second is as young as the current one.
    two_hours_ago = time.time() - 2 * HOUR
    os.utime(data / "config" / "blobs" / first, (two_hours_ago, two_hours_ago))

    dry = prune(data, "--older-than", "0s", "--dry-run")
    assert dry["dry_run"] is True
    assert [row["digest"] for row in dry["prunable"]] == [first, second]  # oldest first
    assert (dry["deleted"], dry["bytes_freed"], pruned(dry)) == (0, 0, [])
    assert set(blobs(data)) == {first, second, current}

    default = prune(data)  # grace 1h: the second file may still belong to an apply
    assert default["older_than_seconds"] == HOUR
    assert pruned(default) == [first]
    assert default["prunable"][0]["age_seconds"] >= 2 * HOUR
    assert (default["deleted"], default["bytes_freed"]) == (1, sizes[first])
    assert set(blobs(data)) == {second, current}

    text = inferstack("models", "prune", "--older-than", "0s", data_dir=data).stdout
    assert second in text and f"freed {sizes[second]:,} bytes" in text
    assert set(blobs(data)) == {current}

    again = prune(data, "--older-than", "0s")
    assert (again["prunable"], again["stored"]) == ([], {"blobs": 1, "bytes": sizes[current]})

    shown = json.loads(inferstack("models", "show", "ranker", "--json", data_dir=data).stdout)
    assert (shown["version"], shown["steps"][0]["name"]) == (3, "ctr")
    rows = tmp_path / "stats.csv"
    rows.write_text("product_id,price,sold\n1,2.0,3\n")
    inferstack("ingest", "-g", "stats", str(rows), data_dir=data)
    server = start_server(data, workers=1)
    try:
        with InferflowClient(server.grpc_target, timeout=10) as client:
            scores = client.infer("ranker", {"user_id": 7, "product_ids": [1]})
        # The current file's weights (-3, 0, 3) on (spend 0, price 2, sold 3): z = 9.
        assert scores.version == 3
        assert math.isclose(float(scores["score"][0]), 2 / (1 + math.exp(-9)), rel_tol=1e-6)
    finally:
        assert server.stop() == 0


def test_a_bad_grace_period_is_refused_naming_it_and_nothing_is_deleted(tmp_path: Path) -> None:
    folder, data = write(tmp_path), tmp_path / "data"
    inferstack("apply", "-f", str(folder), data_dir=data)
    applied_artifact(folder, data, np.linspace(-2, 2, 3))
    for bad in ("banana", "-5m", "10 parsecs"):
        result = inferstack("models", "prune", "--older-than", bad, data_dir=data, check=False)
        assert result.returncode == 1
        assert f"--older-than: '{bad}'" in result.stderr.replace("\n", " ")
        assert "Traceback" not in result.stderr
    assert len(blobs(data)) == 2


def test_prune_of_a_store_without_model_files_says_so(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = inferstack("models", "prune", "--older-than", "0s", data_dir=data)
    assert "no model files stored" in result.stdout
    assert not data.exists()  # looking created nothing
