"""The natively encoded Retrieve answers parse, with protobuf's own parser, into exactly the
message the results describe: every column type, strided views of decoded rows, strings and
bytes, empty results, one response or a batch."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstack.core.rowformat import Column, GroupCodec, VarColumn, var_column
from inferstack.core.types import FeatureType
from inferstack.featurestore.service import ResultColumn, RetrieveResult
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.server.grpc.featurestore import encode_responses
from tests.helpers import registry_from, user_spec

FIXED_TYPES = ["bool", "int8", "int32", "int64", "uint64", "float16", "float32", "float64",
               "float32[4]", "int64[3]"]  # fmt: skip


def packed(values: Column) -> tuple[bytes, bytes]:
    """(values, lengths) as a correct encoder must send them."""
    if isinstance(values, VarColumn):
        return values.data, values.lengths.tobytes()
    return np.ascontiguousarray(values).tobytes(), b""


def expected(result: RetrieveResult) -> dict[str, Any]:
    return {
        "entity": result.entity,
        "count": result.count,
        "columns": [(c.name, c.type_name, *packed(c.values)) for c in result.columns],
        "groups": [(group, status.tobytes()) for group, status in result.status.items()],
    }


def parsed(message: pb.RetrieveResponse) -> dict[str, Any]:
    return {
        "entity": message.entity,
        "count": message.count,
        "columns": [(c.name, c.type, c.values, c.lengths) for c in message.columns],
        "groups": [(g.feature_group, g.status) for g in message.groups],
    }


@st.composite
def results(draw: st.DrawFn) -> RetrieveResult:
    count = draw(st.integers(0, 40))
    columns = []
    for index in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            text = draw(st.booleans())
            items = draw(
                st.lists(
                    st.text(max_size=8).map(str.encode) if text else st.binary(max_size=8),
                    min_size=count,
                    max_size=count,
                )
            )
            type_name = "string" if text else "bytes"
            values: Column = var_column(items)
        else:
            type_name = draw(st.sampled_from(FIXED_TYPES))
            feature_type = FeatureType.parse(type_name)
            shape = (count, feature_type.length) if feature_type.length else (count,)
            raw = (
                np.random.default_rng(index)
                .integers(0, 2, size=shape)
                .astype(feature_type.scalar_dtype)
            )
            values = raw[::-1] if draw(st.booleans()) else raw  # negative strides too
        name = f"group.f{index}"
        columns.append(ResultColumn(name, FeatureType.parse(type_name), values, type_name))
    status = {"group": np.arange(count, dtype=np.uint8) % 4} if draw(st.booleans()) else {}
    return RetrieveResult(draw(st.sampled_from(["user", "", "usér"])), count, columns, status)


@settings(max_examples=200, deadline=None)
@given(st.lists(results(), min_size=1, max_size=4))
def test_a_batch_parses_into_the_results(batch: list[RetrieveResult]) -> None:
    message = pb.RetrieveBatchResponse.FromString(encode_responses(batch, batch=True))
    assert [parsed(m) for m in message.responses] == [expected(r) for r in batch]


@settings(max_examples=100, deadline=None)
@given(results())
def test_one_response_parses_into_the_result(result: RetrieveResult) -> None:
    message = pb.RetrieveResponse.FromString(encode_responses([result], batch=False))
    assert parsed(message) == expected(result)


def test_decoded_rows_are_copied_from_their_strided_views() -> None:
    codec = GroupCodec(
        registry_from(
            user_spec(
                {"name": "a", "type": "float32[3]", "default": [1, 2, 3]},
                {"name": "b", "type": "bool"},
                {"name": "c", "type": "int16", "default": 7},
                {"name": "s", "type": "string", "default": "x"},
            )
        ).feature_groups["profile"]
    )
    columns: dict[str, Column] = {
        "a": np.array([[0.5, 1.5, 2.5], [3.0, 4.0, 5.0]], dtype=np.float32),
        "b": np.array([True, False]),
        "c": np.array([-3, 9], dtype=np.int16),
        "s": var_column([b"\xc3\xa9t\xc3\xa9", b""]),
    }
    rows = codec.current.encode(columns, 2, 0)
    decoded = codec.decode([rows[0], None, rows[1]], ["a", "b", "c", "s"], time.time())
    assert not decoded.columns["a"].flags["C_CONTIGUOUS"]  # a field of the decoded rows
    result = RetrieveResult(
        "user",
        3,
        [
            ResultColumn(f"profile.{n}", codec.types[n], decoded.columns[n], codec.type_names[n])
            for n in ("a", "b", "c", "s")
        ],
        {"profile": decoded.status},
    )
    message = pb.RetrieveResponse.FromString(encode_responses([result], batch=False))
    assert parsed(message) == expected(result)
    a = np.frombuffer(message.columns[0].values, dtype=np.float32).reshape(3, 3)
    assert a.tolist() == [[0.5, 1.5, 2.5], [1, 2, 3], [3, 4, 5]]  # the missing row: defaults
    assert np.frombuffer(message.columns[2].values, dtype=np.int16).tolist() == [-3, 7, 9]


def test_bad_arguments_are_refused() -> None:
    one = RetrieveResult("user", 0, [], {})
    with pytest.raises(ValueError, match="holds one result, got 2"):
        encode_responses([one, one], batch=False)
    not_an_array: Any = [1]
    column = ResultColumn("g.f", FeatureType.parse("int64"), not_an_array, "int64")
    with pytest.raises(TypeError, match=r"g\.f: values must be an array or a VarColumn"):
        encode_responses([RetrieveResult("user", 1, [column], {})], batch=True)
