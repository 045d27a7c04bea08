"""Event batches: checked against their interaction type, encoded as rows, decoded back.

A batch holds events of one type column by column (ids, users, items, times, attributes),
the way they travel on the wire. Checking happens for the whole request before anything is
written, so a request is stored whole or not at all; every error names the field and, where
one event is at fault, its index in the batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.core.definitions import Entity
from inferstack.core.errors import InvalidArgumentError, NotFoundError
from inferstack.core.events import EventBatch, History
from inferstack.core.interactiontypes import EVENT_ID, TIMESTAMP, InteractionType
from inferstack.core.keys import KeyValues, coerce_values, encode_keys
from inferstack.core.registry import Registry
from inferstack.core.rowformat import Column, GroupCodec, VarColumn, var_column
from inferstack.core.types import FeatureType

MAX_FUTURE_MS = 5 * 60 * 1000  # clocks drift; events from further ahead are refused
MAX_EVENT_ID_BYTES = 256
TS_TYPE = FeatureType("int64")


@dataclass(frozen=True)
class EncodedEvents:
    """A checked batch: per event its encoded user, time and row."""

    type: InteractionType
    users: list[bytes]
    timestamps: npt.NDArray[np.int64]
    rows: list[bytes]


class InteractionCatalog:
    """The interaction types of one registry, with their codecs; immutable."""

    def __init__(self, registry: Registry) -> None:
        self.revision = registry.revision
        self.types = {
            name: stored.definition for name, stored in registry.interaction_types.items()
        }
        self.codecs = {
            name: GroupCodec(stored.as_stored_group())
            for name, stored in registry.interaction_types.items()
        }
        # A one-key entity per type, so users encode exactly like entity keys do.
        self._user_entities = {
            name: Entity(name=name, keys=[kind.user]) for name, kind in self.types.items()
        }

    def type(self, name: str) -> InteractionType:
        found = self.types.get(name)
        if found is None:
            known = ", ".join(sorted(self.types)) or "none defined"
            raise NotFoundError(f"unknown interaction type '{name}' (types: {known})")
        return found

    def encode_users(self, type_name: str, users: KeyValues) -> list[bytes]:
        kind = self.type(type_name)
        return encode_keys(self._user_entities[type_name], {kind.user.name: users})


def encode_batch(
    catalog: InteractionCatalog, batch: EventBatch, where: str, now_ms: int | None = None
) -> EncodedEvents:
    """Check one batch and encode its events; `where` prefixes errors ("batch 2")."""
    kind = _type_of(catalog, batch.type, where)
    count = len(batch.event_ids)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    columns: dict[str, Column] = {EVENT_ID: _event_ids(batch.event_ids, where)}
    users = _column(where, kind.user.name, kind.user.type, batch.users, count)
    columns[kind.item.name] = _key_column(
        _column(where, kind.item.name, kind.item.type, batch.items, count), kind.item.type
    )
    stamps = np.asarray(_column(where, TIMESTAMP, TS_TYPE, batch.timestamps, count), np.int64)
    _check_times(stamps, now_ms, where)
    columns[TIMESTAMP] = stamps
    declared = {a.name: a for a in kind.attributes}
    for name in batch.attributes:
        if name not in declared:
            raise InvalidArgumentError(
                f"{where}: interaction type '{kind.name}' has no field '{name}' "
                f"(fields: {', '.join(kind.field_names)})"
            )
    codec = catalog.codecs[kind.name]
    for name, attribute in declared.items():
        given = batch.attributes.get(name)
        if given is None:  # attributes are optional: they read as their defaults
            columns[name] = _defaults(codec, name, count)
        else:
            columns[name] = _attribute(where, name, attribute.type, given, count)
    rows = codec.current.encode(columns, count)
    encoded_users = catalog.encode_users(kind.name, users)
    return EncodedEvents(kind, encoded_users, stamps, rows)


def decode_rows(catalog: InteractionCatalog, type_name: str, rows: Sequence[bytes]) -> History:
    codec = catalog.codecs[type_name]
    names = list(codec.types)
    decoded = codec.decode(rows, names, time.time())
    return History(type_name, len(rows), decoded.columns, dict(codec.types))


def _type_of(catalog: InteractionCatalog, name: str, where: str) -> InteractionType:
    try:
        return catalog.type(name)
    except NotFoundError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from exc


def _event_ids(ids: Sequence[str], where: str) -> VarColumn:
    ids = ids if isinstance(ids, list) else list(ids)
    column = _utf8_column(ids)
    if column is not None and not np.any(
        (column.lengths == 0) | (column.lengths > MAX_EVENT_ID_BYTES)
    ):
        return column
    # Name the first event at fault: check the ids one by one (error path only).
    for index, value in enumerate(ids):
        if not isinstance(value, str) or not value:
            raise InvalidArgumentError(f"{where}, event {index}: {EVENT_ID} is missing or empty")
        if len(value.encode("utf-8")) > MAX_EVENT_ID_BYTES:
            raise InvalidArgumentError(
                f"{where}, event {index}: {EVENT_ID} is longer than {MAX_EVENT_ID_BYTES} bytes"
            )
    raise AssertionError("an event id was refused, but none is at fault")


def _utf8_column(values: list[Any]) -> VarColumn | None:
    """Strings as one column of UTF-8 values, for the whole batch at once; None if a value is
    not a str (or cannot be encoded), for the caller to name it."""
    if not set(map(type, values)) <= {str} and not all(isinstance(v, str) for v in values):
        return None
    text = "".join(values)
    if text.isascii():  # the common case: a character is a byte
        lengths = np.fromiter(map(len, values), dtype=np.uint32, count=len(values))
        return VarColumn(lengths, text.encode("ascii"))
    try:
        return var_column([value.encode("utf-8") for value in values])
    except UnicodeEncodeError:  # a lone surrogate (JSON can carry one)
        return None


def _column(
    where: str, name: str, key_type: FeatureType, values: KeyValues, count: int
) -> npt.NDArray[Any] | list[str]:
    if len(values) != count:
        raise InvalidArgumentError(
            f"{where}: field '{name}' has {len(values)} values for {count} events"
        )
    try:
        return coerce_values(f"{where}: field '{name}'", key_type, values)
    except InvalidArgumentError:
        # Name the first event at fault: check the values one by one (error path only).
        for index, value in enumerate(values):
            try:
                coerce_values("", key_type, [value])
            except InvalidArgumentError:
                raise InvalidArgumentError(
                    f"{where}, event {index}: field '{name}' is {key_type}, got {value!r}"
                ) from None
        raise


def _key_column(values: npt.NDArray[Any] | list[str], key_type: FeatureType) -> Column:
    if isinstance(values, list):
        return var_column([value.encode("utf-8") for value in values])
    return values.astype(key_type.storage_dtype, copy=False)


def _check_times(stamps: npt.NDArray[np.int64], now_ms: int, where: str) -> None:
    if not len(stamps):
        return
    future = np.flatnonzero(stamps > now_ms + MAX_FUTURE_MS)
    if len(future):
        index = int(future[0])
        raise InvalidArgumentError(
            f"{where}, event {index}: {TIMESTAMP} {int(stamps[index])} is more than 5 minutes "
            "in the future (unix milliseconds expected)"
        )
    negative = np.flatnonzero(stamps < 0)
    if len(negative):
        raise InvalidArgumentError(
            f"{where}, event {int(negative[0])}: {TIMESTAMP} must not be negative"
        )


def _defaults(codec: GroupCodec, name: str, count: int) -> Column:
    feature_type, default = codec.types[name], codec.defaults[name]
    if feature_type.is_variable:
        raw = default.encode() if isinstance(default, str) else default
        return VarColumn(np.full(count, len(raw), dtype=np.uint32), raw * count)
    values = np.empty(count, dtype=feature_type.storage_dtype)
    values[...] = default
    return values


def _attribute(
    where: str, name: str, feature_type: FeatureType, given: Column | Sequence[Any], count: int
) -> Column:
    if feature_type.is_variable:
        if isinstance(given, VarColumn):
            if len(given.lengths) != count:
                raise InvalidArgumentError(
                    f"{where}: field '{name}' has {len(given.lengths)} values for {count} events"
                )
            return given
        items = list(given) if not isinstance(given, np.ndarray) else given.tolist()
        if len(items) != count:
            raise InvalidArgumentError(
                f"{where}: field '{name}' has {len(items)} values for {count} events"
            )
        if feature_type.base == "string":
            column = _utf8_column(items)
            if column is not None:
                return column
        elif set(map(type, items)) <= {bytes}:
            return var_column(items)
        # Name the first event at fault: check the values one by one (error path only).
        encoded: list[bytes] = []
        for index, value in enumerate(items):
            if feature_type.base == "string" and isinstance(value, str):
                encoded.append(value.encode("utf-8"))
            elif feature_type.base == "bytes" and isinstance(value, bytes):
                encoded.append(value)
            else:
                raise InvalidArgumentError(
                    f"{where}, event {index}: field '{name}' is {feature_type}, got {value!r}"
                )
        return var_column(encoded)
    if isinstance(given, VarColumn):
        raise InvalidArgumentError(f"{where}: field '{name}' is {feature_type}, got strings")
    array = np.asarray(given)
    if array.shape != (count,):
        raise InvalidArgumentError(
            f"{where}: field '{name}' has {len(array)} values for {count} events"
        )
    target = feature_type.storage_dtype
    if feature_type.base == "bool":
        if array.dtype != np.bool_:
            raise InvalidArgumentError(f"{where}: field '{name}' is bool, got {array.dtype}")
        return array.astype(target)
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and target.kind in "iu"):
        # Name the first value at fault as it was given (numpy has converted them all).
        given_values = given.tolist() if isinstance(given, np.ndarray) else list(given)
        whole = target.kind in "iu"
        bad = next(
            (
                i
                for i, v in enumerate(given_values)
                if isinstance(v, bool)
                or not isinstance(v, int | float)
                or (whole and isinstance(v, float) and not v.is_integer())
            ),
            0,
        )
        raise InvalidArgumentError(
            f"{where}, event {bad}: field '{name}' is {feature_type}, got {given_values[bad]!r}"
        )
    if target.kind in "iu" and len(array):
        info = np.iinfo(target)
        outside = np.flatnonzero((array < info.min) | (array > info.max))
        if len(outside):
            index = int(outside[0])
            raise InvalidArgumentError(
                f"{where}, event {index}: field '{name}' value {array[index]} is outside "
                f"the range of {feature_type}"
            )
    return array.astype(target)
