"""Inference log as a Kafka topic: one message per record (confluent-kafka).

Message: key = the request id (UTF-8), value = the record's table as an Arrow IPC stream
(`table_from_message` reads it back), headers `content-type` plus the model and its version
so consumers can route without decoding.

The sink runs on the logger thread, never on the request path, and still never waits on
Kafka: `produce` only queues into librdkafka's bounded buffer (a full buffer drops the record
and counts it), delivery reports arrive through `poll(0)` on every write and flush, and a
message the broker has not acknowledged within `message.timeout.ms` is counted as failed.

The topic is created on first use (AdminClient, broker defaults for partitions and
replication) unless it exists; if that cannot be done the sink produces anyway and relies on
the broker creating the topic (auto.create.topics.enable), retrying creation later. An
attempt holds the logger thread for up to `admin_timeout`; the logger's queue absorbs that
(and drops, counted, what does not fit).
"""

from __future__ import annotations

import collections
import functools
import logging
import re
import time
from typing import Any

import pyarrow as pa
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from inferstack.core.errors import InvalidArgumentError
from inferstack.core.ratelimit import RateLimitedWarning
from inferstack.inferflow.inferencelog.base import (
    RecordOutcomes,
    model_of,
    version_of,
)

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/vnd.apache.arrow.stream"
TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
TOPIC_RETRY_SECONDS = 30.0  # between attempts to create the topic while Kafka is away

# Defaults for a producer that must never hold anything up; any of them can be overridden.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "linger.ms": 20,  # batch messages of concurrent requests
    "compression.type": "lz4",  # feature matrices compress well; lz4 costs little CPU
    "queue.buffering.max.messages": 100_000,
    "queue.buffering.max.kbytes": 64 * 1024,  # bounded memory while Kafka is slow or away
    "message.timeout.ms": 30_000,  # then a message counts as failed, not retried forever
}


class KafkaSink:
    """A LogSink producing one message per record to `topic` on the cluster at `bootstrap`.

    create_topic        create the topic on first use if it does not exist
    partitions          partitions of a created topic (-1: the broker's default)
    replication_factor  replication of a created topic (-1: the broker's default)
    admin_timeout       seconds each topic creation attempt may take
    close_timeout       seconds `close` waits for outstanding deliveries; the rest fail
    producer_config     librdkafka settings, e.g. **{"acks": "all", "linger.ms": 50}
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        *,
        create_topic: bool = True,
        partitions: int = -1,
        replication_factor: int = -1,
        admin_timeout: float = 5.0,
        close_timeout: float = 10.0,
        **producer_config: Any,
    ) -> None:
        if not bootstrap:
            raise InvalidArgumentError("bootstrap must name at least one Kafka broker host:port")
        if not TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise InvalidArgumentError(
                f"topic {topic!r} is not a valid Kafka topic name ([A-Za-z0-9._-], 1-249 chars)"
            )
        self.topic = topic
        self._config: dict[str, Any] = {
            **PRODUCER_DEFAULTS,
            "error_cb": self._on_client_error,
            # librdkafka's own log lines into Python logging (not stderr), rate-limited: an
            # unreachable broker is reported on every reconnect attempt.
            "logger": RateLimitedWarning(log),
            **producer_config,
            "bootstrap.servers": bootstrap,
        }
        try:
            self._producer = Producer(self._config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"Kafka producer configuration: {exc}") from exc
        self._create_topic = create_topic
        self._new_topic = NewTopic(
            topic, num_partitions=partitions, replication_factor=replication_factor
        )
        self._next_topic_attempt = 0.0
        self._admin_timeout = admin_timeout
        self._close_timeout = close_timeout
        self._in_flight: collections.Counter[str] = collections.Counter()  # per model
        self._outcomes = RecordOutcomes()
        self._closed = False
        self._produce_warning = RateLimitedWarning(log)
        self._delivery_warning = RateLimitedWarning(log)
        self._client_warning = RateLimitedWarning(log)

    def report_outcomes_to(self, outcomes: RecordOutcomes) -> None:
        self._outcomes = outcomes

    def write(self, tables: list[pa.Table]) -> None:
        if self._create_topic:
            self._ensure_topic()
        for table in tables:
            self._produce(table)
        self._producer.poll(0)

    def flush(self) -> None:
        """Serve delivery reports (and librdkafka's logs and errors)."""
        self._producer.poll(0)

    def close(self) -> None:
        """Wait up to close_timeout for deliveries; what is still outstanding counts as failed."""
        if self._closed:
            return
        self._closed = True
        if self._producer.flush(self._close_timeout) > 0:
            # Purged messages get a delivery report with an error: counted as failed there.
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(0)
        for model, count in self._in_flight.items():
            self._outcomes.add(model, "failed", count)  # no report will ever come for these
        self._in_flight.clear()

    def _produce(self, table: pa.Table) -> None:
        model = "?"
        try:
            model = model_of(table)
            headers: dict[str, str | bytes | None] = {
                "content-type": CONTENT_TYPE,
                "inferstack-model": model,
                "inferstack-model-version": str(version_of(table)),
            }
            key = table.column("request_id")[0].as_py() if table.num_rows else None
            self._producer.produce(
                self.topic,
                value=table_to_message(table),
                key=key,
                headers=headers,
                on_delivery=functools.partial(self._on_delivery, model),
            )
        except BufferError:
            self._outcomes.add(model, "dropped")
            self._produce_warning.warn(
                "inference log: Kafka producer buffer full, dropping records of %s", model
            )
            self._producer.poll(0)  # delivery reports free buffer space
        except Exception as exc:  # e.g. a message over message.max.bytes
            self._outcomes.add(model, "failed")
            self._produce_warning.warn("inference log: cannot produce to %s: %s", self.topic, exc)
        else:
            self._in_flight[model] += 1

    def _on_delivery(self, model: str, error: KafkaError | None, message: Message) -> None:
        self._in_flight[model] -= 1
        if error is None:
            self._outcomes.add(model, "written")
            return
        self._outcomes.add(model, "failed")
        self._delivery_warning.warn(
            "inference log: a record of %s was not delivered to %s: %s",
            model,
            self.topic,
            error.str(),
        )

    def _on_client_error(self, error: KafkaError) -> None:
        self._client_warning.warn("inference log: Kafka client error: %s", error.str())

    def _ensure_topic(self) -> None:
        """Create the topic unless it exists; retried every TOPIC_RETRY_SECONDS if Kafka fails."""
        now = time.monotonic()
        if now < self._next_topic_attempt:
            return
        self._next_topic_attempt = now + TOPIC_RETRY_SECONDS
        admin_config = {k: v for k, v in self._config.items() if k not in ("error_cb", "logger")}
        admin_config["logger"] = RateLimitedWarning(log)
        try:
            admin = AdminClient(admin_config)
            futures = admin.create_topics([self._new_topic], request_timeout=self._admin_timeout)
            futures[self.topic].result(timeout=self._admin_timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                self._create_topic = False
                return
            if isinstance(error, KafkaError) and not error.retriable():
                # e.g. not authorised to create topics: rely on the topic being there.
                self._create_topic = False
            log.warning("inference log: could not create Kafka topic %s: %s", self.topic, exc)
        except Exception as exc:  # a timeout while Kafka is away: produce anyway, retry later
            log.warning(
                "inference log: could not create Kafka topic %s within %.1f s (%s); "
                "producing anyway, next attempt in %.0f s",
                self.topic,
                self._admin_timeout,
                type(exc).__name__,
                TOPIC_RETRY_SECONDS,
            )
        else:
            self._create_topic = False
            log.info("inference log: created Kafka topic %s", self.topic)


def table_to_message(table: pa.Table) -> bytes:
    """A record table as Arrow IPC stream bytes (a message value)."""
    stream = pa.BufferOutputStream()
    with pa.ipc.new_stream(stream, table.schema) as writer:
        writer.write_table(table)
    return bytes(stream.getvalue().to_pybytes())


def table_from_message(value: bytes) -> pa.Table:
    """The record table a message value holds (what `table_to_message` wrote)."""
    return pa.ipc.open_stream(value).read_all()
