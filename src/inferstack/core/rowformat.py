"""The stored row: one compact binary value per (entity key, feature group).

    header   8 bytes  <u2 schema version, u1 flags, u1 format, u4 expires_at (unix s, 0 = never)
    fixed    the fixed-width features of that schema version, packed little-endian, in order
    lengths  one <u4 per variable-length feature (string, bytes), in order
    data     the variable-length values, concatenated in the same order

Everything before `data` (the prefix) has the same size for every row of one schema version.
Encoding a batch fills the prefixes with numpy, a feature at a time, then puts the rows
together in one call into the compiled `inferstack_native` (native/src/rows.rs). Decoding a
batch is one call there too: it checks every row, substitutes defaults, joins the prefixes
into one buffer and gathers the string/bytes values; here that buffer becomes one
`np.frombuffer` over a structured dtype, of which each fixed feature is a view. Strings stay
UTF-8 bytes end to end: the server never decodes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

import inferstack_native
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
_STATUS_DTYPE = np.dtype(np.uint8)
_LENGTHS_DTYPE = np.dtype("<u4")


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
        #: Where each variable-length feature's <u4 length sits in the prefix, in order.
        first_length = self.prefix_size - 4 * len(self.variable)
        self.length_offsets = [first_length + 4 * i for i in range(len(self.variable))]

    def encode(
        self,
        columns: dict[str, Column],
        count: int,
        expires_at: int | npt.NDArray[np.uint32] = 0,
    ) -> list[bytes]:
        """Encode `count` rows; fixed columns are arrays, variable ones VarColumns.

        The prefixes are filled here a feature at a time (numpy); each row's bytes are put
        together in one call into `inferstack_native` (native/src/rows.rs) for the batch."""
        prefix = np.zeros(count, dtype=self.prefix_dtype)
        prefix["schema_version"] = self.version
        prefix["format"] = FORMAT_VERSION
        prefix["expires_at"] = expires_at
        for name in self.fixed:
            values = columns[name]
            if isinstance(values, VarColumn) or len(values) != count:
                raise RowFormatError(f"feature '{name}': expected {count} fixed-width values")
            prefix[f"f:{name}"] = values
        variable: list[tuple[bytes, bytes]] = []
        for name in self.variable:
            column = columns[name]
            if not isinstance(column, VarColumn) or len(column.lengths) != count:
                raise RowFormatError(f"feature '{name}': expected {count} variable-length values")
            lengths = np.asarray(column.lengths, dtype=_LENGTHS_DTYPE).tobytes()
            variable.append((lengths, bytes(column.data)))
        # The native side writes each row's lengths into its prefix, and refuses lengths
        # that do not add up to the values.
        return inferstack_native.encode_rows(
            prefix.tobytes(), self.prefix_size, self.length_offsets, variable
        )


@dataclass
class DecodedGroup:
    """Requested features of one feature group for a batch of keys, defaults where not found."""

    status: npt.NDArray[np.uint8]
    columns: dict[str, Column]


class GroupCodec:
    """All schema versions of one feature group: writes the newest, reads any.

    Decoding makes every row a valid row of the current schema version: a missing, expired
    or corrupt row reads as a precomputed row of defaults, and a row of an older version is
    re-encoded (here, in Python: it only happens after an apply changed the features). Then
    the whole batch is one `np.frombuffer` and each fixed feature is a view into it.
    """

    def __init__(self, stored: StoredFeatureGroup) -> None:
        self.definition = stored.definition
        self.layouts = {v.version: RowLayout(v) for v in stored.versions}
        self.current = self.layouts[stored.current.version]
        self.types = {f.name: f.type for f in stored.definition.features}
        self.type_names = {name: str(t) for name, t in self.types.items()}  # for responses
        self.defaults = {f.name: f.default for f in stored.definition.features}
        self._default_row = self.current.encode(self._default_columns(1), 1)[0]
        self._variable_position = {name: i for i, name in enumerate(self.current.variable)}
        self._fixed_field = {
            name: (f"f:{name}", self.types[name].base == "bool") for name in self.current.fixed
        }

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
        layout = self.current
        rows = rows if isinstance(rows, list) else list(rows)
        clock = min(max(int(now), 0), MAX_EXPIRY)
        position = self._variable_position
        wanted = [position[name] for name in features if name in position]
        status, prefixes, gathered, other_versions = self._decode_rows(rows, wanted, clock)
        if other_versions:
            upgraded = list(rows)
            for index in other_versions:
                upgraded[index] = self._upgrade(rows[index])
            status, prefixes, gathered, _ = self._decode_rows(upgraded, wanted, clock)
            # A row that could not be upgraded was decoded as missing; it is corrupt.
            status[[i for i in other_versions if upgraded[i] is None]] = RowStatus.CORRUPT

        prefix = np.frombuffer(prefixes, dtype=layout.prefix_dtype)
        tails = iter(gathered)
        columns: dict[str, Column] = {}
        for name in features:
            if name in position:
                lengths, data = next(tails)
                columns[name] = VarColumn(np.frombuffer(lengths, dtype=_LENGTHS_DTYPE), data)
            else:
                field, is_bool = self._fixed_field[name]
                columns[name] = prefix[field].view(np.bool_) if is_bool else prefix[field]
        return DecodedGroup(status, columns)

    def _decode_rows(
        self, rows: list[bytes | None], wanted: list[int], clock: int
    ) -> tuple[npt.NDArray[np.uint8], bytes, list[tuple[bytes, bytes]], list[int]]:
        layout = self.current
        status, prefixes, gathered, other_versions = inferstack_native.decode_rows(
            rows,
            self._default_row,
            layout.version,
            layout.prefix_size,
            layout.length_offsets,
            wanted,
            clock,
        )
        return np.frombuffer(status, dtype=_STATUS_DTYPE), prefixes, gathered, other_versions

    def _upgrade(self, row: bytes | None) -> bytes | None:
        """Re-encode a row of an older schema version; None if it is not a valid row."""
        if row is None or len(row) < HEADER_SIZE:
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
