"""Bulk ingest from Parquet and CSV, streamed in chunks so files larger than memory work.

Rows are checked one by one: a row with a bad key or value is rejected and reported with
its row number while the good rows are written (or, with `strict`, every file is checked
first and nothing is written if any row is bad). Null feature values read as the
feature's default; a null key rejects the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.errors import InvalidArgumentError, UnavailableError
from inferstack.core.keys import KeyValues, encode_keys
from inferstack.core.rowformat import Column, VarColumn
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.storage.base import FeatureStorage

DEFAULT_CHUNK_ROWS = 65_536
WRITE_ATTEMPTS = 3  # per chunk: a bulk load should ride out a storage hiccup
WRITE_RETRY_DELAY = 0.5  # seconds, times the attempt number
MAX_REPORTED_REJECTIONS = 1_000
SUPPORTED_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


@dataclass(frozen=True)
class Rejection:
    file: str
    row: int  # 1-based data row in the file (the CSV header is not counted)
    reason: str


@dataclass
class IngestReport:
    feature_group: str
    files: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_written: int = 0
    rows_rejected: int = 0
    rejections: list[Rejection] = field(default_factory=list)  # the first MAX_REPORTED
    seconds: float = 0.0
    strict: bool = False
    written: bool = True  # False when strict mode refused to write anything

    def reject(self, rejection: Rejection) -> None:
        self.rows_rejected += 1
        if len(self.rejections) < MAX_REPORTED_REJECTIONS:
            self.rejections.append(rejection)


Progress = Callable[[str, int], None]  # (file, rows just processed)


def count_rows(path: Path) -> int | None:
    """Rows in a file when that is cheap to know (Parquet metadata), else None."""
    if _kind(path) == "parquet":
        return int(pq.ParquetFile(path).metadata.num_rows)
    return None


async def ingest_files(
    catalog: Catalog,
    storage: FeatureStorage,
    group_name: str,
    paths: list[Path],
    *,
    strict: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Progress | None = None,
    now: float | None = None,
) -> IngestReport:
    group = catalog.group(group_name)
    entity = catalog.entity(group.entity)
    codec = catalog.codecs[group_name]
    report = IngestReport(group_name, [str(p) for p in paths], strict=strict)
    started = time.perf_counter()
    for path in paths:
        _check_columns(path, entity, group)
    if strict:
        for path in paths:
            for chunk, first_row in _chunks(path, entity, group, chunk_rows):
                _prepare(chunk, first_row, str(path), entity, group, report)
        if report.rows_rejected:
            report.written = False
            report.seconds = time.perf_counter() - started
            return report
        report = IngestReport(group_name, [str(p) for p in paths], strict=True)
    expires_at = codec.expiry_for(time.time() if now is None else now)
    # One chunk is written while the next is read and checked: at most two chunks in memory.
    writing: asyncio.Task[int] | None = None
    try:
        for path in paths:
            for chunk, first_row in _chunks(path, entity, group, chunk_rows):
                prepared = _prepare(chunk, first_row, str(path), entity, group, report)
                if prepared is not None:
                    keys, columns, count = prepared
                    encoded = codec.current.encode(columns, count, expires_at)
                    rows = list(zip(keys, encoded, strict=True))
                    if writing is not None:
                        report.rows_written += await writing
                    writing = asyncio.ensure_future(
                        _write_chunk(storage, group_name, rows, group.ttl)
                    )
                if progress is not None:
                    progress(str(path), chunk.num_rows)
        if writing is not None:
            report.rows_written += await writing
            writing = None
    finally:
        if writing is not None:  # something failed: the chunk being written is abandoned
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
    report.seconds = time.perf_counter() - started
    return report


async def _write_chunk(
    storage: FeatureStorage, group: str, rows: list[tuple[bytes, bytes]], ttl: float | None
) -> int:
    """Write one chunk; a storage that did not answer in time gets WRITE_ATTEMPTS tries in
    all (writes are idempotent, so rows written by a failed try are simply written again)."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            await storage.write(group, rows, ttl)
            return len(rows)
        except UnavailableError:
            if attempt == WRITE_ATTEMPTS:
                raise
            await asyncio.sleep(WRITE_RETRY_DELAY * attempt)
    raise AssertionError("unreachable")


def _kind(path: Path) -> str:
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise InvalidArgumentError(f"{path}: unsupported file type (use .parquet or .csv)")
    return kind


def _schema_names(path: Path) -> list[str]:
    if _kind(path) == "parquet":
        return list(pq.read_schema(path).names)
    with pcsv.open_csv(path) as reader:
        return list(reader.schema.names)


def _check_columns(path: Path, entity: Entity, group: FeatureGroup) -> None:
    try:
        names = set(_schema_names(path))
    except (OSError, pa.ArrowException) as exc:
        raise InvalidArgumentError(f"{path}: cannot read: {exc}") from exc
    needed = [*entity.key_names, *(f.name for f in group.features)]
    missing = [name for name in needed if name not in names]
    if missing:
        raise InvalidArgumentError(
            f"{path}: missing column(s) {', '.join(missing)} for feature group '{group.name}' "
            f"(keys {', '.join(entity.key_names)} and every feature are required)"
        )


def _chunks(
    path: Path, entity: Entity, group: FeatureGroup, chunk_rows: int
) -> Iterator[tuple[pa.RecordBatch, int]]:
    columns = [*entity.key_names, *(f.name for f in group.features)]
    first_row = 1
    try:
        if _kind(path) == "parquet":
            batches: Iterator[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(
                batch_size=chunk_rows, columns=columns
            )
        else:
            string_columns = {c.name: pa.string() for c in entity.keys if c.type.base == "string"}
            string_columns.update(
                {f.name: pa.string() for f in group.features if f.type.is_variable or f.type.length}
            )
            batches = pcsv.open_csv(
                path,
                read_options=pcsv.ReadOptions(block_size=1 << 22),
                convert_options=pcsv.ConvertOptions(
                    include_columns=columns, column_types=string_columns, strings_can_be_null=False
                ),
            )
        for batch in batches:
            if batch.num_rows:
                yield batch, first_row
                first_row += batch.num_rows
    except pa.ArrowException as exc:
        raise InvalidArgumentError(f"{path}: cannot read near row {first_row}: {exc}") from exc


def _prepare(
    batch: pa.RecordBatch,
    first_row: int,
    file: str,
    entity: Entity,
    group: FeatureGroup,
    report: IngestReport,
) -> tuple[list[bytes], dict[str, Column], int] | None:
    """Check a chunk row by row, then convert the good rows column by column."""
    report.rows_read += batch.num_rows
    problems: dict[int, str] = {}
    converted: dict[str, pa.Array] = {}
    for key in entity.keys:
        target = (
            pa.string() if key.type.base == "string" else pa.from_numpy_dtype(key.type.scalar_dtype)
        )
        column = batch.column(key.name)
        for index in np.flatnonzero(_is_null(column)).tolist():
            problems.setdefault(index, f"key '{key.name}' is empty")
        converted[key.name] = _cast(column, target, f"key '{key.name}'", problems)
    for feature in group.features:
        converted[feature.name] = _convert_feature(
            batch.column(feature.name), feature.type, feature.name, problems
        )
    for index in sorted(problems):
        report.reject(Rejection(file, first_row + index, problems[index]))
    good = np.ones(batch.num_rows, dtype=np.bool_)
    good[list(problems)] = False
    count = int(good.sum())
    if count == 0:
        return None
    mask = pa.array(good)
    keys: dict[str, KeyValues] = {}
    for key in entity.keys:
        values = converted[key.name].filter(mask)
        keys[key.name] = values.to_pylist() if key.type.base == "string" else values.to_numpy()
    columns: dict[str, Column] = {}
    for feature in group.features:
        columns[feature.name] = _to_column(
            converted[feature.name].filter(mask), feature.type, feature.default
        )
    return encode_keys(entity, keys), columns, count


def _is_null(column: pa.Array) -> npt.NDArray[np.bool_]:
    return np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=np.bool_)


def _cast(column: pa.Array, target: pa.DataType, what: str, problems: dict[int, str]) -> pa.Array:
    """Cast safely; when the whole column will not cast, find the rows that do not."""
    try:
        return pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    values: list[Any] = []
    for index, value in enumerate(column.to_pylist()):
        try:
            values.append(
                pc.cast(pa.array([value], type=column.type), target, safe=True)[0].as_py()
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            problems.setdefault(index, f"{what}: {value!r} is not a valid {target}")
            values.append(None)
    return pa.array(values, type=target)


def _convert_feature(
    column: pa.Array, feature_type: FeatureType, name: str, problems: dict[int, str]
) -> pa.Array:
    what = f"feature '{name}'"
    if feature_type.base == "string":
        return _cast(column, pa.string(), what, problems)
    if feature_type.base == "bytes":
        return _cast(column, pa.binary(), what, problems)
    element = (
        pa.bool_()
        if feature_type.base == "bool"
        else pa.from_numpy_dtype(feature_type.scalar_dtype)
    )
    if not feature_type.length:
        return _cast(column, element, what, problems)
    if pa.types.is_string(column.type):  # CSV: "[0.1, 0.2, ...]"
        column = _parse_vector_text(column, what, problems)
    if not (
        pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
        or pa.types.is_fixed_size_list(column.type)
    ):
        for index in range(len(column)):
            problems.setdefault(index, f"{what}: expected a list of {feature_type.length} values")
        return pa.nulls(len(column), pa.list_(element))
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    nulls = _is_null(column)
    for index in np.flatnonzero(
        ~nulls & (np.nan_to_num(lengths, nan=-1) != feature_type.length)
    ).tolist():
        problems.setdefault(
            index,
            f"{what}: vector has {int(lengths[index])} values, expected {feature_type.length}",
        )
    flat_type = pa.list_(element)
    return _cast(column.cast(pa.list_(column.type.value_type)), flat_type, what, problems)


def _parse_vector_text(column: pa.Array, what: str, problems: dict[int, str]) -> pa.Array:
    values: list[list[float] | None] = []
    for index, text in enumerate(column.to_pylist()):
        if text is None or text.strip() == "":
            values.append(None)
            continue
        try:
            values.append([float(v) for v in text.strip().strip("[]").replace(",", " ").split()])
        except ValueError:
            problems.setdefault(index, f"{what}: {text!r} is not a list of numbers")
            values.append(None)
    return pa.array(values, type=pa.list_(pa.float64()))


def _to_column(values: pa.Array, feature_type: FeatureType, default: Any) -> Column:
    if feature_type.is_variable:
        fill = default if feature_type.base == "string" else bytes(default)
        filled = (
            values.fill_null(pa.scalar(fill, type=values.type)) if values.null_count else values
        )
        return _var_column_of(
            filled.combine_chunks() if isinstance(filled, pa.ChunkedArray) else filled
        )
    if feature_type.length:
        out = np.empty((len(values), feature_type.length), dtype=feature_type.scalar_dtype)
        out[...] = default
        present = ~_is_null(values)
        if present.any():
            flat = values.filter(pa.array(present)).flatten().to_numpy(zero_copy_only=False)
            out[present] = np.asarray(flat, dtype=feature_type.scalar_dtype).reshape(
                -1, feature_type.length
            )
        return out
    if values.null_count:
        values = values.fill_null(pa.scalar(default, type=values.type))
    array = values.to_numpy(zero_copy_only=False)
    return np.asarray(array, dtype=feature_type.scalar_dtype)


def _var_column_of(values: pa.Array) -> VarColumn:
    """Arrow string/binary arrays already are offsets plus data: reuse them without copies."""
    values = values.cast(pa.large_binary()) if pa.types.is_large_string(values.type) else values
    _, offsets_buffer, data_buffer = values.buffers()
    offset_type = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, dtype=offset_type)[
        values.offset : values.offset + len(values) + 1
    ]
    lengths = np.diff(offsets).astype(np.uint32)
    data = (
        data_buffer.to_pybytes()[int(offsets[0]) : int(offsets[-1])]
        if data_buffer is not None
        else b""
    )
    return VarColumn(lengths, data)
