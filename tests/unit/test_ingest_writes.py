"""How ingest writes: one chunk in flight while the next is prepared, a chunk that timed out
written again, rejections reported as before (pure logic: a storage double records calls)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from inferstack.core.errors import UnavailableError
from inferstack.core.registry import Registry
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.ingest import WRITE_ATTEMPTS, ingest_files
from tests.helpers import registry_from

CATALOG = Catalog(
    registry_from(
        {
            "entities": [{"name": "user", "keys": [{"name": "user_id", "type": "int64"}]}],
            "feature_groups": [
                {
                    "name": "profile",
                    "entity": "user",
                    "features": [{"name": "score", "type": "float32"}],
                }
            ],
        }
    )
)


class RecordingStorage:
    """Counts writes in flight and fails the first `failures` write calls."""

    reads_inline = False

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.rows: dict[bytes, bytes] = {}

    async def prepare(self, registry: Registry) -> None: ...

    async def read(self, group: str, keys: Sequence[bytes]) -> list[bytes | None]:
        return [self.rows.get(key) for key in keys]

    async def write(
        self, group: str, rows: Sequence[tuple[bytes, bytes]], ttl: float | None
    ) -> None:
        self.calls += 1
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.01)  # let ingest prepare the next chunk meanwhile
            if self.failures:
                self.failures -= 1
                raise UnavailableError("cassandra at x did not answer: request timed out")
            self.rows.update(rows)
        finally:
            self.in_flight -= 1

    async def close(self) -> None: ...


def parquet(tmp_path: Path, users: list[int | None]) -> Path:
    path = tmp_path / "profile.parquet"
    table = pa.table(
        {"user_id": pa.array(users, pa.int64()), "score": [float(i) for i in range(len(users))]}
    )
    pq.write_table(table, path)
    return path


async def test_chunks_are_written_one_at_a_time_and_all_arrive(tmp_path: Path) -> None:
    path = parquet(tmp_path, list(range(1, 101)))
    storage = RecordingStorage()
    report = await ingest_files(CATALOG, storage, "profile", [path], chunk_rows=10)
    assert report.rows_written == 100 and report.rows_rejected == 0
    assert storage.calls == 10 and len(storage.rows) == 100
    assert storage.most_in_flight == 1  # at most two chunks in memory: one being written


async def test_a_chunk_that_timed_out_is_written_again(tmp_path: Path) -> None:
    path = parquet(tmp_path, [1, None, 3, 4, 5, 6])
    storage = RecordingStorage(failures=WRITE_ATTEMPTS - 1)
    report = await ingest_files(CATALOG, storage, "profile", [path], chunk_rows=3)
    assert report.rows_written == 5 and len(storage.rows) == 5
    assert [(r.row, r.reason) for r in report.rejections] == [(2, "key 'user_id' is empty")]
    assert storage.calls == 2 + WRITE_ATTEMPTS - 1


async def test_a_storage_that_never_answers_fails_the_ingest(tmp_path: Path) -> None:
    path = parquet(tmp_path, list(range(1, 7)))
    storage = RecordingStorage(failures=100)
    with pytest.raises(UnavailableError, match="did not answer"):
        await ingest_files(CATALOG, storage, "profile", [path], chunk_rows=3)
    assert storage.calls == WRITE_ATTEMPTS  # the first chunk's tries, then no more
