"""`inferstack serve` consuming interaction events from Kafka: every worker joins the group,
and what the producers sent is readable through the client."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from inferstack.client import InteractionsClient
from inferstack.interactions.kafkamessages import encode_events
from tests.servers import inferstack, start_server

pytestmark = pytest.mark.services

TYPES = """\
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
    attributes: [{name: source, type: string, default: home}]
"""


def test_events_produced_to_kafka_are_served(kafka_endpoint: str, tmp_path: Path) -> None:
    prefix = f"it-{uuid.uuid4().hex[:8]}."
    definitions = tmp_path / "types.yaml"
    definitions.write_text(TYPES)
    data = tmp_path / "data"
    inferstack("apply", "-f", str(definitions), data_dir=data)
    server = start_server(
        data,
        env={
            "INFERSTACK_INTERACTIONS__KAFKA__BOOTSTRAP": kafka_endpoint,
            "INFERSTACK_INTERACTIONS__KAFKA__TOPIC_PREFIX": prefix,
            "INFERSTACK_INTERACTIONS__KAFKA__GROUP": f"group-{prefix}",
        },
    )
    try:
        now = int(time.time() * 1000)
        producer = Producer({"bootstrap.servers": kafka_endpoint})
        for user in range(1, 21):
            events = [
                {"event_id": f"{user}-{n}", "user_id": user, "product_id": n, "ts": now - n}
                for n in range(5)
            ]
            producer.produce(f"{prefix}click", encode_events(events), key=str(user))
        assert producer.flush(15) == 0
        with InteractionsClient(server.grpc_target) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                counts = [client.get(user, ["click"], limit=10)["click"].count for user in (1, 20)]
                if counts == [5, 5]:
                    break
                time.sleep(0.3)
            for user in range(1, 21):
                history = client.get(user, ["click"], limit=10)["click"]
                assert list(history["event_id"]) == [f"{user}-{n}" for n in range(5)]
    finally:
        assert server.stop() == 0
        AdminClient({"bootstrap.servers": kafka_endpoint}).delete_topics([f"{prefix}click"])
