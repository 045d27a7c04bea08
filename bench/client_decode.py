"""Client-side cost of one shape-(a) call: building the request and decoding the response.

Shape (a) is 1 user + 100 products + their 100 user x category rows, every feature of every
group (50 columns, 3 of them strings). The response is produced by the real read path
(FeatureService + encode_responses over LMDB holding the sample data), serialised, and then
parsed afresh before every decode, as gRPC hands a client a freshly parsed message.

Reported, in microseconds per call (median and p99 over --rounds):
  - parse:   RetrieveBatchResponse.FromString (gRPC does this before the client sees it)
  - decode:  decode_response for the three responses (what the client adds; target <= 100)
  - access:  decode, then every column read once (strings materialised as str objects)
  - request: RetrieveBatchRequest from the three Query objects, serialised

    .venv/bin/python bench/client_decode.py [--rounds 3000] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from inferstack.client.featurestore import Query, build_batch, decode_response
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.sampledata.generate import (
    FULL_SIZES,
    GROUP_FILES,
    candidate_products,
    category_of,
    generate,
)
from inferstack.server.components import build
from inferstack.server.grpc.featurestore import encode_responses
from inferstack.server.settings import load_settings

SCALE = 0.005  # 500 users, 1,000 products: plenty to draw 100 distinct candidates from


def cli(*args: str, data_dir: Path) -> None:
    command = [sys.executable, "-m", "inferstack.cli.main", *args, "--data-dir", str(data_dir)]
    subprocess.run(command, check=True, capture_output=True)


def prepare(data_dir: Path) -> Path:
    """Sample files under data_dir/sample, applied and ingested into data_dir (once)."""
    sample = data_dir / "sample"
    if not (data_dir / "ingested").exists():
        generate(sample, scale=SCALE)
        cli("apply", "-f", str(sample / "ecommerce.yaml"), data_dir=data_dir)
        for group, file in GROUP_FILES.items():
            cli("ingest", "-g", group, str(sample / file), data_dir=data_dir)
        (data_dir / "ingested").touch()
    return sample


def shape_a(sample: Path) -> list[Query]:
    rng = np.random.default_rng(3)
    users = int(FULL_SIZES["user"] * SCALE)
    products = int(FULL_SIZES["product"] * SCALE)
    user_id = int(rng.integers(1, users + 1))
    items = candidate_products(sample / "user_category.parquet", user_id, 100, rng, products)
    return [
        Query("user", {"user_id": [user_id]}),
        Query("product", {"product_id": items}),
        Query(
            "user_category",
            {"user_id": [user_id] * len(items), "category_id": category_of(np.array(items))},
        ),
    ]


async def serve_once(data_dir: Path, queries: list[Query]) -> bytes:
    """The shape-(a) response as the server would send it, serialised."""
    components = await build(load_settings(None, {"data_dir": str(data_dir)}), watch=False)
    try:
        request = build_batch(queries)
        results = [
            await components.service.retrieve(
                query.entity, {k: list(v) for k, v in query.keys.items()}, list(message.features)
            )
            for query, message in zip(queries, request.requests, strict=True)
        ]
        return encode_responses(results, batch=True)
    finally:
        await components.close()


def timed(
    rounds: int, prepare_round: Callable[[], object], work: Callable[[object], object]
) -> str:
    samples = []
    for _ in range(rounds):
        argument = prepare_round()
        started = time.perf_counter()
        work(argument)
        samples.append((time.perf_counter() - started) * 1e6)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"median {statistics.median(samples):7.1f} us   p99 {p99:7.1f} us"


def read_everything(message: object) -> None:
    assert isinstance(message, pb.RetrieveBatchResponse)
    for frame in [decode_response(r) for r in message.responses]:
        for name in list(frame.columns):
            frame[name]
        frame.found()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="client-decode-") as scratch:
        data_dir = args.data_dir or Path(scratch)
        queries = shape_a(prepare(data_dir))
        wire = asyncio.run(serve_once(data_dir, queries))
    parsed = pb.RetrieveBatchResponse.FromString(wire)
    columns = sum(len(r.columns) for r in parsed.responses)
    keys = sum(r.count for r in parsed.responses)
    print(f"shape (a): {keys} keys, {columns} columns, {len(wire):,} bytes on the wire")

    def fresh() -> pb.RetrieveBatchResponse:
        message: pb.RetrieveBatchResponse = pb.RetrieveBatchResponse.FromString(wire)
        return message

    def decode(message: object) -> None:
        assert isinstance(message, pb.RetrieveBatchResponse)
        [decode_response(r) for r in message.responses]

    def build(_: object) -> None:
        build_batch(queries).SerializeToString()

    rounds = args.rounds
    timed(200, fresh, decode)  # warm-up: imports, caches
    print(f"parse    {timed(rounds, lambda: wire, pb.RetrieveBatchResponse.FromString)}")
    print(f"decode   {timed(rounds, fresh, decode)}")
    print(f"access   {timed(rounds, fresh, read_everything)}")
    print(f"request  {timed(rounds, lambda: None, build)}")


if __name__ == "__main__":
    main()
