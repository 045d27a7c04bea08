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
    """All schema versions of one feature group: writes the newest, reads any."""

    def __init__(self, stored: StoredFeatureGroup) -> None:
        self.definition = stored.definition
        self.layouts = {v.version: RowLayout(v) for v in stored.versions}
        self.current = self.layouts[stored.current.version]
        self.types = {f.name: f.type for f in stored.definition.features}
        self.defaults = {f.name: f.default for f in stored.definition.features}

    def expiry_for(self, now: float) -> int:
        ttl = self.definition.ttl
        return 0 if ttl is None else min(int(now + ttl), MAX_EXPIRY)

    def decode(
        self, rows: Sequence[bytes | None], features: Sequence[str], now: float
    ) -> DecodedGroup:
        count = len(rows)
        status = np.full(count, RowStatus.MISSING, dtype=np.uint8)
        present = [i for i, row in enumerate(rows) if row is not None]
        by_version: dict[int, list[int]] = {}
        if present:
            # Rows shorter than a header are corrupt; pad them so the batch header read works.
            heads = b"".join(
                (rows[i] or b"")[:HEADER_SIZE].ljust(HEADER_SIZE, b"\xff") for i in present
            )
            header = np.frombuffer(heads, dtype=HEADER_DTYPE)
            versions = header["schema_version"].tolist()
            formats = header["format"].tolist()
            for position, index in enumerate(present):
                if formats[position] != FORMAT_VERSION or versions[position] not in self.layouts:
                    status[index] = RowStatus.CORRUPT
                else:
                    by_version.setdefault(versions[position], []).append(index)

        fixed_out: dict[str, npt.NDArray[Any]] = {}
        var_out: dict[str, list[bytes]] = {}
        for name in features:
            feature_type = self.types[name]
            if feature_type.is_variable:
                default = self.defaults[name]
                var_out[name] = [default.encode() if isinstance(default, str) else default] * count
            else:
                fixed_out[name] = np.empty(
                    (count, *feature_type.storage_dtype.shape), dtype=feature_type.scalar_dtype
                )
                fixed_out[name][...] = self.defaults[name]

        only_current = len(by_version) == 1 and len(present) == count
        for version, indices in by_version.items():
            self._decode_version(
                self.layouts[version],
                rows,
                indices,
                features,
                now,
                status,
                fixed_out,
                var_out,
                whole_batch=only_current,
            )

        columns: dict[str, Column] = {}
        for name in features:
            if name in var_out:
                columns[name] = var_column(var_out[name])
            else:
                values = fixed_out[name]
                columns[name] = values.view(np.bool_) if self.types[name].base == "bool" else values
        return DecodedGroup(status, columns)

    def _decode_version(
        self,
        layout: RowLayout,
        rows: Sequence[bytes | None],
        indices: list[int],
        features: Sequence[str],
        now: float,
        status: npt.NDArray[np.uint8],
        fixed_out: dict[str, npt.NDArray[Any]],
        var_out: dict[str, list[bytes]],
        *,
        whole_batch: bool,
    ) -> None:
        size = layout.prefix_size
        picked = [rows[i] or b"" for i in indices]
        row_lengths = np.fromiter(map(len, picked), dtype=np.int64, count=len(picked))
        prefix = np.frombuffer(
            b"".join(row[:size].ljust(size, b"\0") for row in picked), dtype=layout.prefix_dtype
        )
        expected = np.full(len(picked), size, dtype=np.int64)
        for name in layout.variable:
            expected += prefix[f"n:{name}"]
        intact = row_lengths == expected
        expires = prefix["expires_at"]
        alive = (expires == 0) | (expires > now)
        usable = intact & alive
        index_array = np.asarray(indices, dtype=np.intp)
        status[index_array[~intact]] = RowStatus.CORRUPT
        status[index_array[intact & ~alive]] = RowStatus.EXPIRED
        status[index_array[usable]] = RowStatus.FOUND
        all_usable = bool(usable.all())
        targets = index_array if all_usable else index_array[usable]
        source = prefix if all_usable else prefix[usable]
        for name in features:
            if name in layout.fixed:
                if whole_batch and all_usable:
                    fixed_out[name] = source[f"f:{name}"]  # a strided view; no copy
                else:
                    fixed_out[name][targets] = source[f"f:{name}"]
        wanted_var = [name for name in layout.variable if name in var_out]
        if not wanted_var:
            return
        lengths = {name: prefix[f"n:{name}"].tolist() for name in layout.variable}
        usable_list = usable.tolist()
        for position, index in enumerate(indices):
            if not usable_list[position]:
                continue
            row = picked[position]
            offset = size
            for name in layout.variable:
                end = offset + lengths[name][position]
                if name in var_out:
                    var_out[name][index] = row[offset:end]
                offset = end
