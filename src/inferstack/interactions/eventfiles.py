"""Event files (Parquet, CSV, JSON lines) -> batches of one interaction type, for bulk ingest.

Columns: `event_id`, the type's user and item key names, `ts` (unix ms, or a timestamp
column) and any of the type's attributes; a missing or null attribute reads as its default,
other columns are ignored (and reported). Files are read in chunks, so files larger than
memory work. A value that does not convert to its declared type, or a missing required value,
is a `BadEventError` naming the field and the event's index in its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import EVENT_ID, TIMESTAMP, InteractionType
from inferstack.core.types import FeatureType

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
FORMATS |= {".jsonl": "json", ".ndjson": "json", ".json": "json"}
STRING = FeatureType("string")
INT64 = FeatureType("int64")


class BadEventError(InvalidArgumentError):
    """One event of a batch that cannot be sent; `index` is its place in the batch (-1 when
    no single event is at fault)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class EventFile:
    """One file of events of `kind`, checked on opening (format, required columns)."""

    def __init__(self, path: Path, kind: InteractionType) -> None:
        self.path = path
        self.kind = kind
        self.format = FORMATS.get(path.suffix.lower(), "")
        if not self.format:
            raise InvalidArgumentError(
                f"{path}: unsupported file type (use .parquet, .csv or .jsonl)"
            )
        if not path.is_file():
            raise InvalidArgumentError(f"{path}: no such file")
        wanted = [EVENT_ID, kind.user.name, kind.item.name, TIMESTAMP]
        wanted += [a.name for a in kind.attributes]
        # Text fields read as text even where they look like numbers (ids such as "0042").
        texts = [EVENT_ID, *(f.name for f in (kind.user, kind.item) if f.type.base == "string")]
        texts += [a.name for a in kind.attributes if a.type.base == "string"]
        self._texts = pa.schema([(name, pa.string()) for name in texts])
        names = self._read(self._column_names)
        missing = [name for name in wanted[:4] if name not in names]
        if missing:
            raise InvalidArgumentError(
                f"{path}: missing column(s) {', '.join(missing)} for interaction type "
                f"'{kind.name}' (event_id, user key, item key and ts are required)"
            )
        self.columns = [name for name in wanted if name in names]
        self.ignored = [name for name in names if name not in wanted]

    @property
    def events(self) -> int | None:
        """How many events the file holds when that is cheap to know (Parquet), else None."""
        if self.format != "parquet":
            return None
        return int(self._read(lambda: pq.ParquetFile(self.path).metadata.num_rows))

    def tables(self, size: int) -> Iterator[tuple[int, pa.Table]]:
        """(index in the file of the first event, a table of `size` events; fewer at the end)."""
        first = 0
        buffered: list[pa.RecordBatch] = []
        rows = 0
        chunks = self._read(self._chunks, size)
        while True:
            chunk = self._read(next, chunks, None, where=f" near event {first + rows}")
            if chunk is None:
                break
            buffered.append(chunk)
            rows += chunk.num_rows
            while rows >= size:
                table = pa.Table.from_batches(buffered).select(self.columns)
                yield first, table.slice(0, size)
                buffered, rows, first = table.slice(size).to_batches(), rows - size, first + size
        if rows:
            yield first, pa.Table.from_batches(buffered).select(self.columns)

    def _read(self, call: Any, *args: Any, where: str = "") -> Any:
        try:
            return call(*args)
        except (OSError, pa.ArrowException) as exc:
            raise InvalidArgumentError(f"{self.path}: cannot read{where}: {exc}") from exc

    def _column_names(self) -> list[str]:
        if self.format == "parquet":
            return list(pq.read_schema(self.path).names)
        if self.format == "csv":
            with pcsv.open_csv(self.path) as reader:
                return list(reader.schema.names)
        # Declared text fields are always present in JSON lines (null where absent): a file
        # without event_id then reports it as missing in the first event.
        with pjson.open_json(self.path, parse_options=self._json_options()) as reader:
            return list(reader.schema.names)

    def _json_options(self) -> pjson.ParseOptions:
        return pjson.ParseOptions(explicit_schema=self._texts)

    def _chunks(self, size: int) -> Iterator[pa.RecordBatch]:
        if self.format == "parquet":
            return iter(
                pq.ParquetFile(self.path).iter_batches(batch_size=size, columns=self.columns)
            )
        if self.format == "csv":
            texts = {f.name: f.type for f in self._texts if f.name in self.columns}
            convert = pcsv.ConvertOptions(include_columns=self.columns, column_types=texts)
            return iter(pcsv.open_csv(self.path, convert_options=convert))
        return iter(pjson.open_json(self.path, parse_options=self._json_options()))


def to_batch(kind: InteractionType, table: pa.Table) -> EventBatch:
    """Events of one table as a batch in the type's declared types."""
    attributes: dict[str, Any] = {}
    for attribute in kind.attributes:
        if attribute.name in table.column_names:
            column = _convert(table.column(attribute.name), attribute.type, attribute.name)
            if column.null_count:
                column = column.fill_null(pa.scalar(attribute.default, type=column.type))
            attributes[attribute.name] = _values(column, attribute.type)
    return EventBatch(
        type=kind.name,
        event_ids=_required(table, EVENT_ID, STRING),
        users=_required(table, kind.user.name, kind.user.type),
        items=_required(table, kind.item.name, kind.item.type),
        timestamps=_required(table, TIMESTAMP, INT64),
        attributes=attributes,
    )


def _required(table: pa.Table, name: str, feature_type: FeatureType) -> Any:
    column = table.column(name)
    if column.null_count:
        index = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise BadEventError(index, f"field '{name}' is missing")
    if pa.types.is_timestamp(column.type):  # Parquet/CSV times -> unix ms
        column = pc.cast(column, pa.timestamp("ms"), safe=False).cast(pa.int64())
    return _values(_convert(column, feature_type, name), feature_type)


def _convert(column: pa.ChunkedArray, feature_type: FeatureType, name: str) -> pa.ChunkedArray:
    """Safe cast to the declared type; when it fails, find the first event that does not fit."""
    if feature_type.is_variable:
        target = pa.string() if feature_type.base == "string" else pa.binary()
    elif feature_type.base == "bool":
        target = pa.bool_()
    else:
        target = pa.from_numpy_dtype(feature_type.scalar_dtype)
    try:
        return pc.cast(column, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    for index, value in enumerate(column.to_pylist()):  # error path only
        try:
            pc.cast(pa.array([value], type=column.type), target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadEventError(index, f"field '{name}' is {feature_type}, got {value!r}") from None
    raise BadEventError(-1, f"field '{name}' does not convert to {feature_type}")


def _values(column: pa.ChunkedArray, feature_type: FeatureType) -> Any:
    """Strings and bytes as lists, numbers as numpy arrays of the declared dtype."""
    if feature_type.is_variable:
        return column.to_pylist()
    return column.to_numpy()
