"""Feature store benchmark, embedded: `inferstack serve` on LMDB, called as callers call it.

Every request draws fresh keys from the whole data set (users uniform, products uniform or
Zipf s = 1.1) and goes through the public clients (bench/traffic.py), with the in-process
cache off (the embedded default) and on. Patterns, all features of every group:
  (a) 1 user + 100 products + their 100 user x category rows, in one RetrieveBatch and in
      two round trips (the second keyed by the categories the first returned)
  (b) the same with 500 products, one RetrieveBatch
  (c) one product
Each at 1, 16 and 64 requests in flight, with the server's CPU per request read from /proc,
next to two ceilings measured in the same run with the same traffic:
  - empty call: a gRPC server on the same stack returning recorded answers of the same size,
    called through the same clients (so client decoding is in the ceiling too)
  - raw LMDB: encoding the same keys and reading them from LMDB in this process (no decode)
Also reports each worker's memory after reading every stored row once.

    python bench/featurestore.py [--seconds 3] [--scale 1.0] [--workers N]
"""

from __future__ import annotations

import argparse
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
from traffic import KeyDraw, Pattern, Window, batch_of, derived_keys, measure, patterns

from inferstack.client.featurestore import Query, build_request, decode_response
from inferstack.core.keys import encode_keys
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.storage.lmdb import LmdbStorage
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.sampledata.generate import FULL_SIZES, GROUP_FILES, generate
from inferstack.server.supervisor import free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"
METHOD = "/inferstack.featurestore.v1.FeatureStore/RetrieveBatch"
SINGLE_METHOD = "/inferstack.featurestore.v1.FeatureStore/Retrieve"
GROUP_OF = {
    "user": "user_profile",
    "product": "product_stats",
    "user_category": "user_category_affinity",
}


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
    server_cpu_ms: float | None = None  # server CPU (all processes) per request
    keys: str = ""  # uniform | zipf
    cache: str = ""  # in-process cache per worker
    errors: int = 0


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


def summarise(
    shape: str,
    target: str,
    in_flight: int,
    timings: list[float],
    seconds: float,
    values: int,
    *,
    server_cpu_ms: float | None = None,
    keys: str = "",
    cache: str = "",
    errors: int = 0,
) -> Row:
    ms = np.array(timings or [float("nan")]) * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    rate = len(timings) / seconds
    return Row(
        shape, target, in_flight, len(timings), p50, p95, p99, rate, rate * values,
        server_cpu_ms, keys, cache, errors,
    )  # fmt: skip


def row_of(
    pattern: Pattern, target: str, in_flight: int, window: Window, keys: str, cache: str
) -> Row:
    served = len(window.latencies)
    return summarise(
        pattern.name,
        target,
        in_flight,
        window.latencies,
        window.seconds,
        pattern.values,
        server_cpu_ms=1000 * window.server_cpu_s / served if served else None,
        keys=keys,
        cache=cache,
        errors=sum(window.errors.values()),
    )


def format_row(row: Row) -> str:
    cpu = "" if row.server_cpu_ms is None else f"{row.server_cpu_ms:.2f}"
    return (
        f"| {row.shape} | {row.target} | {row.keys} | {row.cache} | {row.in_flight} | "
        f"{row.p50_ms:.2f} | {row.p95_ms:.2f} | {row.p99_ms:.2f} | {row.requests_per_s:,.0f} | "
        f"{row.values_per_s / 1e6:,.2f} | {cpu} | {row.errors} |"
    )


HEADER = (
    "| pattern | target | keys | cache | in flight | p50 ms | p95 ms | p99 ms | requests/s | "
    "M values/s | server CPU ms/req | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def run_patterns(
    target_name: str,
    target: str,
    shapes: list[Pattern],
    scale: float,
    distributions: list[str],
    in_flights: list[int],
    seconds: float,
    pids: list[int],
    cache: str,
) -> list[Row]:
    rows = []
    for distribution in distributions:
        keys = KeyDraw(scale, distribution)
        for pattern in shapes:
            for in_flight in in_flights:
                window = measure(target, pattern, keys, seconds, in_flight, pids)
                row = row_of(pattern, target_name, in_flight, window, distribution, cache)
                print(format_row(row), flush=True)
                rows.append(row)
    return rows


def record_answers(
    target: str, shapes: list[Pattern], scale: float
) -> dict[str, dict[bytes, bytes]]:
    """One real answer per RPC each pattern makes, replayed by the empty-call ceiling."""
    keys = KeyDraw(scale, "uniform", seed=1)
    answers: dict[str, dict[bytes, bytes]] = {"batch": {}, "single": {}}
    with grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        batch = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
        single = channel.unary_unary(
            SINGLE_METHOD, request_serializer=None, response_deserializer=None
        )

        def ask_single(query: Query) -> None:
            request = build_request(query).SerializeToString()
            answers["single"][request] = single(request, timeout=10)

        def ask_batch(queries: list[Query]) -> pb.RetrieveBatchResponse:
            request = pb.RetrieveBatchRequest(requests=[build_request(q) for q in queries])
            raw = request.SerializeToString()
            answers["batch"][raw] = batch(raw, timeout=10)
            response: pb.RetrieveBatchResponse = pb.RetrieveBatchResponse.FromString(
                answers["batch"][raw]
            )
            return response

        for pattern in shapes:
            user, products = pattern.draw(keys)
            if pattern.products == 0:
                ask_single(Query("product", {"product_id": products}))
            elif pattern.round_trips == 1:
                ask_batch(batch_of(user, products))
            else:
                first = ask_batch(batch_of(user, products)[:2])
                frame = decode_response(first.responses[1])
                ask_single(Query("user_category", derived_keys(user, frame)))
    return answers


def raw_lmdb(store: Path, shapes: list[Pattern], scale: float, seconds: float) -> list[Row]:
    """Encode the keys and read every row of a request straight from LMDB, in this process."""
    from inferstack.configstore.files import FileConfigStore

    catalog = Catalog(FileConfigStore(store).load())
    storage = LmdbStorage(store / "lmdb")
    keys = KeyDraw(scale, "uniform", seed=2)
    rows = []
    for pattern in shapes:
        if pattern.round_trips != 1:
            continue  # the same keys as the one-batch pattern
        timings: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            user, products = pattern.draw(keys)
            queries = (
                [Query("product", {"product_id": products})]
                if pattern.products == 0
                else batch_of(user, products)
            )
            started = time.perf_counter()
            for query in queries:
                encoded = encode_keys(catalog.entity(query.entity), dict(query.keys))
                storage.read_sync(GROUP_OF[query.entity], encoded)
            timings.append(time.perf_counter() - started)
        row = summarise(pattern.name, "raw LMDB read", 1, timings, seconds, 0, keys="uniform")
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


def values_per_row(store: Path) -> dict[str, int]:
    """Feature values one key returns per entity (a float32[16] counts 16)."""
    from inferstack.configstore.files import FileConfigStore

    catalog = Catalog(FileConfigStore(store).load())
    counts: dict[str, int] = {}
    for codec in catalog.codecs.values():
        entity = codec.definition.entity
        counts[entity] = counts.get(entity, 0) + sum(
            max(1, f.type.length) for f in codec.definition.features
        )
    return counts


def serve_command(store: Path, port: int, workers: int, cache_mb: int) -> list[str]:
    return [
        sys.executable, "-m", "inferstack.cli.main", "serve",
        "--data-dir", str(store), "--port", str(port), "--http-port", "-1",
        "--workers", str(workers), "--cache-mb", str(cache_mb), "--log-level", "WARNING",
    ]  # fmt: skip


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


def _list(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--cache-mb", default="0,256", help="in-process cache sizes to run")
    parser.add_argument("--keys", default="uniform,zipf", help="product key distributions")
    parser.add_argument("--in-flight", default="1,16,64")
    parser.add_argument("--patterns", default="", help="indexes of the patterns to run, e.g. 0,1")
    args = parser.parse_args()
    in_flights: list[int] = [int(n) for n in _list(args.in_flight)]
    distributions: list[str] = _list(args.keys)

    _, store = prepare_data(args.scale)
    shapes = patterns(values_per_row(store))
    if args.patterns:
        shapes = [shapes[i] for i in [int(n) for n in _list(args.patterns)]]
    print(f"{args.workers} workers, data scale {args.scale:g}, load {os.getloadavg()[0]:.2f}")
    print(HEADER)
    rows: list[Row] = []
    memory: dict[str, list[dict[str, int]]] = {}
    answers: dict[str, dict[bytes, bytes]] = {}
    for cache_mb in [int(n) for n in _list(args.cache_mb)]:
        port = free_port("127.0.0.1")
        target = f"127.0.0.1:{port}"
        server = start(serve_command(store, port, args.workers, cache_mb), target)
        cache = "off" if cache_mb == 0 else f"{cache_mb} MiB"
        try:
            if not answers:
                answers = record_answers(target, shapes, args.scale)
            rows += run_patterns(
                "inferstack serve", target, shapes, args.scale, distributions, in_flights,
                args.seconds, [server.pid], cache,
            )  # fmt: skip
            read_everything(target, args.scale, args.workers)
            memory[cache] = worker_memory(server.pid)
        finally:
            stop(server)

    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as handle:
        pickle.dump(answers, handle)
    ceiling_port = free_port("127.0.0.1")
    ceiling_target = f"127.0.0.1:{ceiling_port}"
    ceiling = start(
        [sys.executable, str(ROOT / "bench" / "ceiling_server.py"), handle.name,
         str(ceiling_port), str(args.workers)],
        ceiling_target,
    )  # fmt: skip
    try:
        rows += run_patterns(
            "empty call (ceiling)", ceiling_target, shapes, args.scale, ["uniform"], in_flights,
            args.seconds, [ceiling.pid], "",
        )  # fmt: skip
    finally:
        stop(ceiling)
        os.unlink(handle.name)
    rows += raw_lmdb(store, shapes, args.scale, args.seconds)

    for cache, workers in memory.items():
        print(f"worker memory after reading every row once, cache {cache}: {workers}")
    for row in rows:
        if row.target != "inferstack serve" or row.in_flight == 1 or row.keys != "uniform":
            continue
        empty = next(
            (r for r in rows if r.shape == row.shape and r.in_flight == row.in_flight
             and r.target.startswith("empty")), None,
        )  # fmt: skip
        if empty:
            share = 100 * row.requests_per_s / empty.requests_per_s
            print(
                f"{row.shape}, cache {row.cache}, {row.in_flight} in flight: "
                f"{share:.0f}% of the empty-call ceiling"
            )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"featurestore-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {"args": vars(args), "rows": [asdict(r) for r in rows], "memory": memory}, indent=1
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
