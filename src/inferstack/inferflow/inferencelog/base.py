"""Inference log records, their Arrow table, and the background logger that ships them.

A request that is sampled hands an `InferenceRecord` to `InferenceLogger.offer`, which only
puts it on a bounded queue: logging never blocks or fails a request. One background thread
turns records into Arrow tables (`record_table`) and writes them in batches to a `LogSink`
(Parquet files or a Kafka topic). Every record ends in exactly one outcome, counted per model
in `inferstack_inference_log_records_total{model,outcome}`:

    written   the sink accepted it (Parquet: in a file; Kafka: acknowledged by the broker)
    dropped   not attempted: the queue (or the Kafka producer's buffer) was full, or the
              logger was closing
    failed    attempted and lost: a bad record, a sink error, an undelivered message

Sinks are only ever called from the logger thread, so they need no locking of their own.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from prometheus_client import Counter

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.ratelimit import RateLimitedWarning

log = logging.getLogger(__name__)

Outcome = Literal["written", "dropped", "failed"]

# The default prometheus_client registry, like inferstack/metrics.py: under the supervisor
# PROMETHEUS_MULTIPROC_DIR is set before workers start, so this counter is recorded in the
# shared files and any worker's /metrics reports the sum over all of them.
RECORDS = Counter(
    "inferstack_inference_log_records_total",
    "Inference log records by model and outcome (written, dropped, failed).",
    ["model", "outcome"],
)

# Schema metadata of every record table: sinks route a table by it without reading a row.
MODEL_KEY = b"inferstack.model"
VERSION_KEY = b"inferstack.version"

CONTEXT_PREFIX = "context."
OUTPUT_PREFIX = "output."
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields have no single truth value
class InferenceRecord:
    """What one scored request is logged as: its inputs, its feature matrix and its outputs.

    `candidates`, the rows of `features` and every output are in the same (candidate) order.
    Context values hold one value (a scalar such as user_id, repeated on every row) or one
    value per candidate.
    """

    request_id: str
    model: str  # the model config name
    version: int  # the model config version that answered
    timestamp: float  # unix seconds
    context: Mapping[str, Sequence[int | str]]
    candidates: npt.NDArray[Any]  # int64, or str (object or unicode dtype)
    feature_names: Sequence[str]
    features: npt.NDArray[Any]  # rows x len(feature_names), float32
    outputs: Mapping[str, npt.NDArray[Any]]  # each float32 (rows,)


def record_table(record: InferenceRecord) -> pa.Table:
    """One row per candidate, built column by column from the numpy arrays.

    Columns: request_id, model, version, timestamp (UTC, microseconds), position (0-based
    candidate index), candidate, `context.<name>` per context value (sorted by name), one
    float32 column per feature name (matrix order), `output.<name>` per output (sorted).
    Raises InvalidArgumentError naming the field whose shape or type is wrong.
    """
    candidates = _candidate_column(record.candidates)
    rows = len(candidates)
    names = ["request_id", "model", "version", "timestamp", "position", "candidate"]
    arrays: list[pa.Array] = [
        pa.repeat(pa.scalar(str(record.request_id), pa.string()), rows),
        pa.repeat(pa.scalar(str(record.model), pa.string()), rows),
        pa.repeat(pa.scalar(_version(record.version), pa.int32()), rows),
        pa.repeat(pa.scalar(_timestamp_us(record.timestamp), TIMESTAMP_TYPE), rows),
        pa.array(np.arange(rows, dtype=np.int32)),
        candidates,
    ]
    for name in sorted(record.context):
        names.append(CONTEXT_PREFIX + name)
        arrays.append(_context_column(name, record.context[name], rows))
    feature_columns = _feature_columns(record.features, record.feature_names, rows)
    for name, column in zip(record.feature_names, feature_columns, strict=True):
        names.append(name)
        arrays.append(pa.array(column))
    for name in sorted(record.outputs):
        names.append(OUTPUT_PREFIX + name)
        arrays.append(pa.array(_output_column(name, record.outputs[name], rows)))
    _reject_duplicate_columns(names)
    metadata = {MODEL_KEY: str(record.model).encode(), VERSION_KEY: str(record.version).encode()}
    schema = pa.schema(
        [pa.field(name, array.type) for name, array in zip(names, arrays, strict=True)],
        metadata=metadata,
    )
    return pa.Table.from_arrays(arrays, schema=schema)


def model_of(table: pa.Table) -> str:
    """The model name a record table was built for (from its schema metadata)."""
    return bytes(_metadata(table)[MODEL_KEY]).decode()


def version_of(table: pa.Table) -> int:
    """The model config version a record table was built for (from its schema metadata)."""
    return int(bytes(_metadata(table)[VERSION_KEY]).decode())


def _metadata(table: pa.Table) -> Mapping[bytes, bytes]:
    metadata = table.schema.metadata
    if not metadata or MODEL_KEY not in metadata or VERSION_KEY not in metadata:
        raise InvalidArgumentError("table is not an inference record (see record_table)")
    result: Mapping[bytes, bytes] = metadata
    return result


def _version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int | np.integer):
        raise InvalidArgumentError(f"version must be an integer, got {version!r}")
    return int(version)


def _timestamp_us(timestamp: float) -> int:
    if not math.isfinite(timestamp):
        raise InvalidArgumentError(f"timestamp must be finite unix seconds, got {timestamp!r}")
    return round(timestamp * 1_000_000)


def _candidate_column(candidates: npt.NDArray[Any]) -> pa.Array:
    values = np.asarray(candidates)
    if values.ndim != 1:
        raise InvalidArgumentError(f"candidates must be 1-D, got shape {values.shape}")
    if values.dtype.kind in "iu":
        if not np.can_cast(values.dtype, np.int64):
            raise InvalidArgumentError(f"candidates of dtype {values.dtype} do not fit int64")
        return pa.array(values.astype(np.int64, copy=False))
    if values.dtype.kind in "UO":
        try:
            array = pa.array(values, type=pa.string())
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"candidates must all be strings: {exc}") from exc
        if array.null_count:
            raise InvalidArgumentError("candidates contain None")
        return array
    raise InvalidArgumentError(f"candidates must be int64 or str, got dtype {values.dtype}")


def _context_column(name: str, values: Sequence[int | str], rows: int) -> pa.Array:
    try:
        array = pa.array(values)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise InvalidArgumentError(f"context value {name!r}: {exc}") from exc
    if pa.types.is_integer(array.type):
        array = array.cast(pa.int64())
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    else:
        raise InvalidArgumentError(
            f"context value {name!r} must hold integers or strings, got {array.type}"
        )
    if array.null_count:
        raise InvalidArgumentError(f"context value {name!r} contains None")
    if len(array) == 1:
        return pa.repeat(array[0], rows)
    if len(array) == rows:
        return array
    raise InvalidArgumentError(
        f"context value {name!r} has {len(array)} values; expected 1 or one per candidate ({rows})"
    )


def _feature_columns(
    features: npt.NDArray[Any], feature_names: Sequence[str], rows: int
) -> FloatArray:
    matrix = np.asarray(features)
    expected = (rows, len(feature_names))
    if matrix.shape != expected:
        raise InvalidArgumentError(
            f"features has shape {matrix.shape}; expected {expected} (candidates x feature_names)"
        )
    if matrix.dtype.kind not in "fiub":
        raise InvalidArgumentError(f"features must be numeric, got dtype {matrix.dtype}")
    # One transposing copy makes every feature's column contiguous, so each becomes an
    # Arrow array without another copy.
    return np.ascontiguousarray(matrix.T, dtype=np.float32)


def _output_column(name: str, output: npt.NDArray[Any], rows: int) -> FloatArray:
    values = np.asarray(output)
    if values.shape == (rows, 1):  # ONNX models often answer a column
        values = values.reshape(rows)
    if values.shape != (rows,):
        raise InvalidArgumentError(
            f"output {name!r} has shape {values.shape}; expected ({rows},), one per candidate"
        )
    if values.dtype.kind not in "fiub":
        raise InvalidArgumentError(f"output {name!r} must be numeric, got dtype {values.dtype}")
    return np.ascontiguousarray(values, dtype=np.float32)


def _reject_duplicate_columns(names: Sequence[str]) -> None:
    repeated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
    if repeated:
        raise InvalidArgumentError(f"column names used twice in the record: {repeated}")


class Sampler:
    """Decides which requests are logged: each one with probability `sample_rate`.

    Rates 0 and 1 are exact (never, always); between them the choice is random.
    """

    def __init__(self, sample_rate: float, *, rng: random.Random | None = None) -> None:
        if not isinstance(sample_rate, int | float) or not 0.0 <= sample_rate <= 1.0:
            raise InvalidArgumentError(f"sample_rate must be in [0, 1], got {sample_rate!r}")
        self.sample_rate = float(sample_rate)
        self._rng = rng or random.Random()

    def sample(self) -> bool:
        """True when this request should be logged."""
        if self.sample_rate >= 1.0:
            return True
        if self.sample_rate <= 0.0:
            return False
        return self._rng.random() < self.sample_rate


class RecordOutcomes:
    """Records per outcome: plain totals (for tests and status pages) and the Prometheus counter.

    Thread-safe: request threads count drops while the logger thread counts the rest.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.written = 0
        self.dropped = 0
        self.failed = 0

    def add(self, model: str, outcome: Outcome, count: int = 1) -> None:
        if count <= 0:
            return
        with self._lock:
            setattr(self, outcome, getattr(self, outcome) + count)
        RECORDS.labels(model=model, outcome=outcome).inc(count)


class LogSink(Protocol):
    """Where record tables go. Called from the logger thread only, one call at a time.

    write  the tables of one batch (any models and versions, each from `record_table`)
    flush  periodic housekeeping, at least every flush interval of the logger: finish what is
           due (Parquet: close files older than their age limit; Kafka: serve delivery reports)
    close  write everything still buffered and release resources; called once, last
    """

    def write(self, tables: list[pa.Table]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class ReportsOutcomes(Protocol):
    """A sink that completes writes later (buffered rows, broker acknowledgements).

    The logger hands it its `RecordOutcomes` and then counts nothing for it: the sink counts
    every table it was given as written, dropped or failed itself, and does not raise from
    `write` for a table it has counted.
    """

    def report_outcomes_to(self, outcomes: RecordOutcomes) -> None: ...


_WAKE = None  # put on the queue by close() so the thread notices at once


class InferenceLogger:
    """A bounded queue of records and one daemon thread that writes them to a sink.

    capacity        records queued at most; beyond it `offer` drops and counts
    batch_size      records handed to the sink in one `write` at most
    flush_interval  seconds between calls of the sink's `flush` (also when idle)
    """

    def __init__(
        self,
        sink: LogSink,
        *,
        capacity: int = 1000,
        batch_size: int = 256,
        flush_interval: float = 1.0,
        name: str = "inference-log",
    ) -> None:
        if capacity < 1:
            raise InvalidArgumentError(f"capacity must be at least 1, got {capacity}")
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
        if not flush_interval > 0:
            raise InvalidArgumentError(f"flush_interval must be positive, got {flush_interval}")
        self.outcomes = RecordOutcomes()
        self._sink = sink
        self._sink_counts = isinstance(sink, ReportsOutcomes)
        if isinstance(sink, ReportsOutcomes):
            sink.report_outcomes_to(self.outcomes)
        self._queue: queue.Queue[InferenceRecord | None] = queue.Queue(maxsize=capacity)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._accepting = True
        self._accepting_lock = threading.Lock()  # no record slips in after close() began
        self._closing = threading.Event()
        self._drain_deadline = math.inf
        self._record_warning = RateLimitedWarning(log)
        self._sink_warning = RateLimitedWarning(log)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def written(self) -> int:
        return self.outcomes.written

    @property
    def dropped(self) -> int:
        return self.outcomes.dropped

    @property
    def failed(self) -> int:
        return self.outcomes.failed

    def offer(self, record: InferenceRecord) -> bool:
        """Queue a record for logging; False (and counted as dropped) if it cannot be queued.

        Never blocks and never raises: logging must not slow down or fail the request.
        """
        try:
            with self._accepting_lock:
                if self._accepting:
                    self._queue.put_nowait(record)
                    return True
        except queue.Full:
            pass
        except Exception:
            self._record_warning.warn("inference log: could not queue a record", exc_info=True)
        try:
            self.outcomes.add(str(getattr(record, "model", "")), "dropped")
        except Exception:
            self._record_warning.warn("inference log: could not count a drop", exc_info=True)
        return False

    def close(self, timeout: float = 10.0) -> bool:
        """Stop accepting, write what is queued, then close the sink.

        Records still queued after `timeout` seconds are dropped (and counted). Returns True
        when the sink was closed in time; False if it is still busy (the daemon thread then
        finishes on its own).
        """
        with self._accepting_lock:
            if self._accepting:
                self._accepting = False
                self._drain_deadline = time.monotonic() + timeout
                self._closing.set()
        with contextlib.suppress(queue.Full):  # a full queue keeps the thread busy anyway
            self._queue.put_nowait(_WAKE)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("inference log: sink still busy %.1f s after close began", timeout)
            return False
        return True

    def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_interval
        while not (self._closing.is_set() and self._queue.empty()):
            try:
                batch = self._next_batch(max(0.0, next_flush - time.monotonic()))
                if batch and time.monotonic() < self._drain_deadline:
                    self._write(batch)
                elif batch:  # close() ran out of time: what is left is not attempted
                    for record in batch:
                        self.outcomes.add(str(record.model), "dropped")
                if time.monotonic() >= next_flush:
                    self._call_sink("flush", self._sink.flush)
                    next_flush = time.monotonic() + self._flush_interval
            except Exception:  # the thread must outlive any bug in a record or a sink
                self._sink_warning.warn("inference log: unexpected error", exc_info=True)
        self._call_sink("close", self._sink.close)

    def _next_batch(self, wait: float) -> list[InferenceRecord]:
        try:
            first = self._queue.get(timeout=wait)
        except queue.Empty:
            return []
        items = [first]
        while len(items) < self._batch_size:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [item for item in items if item is not None]

    def _write(self, records: list[InferenceRecord]) -> None:
        tables = []
        for record in records:
            try:
                tables.append(record_table(record))
            except Exception as exc:
                self.outcomes.add(str(record.model), "failed")
                self._record_warning.warn(
                    "inference log: record %s of model %s not logged: %s",
                    record.request_id,
                    record.model,
                    exc,
                )
        if not tables:
            return
        try:
            self._sink.write(tables)
        except Exception:
            self._sink_warning.warn("inference log: sink write failed", exc_info=True)
            if not self._sink_counts:
                self._count(tables, "failed")
        else:
            if not self._sink_counts:
                self._count(tables, "written")

    def _count(self, tables: list[pa.Table], outcome: Outcome) -> None:
        for model, count in collections.Counter(model_of(table) for table in tables).items():
            self.outcomes.add(model, outcome, count)

    def _call_sink(self, what: str, call: Any) -> None:
        try:
            call()
        except Exception:
            self._sink_warning.warn("inference log: sink %s failed", what, exc_info=True)
