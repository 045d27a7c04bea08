"""Row format round trips for every type, schema evolution and corrupt rows."""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from inferstack.core.rowformat import Column, GroupCodec, RowStatus, VarColumn, var_column
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
        width: Any = 8 * dtype.itemsize  # 16, 32 or 64: the widths hypothesis knows
        element = st.floats(width=width, allow_nan=True, allow_infinity=True)
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


def _multi_codec(ttl: str | None = None) -> GroupCodec:
    spec = user_spec(
        {"name": "s", "type": "string", "default": "ds"},
        {"name": "n", "type": "int16", "default": -3},
        {"name": "b", "type": "bytes", "default": "db"},
        {"name": "ok", "type": "bool", "default": True},
        {"name": "t", "type": "string"},
        ttl=ttl,
    )
    return GroupCodec(registry_from(spec).feature_groups["profile"])


def _multi_rows(codec: GroupCodec, expires_at: int = 0) -> list[bytes]:
    columns: dict[str, Column] = {
        "s": var_column([b"", "ü".encode(), b"x" * 300]),
        "n": np.array([1, -2, 3], np.int16),
        "b": var_column([b"\x00\xff", b"", b""]),
        "ok": np.array([False, True, False]),
        "t": var_column([b"one", b"", b"three"]),
    }
    return codec.current.encode(columns, 3, expires_at)


def test_several_variable_features_gather_in_any_order_and_subset() -> None:
    codec = _multi_codec()
    rows = [*_multi_rows(codec), None]
    decoded = codec.decode(rows, ["t", "n", "s", "ok", "t"], time.time())
    assert decoded.status.tolist() == [RowStatus.FOUND] * 3 + [RowStatus.MISSING]
    t, s = decoded.columns["t"], decoded.columns["s"]
    assert isinstance(t, VarColumn) and isinstance(s, VarColumn)
    assert t.to_list() == [b"one", b"", b"three", b""]
    assert s.to_list() == [b"", "ü".encode(), b"x" * 300, b"ds"]
    assert decoded.columns["n"].tolist() == [1, -2, 3, -3]  # type: ignore[union-attr]
    ok = decoded.columns["ok"]
    assert not isinstance(ok, VarColumn)
    assert ok.dtype == np.bool_ and ok.tolist() == [False, True, False, True]
    assert "b" not in decoded.columns
    only_bytes = codec.decode(rows, ["b"], time.time()).columns["b"]
    assert isinstance(only_bytes, VarColumn)
    assert only_bytes.to_list() == [b"\x00\xff", b"", b"", b"db"]


def test_every_kind_of_broken_row_reads_as_defaults_with_status_corrupt() -> None:
    codec = _multi_codec()
    good = _multi_rows(codec)[1]
    prefix = codec.current.prefix_size
    lengths_at = prefix - 4 * len(codec.current.variable)  # the first <u4 length
    huge_length = good[:lengths_at] + b"\xff\xff\xff\xff" + good[lengths_at + 4 :]
    broken = [
        b"",  # empty
        good[:7],  # shorter than a header
        good[:prefix],  # prefix only: the lengths promise data that is not there
        good + b"!",  # one byte too many
        good[:3] + b"\x02" + good[4:],  # another row format
        huge_length,  # a length far past the end of the row
        b"\x07\x00" + good[2:],  # a schema version that was never applied
    ]
    decoded = codec.decode([good, *broken, good], ["s", "n", "b", "ok", "t"], time.time())
    assert decoded.status.tolist() == (
        [RowStatus.FOUND] + [RowStatus.CORRUPT] * len(broken) + [RowStatus.FOUND]
    )
    s = decoded.columns["s"]
    assert isinstance(s, VarColumn)
    assert s.to_list() == ["ü".encode()] + [b"ds"] * len(broken) + ["ü".encode()]
    assert decoded.columns["n"].tolist() == [-2] + [-3] * len(broken) + [-2]  # type: ignore[union-attr]


def test_expiry_is_at_or_before_now_and_zero_never_expires() -> None:
    codec = _multi_codec(ttl="1h")
    now = 1_800_000_000
    rows = [
        _multi_rows(codec, expires_at=now)[0],  # expires exactly now
        _multi_rows(codec, expires_at=now + 1)[0],  # one second left
        _multi_rows(codec, expires_at=0)[0],  # never
        _multi_rows(codec, expires_at=2**32 - 1)[0],  # the last second there is
    ]
    decoded = codec.decode(rows, ["t", "n"], float(now) + 0.5)
    assert decoded.status.tolist() == [
        RowStatus.EXPIRED,
        RowStatus.FOUND,
        RowStatus.FOUND,
        RowStatus.FOUND,
    ]
    t = decoded.columns["t"]
    assert isinstance(t, VarColumn) and t.to_list() == [b"", b"one", b"one", b"one"]
    # A clock at zero (how interaction history reads its rows) expires nothing.
    assert codec.decode(rows, ["n"], 0.0).status.tolist() == [RowStatus.FOUND] * 4


def test_old_version_rows_expire_and_broken_ones_are_corrupt() -> None:
    v1 = registry_from(user_spec({"name": "a", "type": "float32"}, {"name": "s", "type": "string"}))
    old_codec = GroupCodec(v1.feature_groups["profile"])
    now = 1_800_000_000

    def old_row(expires_at: int) -> bytes:
        columns: dict[str, Column] = {
            "a": np.array([2.5], np.float32),
            "s": var_column([b"old"]),
        }
        return old_codec.current.encode(columns, 1, expires_at)[0]

    v2 = registry_from(
        user_spec(
            {"name": "s", "type": "string", "default": "d"},
            {"name": "c", "type": "string", "default": "c"},
            {"name": "a", "type": "float32", "default": 1.0},
        ),
        base=v1,
    )
    codec = GroupCodec(v2.feature_groups["profile"])
    rows = [old_row(0), old_row(now - 5), old_row(0)[:-1], None, old_row(now + 5)]
    decoded = codec.decode(tuple(rows), ["a", "s", "c"], float(now))
    assert decoded.status.tolist() == [
        RowStatus.FOUND,
        RowStatus.EXPIRED,
        RowStatus.CORRUPT,
        RowStatus.MISSING,
        RowStatus.FOUND,
    ]
    assert decoded.columns["a"].tolist() == [2.5, 1.0, 1.0, 1.0, 2.5]  # type: ignore[union-attr]
    s, c = decoded.columns["s"], decoded.columns["c"]
    assert isinstance(s, VarColumn) and isinstance(c, VarColumn)
    assert s.to_list() == [b"old", b"d", b"d", b"d", b"old"]
    assert c.to_list() == [b"c"] * 5


def test_an_empty_batch_decodes_to_empty_columns() -> None:
    codec = _multi_codec()
    decoded = codec.decode([], ["s", "n"], time.time())
    assert decoded.status.tolist() == []
    s, n = decoded.columns["s"], decoded.columns["n"]
    assert isinstance(s, VarColumn) and s.to_list() == [] and s.data == b""
    assert not isinstance(n, VarColumn) and n.tolist() == []


def test_encoded_rows_are_the_documented_bytes() -> None:
    """The stored format, byte for byte: existing data must stay readable, so the encoder may
    change only in how it computes these bytes."""
    codec = _multi_codec()
    layout = codec.current  # fixed: n (int16), ok (bool); variable: s, b, t in that order
    rows = layout.encode(
        {
            "s": var_column([b"", "ü".encode()]),
            "n": np.array([-2, 300], np.int16),
            "b": var_column([b"\x00\xff", b""]),
            "ok": np.array([True, False]),
            "t": var_column([b"tt", b"t"]),
        },
        2,
        np.array([0, 1_900_000_000], np.uint32),
    )
    header = struct.Struct("<HBBI")
    version = layout.version
    assert rows == [
        header.pack(version, 0, 1, 0)
        + struct.pack("<h?", -2, True)
        + struct.pack("<III", 0, 2, 2)
        + b"\x00\xfftt",
        header.pack(version, 0, 1, 1_900_000_000)
        + struct.pack("<h?", 300, False)
        + struct.pack("<III", 2, 0, 1)
        + "ü".encode()
        + b"t",
    ]
