"""Row format round trips for every type, schema evolution and corrupt rows."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferstack.core.rowformat import GroupCodec, RowStatus, VarColumn, var_column
from inferstack.core.types import NUMERIC_DTYPES, FeatureType
from tests.helpers import registry_from, user_spec

SCALARS = list(NUMERIC_DTYPES)
VECTOR_BASES = [t for t in NUMERIC_DTYPES if t != "bool"]


def _values(feature_type: FeatureType, count: int) -> st.SearchStrategy[Any]:
    if feature_type.base == "string":
        return st.lists(st.text(), min_size=count, max_size=count)
    if feature_type.base == "bytes":
        return st.lists(st.binary(), min_size=count, max_size=count)
    dtype = feature_type.scalar_dtype
    if feature_type.base == "bool":
        element: st.SearchStrategy[Any] = st.booleans()
    elif dtype.kind == "f":
        element = st.floats(width=8 * dtype.itemsize, allow_nan=True, allow_infinity=True)
    else:
        info = np.iinfo(dtype)
        element = st.integers(int(info.min), int(info.max))
    shape = (count, feature_type.length) if feature_type.length else (count,)
    array_dtype = np.dtype(np.bool_) if feature_type.base == "bool" else dtype
    # Large (max-length) vectors: hypothesis draws some elements and fills the rest.
    return hnp.arrays(array_dtype, shape, elements=element)


feature_types = st.one_of(
    st.sampled_from(SCALARS).map(FeatureType),
    st.sampled_from(["string", "bytes"]).map(FeatureType),
    st.tuples(st.sampled_from(VECTOR_BASES), st.sampled_from([1, 3, 16, 65_536])).map(
        lambda t: FeatureType(t[0], t[1])
    ),
)


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[FeatureType], int, list[Any]]:
    types = draw(st.lists(feature_types, min_size=1, max_size=5))
    count = draw(st.integers(0, 4) if any(t.length > 1000 for t in types) else st.integers(0, 20))
    values = [draw(_values(t, count)) for t in types]
    return types, count, values


def _codec(types: list[FeatureType]) -> GroupCodec:
    features = [{"name": f"f{i}", "type": str(t)} for i, t in enumerate(types)]
    registry = registry_from(user_spec(*features))
    return GroupCodec(registry.feature_groups["profile"])


def _as_column(feature_type: FeatureType, values: Any) -> Any:
    if feature_type.base == "string":
        return var_column([v.encode("utf-8") for v in values])
    if feature_type.base == "bytes":
        return var_column(values)
    return values


def _same(expected: Any, actual: Any) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return bool(expected == actual)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_every_type_round_trips(batch: tuple[list[FeatureType], int, list[Any]]) -> None:
    types, count, values = batch
    codec = _codec(types)
    names = [f"f{i}" for i in range(len(types))]
    columns = {n: _as_column(t, v) for n, t, v in zip(names, types, values, strict=True)}
    rows = codec.current.encode(columns, count)
    decoded = codec.decode(rows, names, now=time.time())
    assert decoded.status.tolist() == [RowStatus.FOUND] * count
    for name, feature_type, original in zip(names, types, values, strict=True):
        column = decoded.columns[name]
        if isinstance(column, VarColumn):
            got = column.to_list()
            want = (
                [v.encode("utf-8") for v in original] if feature_type.base == "string" else original
            )
            assert got == want
        else:
            assert column.shape == np.asarray(original).shape
            expected = np.asarray(original)
            # NaN payloads survive bit for bit: compare the raw bytes.
            assert (
                np.ascontiguousarray(column).tobytes()
                == np.ascontiguousarray(expected.astype(column.dtype)).tobytes()
            )


def test_missing_expired_and_corrupt_rows_read_as_defaults() -> None:
    spec = user_spec(
        {"name": "f0", "type": "float32", "default": 7.5},
        {"name": "f1", "type": "string", "default": "none"},
    )
    codec = GroupCodec(registry_from(spec).feature_groups["profile"])
    now = time.time()
    good, old = (
        codec.current.encode(
            {"f0": np.array([1.0, 2.0], np.float32), "f1": var_column([b"a", b"b"])}, 2
        ),
        codec.current.encode(
            {"f0": np.array([3.0], np.float32), "f1": var_column([b"c"])}, 1, int(now - 1)
        ),
    )
    truncated = good[0][:-1]
    garbage = b"\x00\x01"
    unknown_version = b"\x09\x00" + good[1][2:]
    rows = [good[0], None, old[0], truncated, garbage, unknown_version, good[1]]
    decoded = codec.decode(rows, ["f0", "f1"], now)
    assert decoded.status.tolist() == [
        RowStatus.FOUND,
        RowStatus.MISSING,
        RowStatus.EXPIRED,
        RowStatus.CORRUPT,
        RowStatus.CORRUPT,
        RowStatus.CORRUPT,
        RowStatus.FOUND,
    ]
    assert decoded.columns["f0"].tolist() == [1.0, 7.5, 7.5, 7.5, 7.5, 7.5, 2.0]  # type: ignore[union-attr]
    f1 = decoded.columns["f1"]
    assert isinstance(f1, VarColumn)
    assert f1.to_list() == [b"a", b"none", b"none", b"none", b"none", b"none", b"b"]


def test_rows_of_an_older_schema_version_stay_readable() -> None:
    v1 = registry_from(user_spec({"name": "a", "type": "float32"}, {"name": "s", "type": "string"}))
    old_rows = GroupCodec(v1.feature_groups["profile"]).current.encode(
        {"a": np.array([1.5], np.float32), "s": var_column(["é".encode()])}, 1
    )
    v2 = registry_from(
        user_spec(
            {"name": "s", "type": "string"},
            {"name": "b", "type": "int32", "default": 42},
            {"name": "v", "type": "float32[2]", "default": [0.5, 0.25]},
        ),
        base=v1,
    )
    codec = GroupCodec(v2.feature_groups["profile"])
    assert codec.current.version == 2
    new_rows = codec.current.encode(
        {
            "s": var_column([b"new"]),
            "b": np.array([1], np.int32),
            "v": np.array([[1.0, 2.0]], np.float32),
        },
        1,
    )
    decoded = codec.decode([old_rows[0], new_rows[0]], ["s", "b", "v"], time.time())
    assert decoded.status.tolist() == [RowStatus.FOUND, RowStatus.FOUND]
    s = decoded.columns["s"]
    assert isinstance(s, VarColumn) and s.to_list() == ["é".encode(), b"new"]
    assert decoded.columns["b"].tolist() == [42, 1]  # type: ignore[union-attr]
    assert decoded.columns["v"].tolist() == [[0.5, 0.25], [1.0, 2.0]]  # type: ignore[union-attr]


def test_rows_of_a_longer_older_version_are_upgraded() -> None:
    wide = user_spec(
        *({"name": f"x{i}", "type": "float64"} for i in range(8)), {"name": "s", "type": "string"}
    )
    v1 = registry_from(wide)
    old = GroupCodec(v1.feature_groups["profile"]).current.encode(
        {**{f"x{i}": np.array([float(i)]) for i in range(8)}, "s": var_column([b"kept"])}, 1
    )
    v2 = registry_from(
        user_spec({"name": "x3", "type": "float64"}, {"name": "s", "type": "string"}), base=v1
    )
    codec = GroupCodec(v2.feature_groups["profile"])
    assert len(old[0]) > codec.current.prefix_size
    decoded = codec.decode([old[0], None], ["x3", "s"], time.time())
    assert decoded.status.tolist() == [RowStatus.FOUND, RowStatus.MISSING]
    assert decoded.columns["x3"].tolist() == [3.0, 0.0]  # type: ignore[union-attr]
    s = decoded.columns["s"]
    assert isinstance(s, VarColumn) and s.to_list() == [b"kept", b""]
