"""Bulk ingest of event files (interactions/ingest.py), against a fake sender."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError, UnavailableError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import InteractionType
from inferstack.interactions.ingest import (
    IngestStoppedError,
    ingest_event_files,
    open_event_files,
    total_events,
)

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32}
"""
NOW = 1_800_000_000_000


@pytest.fixture(scope="module")
def click() -> InteractionType:
    (kind,) = DefinitionsFile.model_validate(yaml.safe_load(TYPES)).interaction_types
    return kind


def csv_file(path: Path, count: int, bad: int | None = None) -> Path:
    """`count` events with ids <file stem><n>; event `bad` has a price that is no number."""
    lines = ["event_id,user_id,product_id,ts,price,extra"]
    for n in range(count):
        price = "cheap" if n == bad else f"{n}.5"
        lines.append(f"{path.stem}{n},{n % 3},{100 + n},{NOW + n},{price},x")
    path.write_text("\n".join(lines) + "\n")
    return path


class Recorder:
    """Stores batches; refuses those holding a refused event id as the service would."""

    def __init__(self, refused: str | None = None, failing_call: int | None = None) -> None:
        self.batches: list[EventBatch] = []
        self.refused = refused
        self.failing_call = failing_call
        self.calls = 0

    async def __call__(self, batch: EventBatch) -> int:
        self.calls += 1
        await asyncio.sleep(0)
        if self.calls == self.failing_call:
            raise UnavailableError("UNAVAILABLE: server away")
        if self.refused is not None and self.refused in batch.event_ids:
            index = list(batch.event_ids).index(self.refused)
            raise InvalidArgumentError(f"batch 0, event {index}: field 'ts' is in the future")
        self.batches.append(batch)
        return len(batch.event_ids)


async def test_files_go_in_batches_and_rejections_name_the_event_in_the_file(
    tmp_path: Path, click: InteractionType
) -> None:
    first = csv_file(tmp_path / "a.csv", 7, bad=5)  # batches 0..2, 3..5 (bad), 6
    second = csv_file(tmp_path / "b.csv", 4)
    files = open_event_files(click, [first, second])
    send = Recorder(refused="b2")  # the second file's first batch
    advanced: list[int] = []
    summary = await ingest_event_files(
        click, files, send, batch_events=3, in_flight=2, progress=advanced.append
    )
    assert (summary.events_read, summary.events_stored, summary.events_rejected) == (11, 5, 6)
    assert sum(advanced) == 11 and sorted(advanced) == [1, 1, 3, 3, 3]
    assert summary.ignored_columns == {str(first): ["extra"], str(second): ["extra"]}
    by_file = [
        (r.file, r.batch, r.first_event, r.events, r.event) for r in summary.rejected_batches
    ]
    assert by_file == [(str(first), 1, 3, 3, 5), (str(second), 0, 0, 3, 2)]
    assert "'cheap'" in summary.rejected_batches[0].reason
    assert summary.rejected_batches[1].reason == "field 'ts' is in the future"
    assert sorted(e for b in send.batches for e in b.event_ids) == ["a0", "a1", "a2", "a6", "b3"]


async def test_a_failure_stops_the_ingest_saying_what_was_stored(
    tmp_path: Path, click: InteractionType
) -> None:
    files = open_event_files(click, [csv_file(tmp_path / "a.csv", 10)])
    send = Recorder(failing_call=2)
    with pytest.raises(IngestStoppedError) as caught:
        await ingest_event_files(click, files, send, batch_events=2, in_flight=1)
    assert str(caught.value) == "UNAVAILABLE: server away (2 events stored before)"
    assert caught.value.status == "UNAVAILABLE" and caught.value.summary.events_stored == 2
    assert send.calls == 2


def test_files_are_checked_before_sending_and_parquet_counts_are_known(
    tmp_path: Path, click: InteractionType
) -> None:
    parquet = tmp_path / "a.parquet"
    pq.write_table(
        pa.table(
            {
                "event_id": ["e1", "e2"],
                "user_id": [1, 2],
                "product_id": [3, 4],
                "ts": [NOW, NOW + 1],
            }
        ),
        parquet,
    )
    assert total_events(open_event_files(click, [parquet])) == 2
    csv = csv_file(tmp_path / "a.csv", 1)
    assert total_events(open_event_files(click, [parquet, csv])) is None
    with pytest.raises(InvalidArgumentError, match="no such file"):
        open_event_files(click, [parquet, tmp_path / "missing.csv"])
