"""Ingest from Parquet and CSV into real LMDB: conversions, rejections, strict mode."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.keys import encode_keys
from inferstack.core.rowformat import RowStatus, VarColumn
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.ingest import ingest_files
from inferstack.kv.lmdb import LmdbStorage
from tests.helpers import registry_from

SPEC = {
    "entities": [
        {
            "name": "uc",
            "keys": [{"name": "user_id", "type": "int64"}, {"name": "cat", "type": "string"}],
        }
    ],
    "feature_groups": [
        {
            "name": "aff",
            "entity": "uc",
            "features": [
                {"name": "score", "type": "float32", "default": -1},
                {"name": "n", "type": "int16", "default": 0},
                {"name": "flag", "type": "bool", "default": True},
                {"name": "label", "type": "string", "default": "none"},
                {"name": "emb", "type": "float32[3]", "default": [9, 9, 9]},
            ],
        }
    ],
}
CATALOG = Catalog(registry_from(SPEC))


async def read_back(
    storage: LmdbStorage, users: list[int], cats: list[str]
) -> tuple[np.ndarray, dict]:  # type: ignore[type-arg]
    keys = encode_keys(CATALOG.entity("uc"), {"user_id": users, "cat": cats})
    rows = await storage.read("aff", keys)
    decoded = CATALOG.codecs["aff"].decode(
        rows, ["score", "n", "flag", "label", "emb"], time.time()
    )
    return decoded.status, decoded.columns


async def test_parquet_with_nulls_and_bad_rows(tmp_path: Path) -> None:
    table = pa.table(
        {
            "user_id": pa.array([1, 2, None, 4, 5], pa.int64()),
            "cat": ["a", "b", "c", "d", "e"],
            "score": pa.array([0.5, None, 1.0, 2.0, 3.0], pa.float64()),
            "n": pa.array([1, 2, 3, 40_000, 5], pa.int64()),  # 40,000 does not fit int16
            "flag": [False, None, True, True, True],
            "label": ["x", None, "z", "w", "ü"],
            "emb": pa.array(
                [[1, 2, 3], None, [1, 2, 3], [1, 2, 3], [1, 2]], pa.list_(pa.float64())
            ),
            "ignored": [0, 0, 0, 0, 0],
        }
    )
    path = tmp_path / "aff.parquet"
    pq.write_table(table, path)
    storage = LmdbStorage(tmp_path / "db")
    report = await ingest_files(CATALOG, storage, "aff", [path], chunk_rows=2)
    assert (report.rows_read, report.rows_written, report.rows_rejected) == (5, 2, 3)
    reasons = {r.row: r.reason for r in report.rejections}
    assert set(reasons) == {3, 4, 5}
    assert "key 'user_id' is empty" in reasons[3]
    assert "feature 'n'" in reasons[4] and "40000" in reasons[4]
    assert "vector has 2 values, expected 3" in reasons[5]
    status, columns = await read_back(storage, [1, 2, 4, 5], ["a", "b", "d", "e"])
    assert status.tolist() == [
        RowStatus.FOUND,
        RowStatus.FOUND,
        RowStatus.MISSING,
        RowStatus.MISSING,
    ]
    assert columns["score"].tolist() == [0.5, -1.0, -1.0, -1.0]  # null -> default
    assert columns["flag"].tolist() == [False, True, True, True]
    assert isinstance(columns["label"], VarColumn)
    assert columns["label"].to_list() == [b"x", b"none", b"none", b"none"]
    assert columns["emb"].tolist()[:2] == [[1, 2, 3], [9, 9, 9]]


async def test_csv_with_vectors_as_text(tmp_path: Path) -> None:
    path = tmp_path / "aff.csv"
    path.write_text(
        "user_id,cat,score,n,flag,label,emb\n"
        '1,a,0.25,3,true,hello,"[1, 2, 3]"\n'
        '2,b,oops,3,false,bye,"[1, 2, 3]"\n'
        '3,c,1.5,4,false,,"[4 5 6]"\n'
    )
    storage = LmdbStorage(tmp_path / "db")
    report = await ingest_files(CATALOG, storage, "aff", [path])
    assert (report.rows_written, report.rows_rejected) == (2, 1)
    assert report.rejections[0].row == 2 and "'oops'" in report.rejections[0].reason
    status, columns = await read_back(storage, [1, 3], ["a", "c"])
    assert status.tolist() == [RowStatus.FOUND, RowStatus.FOUND]
    assert columns["emb"].tolist() == [[1, 2, 3], [4, 5, 6]]
    assert columns["label"].to_list() == [b"hello", b""]  # an empty CSV string stays empty


async def test_strict_mode_writes_nothing_when_any_row_is_bad(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text("user_id,cat,score,n,flag,label,emb\n1,a,1,1,true,x,[1 2 3]\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,cat,score,n,flag,label,emb\n2,b,1,1,true,x,[1 2]\n")
    storage = LmdbStorage(tmp_path / "db")
    report = await ingest_files(CATALOG, storage, "aff", [good, bad], strict=True)
    assert not report.written and report.rows_written == 0 and report.rows_rejected == 1
    assert report.rejections[0].file == str(bad)
    status, _ = await read_back(storage, [1], ["a"])
    assert status.tolist() == [RowStatus.MISSING]
    report = await ingest_files(CATALOG, storage, "aff", [good], strict=True)
    assert report.written and report.rows_written == 1


async def test_missing_columns_fail_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "partial.csv"
    path.write_text("user_id,cat,score\n1,a,1\n")
    with pytest.raises(InvalidArgumentError, match=r"missing column\(s\) n, flag, label, emb"):
        await ingest_files(CATALOG, LmdbStorage(tmp_path / "db"), "aff", [path])
