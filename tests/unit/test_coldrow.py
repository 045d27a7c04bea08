"""The cold row: round trips, every kind of corruption detected, and the sweeper's merge."""

from __future__ import annotations

import logging
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inferstack.core.errors import InferstackError
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import GroupCodec, VarColumn, var_column
from inferstack.interactions.coldrow import (
    HEADER_SIZE,
    ColdRowError,
    UnreadableEventError,
    decode_history,
    encode_history,
    merge,
    merge_many,
)

CLICK: dict[str, Any] = {
    "name": "click",
    "user": {"name": "user_id", "type": "int64"},
    "item": {"name": "product_id", "type": "int64"},
    "attributes": [
        {"name": "price", "type": "float32"},
        {"name": "source", "type": "string", "default": "web"},
    ],
}
QUANTITY = {"name": "quantity", "type": "int32", "default": 1}


def applied(spec: dict[str, Any], base: Registry | None = None) -> Registry:
    kind = InteractionType.model_validate(spec)
    return plan(base or Registry(), [], [], [], [kind]).registry


V1 = applied(CLICK)
V2 = applied({**CLICK, "attributes": [*CLICK["attributes"], QUANTITY]}, V1)
CODEC_V1 = GroupCodec(V1.interaction_types["click"].as_stored_group())
CODEC = GroupCodec(V2.interaction_types["click"].as_stored_group())


def events(
    *specs: tuple[str | bytes, int], codec: GroupCodec = CODEC, product: int = 7
) -> list[bytes]:
    """Event rows of (event id, ts) written by `codec`'s current version."""
    count = len(specs)
    ids = [name.encode() if isinstance(name, str) else name for name, _ in specs]
    columns: dict[str, np.ndarray[Any, Any] | VarColumn] = {
        "event_id": var_column(ids),
        "ts": np.array([ts for _, ts in specs], dtype=np.int64),
        "product_id": np.full(count, product, dtype=np.int64),
        "price": np.full(count, 9.5, dtype=np.float32),
        "source": var_column([b"app"] * count),
    }
    if "quantity" in codec.types:
        columns["quantity"] = np.full(count, 3, dtype=np.int32)
    return codec.current.encode(columns, count)


def event(event_id: str, ts: int, **options: Any) -> bytes:
    return events((event_id, ts), **options)[0]


def fixed(rows: list[bytes], name: str) -> list[Any]:
    column = CODEC.decode(rows, [name], 0.0).columns[name]
    assert not isinstance(column, VarColumn)
    return list(column.tolist())


def ids_of(rows: list[bytes]) -> list[str]:
    decoded = CODEC.decode(rows, ["event_id"], 0.0)
    column = decoded.columns["event_id"]
    assert isinstance(column, VarColumn)
    return [value.decode() for value in column.to_list()]


# --- the row format -----------------------------------------------------------------------


def test_round_trip_keeps_rows_and_order() -> None:
    rows = [event("a", 30), b"\x00", event("b", 20), b"x" * 70_000, event("c", 10)]
    blob = encode_history(rows)
    assert blob[:2] == b"IC" and blob[2] == 1 and blob[3] == 0
    assert struct.unpack_from("<I", blob, 4)[0] == len(rows)
    assert decode_history(blob) == rows
    assert decode_history(encode_history([])) == []


def test_decode_with_a_limit_returns_the_newest_only() -> None:
    rows = [event(str(n), 100 - n) for n in range(10)]
    blob = encode_history(rows)
    assert decode_history(blob, limit=3) == rows[:3]
    assert decode_history(blob, limit=0) == []
    assert decode_history(blob, limit=50) == rows


def _with_crc(blob: bytearray) -> bytes:
    """The blob with its checksum recomputed: a wrong shape a bad writer could produce."""
    struct.pack_into("<I", blob, 8, zlib.crc32(bytes(blob[HEADER_SIZE:])))
    return bytes(blob)


def _corrupt(blob: bytes, offset: int, value: int) -> bytes:
    changed = bytearray(blob)
    changed[offset] = value
    return bytes(changed)


VALID = encode_history([event("a", 2), event("b", 1)])


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than its 12-byte header"),
        (VALID[:11], "shorter than its 12-byte header"),
        (_corrupt(VALID, 0, ord("X")), "magic"),
        (_corrupt(VALID, 1, ord("D")), "magic"),
        (_corrupt(VALID, 2, 2), "format version 2"),
        (_corrupt(VALID, 2, 0), "format version 0"),
        (_corrupt(VALID, 3, 0x80), "unknown flags 0x80"),
        (_corrupt(VALID, 4, 3), "ends inside the length of event 2"),  # count 2 -> 3
        (_corrupt(VALID, 4, 1), "bytes after its 1 events"),  # count 2 -> 1
        (_corrupt(VALID, 8, VALID[8] ^ 0x01), "checksum"),
        (_corrupt(VALID, HEADER_SIZE + 9, VALID[HEADER_SIZE + 9] ^ 0x40), "checksum"),
        (VALID[:-1], "checksum"),  # torn write
        (VALID + b"\x00", "checksum"),
        (_with_crc(bytearray(VALID[:-1])), "ends inside event 1"),
        (_with_crc(bytearray(VALID + b"\x00")), "1 bytes after its 2 events"),
        # The first event's length made huge: it runs past the end of the row.
        (_with_crc(bytearray(VALID[:HEADER_SIZE]) + b"\xff\xff\xff\x7f" + VALID[16:]), "event 0"),
    ],
)
def test_corruption_is_detected(blob: bytes, message: str) -> None:
    with pytest.raises(ColdRowError, match=message) as caught:
        decode_history(blob)
    assert isinstance(caught.value, InferstackError)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_single_flipped_bit_is_detected(data: st.DataObject) -> None:
    bit = data.draw(st.integers(0, len(VALID) * 8 - 1))
    flipped = _corrupt(VALID, bit // 8, VALID[bit // 8] ^ (1 << bit % 8))
    with pytest.raises(ColdRowError):
        decode_history(flipped)


# --- merge --------------------------------------------------------------------------------


def test_merge_orders_newest_first_and_breaks_ties_by_event_id() -> None:
    existing = events(("m", 50), ("c", 10))
    new = events(("b", 50), ("z", 60), ("a", 50))
    merged = merge(existing, new, CODEC, 100, None)
    assert ids_of(merged) == ["z", "a", "b", "m", "c"]


def test_merge_removes_duplicates_and_prefers_the_cold_copy() -> None:
    cold_copy = event("x", 10, product=1)
    hot_copy = event("x", 10, product=2)  # same id, other content: the cold one stays
    merged = merge(
        [cold_copy, event("y", 5)], [hot_copy, event("y", 5), event("w", 1)], CODEC, 10, None
    )
    assert merged == [cold_copy, event("y", 5), event("w", 1)]
    # Even when the hot copy has another time, the cold copy decides.
    assert merge([cold_copy], [event("x", 99)], CODEC, 10, None) == [cold_copy]


def test_merge_trims_by_count_and_by_age() -> None:
    rows = events(*((f"e{n:02d}", 1000 + n) for n in range(20)))
    merged = merge(rows[:10], rows[10:], CODEC, 5, None)
    assert ids_of(merged) == ["e19", "e18", "e17", "e16", "e15"]
    # oldest_ts is inclusive.
    assert ids_of(merge(rows[:10], rows[10:], CODEC, 100, 1017)) == ["e19", "e18", "e17"]
    assert merge(rows, [], CODEC, 100, 5000) == []
    assert merge([], [], CODEC, 100, None) == []


def test_merge_decodes_each_batch_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, list[str]]] = []
    decode = CODEC.decode

    def counting(rows: Any, features: Any, now: float) -> Any:
        calls.append((len(rows), list(features)))
        return decode(rows, features, now)

    monkeypatch.setattr(CODEC, "decode", counting)
    merge(events(("a", 1), ("b", 2)), events(("c", 3), ("d", 4), ("e", 5)), CODEC, 10, None)
    assert calls == [(5, ["event_id", "ts"])]


def test_a_row_of_an_old_schema_version_survives_a_merge_unchanged() -> None:
    old = event("old", 10, codec=CODEC_V1)
    assert old not in events(("old", 10))  # the versions really differ
    merged = merge([old, event("mid", 20)], [event("new", 30)], CODEC, 10, None)
    assert merged == [event("new", 30), event("mid", 20), old]
    assert fixed(merged, "quantity") == [3, 3, 1]  # the old one reads the default


def test_a_corrupt_event_row_is_dropped_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    good = events(("a", 2), ("b", 1))
    broken = good[0][:-3]  # torn: shorter than its lengths say
    with caplog.at_level(logging.WARNING, logger="inferstack.interactions.coldrow"):
        merged = merge([good[1]], [broken, event("c", 0)], CODEC, 10, None)
    assert merged == [good[1], event("c", 0)]
    assert "dropping 1 corrupt event row(s) of interaction type 'click'" in caplog.text


def test_events_of_a_newer_schema_version_refuse_the_merge() -> None:
    newer = event("n", 5)  # version 2, merged by a process that only knows version 1
    with pytest.raises(UnreadableEventError, match=r"schema version 2, newer .* knows \(v1\)"):
        merge(events(("a", 1), codec=CODEC_V1), [newer], CODEC_V1, 10, None)


# --- merge properties ---------------------------------------------------------------------

#: Event ids with one fixed content each (a redelivered event is the same bytes).
POOL = {f"e{n}": event(f"e{n}", ts, product=n) for n, ts in enumerate([5, 5, 5, 1, 2, 8, 9, 3])}
POOL.update({f"f{n}": event(f"f{n}", 100 + n % 3) for n in range(8)})
ids = st.sampled_from(sorted(POOL))
limits = st.integers(1, 12)
ages = st.one_of(st.none(), st.integers(0, 110))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(ids, max_size=10, unique=True),
    st.lists(ids, max_size=14),
    limits,
    ages,
    st.randoms(use_true_random=False),
)
def test_merge_is_idempotent_and_ignores_the_order_of_new_rows(
    existing: list[str], new: list[str], count: int, oldest: int | None, random: Any
) -> None:
    a = [POOL[name] for name in existing]
    b = [POOL[name] for name in new]
    merged = merge(a, b, CODEC, count, oldest)
    assert merge(merged, b, CODEC, count, oldest) == merged
    shuffled = b.copy()
    random.shuffle(shuffled)
    assert merge(a, shuffled, CODEC, count, oldest) == merged
    # And it is what it says: the newest distinct events within retention, newest first.
    kept = {name: POOL[name] for name in {*existing, *new}}
    timestamps = dict(zip(kept, fixed(list(kept.values()), "ts"), strict=True))
    expected = sorted(
        (name for name in kept if oldest is None or timestamps[name] >= oldest),
        key=lambda name: (-timestamps[name], name),
    )[:count]
    assert ids_of(merged) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 4), st.integers(0, 2)), max_size=12),
    st.randoms(use_true_random=False),
)
def test_conflicting_new_copies_are_chosen_by_content_not_order(
    new: list[tuple[str, int, int]], random: Any
) -> None:
    rows = [event(event_id, ts, product=product) for event_id, ts, product in new]
    merged = merge([], rows, CODEC, 100, None)
    shuffled = rows.copy()
    random.shuffle(shuffled)
    assert merge([], shuffled, CODEC, 100, None) == merged
    assert sorted(ids_of(merged)) == sorted({event_id for event_id, _, _ in new})


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.binary(max_size=12), min_size=1, max_size=20, unique=True),
    st.booleans(),
)
def test_events_of_one_time_are_ordered_by_the_bytes_of_their_ids(
    names: list[bytes], with_a_long_id: bool
) -> None:
    # Ids that are prefixes of each other or end in NUL bytes, ranked with numpy; one id
    # longer than the vectorised ranking takes ranks them all in Python instead.
    if with_a_long_id:
        names = [*names, b"\x00" * 300]
    rows = events(*((name, 7) for name in names))
    merged = merge([], rows, CODEC, 100, None)
    assert [ids_of_bytes(row) for row in merged] == sorted(names)


def ids_of_bytes(row: bytes) -> bytes:
    column = CODEC.decode([row], ["event_id"], 0.0).columns["event_id"]
    assert isinstance(column, VarColumn)
    return column.data


user_events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d", "e", "f"]),
        st.integers(0, 5),
        st.integers(1, 3),  # product: copies of one id may differ in content
    ),
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(user_events, user_events), min_size=1, max_size=5),
    st.integers(1, 6),
    st.one_of(st.none(), st.integers(0, 4)),
)
def test_merge_many_equals_merge_user_by_user(
    users: list[tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]],
    retention: int,
    oldest: int | None,
) -> None:
    def rows(specs: list[tuple[str, int, int]]) -> list[bytes]:
        return [event(name, ts, product=product) for name, ts, product in specs]

    pairs = [(rows(existing), rows(new)) for existing, new in users]
    expected = [merge(existing, new, CODEC, retention, oldest) for existing, new in pairs]
    assert merge_many(pairs, CODEC, retention, oldest) == expected
