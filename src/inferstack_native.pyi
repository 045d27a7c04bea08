"""Type stubs of the compiled hot path (native/src/*.rs); see those files for the details."""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

FOUND: int
MISSING: int
EXPIRED: int
CORRUPT: int

def encode_keys(
    parts: Sequence[list[str] | npt.NDArray[np.int64] | npt.NDArray[np.uint64]],
) -> list[bytes]:
    """One key per row: the parts of each row encoded as documented in core/keys.py."""

def decode_rows(
    rows: list[bytes | None],
    default_row: bytes,
    version: int,
    prefix_size: int,
    length_offsets: Sequence[int],
    wanted: Sequence[int],
    now: int,
) -> tuple[bytearray, bytes, list[tuple[bytes, bytes]], list[int]]:
    """(status, joined prefixes, (lengths, data) per wanted variable feature, other versions)."""

def encode_rows(
    prefixes: bytes,
    prefix_size: int,
    length_offsets: Sequence[int],
    variable: Sequence[tuple[bytes, bytes]],
) -> list[bytes]:
    """One row per prefix: the prefix with each variable feature's length written at its
    offset, then the values; `variable` is (<u4 lengths, concatenated values) per feature."""

def encode_retrieve_responses(
    results: list[tuple[str, int, list[Any], list[tuple[str, npt.NDArray[np.uint8]]]]],
    batch: bool,
) -> bytes:
    """The protobuf bytes of one RetrieveResponse (batch=False) or a RetrieveBatchResponse."""
