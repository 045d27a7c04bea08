"""Feature store benchmark against a running `inferstack serve` (one worker per core).

Shapes, all features of every group:
  (a) 1 user + 100 products + their 100 user x category rows, one RetrieveBatch call
  (b) the same with 500 products
  (c) one product
Each at 1 and at 16 requests in flight, next to two ceilings measured in the same run:
  - empty call: a gRPC server on the same stack returning canned responses of the same size
  - raw LMDB: encoding the same keys and reading them from LMDB in this process (no decode)
Also reports the peak RSS of each worker after reading every stored row once.

    python bench/featurestore.py [--seconds 5] [--scale 1.0] [--workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import numpy as np

from inferstack.client.featurestore import Query, build_request
from inferstack.core.keys import encode_keys
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.storage.lmdb import LmdbStorage
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.sampledata.generate import (
    FULL_SIZES,
    GROUP_FILES,
    candidate_products,
    category_of,
    generate,
)
from inferstack.server.supervisor import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"
METHOD = "/inferstack.featurestore.v1.FeatureStore/RetrieveBatch"
VARIANTS = 200  # distinct requests per shape, cycled


@dataclass
class Row:
    shape: str
    target: str
    in_flight: int
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float
    values_per_s: float


def cli(*args: str, data_dir: Path) -> None:
    env = {**os.environ, "INFERSTACK_DATA_DIR": str(data_dir)}
    subprocess.run([sys.executable, "-m", "inferstack.cli.main", *args], env=env, check=True)


def prepare_data(scale: float) -> tuple[Path, Path]:
    sample = BENCH_DATA / f"sample-{scale:g}"
    store = BENCH_DATA / f"store-{scale:g}"
    if not (sample / "user_category.parquet").exists():
        print(f"generating sample data at scale {scale:g} ...", flush=True)
        generate(sample, scale=scale)
    if not (store / "ingested").exists():
        cli("apply", "-f", str(sample / "ecommerce.yaml"), data_dir=store)
        for group, file in GROUP_FILES.items():
            cli("ingest", "-g", group, str(sample / file), data_dir=store)
        (store / "ingested").touch()
    return sample, store


def shape_queries(sample: Path, scale: float, products_per_user: int) -> list[list[Query]]:
    rng = np.random.default_rng(products_per_user)
    users = max(1, int(FULL_SIZES["user"] * scale))
    products = max(1, int(FULL_SIZES["product"] * scale))
    batches = []
    for user_id in rng.integers(1, users + 1, VARIANTS).tolist():
        items = candidate_products(
            sample / "user_category.parquet", user_id, products_per_user, rng, products
        )
        batches.append(
            [
                Query("user", {"user_id": [user_id]}),
                Query("product", {"product_id": items}),
                Query(
                    "user_category",
                    {
                        "user_id": [user_id] * len(items),
                        "category_id": category_of(np.array(items)),
                    },
                ),
            ]
        )
    return batches


def encode(batches: list[list[Query]]) -> list[bytes]:
    return [
        pb.RetrieveBatchRequest(requests=[build_request(q) for q in batch]).SerializeToString()
        for batch in batches
    ]


def start(command: list[str], target: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(target) as channel:
        while time.monotonic() < deadline:
            try:
                grpc.channel_ready_future(channel).result(timeout=1)
                return process
            except grpc.FutureTimeoutError:
                if process.poll() is not None:
                    raise SystemExit(f"{command} exited with {process.returncode}") from None
    raise SystemExit(f"{command} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(30)


def measure_sync(target: str, requests: list[bytes], seconds: float) -> list[float]:
    with grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        for request in requests:  # steady state: every variant seen once (caches, page cache)
            call(request, timeout=10)
        timings: list[float] = []
        deadline = time.perf_counter() + seconds
        index = 0
        while time.perf_counter() < deadline:
            request = requests[index % len(requests)]
            started = time.perf_counter()
            call(request, timeout=10)
            timings.append(time.perf_counter() - started)
            index += 1
    return timings


async def measure_async(
    target: str, requests: list[bytes], seconds: float, in_flight: int
) -> list[float]:
    # One connection per caller: SO_REUSEPORT spreads connections, not calls, over workers.
    options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(in_flight)]
    calls = [
        c.unary_unary(METHOD, request_serializer=None, response_deserializer=None) for c in channels
    ]
    for call in calls:
        for request in requests[:5]:
            await call(request, timeout=10)
    timings: list[float] = []
    deadline = time.perf_counter() + seconds

    async def loop(offset: int) -> None:
        call = calls[offset]
        index = offset
        while time.perf_counter() < deadline:
            request = requests[index % len(requests)]
            started = time.perf_counter()
            await call(request, timeout=10)
            timings.append(time.perf_counter() - started)
            index += in_flight

    try:
        await asyncio.gather(*(loop(i) for i in range(in_flight)))
    finally:
        for channel in channels:
            await channel.close(grace=None)
    return timings


def summarise(
    shape: str, target: str, in_flight: int, timings: list[float], seconds: float, values: int
) -> Row:
    ms = np.array(timings) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    rate = len(timings) / seconds
    return Row(shape, target, in_flight, len(timings), p50, p95, p99, rate, rate * values)


def run_shapes(
    target_name: str, target: str, shapes: dict[str, tuple[list[bytes], int]], seconds: float
) -> list[Row]:
    rows = []
    for shape, (requests, values) in shapes.items():
        for in_flight in (1, 16):
            if in_flight == 1:
                timings = measure_sync(target, requests, seconds)
            else:
                timings = asyncio.run(measure_async(target, requests, seconds, in_flight))
            row = summarise(shape, target_name, in_flight, timings, seconds, values)
            print(format_row(row), flush=True)
            rows.append(row)
    return rows


def raw_lmdb(store: Path, batches: dict[str, list[list[Query]]], seconds: float) -> list[Row]:
    """Encode the keys and read every row of a request straight from LMDB, in this process."""
    from inferstack.configstore.files import FileConfigStore

    catalog = Catalog(FileConfigStore(store).load())
    storage = LmdbStorage(store / "lmdb")
    group_of = {
        "user": "user_profile",
        "product": "product_stats",
        "user_category": "user_category_affinity",
    }
    rows = []
    for shape, queries in batches.items():
        timings: list[float] = []
        deadline = time.perf_counter() + seconds
        index = 0
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            for query in queries[index % len(queries)]:
                keys = encode_keys(catalog.entity(query.entity), dict(query.keys))
                storage.read_sync(group_of[query.entity], keys)
            timings.append(time.perf_counter() - started)
            index += 1
        row = summarise(shape, "raw LMDB read", 1, timings, seconds, 0)
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


def worker_memory(server_pid: int) -> list[dict[str, int]]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    memory = []
    for pid in children:
        status = dict(
            line.split(":", 1)
            for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ":" in line
        )
        mib = {
            key: int(status[key].split()[0]) // 1024
            for key in ("VmRSS", "VmHWM", "RssAnon", "RssFile")
        }
        memory.append(
            {
                "pid": int(pid),
                "rss_mib": mib["VmRSS"],
                "peak_rss_mib": mib["VmHWM"],
                # RssFile is LMDB's memory map: page cache shared by all workers.
                "anon_mib": mib["RssAnon"],
                "file_mib": mib["RssFile"],
            }
        )
    return memory


def read_everything(target: str, scale: float, workers: int) -> None:
    """Read every stored row once per worker connection, so caches fill to their budget."""
    import pyarrow.parquet as pq

    sample = BENCH_DATA / f"sample-{scale:g}"
    pairs = pq.read_table(sample / "user_category.parquet", columns=["user_id", "category_id"])
    users = int(FULL_SIZES["user"] * scale)
    products = int(FULL_SIZES["product"] * scale)
    queries: list[Query] = []
    step = 1000
    queries += [
        Query("user", {"user_id": list(range(s, min(s + step, users + 1)))})
        for s in range(1, users + 1, step)
    ]
    queries += [
        Query("product", {"product_id": list(range(s, min(s + step, products + 1)))})
        for s in range(1, products + 1, step)
    ]
    uids, cats = pairs["user_id"].to_pylist(), pairs["category_id"].to_pylist()
    queries += [
        Query("user_category", {"user_id": uids[s : s + step], "category_id": cats[s : s + step]})
        for s in range(0, len(uids), step)
    ]
    # One channel per worker: SO_REUSEPORT spreads connections, not calls.
    for _ in range(workers * 2):
        with grpc.insecure_channel(
            target, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            for query in queries:
                call(
                    pb.RetrieveBatchRequest(requests=[build_request(query)]).SerializeToString(),
                    timeout=30,
                )


def format_row(row: Row) -> str:
    return (
        f"| {row.shape} | {row.target} | {row.in_flight} | {row.p50_ms:.2f} | {row.p95_ms:.2f} | "
        f"{row.p99_ms:.2f} | {row.requests_per_s:,.0f} | {row.values_per_s / 1e6:,.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-mb", type=int, default=256)
    args = parser.parse_args()

    sample, store = prepare_data(args.scale)
    batches = {
        "(a) 1 user + 100 products + 100 user x category": shape_queries(sample, args.scale, 100),
        "(b) 1 user + 500 products + 500 user x category": shape_queries(sample, args.scale, 500),
        "(c) 1 product": [
            [Query("product", {"product_id": [int(p)]})]
            for p in np.random.default_rng(3).integers(
                1, int(FULL_SIZES["product"] * args.scale), VARIANTS
            )
        ],
    }
    requests = {shape: encode(queries) for shape, queries in batches.items()}

    port = free_port("127.0.0.1")
    target = f"127.0.0.1:{port}"
    server = start(
        [
            sys.executable,
            "-m",
            "inferstack.cli.main",
            "serve",
            "--data-dir",
            str(store),
            "--port",
            str(port),
            "--http-port",
            "-1",
            "--workers",
            str(args.workers),
            "--cache-mb",
            str(args.cache_mb),
            "--log-level",
            "WARNING",
        ],
        target,
    )
    print(
        f"server: {args.workers} workers, cache {args.cache_mb} MiB each, data scale {args.scale:g}"
    )
    try:
        values = {}
        canned: dict[bytes, bytes] = {}
        with grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20)]
        ) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            for shape, reqs in requests.items():
                for request in reqs:
                    canned[request] = call(request, timeout=10)
                response = pb.RetrieveBatchResponse.FromString(canned[reqs[0]])
                values[shape] = sum(
                    len(c.values) // max(1, int(np.dtype(_dtype(c.type)).itemsize))
                    if not c.lengths
                    else len(c.lengths) // 4
                    for r in response.responses
                    for c in r.columns
                )
        print("| shape | target | in flight | p50 ms | p95 ms | p99 ms | requests/s | M values/s |")
        print("|---|---|---|---|---|---|---|---|")
        shapes = {shape: (reqs, values[shape]) for shape, reqs in requests.items()}
        rows = run_shapes("inferstack serve", target, shapes, args.seconds)
        read_everything(target, args.scale, args.workers)
        memory = worker_memory(server.pid)
    finally:
        stop(server)

    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as handle:
        pickle.dump(canned, handle)
    ceiling_port = free_port("127.0.0.1")
    ceiling_target = f"127.0.0.1:{ceiling_port}"
    ceiling = start(
        [
            sys.executable,
            str(ROOT / "bench" / "ceiling_server.py"),
            handle.name,
            str(ceiling_port),
            str(args.workers),
        ],
        ceiling_target,
    )
    try:
        rows += run_shapes("empty call (ceiling)", ceiling_target, shapes, args.seconds)
    finally:
        stop(ceiling)
        os.unlink(handle.name)
    rows += raw_lmdb(store, batches, args.seconds)

    print("worker memory after reading every row once:", memory)
    for shape in requests:
        real = next(
            r
            for r in rows
            if r.shape == shape and r.in_flight == 16 and r.target == "inferstack serve"
        )
        empty = next(
            r
            for r in rows
            if r.shape == shape and r.in_flight == 16 and r.target.startswith("empty")
        )
        print(
            f"{shape}: 16 in flight = "
            f"{100 * real.requests_per_s / empty.requests_per_s:.0f}% of the empty-call ceiling"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"featurestore-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"args": vars(args), "rows": [asdict(r) for r in rows], "memory": memory}, indent=1
        )
    )
    print(f"results: {out}")


def _dtype(type_name: str) -> str:
    from inferstack.core.types import FeatureType

    return FeatureType.parse(type_name).scalar_dtype.str


if __name__ == "__main__":
    main()
