"""The stored row: one compact binary value per (entity key, feature group).

    header   8 bytes  <u2 schema version, u1 flags, u1 format, u4 expires_at (unix s, 0 = never)
    fixed    the fixed-width features of that schema version, packed little-endian, in order
    lengths  one <u4 per variable-length feature (string, bytes), in order
    data     the variable-length values, concatenated in the same order

Everything before `data` has the same size for every row of one schema version, so a batch
decodes with one `np.frombuffer` over a structured dtype; only the variable-length tails
are sliced per row. Strings stay UTF-8 bytes end to end: the server never decodes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.registry import SchemaVersion, StoredFeatureGroup
from inferstack.core.types import FeatureType

FORMAT_VERSION = 1
HEADER_FIELDS = [
    ("schema_version", "<u2"),
    ("flags", "u1"),
    ("format", "u1"),
    ("expires_at", "<u4"),
]
HEADER_DTYPE = np.dtype(HEADER_FIELDS)
HEADER_SIZE = HEADER_DTYPE.itemsize
MAX_EXPIRY = 2**32 - 1


class RowStatus(IntEnum):
    """Per key and feature group; only FOUND rows carry values, the rest read as defaults."""

    FOUND = 0
    MISSING = 1
    EXPIRED = 2
    CORRUPT = 3


class RowFormatError(ValueError):
    """Values that cannot be encoded (wrong shape, unknown feature)."""


@dataclass(frozen=True)
class VarColumn:
    """A column of strings or bytes: UTF-8/raw values as lengths plus one data buffer."""

    lengths: npt.NDArray[np.uint32]
    data: bytes

    def offsets(self) -> npt.NDArray[np.int64]:
        offsets = np.zeros(len(self.lengths) + 1, dtype=np.int64)
        np.cumsum(self.lengths, out=offsets[1:])
        return offsets

    def to_list(self) -> list[bytes]:
        offsets = self.offsets().tolist()
        data = self.data
        return [data[offsets[i] : offsets[i + 1]] for i in range(len(self.lengths))]


Column = npt.NDArray[Any] | VarColumn


def var_column(values: Sequence[bytes]) -> VarColumn:
    lengths = np.fromiter(map(len, values), dtype=np.uint32, count=len(values))
    return VarColumn(lengths, b"".join(values))


class RowLayout:
    """Encoder and decoder for the rows of one schema version of one feature group."""

    def __init__(self, version: SchemaVersion) -> None:
        self.version = version.version
        self.types = {name: FeatureType.parse(text) for name, text in version.features}
        self.fixed = [name for name, t in self.types.items() if not t.is_variable]
        self.variable = [name for name, t in self.types.items() if t.is_variable]
        fields: list[tuple[str, Any]] = list(HEADER_FIELDS)
        fields += [(f"f:{name}", self.types[name].storage_dtype) for name in self.fixed]
        fields += [(f"n:{name}", "<u4") for name in self.variable]
        self.prefix_dtype = np.dtype(fields)
        self.prefix_size = self.prefix_dtype.itemsize

    def encode(
        self,
        columns: dict[str, Column],
        count: int,
        expires_at: int | npt.NDArray[np.uint32] = 0,
    ) -> list[bytes]:
        """Encode `count` rows; fixed columns are arrays, variable ones VarColumns."""
        prefix = np.zeros(count, dtype=self.prefix_dtype)
        prefix["schema_version"] = self.version
        prefix["format"] = FORMAT_VERSION
        prefix["expires_at"] = expires_at
        for name in self.fixed:
            values = columns[name]
            if isinstance(values, VarColumn) or len(values) != count:
                raise RowFormatError(f"feature '{name}': expected {count} fixed-width values")
            prefix[f"f:{name}"] = values
        tails: list[list[bytes]] = []
        for name in self.variable:
            column = columns[name]
            if not isinstance(column, VarColumn) or len(column.lengths) != count:
                raise RowFormatError(f"feature '{name}': expected {count} variable-length values")
            prefix[f"n:{name}"] = column.lengths
            tails.append(column.to_list())
        size = self.prefix_size
        blob = prefix.tobytes()
        if not tails:
            return [blob[i * size : (i + 1) * size] for i in range(count)]
        return [
            b"".join((blob[i * size : (i + 1) * size], *(tail[i] for tail in tails)))
            for i in range(count)
        ]


@dataclass
class DecodedGroup:
    """Requested features of one feature group for a batch of keys, defaults where not found."""

    status: npt.NDArray[np.uint8]
    columns: dict[str, Column]


class GroupCodec:
    """All schema versions of one feature group: writes the newest, reads any.

    Decoding first makes every row a valid row of the current schema version: a missing,
    expired or corrupt row is replaced by a precomputed row of defaults, and a row of an
    older version is re-encoded. Then the whole batch is one `np.frombuffer` and each fixed
    feature is a view into it; only string and bytes values need gathering.
    """

    def __init__(self, stored: StoredFeatureGroup) -> None:
        self.definition = stored.definition
        self.layouts = {v.version: RowLayout(v) for v in stored.versions}
        self.current = self.layouts[stored.current.version]
        self.types = {f.name: f.type for f in stored.definition.features}
        self.type_names = {name: str(t) for name, t in self.types.items()}  # for responses
        self.defaults = {f.name: f.default for f in stored.definition.features}
        self._default_row = self.current.encode(self._default_columns(1), 1)[0]
        self._default_record = np.frombuffer(
            self._default_row[: self.current.prefix_size], dtype=self.current.prefix_dtype
        )[0]

    def expiry_for(self, now: float) -> int:
        ttl = self.definition.ttl
        return 0 if ttl is None else min(int(now + ttl), MAX_EXPIRY)

    def _default_columns(self, count: int, names: Sequence[str] | None = None) -> dict[str, Column]:
        columns: dict[str, Column] = {}
        for name in names if names is not None else list(self.types):
            feature_type, default = self.types[name], self.defaults[name]
            if feature_type.is_variable:
                raw = default.encode() if isinstance(default, str) else default
                columns[name] = var_column([raw] * count)
            else:
                values = np.empty(
                    (count, *feature_type.storage_dtype.shape), feature_type.scalar_dtype
                )
                values[...] = default
                columns[name] = values
        return columns

    def decode(
        self, rows: Sequence[bytes | None], features: Sequence[str], now: float
    ) -> DecodedGroup:
        count = len(rows)
        layout = self.current
        size = layout.prefix_size
        status = np.zeros(count, dtype=np.uint8)  # RowStatus.FOUND
        default = self._default_row
        work: list[bytes] = [default if row is None else row for row in rows]
        if None in rows:
            status[[i for i, row in enumerate(rows) if row is None]] = RowStatus.MISSING

        lengths = np.fromiter(map(len, work), dtype=np.int64, count=count)
        short = np.flatnonzero(lengths < size).tolist()
        for index in short:
            work[index] = self._repair(work[index], index, status)
            lengths[index] = len(work[index])
        prefix = np.frombuffer(b"".join([row[:size] for row in work]), dtype=layout.prefix_dtype)
        if layout.variable:
            expected = sum(prefix[f"n:{name}"].astype(np.int64) for name in layout.variable)
            broken = lengths != expected + size
        else:
            broken = lengths != size
        broken |= prefix["schema_version"] != layout.version
        broken |= prefix["format"] != FORMAT_VERSION
        if broken.any():
            for index in np.flatnonzero(broken).tolist():
                work[index] = self._repair(work[index], index, status)
            prefix = np.frombuffer(
                b"".join([row[:size] for row in work]), dtype=layout.prefix_dtype
            )
        # expires_at 0 means never: minus one it wraps to the largest uint32, never <= now.
        expired = prefix["expires_at"] - np.uint32(1) < np.uint32(min(int(now), MAX_EXPIRY))
        if expired.any():
            prefix = prefix.copy()
            prefix[expired] = self._default_record
            status[expired] = RowStatus.EXPIRED
            for index in np.flatnonzero(expired).tolist():
                work[index] = default

        columns: dict[str, Column] = {}
        wanted_var = [name for name in features if name in layout.variable]
        if wanted_var:
            columns.update(self._gather_variable(work, prefix, wanted_var))
        for name in features:
            if name not in columns:
                values = prefix[f"f:{name}"]
                columns[name] = values.view(np.bool_) if self.types[name].base == "bool" else values
        return DecodedGroup(status, columns)

    def _repair(self, row: bytes, index: int, status: npt.NDArray[np.uint8]) -> bytes:
        """A row that is not a whole row of the current version: upgrade it or default it."""
        upgraded = self._upgrade(row)
        if upgraded is None:
            status[index] = RowStatus.CORRUPT
            return self._default_row
        return upgraded

    def _upgrade(self, row: bytes) -> bytes | None:
        """Re-encode a row of an older schema version; None if it is not a valid row."""
        if len(row) < HEADER_SIZE:
            return None
        header = np.frombuffer(row[:HEADER_SIZE], dtype=HEADER_DTYPE)[0]
        layout = self.layouts.get(int(header["schema_version"]))
        if int(header["format"]) != FORMAT_VERSION or layout is None or layout is self.current:
            return None
        if len(row) < layout.prefix_size:
            return None
        prefix = np.frombuffer(row[: layout.prefix_size], dtype=layout.prefix_dtype)
        lengths = [int(prefix[f"n:{name}"][0]) for name in layout.variable]
        if len(row) != layout.prefix_size + sum(lengths):
            return None
        columns = self._default_columns(1)
        for name in layout.fixed:
            if name in self.types:
                columns[name] = prefix[f"f:{name}"]
        offset = layout.prefix_size
        for name, length in zip(layout.variable, lengths, strict=True):
            if name in self.types:
                columns[name] = var_column([row[offset : offset + length]])
            offset += length
        return self.current.encode(columns, 1, int(header["expires_at"]))[0]

    def _gather_variable(
        self, rows: list[bytes], prefix: npt.NDArray[Any], names: list[str]
    ) -> dict[str, VarColumn]:
        """Cut each wanted string/bytes feature out of the rows' tails into one buffer."""
        layout = self.current
        size = layout.prefix_size
        if len(layout.variable) == 1:  # the whole tail is the one value
            name = layout.variable[0]
            tails = b"".join([row[size:] for row in rows])
            return {name: VarColumn(prefix[f"n:{name}"].astype(np.uint32), tails)}
        # lengths[row, v]; each value starts after the prefix and the row's earlier values.
        lengths = np.stack([prefix[f"n:{n}"].astype(np.int64) for n in layout.variable], axis=1)
        starts = size + np.cumsum(lengths, axis=1) - lengths
        out: dict[str, VarColumn] = {}
        for name in names:
            position = layout.variable.index(name)
            begin = starts[:, position]
            sizes = lengths[:, position]
            # Slicing bytes in a list comprehension beats numpy index arithmetic here.
            data = b"".join(
                [
                    row[a:b]
                    for row, a, b in zip(
                        rows, begin.tolist(), (begin + sizes).tolist(), strict=True
                    )
                ]
            )
            out[name] = VarColumn(sizes.astype(np.uint32), data)
        return out
