"""How long the heaviest requests within the limits (src/inferstack/core/limits.py and
max_keys) hold a worker's event loop: `/healthz` probed every 20 ms while one client sends
them back to back to a one-worker `inferstack serve` (embedded), per kind of request.

The goal (issue 16): no request within the limits stalls `/healthz` by more than 50 ms. A
probe's latency is the loop's stall plus a round trip; the baseline row probes an idle
worker. Each kind runs for --seconds.

    python bench/stall.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import grpc
import launch

from inferstack.core import limits
from inferstack.proto.featurestore.v1 import featurestore_pb2 as fpb
from inferstack.proto.featurestore.v1 import featurestore_pb2_grpc as fpb_grpc
from inferstack.proto.interactions.v1 import interactions_pb2 as ipb
from inferstack.proto.interactions.v1 import interactions_pb2_grpc as ipb_grpc

DEFINITIONS = """
entities:
  - name: user
    keys: [{name: user_id, type: int64}]
  - name: product
    keys: [{name: product_id, type: int64}]
feature_groups:
  - name: user_profile
    entity: user
    features:
      - {name: age, type: int32, default: 0}
      - {name: country, type: string, default: ""}
interaction_types:
  - name: click
    user: {name: user_id, type: int64}
    item: {name: product_id, type: int64}
"""
MAX_KEYS = 10_000  # the server's default max_keys
PROBE_EVERY = 0.02  # seconds

Send = Callable[[], Awaitable[object]]


def requests(channel: grpc.aio.Channel) -> dict[str, Send]:
    """Each kind of heavy request at its limit, as one call."""
    features = fpb_grpc.FeatureStoreStub(channel)
    interactions = ipb_grpc.InteractionsStub(channel)
    many_keys = fpb.RetrieveRequest(
        entity="user",
        keys=[fpb.KeyColumn(name="user_id", int64_values=range(MAX_KEYS))],
    )
    batch = fpb.RetrieveBatchRequest(
        requests=[
            fpb.RetrieveRequest(
                entity="user", keys=[fpb.KeyColumn(name="user_id", int64_values=[i])]
            )
            for i in range(min(limits.MAX_QUERIES_PER_BATCH, MAX_KEYS))
        ]
    )
    selectors = fpb.RetrieveRequest(
        entity="user",
        keys=[fpb.KeyColumn(name="user_id", int64_values=[1])],
        features=["user_profile.age"] * limits.MAX_SELECTORS,
    )
    now = int(time.time() * 1000) - 60_000
    ingest = ipb.IngestRequest(
        batches=[
            ipb.EventBatch(
                type="click",
                event_ids=[f"e{i}-{now}"],
                user=fpb.KeyColumn(name="user_id", int64_values=[i % 1000]),
                item=fpb.KeyColumn(name="product_id", int64_values=[i]),
                timestamps=[now],
            )
            for i in range(limits.MAX_EVENT_BATCHES)
        ]
    )
    events = limits.MAX_EVENTS
    big_batch = ipb.IngestRequest(
        batches=[
            ipb.EventBatch(
                type="click",
                event_ids=[f"b{i}-{now}" for i in range(events)],
                user=fpb.KeyColumn(name="user_id", int64_values=[i % 5000 for i in range(events)]),
                item=fpb.KeyColumn(name="product_id", int64_values=range(events)),
                timestamps=[now] * events,
            )
        ]
    )
    return {
        f"Retrieve, {MAX_KEYS:,} keys": lambda: features.Retrieve(many_keys, timeout=30),
        f"RetrieveBatch, {len(batch.requests):,} one-key queries": lambda: features.RetrieveBatch(
            batch, timeout=30
        ),
        f"Retrieve, {limits.MAX_SELECTORS:,} selectors": lambda: features.Retrieve(
            selectors, timeout=30
        ),
        f"Ingest, {limits.MAX_EVENT_BATCHES:,} one-event batches": lambda: interactions.Ingest(
            ingest, timeout=30
        ),
        f"Ingest, one batch of {events:,} events": lambda: interactions.Ingest(
            big_batch, timeout=60
        ),
    }


async def probe(http_base: str, until: float) -> list[float]:
    """/healthz latencies in ms, one probe every PROBE_EVERY seconds until `until`."""
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            started = time.perf_counter()
            async with session.get(f"{http_base}/healthz") as response:
                await response.read()
            latencies.append((time.perf_counter() - started) * 1e3)
            await asyncio.sleep(PROBE_EVERY)
    return latencies


async def load(send: Send, until: float) -> int:
    sent = 0
    while time.monotonic() < until:
        try:
            await send()
        except grpc.aio.AioRpcError as exc:  # a refusal still costs the loop what it costs
            if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT,):
                raise
        sent += 1
    return sent


async def measure(server: launch.RunningServer, seconds: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        until = time.monotonic() + seconds
        idle = await probe(server.http_base, until)
        rows.append(("idle", "-", *summary(idle)))
        for name, send in requests(channel).items():
            await send()  # warm: the first of a kind compiles its plan, opens tables
            until = time.monotonic() + seconds
            latencies, sent = await asyncio.gather(
                probe(server.http_base, until), load(send, until)
            )
            rows.append((name, f"{sent / seconds:.1f}", *summary(latencies)))
    return rows


def summary(latencies: list[float]) -> tuple[str, str, str]:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered):.1f}", f"{p99:.1f}", f"{ordered[-1]:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferstack-stall-") as folder:
        data = Path(folder) / "data"
        definitions = Path(folder) / "definitions.yaml"
        definitions.write_text(DEFINITIONS)
        subprocess.run(
            [sys.executable, "-m", "inferstack.cli.main", "apply", "-f", str(definitions),
             "--data-dir", str(data)],
            check=True, capture_output=True,
        )  # fmt: skip
        server = launch.start_server(
            "--data-dir", str(data), log=Path(folder) / "serve.log", workers=1
        )
        try:
            rows = asyncio.run(measure(server, args.seconds))
        finally:
            server.stop()
    print("| requests, back to back | requests/s | /healthz p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
