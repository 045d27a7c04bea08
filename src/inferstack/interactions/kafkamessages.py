"""Kafka messages of interaction events: topic names and the message format, decoded
without any Kafka library (interactions/kafka.py consumes them).

Topics are named `<prefix><type>` (prefix "interactions." by default, `topics_for`).

Message value: one event as a JSON object, or a JSON array of such objects (batched
producers; `encode_events` writes either):

    {"event_id": "c-81f3a", "user_id": 42, "product_id": 1001, "ts": 1718000000000,
     "price": 19.99, "source": "search"}

    event_id     required, a non-empty string unique per event: a redelivered event is
                 stored once (the hot tier de-duplicates by it)
    <user key>   required, named and typed as the type's user key in the definitions
    <item key>   required, named and typed as the type's item key
    ts           required, the event's time in unix milliseconds (an integer)
    <attribute>  optional, one of the type's attributes; absent or null reads its default.
                 A name the type does not declare refuses the event.

Integers may also come as decimal strings; a bytes attribute comes as a UTF-8 string.
The message key is not read: keying messages by user id keeps a user's events in order in
one partition, which is what producers should do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import EVENT_ID, TIMESTAMP, InteractionType
from inferstack.core.keys import parse_integer

DEFAULT_PREFIX = "interactions."
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # beyond any key or attribute type: malformed
Reason = Literal["malformed", "invalid"]


def topic_name(type_name: str, prefix: str = DEFAULT_PREFIX) -> str:
    name = f"{prefix}{type_name}"
    if not TOPIC_NAME.fullmatch(name):
        raise InvalidArgumentError(
            f"topic {name!r} is not a valid Kafka topic name ([A-Za-z0-9._-], 1-249 chars)"
        )
    return name


def topics_for(types: Iterable[str], prefix: str = DEFAULT_PREFIX) -> dict[str, str]:
    """{topic: type} with the default naming, for InteractionConsumer's `topics`."""
    return {topic_name(name, prefix): name for name in types}


def encode_events(events: Sequence[Mapping[str, Any]]) -> bytes:
    """A message value holding `events` (one object if there is one, else an array)."""
    body: Any = events[0] if len(events) == 1 else list(events)
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


@dataclass(slots=True)  # not frozen: one is made per message, and frozen costs time
class Source:
    """Where an event came from: a message, and its position if the message is an array."""

    topic: str
    partition: int
    offset: int
    index: int | None = None

    def __str__(self) -> str:
        where = f"{self.topic}[{self.partition}]@{self.offset}"
        return where if self.index is None else f"{where} event {self.index}"


@dataclass(slots=True)
class Event:
    type: str
    event_id: Any
    user: Any
    item: Any
    ts: Any
    attributes: dict[str, Any]
    source: Source


@dataclass(frozen=True, slots=True)
class Rejection:
    type: str
    source: Source
    reason: Reason
    message: str


class Layout:
    """What decoding needs to know about one interaction type."""

    def __init__(self, kind: InteractionType) -> None:
        self.type = kind.name
        self.user = kind.user.name
        self.item = kind.item.name
        self.required = (EVENT_ID, self.user, self.item, TIMESTAMP)
        self.bytes_attributes = {a.name for a in kind.attributes if a.type.base == "bytes"}
        # Integer fields and their ranges: an event is checked on its own here, because a
        # column mixing e.g. -1 and 2**64 - 1 makes numpy raise OverflowError, not a refusal.
        typed = [(kind.user.name, kind.user.type), (kind.item.name, kind.item.type)]
        typed += [(a.name, a.type) for a in kind.attributes]
        self.integers: dict[str, tuple[str, int, int]] = {TIMESTAMP: ("int64", -(2**63), 2**63 - 1)}
        for name, field_type in typed:
            dtype = field_type.scalar_dtype
            if field_type.base != "bool" and dtype.kind in "iu":
                info = np.iinfo(dtype)
                self.integers[name] = (str(field_type), int(info.min), int(info.max))


def decode_message(value: bytes | None, layout: Layout, source: Source) -> list[Event | Rejection]:
    """The events a message value holds; what cannot be an event becomes a Rejection."""
    if not value:
        return [Rejection(layout.type, source, "malformed", "empty message")]
    try:
        body = json.loads(value)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, absurd nesting
        return [Rejection(layout.type, source, "malformed", f"not JSON: {exc}")]
    if isinstance(body, list):
        return [
            decode_event(item, layout, Source(source.topic, source.partition, source.offset, i))
            for i, item in enumerate(body)
        ]
    return [decode_event(body, layout, source)]


def decode_event(body: Any, layout: Layout, source: Source) -> Event | Rejection:
    """Structure only (an object, required fields, scalar values); ingest checks the types."""
    if type(body) is not dict:
        return Rejection(
            layout.type,
            source,
            "malformed",
            f"an event must be a JSON object, got {type(body).__name__}",
        )
    required = layout.required
    fixed: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, value in body.items():
        kind = type(value)  # exact types: this runs for every field of every event
        if kind is dict or kind is list:
            got = "an object" if kind is dict else "an array"
            return Rejection(
                layout.type, source, "malformed", f"field '{name}' must be one value, got {got}"
            )
        limits = layout.integers.get(name)
        if limits is not None and (kind is int or kind is str):
            value = _integer(value)
            if type(value) is int and not limits[1] <= value <= limits[2]:
                return Rejection(
                    layout.type,
                    source,
                    "invalid",
                    f"field '{name}' value {value} is outside the range of {limits[0]}",
                )
        elif kind is int and not INT_MIN <= value <= INT_MAX:
            return Rejection(
                layout.type,
                source,
                "malformed",
                f"field '{name}' value {value} is outside every integer type",
            )
        if value is None:  # an attribute left out: it reads its default
            continue
        if name in required:
            fixed[name] = value
        elif kind is str and name in layout.bytes_attributes:
            attributes[name] = value.encode("utf-8")
        else:
            attributes[name] = value
    if len(fixed) < len(required):
        missing = ", ".join(f"'{name}'" for name in required if name not in fixed)
        return Rejection(layout.type, source, "malformed", f"missing field {missing}")
    return Event(
        layout.type,
        fixed[EVENT_ID],
        fixed[layout.user],
        fixed[layout.item],
        fixed[TIMESTAMP],
        attributes,
        source,
    )


def _integer(value: int | str) -> int | str:
    """Integers may come as decimal text; what does not parse is left for ingest to refuse."""
    if type(value) is str:
        parsed = parse_integer(value)
        return value if parsed is None else parsed
    return value


def event_batches(events: Sequence[Event]) -> list[EventBatch]:
    """Events as column batches: one per type and set of attributes present (so every
    column has a value per event; absent attributes read their defaults)."""
    groups: dict[tuple[str, tuple[str, ...]], list[Event]] = {}
    for event in events:
        key = (event.type, tuple(sorted(event.attributes)))
        groups.setdefault(key, []).append(event)
    return [
        EventBatch(
            type=type_name,
            event_ids=[e.event_id for e in group],
            users=[e.user for e in group],
            items=[e.item for e in group],
            timestamps=[e.ts for e in group],
            attributes={name: [e.attributes[name] for e in group] for name in names},
        )
        for (type_name, names), group in groups.items()
    ]
