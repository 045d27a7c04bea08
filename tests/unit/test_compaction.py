"""Expired rows are reclaimed from real LMDB: by step, by group, in the background and by
`inferstack compact`."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

from inferstack.configstore.files import open_files
from inferstack.core.rowformat import GroupCodec
from inferstack.featurestore.compaction import (
    compact_group,
    compact_step,
    exclusive,
    expired,
    run_background,
)
from inferstack.kv.lmdb import LmdbStorage
from tests.helpers import registry_from, user_spec
from tests.servers import inferstack

NOW = 1_800_000_000
SPEC = user_spec({"name": "score", "type": "int64", "default": 0})


def rows(count: int, expires_at: int, start: int = 0) -> list[tuple[bytes, bytes]]:
    """Real encoded rows of the `profile` group, keys numbered from `start`."""
    codec = GroupCodec(registry_from(SPEC).feature_groups["profile"])
    encoded = codec.current.encode(
        {"score": np.arange(start, start + count, dtype=np.int64)}, count, expires_at
    )
    return [((start + i).to_bytes(8, "big"), row) for i, row in enumerate(encoded)]


@pytest.fixture
def storage(tmp_path: Path) -> LmdbStorage:
    lmdb_storage = LmdbStorage(tmp_path / "lmdb")
    lmdb_storage.write_sync("profile", rows(40, NOW - 10))  # expired
    lmdb_storage.write_sync("profile", rows(30, 0, start=40))  # never expires
    lmdb_storage.write_sync("profile", rows(20, NOW + 10, start=70))  # not yet
    lmdb_storage.write_sync("profile", [(b"\xff-corrupt", b"\x01\x00")])  # too short: kept
    return lmdb_storage


def test_expiry_test_matches_the_readers() -> None:
    headers = np.zeros(4, dtype=[("v", "<u2"), ("f", "u1"), ("m", "u1"), ("e", "<u4")])
    headers["e"] = [0, NOW - 1, NOW, NOW + 1]
    assert expired(headers.tobytes(), NOW).tolist() == [False, True, True, False]


def test_compacting_a_group_deletes_exactly_the_expired_rows(storage: LmdbStorage) -> None:
    report = compact_group(storage, "profile", batch=7, now=NOW)
    assert (report.rows_examined, report.rows_deleted) == (91, 40)
    assert report.bytes_freed == sum(len(k) + len(v) for k, v in rows(40, NOW - 10))
    assert storage.entry_count("profile") == 51
    assert storage.read_sync("profile", [k for k, _ in rows(40, 0)]) == [None] * 40
    kept = rows(30, 0, start=40) + rows(20, NOW + 10, start=70)
    assert storage.read_sync("profile", [k for k, _ in kept]) == [v for _, v in kept]
    assert compact_group(storage, "profile", now=NOW).rows_deleted == 0  # nothing left


def test_steps_are_bounded_and_resume_where_they_stopped(storage: LmdbStorage) -> None:
    after: bytes | None = None
    examined: list[int] = []
    while True:
        after, seen, _, _ = compact_step(storage, "profile", after, 25, NOW)
        examined.append(seen)
        if after is None:
            break
    assert examined == [25, 25, 25, 16]


def test_a_row_rewritten_between_scan_and_delete_is_kept(storage: LmdbStorage) -> None:
    from inferstack.featurestore.compaction import row_expired

    scanned = storage.scan("profile", None, 5, 8)
    fresh = rows(1, 0, start=0)  # key 0 written again, now without expiry
    storage.write_sync("profile", fresh)
    deleted, _ = storage.delete_if("profile", [k for k, _ in scanned], row_expired(NOW))
    assert deleted == 4
    assert storage.read_sync("profile", [fresh[0][0]]) == [fresh[0][1]]


def test_unknown_groups_have_nothing_to_compact(tmp_path: Path) -> None:
    report = compact_group(LmdbStorage(tmp_path), "never_written", now=NOW)
    assert (report.rows_examined, report.rows_deleted) == (0, 0)


def test_only_one_process_compacts_at_a_time(tmp_path: Path) -> None:
    with exclusive(tmp_path) as first:
        assert first
        with exclusive(tmp_path) as second:
            assert not second
    with exclusive(tmp_path) as again:
        assert again


async def test_background_compaction_reclaims_expired_rows(tmp_path: Path) -> None:
    lmdb_storage = LmdbStorage(tmp_path / "lmdb")
    past = int(time.time()) - 5
    lmdb_storage.write_sync("profile", rows(300, past) + rows(10, 0, start=300))
    task = asyncio.create_task(
        run_background(
            lmdb_storage, lambda: ["profile", "absent"], rows_per_second=5000, batch=50, pause=60
        )
    )
    try:
        deadline = time.monotonic() + 10
        while lmdb_storage.entry_count("profile") > 10:
            assert time.monotonic() < deadline, "background compaction did not run"
            await asyncio.sleep(0.02)
        # Another worker does not compact while this one holds the lock.
        with exclusive(lmdb_storage.path) as mine:
            assert not mine
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert lmdb_storage.entry_count("profile") == 10


# -- inferstack compact -----------------------------------------------------------------------


def test_compact_command_reports_per_group_in_json_and_as_a_table(tmp_path: Path) -> None:
    spec = tmp_path / "defs.yaml"
    spec.write_text(
        "entities:\n  - name: user\n    keys: [{name: user_id, type: int64}]\n"
        "feature_groups:\n"
        "  - name: profile\n    entity: user\n"
        "    features: [{name: score, type: int64, default: 0}]\n"
        "  - name: other\n    entity: user\n"
        "    features: [{name: flag, type: bool, default: false}]\n"
    )
    inferstack("apply", "-f", str(spec), data_dir=tmp_path)
    assert open_files(tmp_path).registry.load().feature_groups.keys() == {"profile", "other"}
    lmdb_storage = LmdbStorage(tmp_path / "lmdb")
    lmdb_storage.write_sync("profile", rows(25, int(time.time()) - 60) + rows(5, 0, start=25))
    lmdb_storage.close_sync()

    done = inferstack("compact", "--json", data_dir=tmp_path)
    groups = {g["feature_group"]: g for g in json.loads(done.stdout)["feature_groups"]}
    assert groups["profile"]["rows_examined"] == 30
    assert groups["profile"]["rows_deleted"] == 25
    assert groups["profile"]["bytes_freed"] > 0
    assert groups["other"]["rows_deleted"] == 0

    table = inferstack("compact", "-g", "profile", data_dir=tmp_path)
    assert "compact profile" in table.stdout and "0 expired row(s) deleted" in table.stdout


def test_compact_command_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    unknown = inferstack("compact", "-g", "nope", data_dir=tmp_path, check=False)
    assert unknown.returncode == 1 and "no feature group 'nope'" in unknown.stderr
    deploy = tmp_path / "cassandra.yaml"
    deploy.write_text("storage: {type: cassandra, contact_points: [127.0.0.1:1]}\n")
    remote = inferstack("compact", "--config", str(deploy), data_dir=tmp_path, check=False)
    assert remote.returncode == 1 and "removes expired rows itself" in remote.stderr
