"""Interaction events from a real Kafka (scripts/services.py) into the interaction store:
batches, commits only after ingest, a killed consumer replaced without loss, retries while the
hot tier is away, and poison messages skipped and counted.

`ingest` is `Recorder`: InteractionService.ingest on the embedded LMDB tiers, which also notes
every batch it stored, so the tests see exactly which events arrived and how often; it can be
told to fail first, as if the hot tier were away. What the store holds is read back with
InteractionService.get.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import REGISTRY

from inferstack.core.documents import DefinitionsFile
from inferstack.core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import VarColumn
from inferstack.interactions.cold.lmdb import LmdbColdStore
from inferstack.interactions.events import InteractionCatalog, encode_batch
from inferstack.interactions.hot.lmdb import LmdbHotTier
from inferstack.interactions.kafka import InteractionConsumer
from inferstack.interactions.kafkamessages import (
    Event,
    Layout,
    Rejection,
    Source,
    decode_message,
    encode_events,
    event_batches,
    topics_for,
)
from inferstack.interactions.service import InteractionService

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]
TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes:
      - {name: price, type: float32}
      - {name: source, type: string, default: web}
  - name: order
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes: [{name: quantity, type: int32}]
"""
NO_OFFSET = -1001  # librdkafka: nothing committed for this partition
# A replacement joins as soon as the killed member's session expires (the broker's minimum).
FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}
NOW_MS = int(time.time() * 1000)


def catalog() -> InteractionCatalog:
    return InteractionCatalog(registry())


def registry() -> Registry:
    parsed = DefinitionsFile.model_validate(yaml.safe_load(TYPES))
    return plan(Registry(), [], [], [], parsed.interaction_types).registry


async def open_service(path: Path) -> InteractionService:
    """The interaction store on the embedded tiers (LMDB) under `path`."""
    stored = registry()
    cold = LmdbColdStore(path / "cold")
    await cold.prepare(stored)
    return InteractionService(LmdbHotTier(path / "hot"), cold, InteractionCatalog(stored))


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[InteractionService]:
    opened = await open_service(tmp_path / "store")
    yield opened
    await opened.close()


async def stored_ids(
    service: InteractionService, type_name: str, users: Iterable[int]
) -> list[str]:
    """Every event id the store holds for these users, as often as it holds it."""
    ids: list[str] = []
    for user in users:
        (history,) = await service.get(user, [type_name], limit=10_000)
        column = history.columns["event_id"]
        assert isinstance(column, VarColumn)
        ids.extend(value.decode() for value in column.to_list())
    return ids


class Recorder:
    """InteractionService.ingest that notes the events of every batch it stored."""

    def __init__(
        self, service: InteractionService, unavailable: int = 0, lost_acks: int = 0
    ) -> None:
        self.service = service
        self.unavailable = unavailable  # the first calls raise UnavailableError
        self.lost_acks = lost_acks  # then calls store, and raise UnavailableError after
        self.calls = 0
        self.events: list[dict[str, Any]] = []
        self.before_call: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, batches: list[EventBatch]) -> int:
        self.calls += 1
        if self.before_call is not None:
            await self.before_call()
        if self.unavailable:
            self.unavailable -= 1
            raise UnavailableError("hot tier at 127.0.0.1:1 does not answer")
        stored = await self.service.ingest(batches)
        if self.lost_acks:  # stored, but the answer never came back (a connection lost)
            self.lost_acks -= 1
            raise UnavailableError("hot tier at 127.0.0.1:1 went away while answering")
        for batch in batches:
            columns = cast(dict[str, list[Any]], batch.attributes)  # the consumer sends lists
            for i, event_id in enumerate(batch.event_ids):
                event = {
                    "type": batch.type,
                    "event_id": event_id,
                    "user_id": batch.users[i],
                    "product_id": batch.items[i],
                    "ts": batch.timestamps[i],
                }
                event.update({name: values[i] for name, values in columns.items()})
                self.events.append(event)
        return stored

    @property
    def ids(self) -> list[str]:
        return [event["event_id"] for event in self.events]


def definitions(name: str) -> InteractionType:
    return catalog().type(name)


def make_consumer(
    endpoint: str,
    group: str,
    topics: dict[str, str],
    ingest: Recorder,
    partitions: int = 3,
    batch_size: int = 5000,
    lookup: Callable[[str], InteractionType] = definitions,
) -> InteractionConsumer:
    return InteractionConsumer(
        endpoint,
        group,
        topics,
        ingest,
        lookup,
        batch_size=batch_size,
        poll_timeout=0.1,
        retry_backoff=0.05,
        partitions=partitions,
        consumer_config=FAST_GROUP,
    )


@pytest.fixture
def names(kafka_endpoint: str) -> Iterator[dict[str, str]]:
    """Fresh topic names for this test ({topic: type}) and a group id; topics deleted after."""
    prefix = f"test-{uuid.uuid4().hex[:10]}.interactions."
    topics = topics_for(["click", "order"], prefix)
    yield topics
    admin = AdminClient({"bootstrap.servers": kafka_endpoint})
    futures = admin.delete_topics(list(topics), request_timeout=10)
    for future in futures.values():
        with contextlib.suppress(Exception):  # never created
            future.result(timeout=15)


@pytest.fixture
def group() -> str:
    return f"test-group-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def running(consumer: InteractionConsumer) -> AsyncIterator[InteractionConsumer]:
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.05)


def click(i: int, user: int | None = None) -> dict[str, Any]:
    return {
        "event_id": f"c-{i}",
        "user_id": user if user is not None else i % 37,
        "product_id": 1000 + i,
        "ts": NOW_MS - 60_000 + i,
        "price": i / 4,
        "source": "search" if i % 2 else "home",
    }


def order(i: int) -> dict[str, Any]:
    return {
        "event_id": f"o-{i}",
        "user_id": i % 37,
        "product_id": 2000 + i,
        "ts": NOW_MS - 60_000 + i,
        "quantity": 1 + i % 3,
    }


def produce(
    endpoint: str, topic: str, values: Sequence[bytes | None], keys: Sequence[str] | None = None
) -> list[tuple[int, int]]:
    """Produce and wait for every delivery; (partition, offset) of each message in order."""
    producer = Producer({"bootstrap.servers": endpoint, "linger.ms": 5})
    placed: dict[int, tuple[int, int]] = {}
    errors: list[str] = []

    def delivered(index: int, error: Any, message: Any) -> None:
        if error is not None:
            errors.append(str(error))
        else:
            placed[index] = (message.partition(), message.offset())

    for index, value in enumerate(values):
        key = keys[index] if keys is not None else None
        producer.produce(
            topic, value=value, key=key, on_delivery=functools.partial(delivered, index)
        )
        producer.poll(0)
    assert producer.flush(30) == 0
    assert errors == []
    return [placed[i] for i in range(len(values))]


def committed(endpoint: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of `topic` (NO_OFFSET if none)."""
    probe = Consumer(
        {"bootstrap.servers": endpoint, "group.id": group, "enable.auto.commit": False}
    )
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        found = probe.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in found}
    finally:
        probe.close()


def ends(endpoint: str, topic: str) -> dict[int, int]:
    """The high watermark (next offset) of every partition of `topic`."""
    probe = Consumer({"bootstrap.servers": endpoint, "group.id": "watermarks"})
    try:
        partitions = probe.list_topics(topic, timeout=10).topics[topic].partitions
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
    finally:
        probe.close()


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def create_topics(topics: dict[str, str], endpoint: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": endpoint})
    futures = admin.create_topics([NewTopic(t, partitions, 1) for t in topics])
    for future in futures.values():
        future.result(timeout=30)


# --- pure logic: decoding and columns ------------------------------------------------------


def test_messages_decode_to_events_and_group_into_column_batches() -> None:
    layout = Layout(definitions("click"))
    source = Source("t", 0, 7)
    single = decode_message(encode_events([click(1)]), layout, source)
    several = decode_message(
        json.dumps([click(2), {**click(3), "price": None}, [1]]).encode(), layout, source
    )
    assert len(single) == 1 and not isinstance(single[0], Rejection)
    assert single[0].source == source and single[0].attributes == {
        "price": 0.25,
        "source": "search",
    }
    bad = several[2]
    assert isinstance(bad, Rejection) and bad.reason == "malformed"
    assert str(bad.source) == "t[0]@7 event 2" and "JSON object, got list" in bad.message
    events = [e for e in [*single, *several] if not isinstance(e, Rejection)]
    batches = event_batches(events)
    # price absent (null) in one event: it travels in its own batch and reads the default.
    assert [(b.type, list(b.event_ids), sorted(b.attributes)) for b in batches] == [
        ("click", ["c-1", "c-2"], ["price", "source"]),
        ("click", ["c-3"], ["source"]),
    ]
    assert list(batches[0].users) == [1, 2] and list(batches[0].timestamps) == [
        NOW_MS - 59_999,
        NOW_MS - 59_998,
    ]
    for index, batch in enumerate(batches):
        encode_batch(catalog(), batch, f"batch {index}")  # the service accepts them


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"", "empty message"),
        (b"{oops", "not JSON"),
        (b'"click"', "JSON object, got str"),
        (json.dumps({"event_id": "x", "user_id": 1}).encode(), "'product_id', 'ts'"),
        (
            json.dumps({**click(1), "price": {"eur": 1}}).encode(),
            "'price' must be one value, got an object",
        ),
        (json.dumps({**click(1), "price": 2**70}).encode(), "outside every integer type"),
    ],
)
def test_malformed_messages_are_rejections_that_say_why(value: bytes, message: str) -> None:
    (decoded,) = decode_message(value, Layout(definitions("click")), Source("t", 2, 9))
    assert isinstance(decoded, Rejection) and decoded.reason == "malformed"
    assert message in decoded.message and str(decoded.source) == "t[2]@9"


def test_integers_are_checked_against_their_types_one_event_at_a_time() -> None:
    # -1 and 2**64 - 1 in one int64 column would make numpy overflow rather than refuse.
    body = [
        {**click(1), "user_id": -1},
        {**click(2), "user_id": 2**64 - 1},
        {**click(3), "user_id": "7", "ts": str(NOW_MS)},  # integers as decimal text
        {**click(4), "user_id": " 7 "},  # not an integer as we read them: left for ingest
    ]
    first, second, third, fourth = decode_message(
        json.dumps(body).encode(), Layout(definitions("click")), Source("t", 0, 1)
    )
    assert isinstance(first, Event) and first.user == -1
    assert isinstance(second, Rejection) and second.reason == "invalid"
    assert (
        second.message == "field 'user_id' value 18446744073709551615 is outside the range of int64"
    )
    assert isinstance(third, Event) and (third.user, third.ts) == (7, NOW_MS)
    for index, batch in enumerate(event_batches([first, third])):
        encode_batch(catalog(), batch, f"batch {index}")
    assert isinstance(fourth, Event) and fourth.user == " 7 "
    (padded,) = event_batches([fourth])
    with pytest.raises(InvalidArgumentError, match="'user_id' is int64, got ' 7 '"):
        encode_batch(catalog(), padded, "batch 0")


# --- against the real Kafka ----------------------------------------------------------------


async def test_events_of_two_types_are_ingested_and_committed(
    kafka_endpoint: str, names: dict[str, str], group: str, service: InteractionService
) -> None:
    click_topic, order_topic = names
    clicks = [click(i) for i in range(600)]
    orders = [order(i) for i in range(400)]
    stored_before = counter("inferstack_interactions_kafka_stored_events_total", type="click")
    recorder = Recorder(service)
    # The consumer creates its topics (3 partitions each) before it joins the group.
    async with running(make_consumer(kafka_endpoint, group, names, recorder)) as consumer:
        # Producers batch: the clicks travel as arrays of 3, the orders one per message.
        click_values = [encode_events(clicks[i : i + 3]) for i in range(0, 600, 3)]
        await asyncio.to_thread(
            produce, kafka_endpoint, click_topic, click_values, [str(i) for i in range(200)]
        )
        await asyncio.to_thread(
            produce,
            kafka_endpoint,
            order_topic,
            [encode_events([o]) for o in orders],
            [str(o["user_id"]) for o in orders],
        )
        await wait_until(lambda: len(recorder.events) >= 1000, "1000 events")
        await wait_until(lambda: consumer.stats.messages >= 600, "the commits")
    assert not consumer.running

    assert sorted(recorder.ids) == sorted(e["event_id"] for e in clicks + orders)
    by_id = {event["event_id"]: event for event in recorder.events}
    assert by_id["c-7"] == {"type": "click", **clicks[7]}
    assert by_id["o-5"] == {"type": "order", **orders[5]}
    assert consumer.stats.stored == 1000 and consumer.stats.rejected == 0
    assert consumer.stats.messages == 200 + 400
    stored_after = counter("inferstack_interactions_kafka_stored_events_total", type="click")
    assert stored_after - stored_before == 600
    # The store holds each event once.
    assert sorted(await stored_ids(service, "click", range(37))) == sorted(
        c["event_id"] for c in clicks
    )
    assert sorted(await stored_ids(service, "order", range(37))) == sorted(
        o["event_id"] for o in orders
    )

    for topic in names:  # every partition committed to its end
        assert len(ends(kafka_endpoint, topic)) == 3
        assert await asyncio.to_thread(committed, kafka_endpoint, group, topic) == ends(
            kafka_endpoint, topic
        )
    # A new consumer of the group finds nothing left: the first thing it reads is new.
    await asyncio.to_thread(produce, kafka_endpoint, order_topic, [encode_events([order(999)])])
    after = Recorder(service)
    async with running(make_consumer(kafka_endpoint, group, names, after)):
        await wait_until(lambda: len(after.events) >= 1, "the new order")
    assert after.ids == ["o-999"]


CONSUMER_SCRIPT = """\
import asyncio, json, sys
from pathlib import Path
from inferstack.interactions.kafka import InteractionConsumer
from tests.integration.test_interactions_kafka import FAST_GROUP, definitions, open_service

endpoint, group, topics, store, out_path = sys.argv[1:6]
out = open(out_path, "a")

async def main():
    service = await open_service(Path(store))

    async def ingest(batches):
        stored = await service.ingest(batches)
        for batch in batches:
            out.write("".join(event_id + "\\n" for event_id in batch.event_ids))
        out.flush()  # in the kernel before ingest returns: survives SIGKILL
        # Slow to return: the kill most likely lands on a batch stored but not committed,
        # which the replacement then reads again.
        await asyncio.sleep(0.1)
        return stored

    consumer = InteractionConsumer(
        endpoint, group, json.loads(topics), ingest, definitions, batch_size=20,
        poll_timeout=0.1, consumer_config=FAST_GROUP,
    )
    await consumer.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_killed_consumer_is_replaced_from_the_committed_offsets(
    kafka_endpoint: str,
    names: dict[str, str],
    group: str,
    tmp_path: Path,
    service: InteractionService,
) -> None:
    click_topic = next(iter(names))
    topics = {click_topic: "click"}
    await asyncio.to_thread(create_topics, topics, kafka_endpoint, 3)
    clicks = [click(i) for i in range(2000)]
    placed = await asyncio.to_thread(
        produce,
        kafka_endpoint,
        click_topic,
        [encode_events([c]) for c in clicks],
        [str(c["user_id"]) for c in clicks],
    )
    at = {c["event_id"]: place for c, place in zip(clicks, placed, strict=True)}

    script, out = tmp_path / "consume.py", tmp_path / "ingested.txt"
    script.write_text(CONSUMER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [kafka_endpoint, group, json.dumps(topics), str(tmp_path / "store"), str(out)]
    process = subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=ROOT)
    try:

        def some_committed() -> bool:
            offsets = committed(kafka_endpoint, group, click_topic)
            return sum(max(o, 0) for o in offsets.values()) >= 100

        deadline = time.monotonic() + 90
        while not await asyncio.to_thread(some_committed):
            assert process.poll() is None, "the consumer process died by itself"
            assert time.monotonic() < deadline, "the consumer process committed nothing"
            await asyncio.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    done = await asyncio.to_thread(committed, kafka_endpoint, group, click_topic)
    resume = {p: max(offset, 0) for p, offset in done.items()}
    first = out.read_text().split()
    behind = {e for e, (p, offset) in at.items() if offset < resume[p]}
    ahead = {e for e, (p, offset) in at.items() if offset >= resume[p]}
    assert 0 < len(behind) < 2000, "killed before any commit, or after the last"
    assert behind <= set(first)  # every committed event had been ingested (at least once)

    replacement = Recorder(service)
    async with running(make_consumer(kafka_endpoint, group, topics, replacement)):
        await wait_until(lambda: len(replacement.events) >= len(ahead), "the rest of the events")
    # It started exactly at the committed offsets: nothing before them, everything after.
    assert len(replacement.ids) == len(ahead) and set(replacement.ids) == ahead
    assert set(first) | set(replacement.ids) == {c["event_id"] for c in clicks}  # no loss
    # Whatever was delivered twice, the store holds every event once.
    assert sorted(await stored_ids(service, "click", range(37))) == sorted(at)


async def test_ingest_unavailable_retries_the_same_events_and_commits_only_after(
    kafka_endpoint: str, names: dict[str, str], group: str, service: InteractionService
) -> None:
    order_topic = list(names)[1]
    topics = {order_topic: "order"}
    await asyncio.to_thread(create_topics, topics, kafka_endpoint, 2)
    orders = [order(i) for i in range(300)]
    await asyncio.to_thread(
        produce,
        kafka_endpoint,
        order_topic,
        [encode_events([o]) for o in orders],
        [str(o["user_id"]) for o in orders],
    )
    # The first call fails before storing; the second stores and then fails (its answer lost),
    # so the events it stored are delivered and ingested again.
    recorder = Recorder(service, unavailable=1, lost_acks=1)
    seen_committed: list[dict[int, int]] = []

    async def note_committed() -> None:
        if len(seen_committed) < 3:  # the two failing calls and the first that succeeds
            seen_committed.append(
                await asyncio.to_thread(committed, kafka_endpoint, group, order_topic)
            )

    recorder.before_call = note_committed
    retries_before = counter("inferstack_interactions_kafka_retries_total")
    async with running(make_consumer(kafka_endpoint, group, topics, recorder)) as consumer:
        await wait_until(lambda: len(set(recorder.ids)) >= 300, "every order")
        await wait_until(lambda: consumer.stats.messages >= 300, "the commits")

    assert sorted(set(recorder.ids)) == sorted(o["event_id"] for o in orders)
    assert recorder.unavailable == recorder.lost_acks == 0 and consumer.stats.retries == 2
    # Stored once each, though some were ingested twice.
    assert sorted(await stored_ids(service, "order", range(37))) == sorted(
        o["event_id"] for o in orders
    )
    assert counter("inferstack_interactions_kafka_retries_total") - retries_before == 2
    # Nothing was committed while ingest failed, nor before the first success returned.
    assert seen_committed == [{0: NO_OFFSET, 1: NO_OFFSET}] * 3
    assert await asyncio.to_thread(committed, kafka_endpoint, group, order_topic) == ends(
        kafka_endpoint, order_topic
    )


async def test_a_consumer_stopped_while_ingest_fails_commits_nothing(
    kafka_endpoint: str, names: dict[str, str], group: str, service: InteractionService
) -> None:
    order_topic = list(names)[1]
    topics = {order_topic: "order"}
    await asyncio.to_thread(create_topics, topics, kafka_endpoint, 1)
    orders = [order(i) for i in range(50)]
    await asyncio.to_thread(
        produce, kafka_endpoint, order_topic, [encode_events([o]) for o in orders]
    )
    failing = Recorder(service, unavailable=1_000_000)  # the hot tier never comes back
    async with running(make_consumer(kafka_endpoint, group, topics, failing)) as consumer:
        await wait_until(lambda: failing.calls >= 3, "three attempts")
    assert not consumer.running and failing.events == []
    assert consumer.stats.messages == 0 and consumer.stats.commits == 0
    assert await asyncio.to_thread(committed, kafka_endpoint, group, order_topic) == {0: NO_OFFSET}
    # Nothing was lost: the next consumer of the group gets every event.
    recorder = Recorder(service)
    async with running(make_consumer(kafka_endpoint, group, topics, recorder)):
        await wait_until(lambda: len(recorder.events) >= 50, "every order")
    assert recorder.ids == [o["event_id"] for o in orders]
    assert sorted(await stored_ids(service, "order", range(37))) == sorted(recorder.ids)


async def test_poison_messages_are_skipped_counted_and_committed_past(
    kafka_endpoint: str,
    names: dict[str, str],
    group: str,
    service: InteractionService,
    caplog: pytest.LogCaptureFixture,
) -> None:
    click_topic = next(iter(names))
    topics = {click_topic: "click"}
    await asyncio.to_thread(create_topics, topics, kafka_endpoint, 1)  # one partition: in order
    good = [click(i, user=5) for i in range(6)]
    values: list[bytes | None] = [
        encode_events([good[0]]),  # 0
        b'{"event_id": "broken", "user_id": ',  # 1 malformed: not JSON
        encode_events([good[1]]),  # 2
        encode_events([{**click(50), "user_id": "forty-two"}]),  # 3 invalid: wrong type
        encode_events([good[2], {**click(51), "ts": "yesterday"}, good[3]]),  # 4 one invalid
        encode_events([{"event_id": "half", "user_id": 5}]),  # 5 malformed: fields missing
        b"42",  # 6 malformed: not an object
        encode_events([{**click(52), "colour": "red"}]),  # 7 invalid: unknown field
        encode_events([{**click(53), "price": "cheap"}]),  # 8 invalid: wrong type
        encode_events([good[4]]),  # 9
        None,  # 10 malformed: empty (a tombstone)
        encode_events([{**click(54), "ts": int(time.time() * 1000) + 3_600_000}]),  # 11 future
        encode_events([good[5]]),  # 12
    ]
    await asyncio.to_thread(produce, kafka_endpoint, click_topic, values)

    def rejected(reason: str) -> float:
        return counter(
            "inferstack_interactions_kafka_rejected_events_total", type="click", reason=reason
        )

    before = (rejected("malformed"), rejected("invalid"))
    consumed_before = counter("inferstack_interactions_kafka_messages_total", topic=click_topic)
    recorder = Recorder(service)
    caplog.set_level(logging.WARNING, logger="inferstack.interactions.kafka")
    async with running(make_consumer(kafka_endpoint, group, topics, recorder)) as consumer:
        await wait_until(lambda: consumer.stats.messages >= len(values), "all messages settled")

    assert recorder.ids == [g["event_id"] for g in good]  # stored, in order, each once
    assert sorted(await stored_ids(service, "click", range(37))) == sorted(recorder.ids)
    assert consumer.stats.rejected == 9 and consumer.stats.stored == 6
    assert (rejected("malformed") - before[0], rejected("invalid") - before[1]) == (4, 5)
    consumed = counter("inferstack_interactions_kafka_messages_total", topic=click_topic)
    assert consumed - consumed_before == 13
    assert await asyncio.to_thread(committed, kafka_endpoint, group, click_topic) == {0: 13}
    logged = [
        part
        for record in caplog.records
        if "skipped" in record.getMessage()
        for part in record.getMessage().split(" events: ", 1)[1].split("; ")
    ]
    expected = {
        "@1": "not JSON",
        "@3": "field 'user_id' is int64, got 'forty-two'",
        "@4 event 1": "field 'ts' is int64, got 'yesterday'",
        "@5": "missing field 'product_id', 'ts'",
        "@6": "an event must be a JSON object, got int",
        "@7": "has no field 'colour'",
        "@8": "field 'price' is float32, got 'cheap'",
        "@10": "empty message",
        "@11": "in the future",
    }
    for where, reason in expected.items():
        prefix = f"{click_topic}[0]{where}: "
        found = [part for part in logged if part.startswith(prefix)]
        assert len(found) == 1 and reason in found[0], (where, logged)


async def test_a_type_must_be_defined_and_events_of_a_removed_one_are_skipped(
    kafka_endpoint: str, names: dict[str, str], group: str, service: InteractionService
) -> None:
    click_topic = next(iter(names))
    topics = {click_topic: "click"}
    await asyncio.to_thread(create_topics, topics, kafka_endpoint, 1)
    defined = {"click": definitions("click")}

    def lookup(name: str) -> InteractionType:
        if name not in defined:
            raise NotFoundError(f"unknown interaction type '{name}'")
        return defined[name]

    with pytest.raises(NotFoundError, match="'wishlist'"):
        await make_consumer(
            kafka_endpoint, group, {"x.wishlist": "wishlist"}, Recorder(service)
        ).start()
    recorder = Recorder(service)
    async with running(make_consumer(kafka_endpoint, group, topics, recorder, lookup=lookup)) as (
        consumer
    ):
        del defined["click"]  # removed by an apply while the consumer runs
        values = [encode_events([click(i)]) for i in range(3)]
        await asyncio.to_thread(produce, kafka_endpoint, click_topic, values)
        await wait_until(lambda: consumer.stats.messages >= 3, "the three messages")
    assert recorder.events == [] and consumer.stats.rejected == 3
    assert await asyncio.to_thread(committed, kafka_endpoint, group, click_topic) == {0: 3}
