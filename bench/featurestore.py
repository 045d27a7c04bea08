"""Feature store benchmark, embedded: `inferstack serve` on LMDB, called as callers call it.

Every request draws fresh keys from the whole data set (users uniform, products uniform or
Zipf s = 1.1) and goes through the public clients (bench/traffic.py), with the in-process
cache off (the embedded default) and on. Patterns (--patterns indexes), all features of
every group:
  0 (a) 1 user + 100 products + their 100 user x category rows, in one RetrieveBatch, and
  1     in two round trips (the second keyed by the categories the first returned)
  2 (b) the same with 500 products, one RetrieveBatch
  3 (c) one product
  4 (p1) Persist of one product's product_stats row (--no-persist: reads only)
  5 (p100) Persist of 100 products' rows: each Persist writes to LMDB, then drops the keys
      from the in-process caches, publishing them on the file config store's key feed
Each at 1, 16 and 64 requests in flight, with the server's CPU per request read from /proc,
next to two ceilings measured in the same run with the same traffic:
  - empty call: a gRPC server on the same stack returning recorded answers of the same size,
    called through the same clients (so client decoding is in the ceiling too); a Persist
    gets its row count back
  - raw LMDB: encoding the same keys and reading them from LMDB in this process (no decode);
    for a Persist, encoding keys and rows and writing them in one LMDB transaction
Also reports each worker's memory after reading every stored row once.

    python bench/featurestore.py [--seconds 3] [--scale 1.0] [--workers N] [--no-persist]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import launch
import numpy as np
from traffic import (
    PERSIST_GROUP,
    KeyDraw,
    Pattern,
    Persist,
    Read,
    Window,
    batch_of,
    derived_keys,
    measure,
    patterns,
    persist_patterns,
)

from inferstack.client.featurestore import Query, build_request, column_of, decode_response
from inferstack.core.keys import encode_keys
from inferstack.featurestore.catalog import Catalog
from inferstack.kv.lmdb import LmdbStorage
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
    rows_per_s: float  # rows returned or written
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


def summarise(
    shape: str,
    target: str,
    in_flight: int,
    timings: list[float],
    seconds: float,
    values: int,
    rows: int,
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
        shape, target, in_flight, len(timings), p50, p95, p99, rate, rate * values, rate * rows,
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
        pattern.rows,
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
        f"{row.values_per_s / 1e6:,.2f} | {row.rows_per_s:,.0f} | {cpu} | {row.errors} |"
    )


HEADER = (
    "| pattern | target | keys | cache | in flight | p50 ms | p95 ms | p99 ms | requests/s | "
    "M values/s | rows/s | server CPU ms/req | errors |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
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
    """One real answer per RPC each read pattern makes, replayed by the empty-call ceiling
    (which answers a Persist with its row count: nothing to record)."""
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
            if not isinstance(pattern, Read):
                continue
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
    """Each pattern's storage work alone, in this process, one request at a time: a read
    encodes the keys and reads every row from LMDB; a Persist encodes keys and rows and
    writes them in one transaction (as the server does; no invalidation, no transport)."""
    catalog = catalog_of(store)
    storage = LmdbStorage(store / "lmdb")
    keys = KeyDraw(scale, "uniform", seed=2)
    rows = []
    try:
        for pattern in shapes:
            if isinstance(pattern, Persist):
                target = "raw LMDB write"
                timings = raw_write(catalog, storage, pattern, keys, seconds)
            elif isinstance(pattern, Read) and pattern.round_trips == 1:
                target = "raw LMDB read"
                timings = raw_read(catalog, storage, pattern, keys, seconds)
            else:
                continue  # two round trips: the same keys as the one-batch pattern
            row = summarise(
                pattern.name, target, 1, timings, seconds, 0, pattern.rows, keys="uniform"
            )
            print(format_row(row), flush=True)
            rows.append(row)
    finally:
        storage.close_sync()
    return rows


def raw_read(
    catalog: Catalog, storage: LmdbStorage, pattern: Read, keys: KeyDraw, seconds: float
) -> list[float]:
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
    return timings


def raw_write(
    catalog: Catalog, storage: LmdbStorage, pattern: Persist, keys: KeyDraw, seconds: float
) -> list[float]:
    codec = catalog.codecs[PERSIST_GROUP]
    entity = catalog.entity(codec.definition.entity)
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        _, products = pattern.draw(keys)
        key_columns, features = pattern.request(products)
        started = time.perf_counter()
        encoded = encode_keys(entity, dict(key_columns))
        columns = {name: column_of(values)[1] for name, values in features.items()}
        encoded_rows = codec.current.encode(columns, len(encoded), codec.expiry_for(time.time()))
        storage.write_sync(PERSIST_GROUP, list(zip(encoded, encoded_rows, strict=True)))
        timings.append(time.perf_counter() - started)
    return timings


def catalog_of(store: Path) -> Catalog:
    from inferstack.configstore.files import open_files

    return Catalog(open_files(store).registry.load())


def values_per_row(store: Path) -> dict[str, int]:
    """Feature values one key returns per entity (a float32[16] counts 16)."""
    catalog = catalog_of(store)
    counts: dict[str, int] = {}
    for codec in catalog.codecs.values():
        entity = codec.definition.entity
        counts[entity] = counts.get(entity, 0) + sum(
            max(1, f.type.length) for f in codec.definition.features
        )
    return counts


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
    parser.add_argument(
        "--patterns", default="", help="indexes of the patterns to run (see above), e.g. 0,3,5"
    )
    parser.add_argument(
        "--persist",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the Persist patterns (4, 5): writes rows into the bench store",
    )
    args = parser.parse_args()
    in_flights: list[int] = [int(n) for n in _list(args.in_flight)]
    distributions: list[str] = _list(args.keys)

    sample, store = prepare_data(args.scale)
    shapes = patterns(values_per_row(store)) + persist_patterns(catalog_of(store), sample)
    if args.patterns:
        shapes = [shapes[i] for i in [int(n) for n in _list(args.patterns)]]
    if not args.persist:
        shapes = [shape for shape in shapes if not isinstance(shape, Persist)]
    print(f"{args.workers} workers, data scale {args.scale:g}, load {os.getloadavg()[0]:.2f}")
    print(HEADER)
    rows: list[Row] = []
    memory: dict[str, list[dict[str, int]]] = {}
    answers: dict[str, dict[bytes, bytes]] = {}
    for cache_mb in [int(n) for n in _list(args.cache_mb)]:
        server = launch.start_server(
            "--data-dir", str(store), "--cache-mb", str(cache_mb), "--log-level", "WARNING",
            log=store / "serve.log", http=False, workers=args.workers,
        )  # fmt: skip
        target = server.grpc_target
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
            server.stop_or_kill()

    with tempfile.NamedTemporaryFile(suffix=".pickle", delete=False) as handle:
        pickle.dump(answers, handle)
    ceiling_port = free_port("127.0.0.1")
    ceiling_target = f"127.0.0.1:{ceiling_port}"
    ceiling = launch.start(
        [sys.executable, str(ROOT / "bench" / "ceiling_server.py"), handle.name,
         str(ceiling_port), str(args.workers)],
        ceiling_target, log=store / "ceiling.log",
    )  # fmt: skip
    try:
        rows += run_patterns(
            "empty call (ceiling)", ceiling_target, shapes, args.scale, ["uniform"], in_flights,
            args.seconds, [ceiling.pid], "",
        )  # fmt: skip
    finally:
        ceiling.stop_or_kill()
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
