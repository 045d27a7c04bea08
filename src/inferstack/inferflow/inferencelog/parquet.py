"""Inference log as rotating Parquet files, one directory per model version.

    <directory>/<model>/v<version>/<UTC time>-<pid>-<seq>.parquet

A version has a schema of its own (its features and outputs), so each (model, version) has
its own open file. Records are buffered per file and written as one row group once
`row_group_bytes` of Arrow data are waiting, so readers get row groups of a useful size
however small the logger's batches are. A file is closed when it reaches `rotate_bytes`, when
its first record is `rotate_seconds` old, or when the sink closes.

A file is written under a hidden name (".<name>.inprogress") and renamed when complete, so a
reader of the directory (pyarrow.dataset, Spark, DuckDB all skip dot files) only ever sees
whole files. Several worker processes may log into one directory: the pid in the name keeps
their files apart. A process that dies leaves its unfinished file hidden.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.ratelimit import RateLimitedWarning
from inferstack.inferflow.inferencelog.base import (
    RecordOutcomes,
    model_of,
    version_of,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
IN_PROGRESS_SUFFIX = ".inprogress"
SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # a model name as a directory name
_file_numbers = itertools.count()  # per process: two sinks of one process never share a name


class _OpenFile:
    """One (model, version): the rows waiting for a row group and the file being written."""

    def __init__(self, model: str, version: int, schema: pa.Schema) -> None:
        self.model = model
        self.version = version
        self.schema = schema
        self.started = time.monotonic()
        self.pending: list[pa.Table] = []
        self.pending_bytes = 0
        self.path: Path | None = None  # the final name; the file is created with a hidden one
        self.temporary: Path | None = None
        self.file: pa.NativeFile | None = None
        self.writer: pq.ParquetWriter | None = None

    def bytes_written(self) -> int:
        return int(self.file.tell()) if self.file is not None else 0


class ParquetSink:
    """A LogSink writing rotating Parquet files under `directory` (see the module docstring).

    rotate_bytes     close a file once this many bytes are in it
    rotate_seconds   close a file this long after its first record, so data becomes visible
    row_group_bytes  Arrow bytes buffered per file before a row group is written
    compression      Parquet codec
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        rotate_bytes: int = 64 * MiB,
        rotate_seconds: float = 300.0,
        row_group_bytes: int = 8 * MiB,
        compression: str = "zstd",
    ) -> None:
        if rotate_bytes < 1:
            raise InvalidArgumentError(f"rotate_bytes must be positive, got {rotate_bytes}")
        if rotate_seconds < 0:
            raise InvalidArgumentError(f"rotate_seconds must be >= 0, got {rotate_seconds}")
        self.directory = Path(directory)
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.row_group_bytes = row_group_bytes
        self.compression = compression
        self._files: dict[tuple[str, int], _OpenFile] = {}
        self._outcomes = RecordOutcomes()
        self._warning = RateLimitedWarning(log)

    def report_outcomes_to(self, outcomes: RecordOutcomes) -> None:
        self._outcomes = outcomes

    def write(self, tables: list[pa.Table]) -> None:
        for table in tables:
            try:
                model, version = model_of(table), version_of(table)
            except Exception as exc:
                self._outcomes.add("", "failed")
                self._warning.warn("inference log: table without a model: %s", exc)
                continue
            if not SAFE_COMPONENT.fullmatch(model):
                self._outcomes.add(model, "failed")
                self._warning.warn("inference log: model %r is not usable as a directory", model)
                continue
            current = self._files.get((model, version))
            if current is not None and not current.schema.equals(table.schema):
                self._finish(current)  # same version, other columns: start another file
                current = None
            if current is None:
                current = self._files[model, version] = _OpenFile(model, version, table.schema)
            current.pending.append(table)
            current.pending_bytes += table.nbytes
            if current.pending_bytes >= self.row_group_bytes:
                self._write_row_group(current)
                if current.bytes_written() >= self.rotate_bytes:
                    self._finish(current)

    def flush(self) -> None:
        """Close the files whose first record is `rotate_seconds` old."""
        now = time.monotonic()
        for current in list(self._files.values()):
            if now - current.started >= self.rotate_seconds:
                self._finish(current)

    def close(self) -> None:
        for current in list(self._files.values()):
            self._finish(current)

    def _write_row_group(self, current: _OpenFile) -> bool:
        """Write the pending rows; on failure count them as failed and give up the file."""
        if not current.pending:
            return True
        records = len(current.pending)
        try:
            if current.writer is None:
                self._open(current)
            assert current.writer is not None
            rows = pa.concat_tables(current.pending)
            current.writer.write_table(rows, row_group_size=max(1, rows.num_rows))
        except Exception as exc:
            self._outcomes.add(current.model, "failed", records)
            self._warning.warn(
                "inference log: %d records of %s v%d not written to %s: %s",
                records,
                current.model,
                current.version,
                current.temporary,
                exc,
            )
            current.pending.clear()
            self._abandon(current)
            return False
        self._outcomes.add(current.model, "written", records)
        current.pending.clear()
        current.pending_bytes = 0
        return True

    def _open(self, current: _OpenFile) -> None:
        folder = self.directory / current.model / f"v{current.version}"
        folder.mkdir(parents=True, exist_ok=True)
        now = datetime.now(UTC)
        name = f"{now:%Y%m%dT%H%M%S.%f}Z-{os.getpid()}-{next(_file_numbers):06d}.parquet"
        current.path = folder / name
        current.temporary = folder / f".{name}{IN_PROGRESS_SUFFIX}"
        current.file = pa.OSFile(str(current.temporary), "wb")
        current.writer = pq.ParquetWriter(
            current.file, current.schema, compression=self.compression
        )

    def _finish(self, current: _OpenFile) -> None:
        """Write what is pending, complete the file and give it its visible name."""
        self._files.pop((current.model, current.version), None)
        if not self._write_row_group(current) or current.writer is None:
            return
        assert current.file is not None and current.temporary and current.path
        try:
            current.writer.close()
            current.file.close()
            # On disk before it gets its visible name: a crash must not leave a visible
            # file whose data never reached the disk.
            descriptor = os.open(current.temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.rename(current.temporary, current.path)
        except Exception as exc:
            self._warning.warn(
                "inference log: could not complete %s (left hidden): %s", current.temporary, exc
            )

    def _abandon(self, current: _OpenFile) -> None:
        """After a failed write the file may be corrupt: close it and keep it hidden."""
        self._files.pop((current.model, current.version), None)
        for resource in (current.writer, current.file):
            if resource is not None:
                try:
                    resource.close()
                except Exception as exc:
                    log.debug("inference log: closing %s: %s", current.temporary, exc)
