"""Kafka consumers that feed interaction events into the store: one topic per type.

Topics are named `<prefix><type>` (prefix "interactions." by default, `topics_for`). Every
consumer of one group id shares the partitions of those topics with the others, in this
process or any other, so ingest scales out by running more of them.

Message values (one event as a JSON object, or an array of them) are decoded by
interactions/kafkamessages.py, which documents the format.

Delivery is at least once, and ingest is idempotent, so every event is stored effectively
once: a batch of messages is committed (synchronously, explicit offsets, auto-commit off)
only after `ingest` returned, i.e. after the events are durable in the hot tier. If ingest
fails (UnavailableError, or anything unexpected) nothing is committed: the consumer seeks
back to the batch's first offsets, backs off and reads the same messages again. If a batch is
refused (InvalidArgumentError), it is split in halves until the refused events are isolated;
the others are stored, and the refused ones, like messages that are not JSON or lack a
required field, are counted, logged with topic/partition/offset and committed past, so a
poison message never stops its partition.

Threads: the consumer runs as an asyncio task on the server's loop, because `ingest` belongs
to that loop (the hot tier's clients live there). Everything that blocks or costs CPU in
proportion to the messages (librdkafka's consume, seek, commit and close, JSON decoding,
building the columns) runs on one dedicated thread per consumer, so the loop only ever awaits
it, and a librdkafka consumer is only ever used from one thread.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from prometheus_client import Counter

from inferstack.core.errors import InvalidArgumentError, NotFoundError, UnavailableError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import InteractionType
from inferstack.core.ratelimit import RateLimitedWarning
from inferstack.interactions.kafkamessages import (
    TOPIC_NAME,
    Event,
    Layout,
    Rejection,
    Source,
    decode_message,
    event_batches,
)

log = logging.getLogger(__name__)

MAX_LOGGED_REJECTIONS = 10  # per batch; the counter has them all

# Overridable through consumer_config. Offsets are only ever committed explicitly, after
# ingest; a group seen for the first time reads its topics from the beginning.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.partition.eof": False,
}
FIXED_CONSUMER_SETTINGS: dict[str, Any] = {
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
}
# Settings an AdminClient (topic creation) shares with the consumer: where and how to connect.
ADMIN_PREFIXES = ("bootstrap.", "security.", "sasl.", "ssl.", "client.", "socket.")

CONSUMED = Counter(
    "inferstack_interactions_kafka_messages_total",
    "Kafka messages consumed and settled (stored, or rejected), by topic.",
    ["topic"],
)
STORED = Counter(
    "inferstack_interactions_kafka_stored_events_total",
    "Events from Kafka ingested into the hot tier, by interaction type.",
    ["type"],
)
REJECTED = Counter(
    "inferstack_interactions_kafka_rejected_events_total",
    "Events (or messages that hold none) skipped, by interaction type and reason: "
    "malformed (not JSON, not an object, a required field missing) or invalid (refused by "
    "ingest: a value of the wrong type, an unknown field, a time in the future).",
    ["type", "reason"],
)
RETRIES = Counter(
    "inferstack_interactions_kafka_retries_total",
    "Batches read again because ingest failed (the hot tier unavailable).",
)
COMMIT_FAILURES = Counter(
    "inferstack_interactions_kafka_commit_failures_total",
    "Offset commits that failed; the events were ingested and may be delivered again.",
)

Ingest = Callable[[list[EventBatch]], Awaitable[int]]
T = TypeVar("T")


@dataclass
class ConsumerStats:
    """Totals of one consumer since it started (the Prometheus counters sum all of them)."""

    messages: int = 0  # settled: their events stored or rejected (then committed)
    stored: int = 0  # events ingested
    rejected: int = 0  # events, or messages holding none, skipped
    retries: int = 0  # batches read again because ingest failed
    commits: int = 0  # successful offset commits
    commit_failures: int = 0


@dataclass
class _Polled:
    """One batch of messages, decoded."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    messages: collections.Counter[str] = field(default_factory=collections.Counter)  # topic
    first: dict[tuple[str, int], int] = field(default_factory=dict)  # to seek back to
    last: dict[tuple[str, int], int] = field(default_factory=dict)  # to commit past
    stored: collections.Counter[str] = field(default_factory=collections.Counter)  # type

    def note(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        self.first.setdefault(key, offset)
        self.last[key] = offset
        self.messages[topic] += 1


class InteractionConsumer:
    """Consumes `topics` ({topic: interaction type}) in consumer group `group_id` and feeds
    the events to `ingest` (InteractionService.ingest) in batches of up to `batch_size`
    messages.

    definitions      the type's definition by name, read for every batch (so an applied
                     change is followed), e.g. `lambda name: service.catalog.type(name)`
    poll_timeout     seconds a batch waits for more messages: the latency at low traffic
    retry_backoff    first pause after a failed ingest; doubles up to max_backoff
    create_topics    create missing topics at start with `partitions` partitions and
                     `replication_factor` (-1: the broker's defaults)
    consumer_config  librdkafka settings, e.g. {"session.timeout.ms": 10000}; auto-commit
                     stays off whatever is given
    """

    def __init__(
        self,
        bootstrap: str,
        group_id: str,
        topics: Mapping[str, str],
        ingest: Ingest,
        definitions: Callable[[str], InteractionType],
        *,
        batch_size: int = 5000,
        poll_timeout: float = 0.2,
        retry_backoff: float = 0.1,
        max_backoff: float = 5.0,
        create_topics: bool = True,
        partitions: int = -1,
        replication_factor: int = -1,
        admin_timeout: float = 10.0,
        consumer_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not bootstrap:
            raise InvalidArgumentError("bootstrap must name at least one Kafka broker host:port")
        if not group_id:
            raise InvalidArgumentError("group_id must not be empty")
        if not topics:
            raise InvalidArgumentError("give at least one topic to consume")
        for topic in topics:
            if not TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
                raise InvalidArgumentError(
                    f"topic {topic!r} is not a valid Kafka topic name ([A-Za-z0-9._-], 1-249 chars)"
                )
        if batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be at least 1, got {batch_size}")
        if poll_timeout <= 0 or retry_backoff <= 0 or max_backoff < retry_backoff:
            raise InvalidArgumentError(
                "poll_timeout and retry_backoff must be positive, max_backoff >= retry_backoff"
            )
        self.topics = dict(topics)
        self.group_id = group_id
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.stats = ConsumerStats()
        self._ingest = ingest
        self._definitions = definitions
        self._retry_backoff = retry_backoff
        self._max_backoff = max_backoff
        self._create_topics = create_topics
        self._partitions = partitions
        self._replication_factor = replication_factor
        self._admin_timeout = admin_timeout
        self._config: dict[str, Any] = {
            **CONSUMER_DEFAULTS,
            "error_cb": self._on_client_error,
            "logger": RateLimitedWarning(log),  # librdkafka's logs, not stderr, rate-limited
            **(consumer_config or {}),
            **FIXED_CONSUMER_SETTINGS,
            "bootstrap.servers": bootstrap,
            "group.id": group_id,
        }
        self._consumer: Consumer | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._pending: dict[tuple[str, int], int] = {}  # offsets ingested, commit failed
        self._client_warning = RateLimitedWarning(log)
        self._message_warning = RateLimitedWarning(log)
        self._retry_warning = RateLimitedWarning(log)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Check the types, create missing topics, join the group and start consuming."""
        if self._task is not None:
            raise RuntimeError("this consumer was started already")
        for type_name in sorted(set(self.topics.values())):
            self._definitions(type_name)  # NotFoundError names an undefined type
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"kafka-{self.group_id}")
        try:
            await self._in_thread(self._open)
        except BaseException:
            self._executor.shutdown(wait=False)
            raise
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"interactions-kafka-{self.group_id}"
        )

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop reading, let a batch being ingested finish (and commit it), leave the group.

        Nothing is committed for messages not yet ingested. A batch still ingesting after
        `timeout` is abandoned uncommitted: its messages go to whoever reads the partition
        next."""
        self._stopping.set()
        task = self._task
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the loop, on the event loop ---------------------------------------------------

    async def _run(self) -> None:
        backoff = self._retry_backoff
        try:
            while not self._stopping.is_set():
                try:
                    polled = await self._in_thread(self._poll)
                except KafkaException as exc:
                    if _is_fatal(exc):
                        log.error("interactions kafka: consumer %s failed: %s", self.group_id, exc)
                        return
                    self._message_warning.warn("interactions kafka: consume failed: %s", exc)
                    await self._pause(backoff)
                    continue
                if not polled.first:
                    if self._pending:
                        await self._in_thread(self._commit, {})
                    continue
                rejected = await self._store_batch(polled)
                if rejected is None:  # not stored: read the same messages again later
                    self.stats.retries += 1
                    RETRIES.inc()
                    await self._in_thread(self._rewind, polled.first)
                    await self._pause(backoff)
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                backoff = self._retry_backoff
                await self._in_thread(self._commit, polled.last)
                self._settle(polled, rejected)
        except asyncio.CancelledError:
            raise
        except Exception:  # never die silently: a dead consumer stops its partitions
            log.exception("interactions kafka: consumer %s stopped by an error", self.group_id)
        finally:
            await self._in_thread(self._close)
            if self._executor is not None:
                self._executor.shutdown(wait=False)

    async def _store_batch(self, polled: _Polled) -> list[Rejection] | None:
        """Ingest the batch's events; the refused ones, or None if ingest is unavailable."""
        try:
            return await self._store(polled.events, polled.stored)
        except Exception as exc:  # UnavailableError, or a bug: keep the events, retry
            self._retry_warning.warn(
                "interactions kafka: ingest failed (%s: %s); retrying the batch",
                type(exc).__name__,
                exc,
                exc_info=not isinstance(exc, _EXPECTED_FAILURES),
            )
            return None

    async def _store(
        self, events: Sequence[Event], stored: collections.Counter[str]
    ) -> list[Rejection]:
        """Ingest `events`; when refused, halve until every refused event stands alone.
        Counts what was stored per type into `stored`."""
        if not events:
            return []
        try:
            await self._ingest(event_batches(events))
        except InvalidArgumentError as exc:
            if len(events) == 1:
                event = events[0]
                return [Rejection(event.type, event.source, "invalid", _without_position(exc))]
            middle = len(events) // 2
            return [
                *await self._store(events[:middle], stored),
                *await self._store(events[middle:], stored),
            ]
        stored.update(event.type for event in events)
        return []

    def _settle(self, polled: _Polled, rejected: list[Rejection]) -> None:
        rejected = polled.rejected + rejected
        for topic, count in polled.messages.items():
            CONSUMED.labels(topic).inc(count)
        self.stats.messages += sum(polled.messages.values())
        for type_name, count in polled.stored.items():
            STORED.labels(type_name).inc(count)
        self.stats.stored += polled.stored.total()
        if not rejected:
            return
        self.stats.rejected += len(rejected)
        for (type_name, reason), count in collections.Counter(
            (r.type, r.reason) for r in rejected
        ).items():
            REJECTED.labels(type_name, reason).inc(count)
        shown = "; ".join(f"{r.source}: {r.message}" for r in rejected[:MAX_LOGGED_REJECTIONS])
        more = len(rejected) - MAX_LOGGED_REJECTIONS
        log.warning(
            "interactions kafka: skipped %d events: %s%s",
            len(rejected),
            shown,
            f"; and {more} more" if more > 0 else "",
        )

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    # --- on the consumer's thread ------------------------------------------------------

    def _open(self) -> None:
        if self._create_topics:
            self._ensure_topics()
        try:
            consumer = Consumer(self._config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise InvalidArgumentError(f"Kafka consumer configuration: {exc}") from exc
        consumer.subscribe(list(self.topics), on_revoke=self._on_revoke, on_lost=self._on_lost)
        self._consumer = consumer

    def _poll(self) -> _Polled:
        assert self._consumer is not None
        messages = self._consumer.consume(self.batch_size, self.poll_timeout)
        polled = _Polled()
        layouts: dict[str, Layout | None] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self._on_message_error(error)
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:
                continue
            polled.note(topic, partition, offset)
            type_name = self.topics[topic]
            if type_name not in layouts:
                layouts[type_name] = self._layout(type_name)
            layout = layouts[type_name]
            source = Source(topic, partition, offset)
            if layout is None:  # checked at start, so removed from the definitions since
                polled.rejected.append(
                    Rejection(type_name, source, "invalid", f"type '{type_name}' is not defined")
                )
                continue
            for decoded in decode_message(message.value(), layout, source):
                if isinstance(decoded, Event):
                    polled.events.append(decoded)
                else:
                    polled.rejected.append(decoded)
        return polled

    def _layout(self, type_name: str) -> Layout | None:
        try:
            return Layout(self._definitions(type_name))
        except NotFoundError:
            return None

    def _rewind(self, first: Mapping[tuple[str, int], int]) -> None:
        assert self._consumer is not None
        for (topic, partition), offset in first.items():
            try:
                self._consumer.seek(TopicPartition(topic, partition, offset))
            except KafkaException as exc:
                # The partition left us (rebalance): its next owner starts at the last commit.
                log.info("interactions kafka: no seek on %s[%d]: %s", topic, partition, exc)

    def _commit(self, last: Mapping[tuple[str, int], int]) -> None:
        """Commit past `last` (and what an earlier failed commit left), synchronously."""
        for key, offset in last.items():
            self._pending[key] = max(self._pending.get(key, -1), offset + 1)
        self._commit_pending(list(self._pending))

    def _commit_pending(self, keys: Sequence[tuple[str, int]]) -> None:
        assert self._consumer is not None
        offsets = [TopicPartition(t, p, self._pending[(t, p)]) for t, p in keys]
        if not offsets:
            return
        try:
            result = self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._commit_failed(str(exc))
            return
        failed = [tp for tp in result if tp.error is not None]
        for tp in result:
            if tp.error is None and self._pending.get((tp.topic, tp.partition)) == tp.offset:
                del self._pending[(tp.topic, tp.partition)]
        if failed:
            self._commit_failed(
                ", ".join(f"{tp.topic}[{tp.partition}]: {tp.error}" for tp in failed)
            )
        else:
            self.stats.commits += 1

    def _commit_failed(self, reason: str) -> None:
        self.stats.commit_failures += 1
        COMMIT_FAILURES.inc()
        self._message_warning.warn(
            "interactions kafka: offset commit failed (%s); retried with the next batch, "
            "events may be delivered again (stored once)",
            reason,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Called inside consume(): every batch consumed before was ingested; commit what an
        # earlier failed commit left for these partitions while they are still ours.
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._commit_pending([key for key in keys if key in self._pending])
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)  # no longer ours: a commit would be refused

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self._pending.pop((tp.topic, tp.partition), None)

    def _close(self) -> None:
        if self._consumer is None:
            return
        try:
            # Leaves the group at once (revoking runs _on_revoke); auto-commit is off, so
            # nothing is committed that was not ingested.
            self._consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("interactions kafka: closing consumer %s: %s", self.group_id, exc)
        finally:
            self._consumer = None

    def _ensure_topics(self) -> None:
        config = {
            key: value for key, value in self._config.items() if key.startswith(ADMIN_PREFIXES)
        }
        config["logger"] = RateLimitedWarning(log)
        admin = AdminClient(config)
        futures = admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=self._partitions,
                    replication_factor=self._replication_factor,
                )
                for topic in self.topics
            ],
            request_timeout=self._admin_timeout,
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=self._admin_timeout)
                log.info("interactions kafka: created topic %s", topic)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if (
                    isinstance(error, KafkaError)
                    and error.code() == KafkaError.TOPIC_ALREADY_EXISTS
                ):
                    continue
                log.warning("interactions kafka: could not create topic %s: %s", topic, exc)
            except Exception as exc:  # Kafka away: subscribe anyway, librdkafka reconnects
                log.warning(
                    "interactions kafka: could not create topic %s within %.1f s (%s)",
                    topic,
                    self._admin_timeout,
                    type(exc).__name__,
                )

    def _on_message_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        self._message_warning.warn("interactions kafka: %s", error.str())

    def _on_client_error(self, error: KafkaError) -> None:
        self._client_warning.warn("interactions kafka: client error: %s", error.str())


_EXPECTED_FAILURES = (UnavailableError,)  # logged without a traceback
_POSITION = re.compile(r"^batch \d+(, event \d+)?: ")


def _without_position(exc: Exception) -> str:
    """The reason without "batch 0, event 0: ": the batch was this one event."""
    return _POSITION.sub("", str(exc), count=1)


def _is_fatal(exc: KafkaException) -> bool:
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.fatal()
