"""Inference logging: record tables, the queue and its thread, Parquet files read back whole."""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from inferstack.core.errors import InvalidArgumentError
from inferstack.inferflow.inferencelog.base import (
    InferenceLogger,
    InferenceRecord,
    Sampler,
    model_of,
    record_table,
    version_of,
)
from inferstack.inferflow.inferencelog.parquet import IN_PROGRESS_SUFFIX, ParquetSink

FEATURES = ["user.age", "product.price", "affinity.clicks_7d"]
TIMESTAMP = 1_700_000_000.25  # exact in binary, so its microseconds are exact too


def make_record(
    request_id: str = "r-1",
    *,
    model: str = "ranker",
    version: int = 1,
    rows: int = 5,
    seed: int = 0,
    string_candidates: bool = False,
    context: dict[str, list[int | str]] | None = None,
) -> InferenceRecord:
    rng = np.random.default_rng(seed)
    candidates: np.ndarray[Any, Any]
    if string_candidates:
        candidates = np.array([f"sku-{seed}-{i}" for i in range(rows)], dtype=object)
    else:
        candidates = np.arange(1000 * seed, 1000 * seed + rows, dtype=np.int64)
    return InferenceRecord(
        request_id=request_id,
        model=model,
        version=version,
        timestamp=TIMESTAMP + seed,
        context=context
        if context is not None
        else {"user_id": [seed], "product_ids": candidates.tolist()},
        candidates=candidates,
        feature_names=list(FEATURES),
        features=rng.standard_normal((rows, len(FEATURES))).astype(np.float32),
        outputs={
            "pctr": rng.random(rows, dtype=np.float32),
            "pcvr": rng.random(rows, dtype=np.float32),
        },
    )


def assert_table_is_record(table: pa.Table, record: InferenceRecord) -> None:
    """Every column of `table` (rows in any order) holds exactly what `record` holds."""
    table = table.sort_by("position")
    rows = len(record.candidates)
    assert table.num_rows == rows
    assert table["request_id"].to_pylist() == [record.request_id] * rows
    assert table["model"].to_pylist() == [record.model] * rows
    assert table["version"].to_pylist() == [record.version] * rows
    assert table.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    micros = table["timestamp"].cast(pa.int64()).to_pylist()
    assert micros == [round(record.timestamp * 1_000_000)] * rows
    assert table["position"].to_pylist() == list(range(rows))
    assert table["candidate"].to_pylist() == list(record.candidates)
    for name, values in record.context.items():
        expected = list(values) * rows if len(values) == 1 else list(values)
        assert table[f"context.{name}"].to_pylist() == expected
    for column, name in enumerate(record.feature_names):
        assert table.schema.field(name).type == pa.float32()
        np.testing.assert_array_equal(table[name].to_numpy(), record.features[:, column])
    for name, output in record.outputs.items():
        assert table.schema.field(f"output.{name}").type == pa.float32()
        np.testing.assert_array_equal(table[f"output.{name}"].to_numpy(), output)


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll for a background thread's effect (a bound against hangs, not a timing claim)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def counted(model: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "inferstack_inference_log_records_total", {"model": model, "outcome": outcome}
    )
    return value or 0.0


def visible_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))


def hidden_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob(f".*{IN_PROGRESS_SUFFIX}"))


class RecordingSink:
    def __init__(self) -> None:
        self.tables: list[pa.Table] = []
        self.closed = False

    def write(self, tables: list[pa.Table]) -> None:
        self.tables.extend(tables)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class BlockingSink(RecordingSink):
    """Holds the logger thread inside write() until released."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def write(self, tables: list[pa.Table]) -> None:
        self.entered.set()
        self.release.wait(60)
        super().write(tables)


class FailingSink(RecordingSink):
    """Raises for batches holding a record of `failing_model`."""

    def __init__(self, failing_model: str) -> None:
        super().__init__()
        self.failing_model = failing_model

    def write(self, tables: list[pa.Table]) -> None:
        if any(model_of(table) == self.failing_model for table in tables):
            raise OSError("disk full")
        super().write(tables)


@pytest.fixture
def logger_factory() -> Iterator[Callable[..., InferenceLogger]]:
    loggers: list[InferenceLogger] = []

    def make(sink: Any, **options: Any) -> InferenceLogger:
        loggers.append(InferenceLogger(sink, **options))
        return loggers[-1]

    yield make
    for logger in loggers:
        logger.close(timeout=5)


# --- record_table ---------------------------------------------------------------------------


def test_record_table_has_one_row_per_candidate_with_every_value() -> None:
    record = make_record(rows=7, seed=3)
    table = record_table(record)
    assert table.column_names == [
        "request_id",
        "model",
        "version",
        "timestamp",
        "position",
        "candidate",
        "context.product_ids",
        "context.user_id",
        *FEATURES,
        "output.pctr",
        "output.pcvr",
    ]
    assert table.schema.field("position").type == pa.int32()
    assert table.schema.field("candidate").type == pa.int64()
    assert table.schema.field("context.user_id").type == pa.int64()
    assert_table_is_record(table, record)
    assert (model_of(table), version_of(table)) == ("ranker", 1)


def test_record_table_string_candidates_and_string_context() -> None:
    record = make_record(string_candidates=True, context={"country": ["fr"], "user_id": [9]})
    table = record_table(record)
    assert table.schema.field("candidate").type == pa.string()
    assert table.schema.field("context.country").type == pa.string()
    assert_table_is_record(table, record)


def test_record_table_accepts_column_outputs_and_empty_requests() -> None:
    record = make_record(rows=4)
    column_outputs = {name: values.reshape(4, 1) for name, values in record.outputs.items()}
    table = record_table(InferenceRecord(**{**record.__dict__, "outputs": column_outputs}))
    np.testing.assert_array_equal(table["output.pctr"].to_numpy(), record.outputs["pctr"])
    empty = record_table(make_record(rows=0, context={"user_id": [1]}))
    assert empty.num_rows == 0
    assert empty.schema.field("output.pctr").type == pa.float32()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"features": np.zeros((5, 2), np.float32)}, "features has shape (5, 2)"),
        ({"outputs": {"pctr": np.zeros(4, np.float32)}}, "output 'pctr' has shape (4,)"),
        ({"context": {"user_id": [1, 2]}}, "context value 'user_id' has 2 values"),
        ({"context": {"user_id": [1.5]}}, "context value 'user_id' must hold integers"),
        ({"candidates": np.zeros(5, np.float64)}, "candidates must be int64 or str"),
        ({"candidates": np.zeros((5, 1), np.int64)}, "candidates must be 1-D"),
        ({"feature_names": ["a", "a", "b"]}, "column names used twice in the record: ['a']"),
        ({"version": "1"}, "version must be an integer"),
    ],
)
def test_record_table_names_the_bad_field(change: dict[str, Any], message: str) -> None:
    fields = {**make_record().__dict__, **change}
    with pytest.raises(InvalidArgumentError) as raised:
        record_table(InferenceRecord(**fields))
    assert message in str(raised.value)


# --- Sampler --------------------------------------------------------------------------------


def test_sampler_rates_zero_and_one_are_exact() -> None:
    never, always = Sampler(0.0), Sampler(1.0)
    assert not any(never.sample() for _ in range(10_000))
    assert all(always.sample() for _ in range(10_000))


def test_sampler_between_follows_its_random_source() -> None:
    sampler = Sampler(0.3, rng=random.Random(7))
    reference = random.Random(7)
    expected = [reference.random() < 0.3 for _ in range(1000)]
    assert [sampler.sample() for _ in range(1000)] == expected
    assert 0 < sum(expected) < 1000


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan")])
def test_sampler_refuses_rates_outside_zero_one(rate: float) -> None:
    with pytest.raises(InvalidArgumentError, match="sample_rate"):
        Sampler(rate)


# --- InferenceLogger ------------------------------------------------------------------------


def test_logger_writes_every_offered_record_and_closes_the_sink(
    logger_factory: Callable[..., InferenceLogger],
) -> None:
    sink = RecordingSink()
    logger = logger_factory(sink, batch_size=8)
    records = [make_record(f"r-{i}", model="m_written", seed=i) for i in range(50)]
    assert all(logger.offer(record) for record in records)
    assert logger.close(timeout=20)
    assert sink.closed
    assert (logger.written, logger.dropped, logger.failed) == (50, 0, 0)
    by_id = {table["request_id"][0].as_py(): table for table in sink.tables}
    for record in records:
        assert_table_is_record(by_id[record.request_id], record)


def test_full_queue_drops_without_blocking_and_counts(
    logger_factory: Callable[..., InferenceLogger],
) -> None:
    sink = BlockingSink()
    logger = logger_factory(sink, capacity=10)
    before = counted("m_overflow", "dropped")
    assert logger.offer(make_record("first", model="m_overflow"))
    assert sink.entered.wait(20)  # the thread holds "first" inside write(): the queue is empty
    assert all(logger.offer(make_record(f"q-{i}", model="m_overflow")) for i in range(10))
    assert not any(logger.offer(make_record(f"x-{i}", model="m_overflow")) for i in range(7))
    assert logger.dropped == 7
    assert counted("m_overflow", "dropped") - before == 7
    sink.release.set()
    assert logger.close(timeout=20)
    assert (logger.written, logger.dropped, logger.failed) == (11, 7, 0)
    assert counted("m_overflow", "written") >= 11


def test_a_raising_sink_does_not_stop_the_thread(
    logger_factory: Callable[..., InferenceLogger],
) -> None:
    sink = FailingSink(failing_model="m_bad")
    logger = logger_factory(sink)
    before = counted("m_bad", "failed")
    assert logger.offer(make_record("bad-1", model="m_bad"))
    assert wait_until(lambda: logger.failed == 1)
    assert logger.offer(make_record("good-1", model="m_good"))
    assert logger.close(timeout=20)
    assert (logger.written, logger.failed) == (1, 1)
    assert [table["request_id"][0].as_py() for table in sink.tables] == ["good-1"]
    assert counted("m_bad", "failed") - before == 1


def test_a_bad_record_fails_alone(logger_factory: Callable[..., InferenceLogger]) -> None:
    sink = RecordingSink()
    logger = logger_factory(sink)
    broken = InferenceRecord(
        **{**make_record("broken").__dict__, "features": np.zeros((1, 1), np.float32)}
    )
    assert logger.offer(broken)
    assert logger.offer(make_record("fine"))
    assert logger.close(timeout=20)
    assert (logger.written, logger.failed) == (1, 1)
    assert [table["request_id"][0].as_py() for table in sink.tables] == ["fine"]


def test_offer_after_close_is_refused_and_counted(
    logger_factory: Callable[..., InferenceLogger],
) -> None:
    sink = RecordingSink()
    logger = logger_factory(sink)
    assert logger.close(timeout=20)
    assert not logger.offer(make_record())
    assert (logger.written, logger.dropped) == (0, 1)


def test_close_drops_what_is_still_queued_at_its_deadline(
    logger_factory: Callable[..., InferenceLogger],
) -> None:
    sink = BlockingSink()
    logger = logger_factory(sink)
    assert logger.offer(make_record("first"))
    assert sink.entered.wait(20)
    assert all(logger.offer(make_record(f"late-{i}")) for i in range(5))
    assert not logger.close(timeout=0.05)  # the sink is still stuck in write()
    sink.release.set()
    assert wait_until(lambda: sink.closed)
    assert (logger.written, logger.dropped, logger.failed) == (1, 5, 0)


# --- ParquetSink ----------------------------------------------------------------------------


def test_parquet_round_trip_reads_back_every_value(
    tmp_path: Path, logger_factory: Callable[..., InferenceLogger]
) -> None:
    logger = logger_factory(ParquetSink(tmp_path), batch_size=4)
    records = [make_record(f"r-{i}", seed=i, rows=3 + i) for i in range(12)]
    strings = [
        make_record(f"s-{i}", model="search", seed=i, string_candidates=True) for i in (1, 2)
    ]
    for record in [*records, *strings]:
        assert logger.offer(record)
    assert logger.close(timeout=20)
    assert (logger.written, logger.failed) == (14, 0)

    ranker = ds.dataset(tmp_path / "ranker" / "v1", format="parquet").to_table()
    for record in records:
        assert_table_is_record(ranker.filter(ds.field("request_id") == record.request_id), record)
    search = ds.dataset(tmp_path / "search" / "v1", format="parquet").to_table()
    assert search.schema.field("candidate").type == pa.string()
    for record in strings:
        assert_table_is_record(search.filter(ds.field("request_id") == record.request_id), record)
    assert hidden_files(tmp_path) == []


def test_parquet_one_directory_per_model_version(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    old = make_record("old", version=1)
    new = InferenceRecord(
        **{
            **make_record("new", version=2).__dict__,
            "feature_names": ["only_one"],
            "features": np.ones((5, 1), np.float32),
        }
    )
    sink.write([record_table(old), record_table(new)])
    sink.close()
    assert [p.parent.relative_to(tmp_path).as_posix() for p in visible_files(tmp_path)] == [
        "ranker/v1",
        "ranker/v2",
    ]
    assert_table_is_record(ds.dataset(tmp_path / "ranker" / "v1").to_table(), old)
    assert_table_is_record(ds.dataset(tmp_path / "ranker" / "v2").to_table(), new)


def test_parquet_buffers_small_batches_into_one_row_group(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)  # default row group size: far more than these records
    for i in range(20):
        sink.write([record_table(make_record(f"r-{i}", seed=i))])
    assert visible_files(tmp_path) == [] and hidden_files(tmp_path) == []
    sink.close()
    (only,) = visible_files(tmp_path)
    metadata = pq.ParquetFile(only).metadata
    assert (metadata.num_row_groups, metadata.num_rows) == (1, 100)


def test_parquet_rotation_by_size_gives_several_complete_files(
    tmp_path: Path, logger_factory: Callable[..., InferenceLogger]
) -> None:
    sink = ParquetSink(tmp_path, rotate_bytes=8 * 1024, row_group_bytes=1)
    logger = logger_factory(sink, batch_size=2)
    records = [make_record(f"r-{i}", seed=i, rows=40) for i in range(40)]
    for record in records:
        assert logger.offer(record)
    assert logger.close(timeout=20)
    assert logger.written == 40

    files = visible_files(tmp_path)
    assert len(files) >= 3
    assert hidden_files(tmp_path) == []
    assert sum(pq.ParquetFile(path).metadata.num_rows for path in files) == 40 * 40
    for path in files[:-1]:  # every file but the last was closed for its size
        assert path.stat().st_size >= 8 * 1024
    table = ds.dataset(tmp_path / "ranker" / "v1", format="parquet").to_table()
    for record in records:
        assert_table_is_record(table.filter(ds.field("request_id") == record.request_id), record)


def test_parquet_readers_never_see_a_file_being_written(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path, rotate_seconds=3600, row_group_bytes=1)
    first = make_record("first")
    sink.write([record_table(first)])

    (in_progress,) = hidden_files(tmp_path)
    assert in_progress.stat().st_size > 0  # a row group is on disk, the footer is not
    with pytest.raises(pa.ArrowInvalid):
        pq.ParquetFile(in_progress)
    assert ds.dataset(tmp_path, format="parquet").to_table().num_rows == 0

    sink.rotate_seconds = 0  # now due: flush() completes and publishes it
    sink.flush()
    assert hidden_files(tmp_path) == []
    assert_table_is_record(ds.dataset(tmp_path, format="parquet").to_table(), first)

    sink.rotate_seconds = 3600
    sink.write([record_table(make_record("second", seed=2))])
    assert len(hidden_files(tmp_path)) == 1
    assert ds.dataset(tmp_path, format="parquet").to_table().num_rows == 5
    sink.close()
    assert len(visible_files(tmp_path)) == 2 and hidden_files(tmp_path) == []
    assert ds.dataset(tmp_path, format="parquet").to_table().num_rows == 10


def test_parquet_new_context_columns_start_a_new_file(tmp_path: Path) -> None:
    sink = ParquetSink(tmp_path)
    plain = make_record("plain", context={"user_id": [1]})
    extra = make_record("extra", context={"user_id": [1], "country": ["fr"]})
    sink.write([record_table(plain), record_table(extra)])
    sink.close()
    files = visible_files(tmp_path)
    assert len(files) == 2
    tables = [pq.read_table(path) for path in files]
    assert_table_is_record(
        next(t for t in tables if "context.country" not in t.schema.names), plain
    )
    assert_table_is_record(next(t for t in tables if "context.country" in t.schema.names), extra)


def test_parquet_refuses_a_model_name_that_is_not_a_directory_name(
    tmp_path: Path, logger_factory: Callable[..., InferenceLogger]
) -> None:
    logger = logger_factory(ParquetSink(tmp_path / "logs"))
    assert logger.offer(make_record("escape", model="../outside"))
    assert logger.offer(make_record("fine"))
    assert logger.close(timeout=20)
    assert (logger.written, logger.failed) == (1, 1)
    assert list(tmp_path.iterdir()) == [tmp_path / "logs"]


def log_from_worker(directory: str, worker: int, count: int) -> None:
    """Runs in a spawned process: one worker of a server logging into the shared directory."""
    logger = InferenceLogger(ParquetSink(directory, row_group_bytes=1, rotate_bytes=4096))
    for i in range(count):
        logger.offer(make_record(f"w{worker}-{i}", seed=i))
    if not logger.close(timeout=30) or logger.written != count:
        raise SystemExit(1)


def test_parquet_several_processes_log_into_one_directory(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=log_from_worker, args=(str(tmp_path), w, 15)) for w in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0

    pids = {path.name.split("-")[1] for path in visible_files(tmp_path)}
    assert pids == {str(worker.pid) for worker in workers}
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert sorted(set(table["request_id"].to_pylist())) == sorted(
        f"w{w}-{i}" for w in (0, 1) for i in range(15)
    )
    for i in (0, 14):
        record = make_record(f"w1-{i}", seed=i)
        assert_table_is_record(table.filter(ds.field("request_id") == record.request_id), record)
