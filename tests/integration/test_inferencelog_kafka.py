"""Inference logging to a real Kafka (scripts/services.py), and to one that is not there."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from inferstack.inferflow.inferencelog.base import InferenceLogger, record_table
from inferstack.inferflow.inferencelog.kafka import CONTENT_TYPE, KafkaSink, table_from_message
from tests.unit.test_inferencelog import assert_table_is_record, counted, make_record

pytestmark = pytest.mark.services

OFFSET_BEGINNING = -2  # librdkafka's logical offset "earliest"


def consume(endpoint: str, topic: str, expected: int, timeout: float = 60.0) -> list[Message]:
    """Every message of `topic` from the beginning, until `expected` arrived (or timeout)."""
    consumer = Consumer(
        {
            "bootstrap.servers": endpoint,
            "group.id": f"test-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        while len(messages) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            assert message.error() is None, message.error()
            messages.append(message)
        return messages
    finally:
        consumer.close()


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def topic(kafka_endpoint: str) -> Iterator[str]:
    """A fresh topic name, deleted after the test (the Kafka is shared)."""
    name = f"inference-log-{uuid.uuid4().hex[:12]}"
    yield name
    admin = AdminClient({"bootstrap.servers": kafka_endpoint})
    with contextlib.suppress(Exception):  # never created, or already gone
        admin.delete_topics([name], request_timeout=10)[name].result(timeout=15)


def test_records_round_trip_through_kafka(kafka_endpoint: str, topic: str) -> None:
    producer_config: dict[str, Any] = {"linger.ms": 5}
    sink = KafkaSink(kafka_endpoint, topic, **producer_config)
    logger = InferenceLogger(sink, batch_size=6)
    records = [make_record(f"req-{i}", model="kafka_ranker", version=3, seed=i) for i in range(20)]
    written_before = counted("kafka_ranker", "written")
    for record in records:
        assert logger.offer(record)
    assert logger.close(timeout=60)
    assert (logger.written, logger.dropped, logger.failed) == (20, 0, 0)
    assert counted("kafka_ranker", "written") - written_before == 20

    # The sink created the topic with the broker's defaults.
    admin = AdminClient({"bootstrap.servers": kafka_endpoint})
    assert topic in admin.list_topics(topic, timeout=10).topics

    messages = consume(kafka_endpoint, topic, expected=20)
    assert len(messages) == 20
    by_key = {}
    for message in messages:
        headers = dict(message.headers() or [])
        assert headers["content-type"] == CONTENT_TYPE.encode()
        assert headers["inferstack-model"] == b"kafka_ranker"
        assert headers["inferstack-model-version"] == b"3"
        key, value = message.key(), message.value()
        assert key is not None and value is not None
        by_key[key.decode()] = table_from_message(value)
    assert sorted(by_key) == sorted(record.request_id for record in records)
    for record in records:
        decoded = by_key[record.request_id]
        assert_table_is_record(decoded, record)
        assert decoded.equals(record_table(record))


def test_an_existing_topic_is_used_as_it_is(kafka_endpoint: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_endpoint})
    created = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])
    created[topic].result(timeout=30)
    logger = InferenceLogger(KafkaSink(kafka_endpoint, topic))
    records = [make_record(f"again-{i}", model="kafka_existing", seed=i) for i in range(6)]
    for record in records:
        assert logger.offer(record)
    assert logger.close(timeout=60)
    assert (logger.written, logger.failed) == (6, 0)
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 3
    messages = consume(kafka_endpoint, topic, expected=6)
    decoded = {m.key(): table_from_message(m.value() or b"") for m in messages}
    for record in records:
        assert_table_is_record(decoded[record.request_id.encode()], record)


def test_unreachable_kafka_never_blocks_or_raises_and_counts_every_record() -> None:
    # Nothing listens on the port; the producer buffer holds 10 messages, so of 50 records
    # 10 are accepted (and fail when close gives up on them) and 40 are dropped.
    producer_config: dict[str, Any] = {
        "queue.buffering.max.messages": 10,
        "message.timeout.ms": 120_000,
    }
    sink = KafkaSink(
        f"127.0.0.1:{free_port()}",
        "nowhere",
        admin_timeout=1.0,
        close_timeout=1.0,
        **producer_config,
    )
    logger = InferenceLogger(sink, capacity=100)
    failed_before = counted("kafka_gone", "failed")
    dropped_before = counted("kafka_gone", "dropped")
    offered = [logger.offer(make_record(f"r-{i}", model="kafka_gone", seed=i)) for i in range(50)]
    assert offered == [True] * 50  # queued at once: the request path never waits on Kafka
    assert logger.close(timeout=30)
    assert (logger.written, logger.dropped, logger.failed) == (0, 40, 10)
    assert counted("kafka_gone", "failed") - failed_before == 10
    assert counted("kafka_gone", "dropped") - dropped_before == 40
