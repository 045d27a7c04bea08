"""The client's side of the wire: responses decoded into FeatureFrames (views, lazy strings,
errors naming the column) and requests built from keys."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inferstack.client.columns import Columns, decode_columns
from inferstack.client.featurestore import (
    FeatureFrame,
    Query,
    build_batch,
    build_request,
    decode_response,
)
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.rowformat import RowStatus, var_column
from inferstack.core.types import FeatureType
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.wire.columns import column_to_proto, keys_to_proto, wire_type

COUNT = 3
COLUMNS: dict[str, tuple[str, Any]] = {
    "g.f32": ("float32", np.array([1.5, -2.0, np.nan], dtype=np.float32)),
    "g.i64": ("int64", np.array([-(2**63), 0, 2**63 - 1], dtype=np.int64)),
    "g.u8": ("uint8", np.array([0, 7, 255], dtype=np.uint8)),
    "g.f16": ("float16", np.array([0.5, 1.0, -1.0], dtype=np.float16)),
    "g.flag": ("bool", np.array([True, False, True])),
    "g.vec": ("float32[4]", np.arange(12, dtype=np.float32).reshape(3, 4)),
    "g.name": ("string", ["plain", "ünïcödé ✓", ""]),
    "g.raw": ("bytes", [b"\x00\xff", b"", b"bytes"]),
}


def response(columns: dict[str, tuple[str, Any]] = COLUMNS) -> pb.RetrieveResponse:
    message = pb.RetrieveResponse(entity="e", count=COUNT)
    for name, (type_text, values) in columns.items():
        feature_type = FeatureType.parse(type_text)
        if feature_type.is_variable:
            items = [v.encode() if isinstance(v, str) else v for v in values]
            column = column_to_proto(name, feature_type, var_column(items))
        else:
            column = column_to_proto(name, feature_type, values)
        message.columns.append(column)
    found, missing = int(RowStatus.FOUND), int(RowStatus.MISSING)
    message.groups.add(feature_group="g", status=bytes([found, missing, found]))
    message.groups.add(feature_group="h", status=bytes([found, found, missing]))
    return message


def fresh(message: pb.RetrieveResponse) -> pb.RetrieveResponse:
    """As a client gets it: parsed from the wire."""
    parsed: pb.RetrieveResponse = pb.RetrieveResponse.FromString(message.SerializeToString())
    return parsed


def test_every_type_decodes_to_the_values_sent() -> None:
    frame = decode_response(fresh(response()))
    assert (frame.entity, frame.count) == ("e", COUNT)
    assert list(frame.columns) == list(COLUMNS)  # response order
    for name, (_, sent) in COLUMNS.items():
        got = frame[name]
        if isinstance(sent, np.ndarray):
            assert got.dtype == sent.dtype and got.shape == sent.shape, name
            np.testing.assert_array_equal(got, sent)
        else:
            assert got.dtype == object and got.tolist() == sent, name


def test_fixed_width_columns_are_read_only_views_of_the_response_buffers() -> None:
    frame = decode_response(fresh(response()))
    for name in ("g.f32", "g.i64", "g.vec"):
        array = frame[name]
        assert isinstance(array.base, bytes), name  # np.frombuffer over the field's bytes
        assert not array.flags.writeable


def test_strings_are_decoded_when_read_so_a_bad_one_fails_only_its_column() -> None:
    message = fresh(response())
    bad = message.columns.add(name="g.broken", type="string")
    bad.values = b"ok\xff\xfe!"
    bad.lengths = np.array([2, 2, 1], dtype="<u4").tobytes()
    frame = decode_response(message)
    assert frame["g.f32"][0] == np.float32(1.5)  # the rest of the frame reads fine
    with pytest.raises(InvalidArgumentError, match=r"'g\.broken': a value is not valid UTF-8"):
        frame["g.broken"]


def test_string_lengths_must_add_up_to_the_values() -> None:
    message = fresh(response({}))
    bad = message.columns.add(name="g.s", type="string", values=b"abc")
    bad.lengths = np.array([1, 1, 5], dtype="<u4").tobytes()
    frame = decode_response(message)
    with pytest.raises(InvalidArgumentError, match=r"'g\.s': lengths do not add up"):
        frame["g.s"]


@pytest.mark.parametrize(
    ("column", "error"),
    [
        (pb.Column(name="g.x", type="float32", values=b"\0" * 8), r"'g.x': 8 bytes .* 3 x 4"),
        (pb.Column(name="g.x", type="float32[2]", values=b"\0" * 12), r"'g.x': 12 bytes"),
        (pb.Column(name="g.x", type="bool", values=b"\0\1\2"), r"'g.x': bool values"),
        (pb.Column(name="g.x", type="decimal", values=b""), r"'g.x': unknown type 'decimal'"),
        (pb.Column(name="g.x", type="string", lengths=b"\0" * 8), r"'g.x': 8 bytes of lengths"),
    ],
)
def test_a_column_that_does_not_fit_is_refused_naming_it(column: pb.Column, error: str) -> None:
    message = fresh(response({}))
    message.columns.append(column)
    with pytest.raises(InvalidArgumentError, match=error):
        decode_response(message)


def test_found_per_group_and_for_every_group() -> None:
    frame = decode_response(fresh(response()))
    assert frame.found("g").tolist() == [True, False, True]
    assert frame.found("h").tolist() == [True, True, False]
    assert frame.found().tolist() == [True, False, False]
    assert FeatureFrame("e", 2).found().tolist() == [True, True]


def test_to_pandas_gives_one_column_per_feature_with_vectors_as_lists() -> None:
    table = decode_response(fresh(response())).to_pandas()
    assert list(table.columns) == list(COLUMNS)
    assert table["g.name"].tolist() == ["plain", "ünïcödé ✓", ""]
    assert table["g.vec"][1].tolist() == [4.0, 5.0, 6.0, 7.0]
    assert table["g.f32"].dtype == np.float32


def test_columns_are_a_mutable_mapping() -> None:
    columns = decode_columns(fresh(response()).columns, COUNT)
    assert isinstance(columns, Columns) and len(columns) == len(COLUMNS) and "g.name" in columns
    columns["extra"] = np.zeros(COUNT)
    del columns["g.raw"]
    assert list(columns)[-1] == "extra" and "g.raw" not in columns
    assert dict(columns.items())["g.name"].tolist() == ["plain", "ünïcödé ✓", ""]


def test_a_frame_built_by_hand_still_works() -> None:
    status = {"g": np.array([RowStatus.FOUND], dtype=np.uint8)}
    frame = FeatureFrame("e", 1, {"g.f": np.array([1.0])}, status)
    assert frame["g.f"].tolist() == [1.0] and frame.found().tolist() == [True]


def test_type_strings_are_parsed_once() -> None:
    assert wire_type("float32[16]", "a") is wire_type("float32[16]", "b")
    assert wire_type("float32[16]", "a").dtype.shape == (16,)


# ---- requests ----------------------------------------------------------------------------


def key(values: Any) -> pb.KeyColumn:
    (column,) = keys_to_proto({"k": values})
    return column


@pytest.mark.parametrize(
    ("values", "field", "expected"),
    [
        ([1, -2, 3], "int64_values", [1, -2, 3]),
        ((5, 6), "int64_values", [5, 6]),
        ([2**63, 1], "uint64_values", [2**63, 1]),
        (np.array([1, 2], dtype=np.int32), "int64_values", [1, 2]),
        (np.array([2**64 - 1], dtype=np.uint64), "uint64_values", [2**64 - 1]),
        (np.array([7], dtype=np.uint64), "int64_values", [7]),
        ([True, False], "int64_values", [1, 0]),
        ([np.int64(4), np.int64(5)], "int64_values", [4, 5]),
        (["a", "ü"], "string_values", ["a", "ü"]),
        (np.array(["x", "y"]), "string_values", ["x", "y"]),
        ([1, "a"], "string_values", ["1", "a"]),  # mixed lists have always gone as strings
        ([], "int64_values", []),
    ],
)
def test_keys_go_as_the_values_they_are(values: Any, field: str, expected: list[Any]) -> None:
    column = key(values)
    assert column.name == "k"
    assert list(getattr(column, field)) == expected
    others = {"int64_values", "uint64_values", "string_values"} - {field}
    assert not any(len(getattr(column, other)) for other in others)


def test_a_key_beyond_64_bits_is_refused_naming_it() -> None:
    with pytest.raises(InvalidArgumentError, match="key 'k': 18446744073709551616 does not fit"):
        key([1, 2**64])
    with pytest.raises(InvalidArgumentError, match="key 'k': -9223372036854775809 does not fit"):
        key([-(2**63) - 1, 2**63])


def test_a_batch_is_the_same_message_as_one_built_query_by_query() -> None:
    queries = [
        Query("user", {"user_id": [42]}, ["user_profile"]),
        Query("uc", {"user_id": np.array([1, 2]), "category_id": ["c1", "c2"]}),
    ]
    expected = pb.RetrieveBatchRequest(
        requests=[
            pb.RetrieveRequest(
                entity="user",
                keys=[pb.KeyColumn(name="user_id", int64_values=[42])],
                features=["user_profile"],
            ),
            pb.RetrieveRequest(
                entity="uc",
                keys=[
                    pb.KeyColumn(name="user_id", int64_values=[1, 2]),
                    pb.KeyColumn(name="category_id", string_values=["c1", "c2"]),
                ],
            ),
        ]
    )
    assert build_batch(queries) == expected
    assert build_request(queries[1]) == expected.requests[1]
