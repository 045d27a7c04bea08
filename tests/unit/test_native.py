"""The compiled module's own contract: what it refuses, and the layout facts it relies on.

Its behaviour on real rows and keys is tested through `core/rowformat.py` and `core/keys.py`
(test_rowformat.py, test_keys_and_catalog.py); these tests cover the calls themselves.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

import inferstack_native
from inferstack.core.rowformat import GroupCodec, RowStatus
from tests.helpers import registry_from, user_spec

CODEC = GroupCodec(
    registry_from(
        user_spec({"name": "x", "type": "float64"}, {"name": "s", "type": "string"})
    ).feature_groups["profile"]
)
LAYOUT = CODEC.current
DEFAULT_ROW = CODEC._default_row  # every feature at its default, never expiring


def _decode(**changes: object) -> object:
    arguments: dict[str, object] = {
        "rows": [None],
        "default_row": DEFAULT_ROW,
        "version": LAYOUT.version,
        "prefix_size": LAYOUT.prefix_size,
        "length_offsets": LAYOUT.length_offsets,
        "wanted": [0],
        "now": int(time.time()),
    }
    arguments.update(changes)
    return inferstack_native.decode_rows(**arguments)  # type: ignore[arg-type]


def test_status_codes_are_the_row_statuses() -> None:
    assert inferstack_native.FOUND == RowStatus.FOUND
    assert inferstack_native.MISSING == RowStatus.MISSING
    assert inferstack_native.EXPIRED == RowStatus.EXPIRED
    assert inferstack_native.CORRUPT == RowStatus.CORRUPT


def test_length_offsets_point_at_the_lengths_in_the_prefix() -> None:
    fields = LAYOUT.prefix_dtype.fields
    assert fields is not None
    assert LAYOUT.length_offsets == [fields["n:s"][1]]


def test_rows_of_another_version_are_reported_for_upgrade() -> None:
    other = b"\x05\x00" + DEFAULT_ROW[2:]
    status, prefixes, gathered, other_versions = inferstack_native.decode_rows(
        [None, other],
        DEFAULT_ROW,
        LAYOUT.version,
        LAYOUT.prefix_size,
        [LAYOUT.length_offsets[0]],
        [0],
        0,
    )
    assert list(status) == [RowStatus.MISSING, RowStatus.CORRUPT]
    assert other_versions == [1]
    assert prefixes == DEFAULT_ROW[: LAYOUT.prefix_size] * 2
    assert gathered == [(np.array([0, 0], "<u4").tobytes(), b"")]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"rows": [b"x", 3]}, TypeError, "rows must be bytes or None"),
        ({"rows": (None,)}, TypeError, "rows"),
        ({"length_offsets": [LAYOUT.prefix_size - 2]}, ValueError, "inside the prefix"),
        ({"prefix_size": 4, "length_offsets": []}, ValueError, "inside the prefix"),
        ({"wanted": [1]}, ValueError, "no variable-length feature at position 1"),
        ({"default_row": DEFAULT_ROW[:-1] + b"\x01"}, ValueError, "default row"),
        (
            {"default_row": DEFAULT_ROW[:4] + b"\x01\x00\x00\x00" + DEFAULT_ROW[8:]},
            ValueError,
            "never expires",
        ),
    ],
)
def test_bad_arguments_are_refused(
    changes: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        _decode(**changes)


def test_key_parts_must_be_strings_or_64_bit_integers_of_one_length() -> None:
    with pytest.raises(TypeError, match="key part 0"):
        inferstack_native.encode_keys([np.array([1.5])])
    with pytest.raises(TypeError, match="key part 1: expected a list of str"):
        inferstack_native.encode_keys([np.array([1]), ["a", 2]])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="different lengths"):
        inferstack_native.encode_keys([np.array([1, 2]), ["a"]])
    assert inferstack_native.encode_keys([]) == []
    assert inferstack_native.encode_keys([np.array([], np.uint64)]) == []


def test_rows_are_encoded_from_prefixes_lengths_and_values() -> None:
    size = LAYOUT.prefix_size
    prefixes = bytes(range(size)) + bytes(range(100, 100 + size))
    lengths = np.array([3, 0], "<u4").tobytes()
    rows = inferstack_native.encode_rows(prefixes, size, LAYOUT.length_offsets, [(lengths, b"abc")])
    at = LAYOUT.length_offsets[0]
    assert rows == [
        prefixes[:at] + b"\x03\x00\x00\x00" + prefixes[at + 4 : size] + b"abc",
        prefixes[size : size + at] + b"\x00" * 4 + prefixes[size + at + 4 :],
    ]
    assert inferstack_native.encode_rows(b"", size, LAYOUT.length_offsets, [(b"", b"")]) == []
    assert inferstack_native.encode_rows(prefixes, size, [], []) == [
        prefixes[:size],
        prefixes[size:],
    ]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((b"\x00" * 7, 7, [], []), "at least the header"),
        ((b"\x00" * 17, 16, [], []), "whole prefixes"),
        ((b"\x00" * 16, 16, [13], [(b"\x00" * 4, b"")]), "inside the prefix"),
        ((b"\x00" * 16, 16, [4], [(b"\x00" * 4, b"")]), "after the header"),
        ((b"\x00" * 16, 16, [8], []), "1 length offsets for 0 variable-length features"),
        ((b"\x00" * 16, 16, [8], [(b"\x00" * 8, b"")]), "8 bytes of lengths for 1 rows"),
        ((b"\x00" * 16, 16, [8], [(b"\x02\x00\x00\x00", b"x")]), "add up to 2 bytes"),
    ],
)
def test_bad_encode_arguments_are_refused(arguments: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        inferstack_native.encode_rows(*arguments)
