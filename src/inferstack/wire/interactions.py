"""Conversions between inferstack.interactions.v1 messages and Python values; shared by the
server and the client.

Users and items travel as the feature store's `KeyColumn`, attributes and history columns as
its `Column`, so those conversions are `wire/columns.py`'s; this module adds the
envelopes (event batches, Get, Hydrate, Sweep) and the checks that need the interaction types.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np

from inferstack.core import limits
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.events import EventBatch, History
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.keys import KeyValues, parse_integer
from inferstack.core.rowformat import Column
from inferstack.core.types import FeatureType
from inferstack.proto.featurestore.v1 import featurestore_pb2 as fpb
from inferstack.proto.interactions.v1 import interactions_pb2 as pb
from inferstack.wire.columns import (
    column_from_proto,
    column_to_proto,
    keys_from_proto,
    keys_to_proto,
)

MAX_SWEEP_LIMIT = 100_000
# Unix milliseconds below this are 1973 or earlier: almost surely seconds given by mistake.
MIN_PLAUSIBLE_MS = 10**11
MAX_MS = 2**63 - 1  # event times are int64 milliseconds


class InteractionCatalog(Protocol):
    """What the codecs need of the interaction types in use: their key names."""

    @property
    def types(self) -> Mapping[str, InteractionType]: ...


# ---- values shared by every surface -----------------------------------------------------------


def since_ms(value: str | int) -> int:
    """A lower time bound as unix milliseconds, from unix ms (number or digits) or an ISO 8601
    date or time (without an offset it is UTC): "2024-05-01", "2024-05-01T10:30:00+02:00"."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"since must be unix milliseconds or an ISO date, got {value}")
    text = str(value).strip()
    ms = value if isinstance(value, int) else parse_integer(text)
    if ms is not None:
        if ms < MIN_PLAUSIBLE_MS:
            raise InvalidArgumentError(
                f"since {ms} is not unix milliseconds (seconds? multiply by 1000)"
            )
        if ms > MAX_MS:
            raise InvalidArgumentError(f"since {ms} is beyond any time we store")
        return ms
    if text.lstrip("-").isdigit():  # digits of other scripts, or more than any time has
        raise InvalidArgumentError(
            f"since must be unix milliseconds in ASCII digits, got {len(text)} characters"
        )
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgumentError(
            f"since '{text}' is neither unix milliseconds nor an ISO 8601 date or time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def sweep_limit(limit: int) -> int | None:
    """The users one sweep may move; 0 means the service's default (None)."""
    if not 0 <= limit <= MAX_SWEEP_LIMIT:
        raise InvalidArgumentError(f"limit must be 1..{MAX_SWEEP_LIMIT}, got {limit}")
    return limit or None


def check_types(types: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    for name in types:
        if name in seen:
            raise InvalidArgumentError(f"interaction type '{name}' is asked for twice")
        seen.add(name)
    return list(types)


def user_column(user: Any) -> fpb.KeyColumn:
    """One user as an unnamed key column: the server reads it as each type's user key."""
    if isinstance(user, np.ndarray) or (isinstance(user, Sequence) and not isinstance(user, str)):
        raise TypeError(f"give one user, not a list: {user!r}")
    return keys_to_proto({"": [user]})[0]


def one_user(column: fpb.KeyColumn, catalog: InteractionCatalog, types: Sequence[str]) -> Any:
    """The one user value of a request; a named column must be named after the user key of
    every type asked for."""
    _check_key_name(column.name, "user", user_keys(catalog, types))
    (values,) = keys_from_proto([column]).values()
    if len(values) != 1:
        raise InvalidArgumentError(f"user: give exactly one value, got {len(values)}")
    value = values[0]
    return value.item() if isinstance(value, np.generic) else value


def user_keys(catalog: InteractionCatalog, types: Sequence[str]) -> list[str]:
    """The user key names of the known types asked for (every type when none is)."""
    return [catalog.types[t].user.name for t in types or catalog.types if t in catalog.types]


def _check_key_name(name: str, role: str, expected: Sequence[str], where: str = "") -> None:
    wrong = [key for key in expected if key != name]
    if name and wrong:
        raise InvalidArgumentError(
            f"{where}{role} column is named '{name}', but the interaction type's {role} key "
            f"is '{wrong[0]}'"
        )


# ---- Ingest ---------------------------------------------------------------------------------


def batch_to_proto(
    batch: EventBatch, attributes: Mapping[str, fpb.Column], message: pb.EventBatch
) -> None:
    """Fill `message` from a batch whose attributes the caller has already turned into
    columns (the client infers their types from numpy dtypes)."""
    message.type = batch.type
    message.event_ids.extend(batch.event_ids)
    message.user.CopyFrom(keys_to_proto({"": batch.users})[0])
    message.item.CopyFrom(keys_to_proto({"": batch.items})[0])
    message.timestamps.extend(np.asarray(batch.timestamps, dtype=np.int64).tolist())
    message.attributes.extend(attributes.values())


def batches_from_proto(
    messages: Sequence[pb.EventBatch], catalog: InteractionCatalog
) -> list[EventBatch]:
    """The request's batches; errors name the batch. Values are checked by the service."""
    limits.check(len(messages), limits.MAX_EVENT_BATCHES, "event batches")
    limits.check(sum(len(m.event_ids) for m in messages), limits.MAX_EVENTS, "events")
    return [_batch_from_proto(m, catalog, f"batch {i}") for i, m in enumerate(messages)]


def _batch_from_proto(
    message: pb.EventBatch, catalog: InteractionCatalog, where: str
) -> EventBatch:
    kind = catalog.types.get(message.type)  # an unknown type: the service names it
    users = _key_values(message.user, "user", kind.user.name if kind else None, where)
    items = _key_values(message.item, "item", kind.item.name if kind else None, where)
    declared = {a.name: a.type for a in kind.attributes} if kind else {}
    attributes: dict[str, Column] = {}
    for column in message.attributes:
        if column.name in attributes:
            raise InvalidArgumentError(f"{where}: field '{column.name}' is given twice")
        attributes[column.name] = _attribute(column, declared.get(column.name), where)
    return EventBatch(
        type=message.type,
        event_ids=list(message.event_ids),
        users=users,
        items=items,
        timestamps=np.array(message.timestamps, dtype=np.int64),
        attributes=attributes,
    )


def _key_values(column: fpb.KeyColumn, role: str, expected: str | None, where: str) -> KeyValues:
    _check_key_name(column.name, role, [expected] if expected else [], f"{where}: ")
    try:
        (values,) = keys_from_proto([column]).values()
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{where}: {role}s: {exc}") from exc
    return values


def _attribute(column: fpb.Column, declared: FeatureType | None, where: str) -> Column:
    try:
        sent, values = column_from_proto(column)
        if sent.length:
            raise InvalidArgumentError(f"field '{column.name}': vectors are not supported")
        if declared is not None and sent.is_variable and declared.is_variable and sent != declared:
            # string <-> bytes: decode again as the declared type (checks UTF-8 for strings)
            retyped = fpb.Column(
                name=column.name, type=str(declared), values=column.values, lengths=column.lengths
            )
            _, values = column_from_proto(retyped)
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"{where}: {exc}") from exc
    return values


# ---- Get, Hydrate, Sweep -------------------------------------------------------------------


def get_to_proto(
    user: Any, types: Sequence[str] = (), limit: int | None = None, since: int | None = None
) -> pb.GetRequest:
    return pb.GetRequest(
        user=user_column(user), types=list(types), limit=limit or 0, since=since or 0
    )


def get_from_proto(
    request: pb.GetRequest, catalog: InteractionCatalog
) -> tuple[Any, list[str], int | None, int | None]:
    """(user, types, limit, since) as the service takes them; 0 means unset."""
    types = check_types(request.types)
    if request.since < 0:
        raise InvalidArgumentError(f"since must be unix milliseconds, got {request.since}")
    return (
        one_user(request.user, catalog, types),
        types,
        request.limit or None,
        request.since or None,
    )


def histories_to_proto(histories: Sequence[History]) -> pb.GetResponse:
    response = pb.GetResponse()
    for history in histories:
        message = response.histories.add(type=history.type, count=history.count, hot=history.hot)
        message.columns.extend(
            column_to_proto(name, history.types[name], history.columns[name])
            for name in ordered_columns(history)
        )
    return response


def ordered_columns(history: History) -> list[str]:
    """event_id, ts, the item, then the attributes: the type's layout order."""
    return [name for name in history.types if name in history.columns]


def hydrate_to_proto(user: Any, types: Sequence[str] = ()) -> pb.HydrateRequest:
    return pb.HydrateRequest(user=user_column(user), types=list(types))


def hydrate_from_proto(
    request: pb.HydrateRequest, catalog: InteractionCatalog
) -> tuple[Any, list[str]]:
    types = check_types(request.types)
    return one_user(request.user, catalog, types), types
