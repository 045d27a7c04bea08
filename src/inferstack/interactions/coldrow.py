"""The cold row: one (user, interaction type)'s merged history as one checksummed value.

    header  12 bytes  b"IC", u1 format version, u1 flags, <u4 event count, <u4 crc32 of the body
    body    per event, newest first: <u4 length, then the event's row (`core/rowformat.py`)

Events keep the bytes they were ingested with, whatever schema version wrote them: the
type's `GroupCodec` reads every version, so an old event never needs rewriting. The
checksum covers the body, so a torn or bit-flipped row is detected instead of read as
nonsense; a reader treats such a row like the feature store treats a corrupt row: as empty,
and reports it.

`merge` is the sweeper's step: cold history + hot events -> the new cold history,
de-duplicated by event id, newest first and trimmed by the type's retention.
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core import rowformat
from inferstack.core.errors import InferstackError
from inferstack.core.interactiontypes import EVENT_ID, TIMESTAMP
from inferstack.core.rowformat import GroupCodec, RowStatus, VarColumn

MAGIC = b"IC"
FORMAT_VERSION = 1
FLAGS = 0  # no flag is defined yet; a reader refuses flags it does not know
_HEADER = struct.Struct("<2sBBII")
HEADER_SIZE = _HEADER.size
_LENGTH = struct.Struct("<I")
MAX_EVENTS = 2**32 - 1
MAX_VECTOR_RANK_WIDTH = 256  # event ids longer than this are ranked in Python

log = logging.getLogger(__name__)


class ColdRowError(InferstackError):
    """A cold row that is not a valid history (bad magic, version, flags, length, checksum)."""


class UnreadableEventError(InferstackError):
    """Events written under a schema version this process does not know yet (a newer apply
    than its registry): merging them now could lose them, so the merge is refused and the
    sweep is retried later."""

    status = "UNAVAILABLE"


def encode_history(rows: Sequence[bytes]) -> bytes:
    """The cold row of these event rows, given newest first."""
    if len(rows) > MAX_EVENTS:
        raise ValueError(f"a cold row holds at most {MAX_EVENTS} events, got {len(rows)}")
    pack = _LENGTH.pack
    body = b"".join([part for row in rows for part in (pack(len(row)), row)])
    return _HEADER.pack(MAGIC, FORMAT_VERSION, FLAGS, len(rows), zlib.crc32(body)) + body


def decode_history(blob: bytes, limit: int | None = None) -> list[bytes]:
    """The event rows of a cold row, newest first (only the first `limit` if given).

    Raises ColdRowError for anything that is not a whole, intact row of this format.
    """
    if len(blob) < HEADER_SIZE:
        raise ColdRowError(
            f"cold row of {len(blob)} bytes is shorter than its {HEADER_SIZE}-byte header"
        )
    magic, version, flags, count, checksum = _HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ColdRowError(f"cold row starts with {magic!r}, not the magic {MAGIC!r}")
    if version != FORMAT_VERSION:
        raise ColdRowError(f"cold row has format version {version}, expected {FORMAT_VERSION}")
    if flags & ~FLAGS:
        raise ColdRowError(f"cold row has unknown flags 0x{flags:02x}")
    view = memoryview(blob)
    if zlib.crc32(view[HEADER_SIZE:]) != checksum:
        raise ColdRowError(f"cold row checksum mismatch ({len(blob)} bytes, {count} events)")
    wanted = count if limit is None else min(count, max(limit, 0))
    rows: list[bytes] = []
    append, unpack_length = rows.append, _LENGTH.unpack_from
    end = len(blob)
    position = HEADER_SIZE
    # A valid checksum over a body of the wrong shape still means a bad writer: check it.
    for index in range(count):
        if position + 4 > end:
            raise ColdRowError(f"cold row ends inside the length of event {index} of {count}")
        (length,) = unpack_length(blob, position)
        position += 4
        if position + length > end:
            raise ColdRowError(f"cold row ends inside event {index} of {count}")
        if index < wanted:
            append(blob[position : position + length])
        elif limit is not None:
            return rows  # the checksum already vouches for the rest
        position += length
    if position != end:
        raise ColdRowError(f"cold row has {end - position} bytes after its {count} events")
    return rows


def merge(
    existing_rows: Sequence[bytes],
    new_rows: Sequence[bytes],
    codec: GroupCodec,
    retention_count: int,
    oldest_ts: int | None,
) -> list[bytes]:
    """The new cold history: both sets of events, one per event id, newest first.

    An id present in `existing_rows` (the cold row) keeps that copy; among several new
    copies of one id the choice depends only on their content, so the order of `new_rows`
    never matters. Events sort by ts descending, then by event id, and only the newest
    `retention_count` with `ts >= oldest_ts` (unix ms; None = no age limit) are kept. Rows
    are returned unchanged, whatever their schema version.
    """
    rows = [*existing_rows, *new_rows]
    if not rows:
        return []
    # One vectorised decode for the whole batch. Events carry no expiry (retention is
    # by age here), so `now` 0 never expires one.
    decoded = codec.decode(rows, [EVENT_ID, TIMESTAMP], 0.0)
    ts_column = decoded.columns[TIMESTAMP]
    ids_column = decoded.columns[EVENT_ID]
    assert isinstance(ids_column, VarColumn) and not isinstance(ts_column, VarColumn)
    # ~ts orders newest first like -ts, without overflowing at the int64 minimum.
    newest_first = ~ts_column.astype(np.int64)
    ids = _rank(ids_column)
    from_hot = np.arange(len(rows)) >= len(existing_rows)  # False sorts first: cold wins
    unreadable = np.flatnonzero(decoded.status != RowStatus.FOUND).tolist()
    readable = np.ones(len(rows), dtype=np.bool_)
    readable[_check_unreadable(rows, unreadable, codec)] = False

    # Per id, the copy to keep comes first: cold before hot, then newest; copies still
    # tied on both are ordered by their bytes, so the choice never depends on input order.
    keys: list[npt.NDArray[Any]] = [newest_first, from_hot, ids]
    order = np.lexsort(keys)
    order = order[readable[order]]
    same = ids[order[1:]] == ids[order[:-1]]
    tied = same & (from_hot[order[1:]] == from_hot[order[:-1]])
    if (tied & (newest_first[order[1:]] == newest_first[order[:-1]])).any():
        keys.insert(0, _rank_bytes(rows))
        order = np.lexsort(keys)
        order = order[readable[order]]
        same = ids[order[1:]] == ids[order[:-1]]
    chosen = order[np.concatenate(([True], ~same))] if len(order) else order
    if oldest_ts is not None:
        chosen = chosen[ts_column[chosen] >= oldest_ts]
    kept = chosen[np.lexsort((ids[chosen], newest_first[chosen]))]
    return [rows[index] for index in kept[: max(retention_count, 0)].tolist()]


def merge_many(
    pairs: Sequence[tuple[Sequence[bytes], Sequence[bytes]]],
    codec: GroupCodec,
    retention_count: int,
    oldest_ts: int | None,
) -> list[list[bytes]]:
    """`merge` for many users at once: one decode and one sort for all of them (a sweep's
    cost per user is otherwise dominated by per-call overhead). Same results as calling
    `merge` per (existing_rows, new_rows) pair."""
    rows = [row for existing, new in pairs for row in (*existing, *new)]
    if not rows:
        return [[] for _ in pairs]
    sizes = [len(existing) + len(new) for existing, new in pairs]
    group = np.repeat(np.arange(len(pairs)), sizes)
    from_hot = np.concatenate(
        [
            np.concatenate(
                (np.zeros(len(existing), dtype=np.bool_), np.ones(len(new), dtype=np.bool_))
            )
            for existing, new in pairs
        ]
    )
    decoded = codec.decode(rows, [EVENT_ID, TIMESTAMP], 0.0)
    ts_column = decoded.columns[TIMESTAMP]
    ids_column = decoded.columns[EVENT_ID]
    assert isinstance(ids_column, VarColumn) and not isinstance(ts_column, VarColumn)
    unreadable = np.flatnonzero(decoded.status != RowStatus.FOUND).tolist()
    if unreadable:  # rare: let `merge` drop or refuse them user by user
        return [merge(existing, new, codec, retention_count, oldest_ts) for existing, new in pairs]
    newest_first = ~ts_column.astype(np.int64)
    ids = _rank(ids_column)
    # Per (user, id) the copy to keep comes first: cold before hot, then newest; copies
    # still tied on both are ordered by their bytes, as `merge` does.
    keys: list[npt.NDArray[Any]] = [newest_first, from_hot, ids, group]
    order = np.lexsort(keys)

    def same_id(order: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        same: npt.NDArray[np.bool_] = (ids[order[1:]] == ids[order[:-1]]) & (
            group[order[1:]] == group[order[:-1]]
        )
        return same

    same = same_id(order)
    tied = (
        same
        & (from_hot[order[1:]] == from_hot[order[:-1]])
        & (newest_first[order[1:]] == newest_first[order[:-1]])
    )
    if tied.any():
        keys.insert(0, _rank_bytes(rows))
        order = np.lexsort(keys)
        same = same_id(order)
    chosen = order[np.concatenate(([True], ~same))]
    if oldest_ts is not None:
        chosen = chosen[ts_column[chosen] >= oldest_ts]
    kept = chosen[np.lexsort((ids[chosen], newest_first[chosen], group[chosen]))]
    # The newest `retention_count` of each user: position within the user's run of rows.
    users = group[kept]
    starts = np.searchsorted(users, users, side="left")
    kept = kept[np.arange(len(kept)) - starts < max(retention_count, 0)]
    result: list[list[bytes]] = [[] for _ in pairs]
    for index in kept.tolist():
        result[int(group[index])].append(rows[index])
    return result


def _rank(column: VarColumn) -> npt.NDArray[np.int64]:
    """Each value's rank in the byte order of the distinct values (equal values, equal rank)."""
    lengths = column.lengths.astype(np.int64)
    width = int(lengths.max()) if len(lengths) else 0
    if width > MAX_VECTOR_RANK_WIDTH:  # a few huge ids: a padded matrix would be wasteful
        return _rank_bytes(column.to_list())
    # Pad every value with zeros to one width and append its length (big-endian): comparing
    # those records bytewise is comparing the values, so np.unique ranks them in C.
    count = len(lengths)
    matrix = np.zeros((count, width + 4), dtype=np.uint8)
    total = int(lengths.sum())
    rows = np.repeat(np.arange(count), lengths)
    starts = column.offsets()[:-1]
    matrix[rows, np.arange(total) - np.repeat(starts, lengths)] = np.frombuffer(
        column.data, dtype=np.uint8, count=total
    )
    matrix[:, width:] = lengths.astype(">u4").view(np.uint8).reshape(count, 4)
    records = matrix.view(np.dtype((np.void, width + 4))).ravel()
    _, ranks = np.unique(records, return_inverse=True)
    return ranks.astype(np.int64).ravel()


def _rank_bytes(values: Sequence[bytes]) -> npt.NDArray[np.int64]:
    ranks = {value: rank for rank, value in enumerate(sorted(set(values)))}
    return np.fromiter(map(ranks.__getitem__, values), dtype=np.int64, count=len(values))


def _check_unreadable(rows: list[bytes], indexes: list[int], codec: GroupCodec) -> list[int]:
    """The rows to leave out: ones that are no valid event row of any version (logged).

    Rows of a schema version newer than the codec's raise UnreadableEventError instead:
    they are valid, just not readable by this process yet, and dropping them loses them.
    """
    if not indexes:
        return []
    newest = max(codec.layouts)
    newer = [i for i in indexes if _schema_version(rows[i]) > newest]
    if newer:
        raise UnreadableEventError(
            f"{len(newer)} event(s) of interaction type '{codec.definition.name}' were written "
            f"under schema version {_schema_version(rows[newer[0]])}, newer than this "
            f"process knows (v{newest}); merge again once its registry is current"
        )
    log.warning(
        "dropping %d corrupt event row(s) of interaction type '%s' while merging",
        len(indexes),
        codec.definition.name,
    )
    return indexes


def _schema_version(row: bytes) -> int:
    """The schema version in an event row's header; -1 if it has no valid header."""
    if len(row) < rowformat.HEADER_SIZE:
        return -1
    header = np.frombuffer(row[: rowformat.HEADER_SIZE], dtype=rowformat.HEADER_DTYPE)[0]
    if int(header["format"]) != rowformat.FORMAT_VERSION:
        return -1
    return int(header["schema_version"])
