"""Inferflow benchmark: the sample ranker served by `inferstack serve`, measured as users call it.

One request = 1 user x N candidate products (default N = 100 and 500): three entity hops (user,
product, user x the product's category), two ONNX models (pctr, pcvr) and the expressions of
`ranker.yaml`. Every request is drawn fresh from the whole data set, outside the timed part: a
random user; half of the candidates from that user's own categories, half uniformly at random.

Targets, each for --seconds at every --in-flight value, in the same run:
  1. inferflow: the public AsyncInferflowClient (2 connections) with explain=True; client
     latency plus the server's time per stage (fetch / model / the rest = orchestration)
  2. ceiling "feature-store calls alone": the same keys through the public
     AsyncFeatureStoreClient, as a caller without inferflow would fetch them: user + products
     in one RetrieveBatch, then user x category keyed by each product's category_id
  3. ceiling "empty call": a gRPC server on the same stack answering Infer with a prebuilt
     response of the real size (gRPC and the client's decoding, no inferflow work)
  4. ceiling "model calls alone": onnxruntime sessions of pctr.onnx and pcvr.onnx in this
     process (intra-op threads 1) on a random float32 matrix of the same shape, 1 in flight
Server CPU per request = utime + stime of the server's worker processes (/proc) over a window,
divided by the requests completed in it.

    python bench/inferflow.py [--seconds 10] [--scale 1.0] [--workers 2] [--shapes 100,500]
                              [--in-flight 1,16]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import launch
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml
from procstat import cpu_seconds, worker_pids

from inferstack.client import AsyncFeatureStoreClient, AsyncInferflowClient, Query, Scores
from inferstack.proto.inferflow.v1 import inferflow_pb2 as pb
from inferstack.proto.inferflow.v1 import inferflow_pb2_grpc as pb_grpc
from inferstack.sampledata.generate import CATEGORIES, GROUP_FILES, generate
from inferstack.sampledata.models import train
from inferstack.server.supervisor import free_port
from inferstack.wire.inferflow import request_to_proto

ROOT = Path(__file__).resolve().parent.parent
BENCH_DATA = ROOT / "bench" / ".data"
RESULTS = ROOT / "bench" / "results"
MODEL = "ranker"
INFER_METHOD = "/inferstack.inferflow.v1.Inferflow/Infer"
CONNECTIONS = 2  # client connections: SO_REUSEPORT spreads connections, not calls, over workers
WARM_UP_REQUESTS = 20  # per window, untimed: connections, lazy set-up
MAX_REQUESTS = 200_000  # per window: every loop stops by time and by count
START_TIMEOUT = 120.0
TARGETS = {  # issue 6: 2-core machine, embedded, 2 workers, 1 in flight
    100: 4.0,
    500: 10.0,
}
ORCHESTRATION_TARGET = 0.15
Result = TypeVar("Result")
IntArray = npt.NDArray[np.int64]


@dataclass
class Row:
    shape: str
    target: str
    in_flight: int
    requests: int
    wall_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    requests_per_s: float
    server_cpu_ms: float | None  # per request, workers' utime + stime; None: in process
    client_cpu_ms: float  # per request, this process (client or in-process ceiling)
    worker_cpu_share: list[float] = field(default_factory=list)  # of server CPU, per worker
    note: str = ""


@dataclass
class StageSplit:
    """Where an inferflow request's time goes, from `explain`, over one window."""

    shape: str
    in_flight: int
    requests: int
    stages: dict[str, dict[str, float]]  # stage -> {"mean_ms", "p50_ms"}, in server order
    groups: dict[str, dict[str, float]]  # fetch, model, orchestration, server, client
    orchestration_of_server: float  # server orchestration / server total (sum over requests)
    orchestration_of_client: float  # server orchestration / client total
    client_minus_fetch_model: float  # (client total - fetch - model) / client total


# --- data ---------------------------------------------------------------------------------


def cli(*args: str, data_dir: Path) -> None:
    env = {**os.environ, "INFERSTACK_DATA_DIR": str(data_dir)}
    subprocess.run([sys.executable, "-m", "inferstack.cli.main", *args], env=env, check=True)


def prepare_data(scale: float) -> tuple[Path, Path]:
    """Sample data (shared with the feature store benchmarks), the trained models next to it,
    and an embedded store with definitions, the ranker and all three groups ingested."""
    sample = BENCH_DATA / f"sample-{scale:g}"
    store = BENCH_DATA / f"inferflow-store-{scale:g}"
    if not (sample / "user_category.parquet").exists():
        print(f"generating sample data at scale {scale:g} ...", flush=True)
        generate(sample, scale=scale)
    if not (sample / "ranker.yaml").exists():  # train writes the ONNX files first, this last
        print("training pctr and pcvr ...", flush=True)
        train(sample, sample)
    if not (store / "ready").exists():
        cli("apply", "-f", str(sample), data_dir=store)
        for group, file in GROUP_FILES.items():
            cli("ingest", "-g", group, str(sample / file), data_dir=store)
        (store / "ready").touch()
    return sample, store


def fetch_selectors(sample: Path) -> dict[str, list[str]]:
    """The ranker's fetches: name -> the feature selectors it reads (from ranker.yaml)."""
    config = yaml.safe_load((sample / "ranker.yaml").read_text())["models"][0]
    return {fetch["name"]: list(fetch["features"]) for fetch in config["fetches"]}


class CandidateSampler:
    """Fresh requests over the whole data set: a random user; half of the candidates from the
    user's own categories (product_id % 400 is its category), half uniformly at random."""

    def __init__(self, sample: Path) -> None:
        self.users = pq.read_metadata(sample / GROUP_FILES["user_profile"]).num_rows
        self.products = pq.read_metadata(sample / GROUP_FILES["product_stats"]).num_rows
        pairs = pq.read_table(
            sample / GROUP_FILES["user_category_affinity"], columns=["user_id", "category_id"]
        )
        pair_users = pairs["user_id"].to_numpy()
        numbers = pc.cast(pc.utf8_slice_codeunits(pairs["category_id"], 1), pa.int64())
        order = np.argsort(pair_users, kind="stable")
        self.pair_categories = numbers.to_numpy()[order]
        # categories of user u: pair_categories[first[u] : first[u + 1]]
        self.first = np.searchsorted(pair_users[order], np.arange(self.users + 2), "left")
        self.in_category = [
            np.arange(c or CATEGORIES, self.products + 1, CATEGORIES, dtype=np.int64)
            for c in range(CATEGORIES)
        ]

    def draw(self, rng: np.random.Generator, count: int) -> tuple[int, IntArray]:
        if count > self.products:
            raise SystemExit(f"{count} candidates asked, the data has {self.products} products")
        user = int(rng.integers(1, self.users + 1))
        categories = self.pair_categories[self.first[user] : self.first[user + 1]]
        own = (
            np.concatenate([self.in_category[c] for c in categories.tolist()])
            if len(categories)
            else np.empty(0, dtype=np.int64)
        )
        chosen = rng.choice(own, min(len(own), count // 2), replace=False) if len(own) else own
        # `count` distinct products at random: dropping those already chosen leaves enough.
        rest = rng.choice(self.products, count, replace=False).astype(np.int64) + 1
        if len(chosen):
            taken = set(chosen.tolist())
            mine = np.zeros(CATEGORIES, dtype=np.bool_)
            mine[categories] = True
            maybe = np.flatnonzero(mine[rest % CATEGORIES])  # in the user's categories: few
            rest = np.delete(rest, [i for i in maybe.tolist() if int(rest[i]) in taken])
        candidates = np.concatenate([chosen, rest[: count - len(chosen)]])
        rng.shuffle(candidates)
        return user, candidates


# --- processes ----------------------------------------------------------------------------


def start_server(store: Path, workers: int) -> launch.RunningServer:
    """`inferstack serve` on a free port, HTTP off; returns once every worker is ready."""
    return launch.start_server(
        *("--data-dir", str(store), "--log-level", "WARNING"),
        log=store / "serve.log",
        http=False,
        workers=workers,
        own_group=True,  # a failed start takes its workers along
        timeout=START_TIMEOUT,
    )


class EmptyInferflow(pb_grpc.InferflowServicer):  # type: ignore[misc]  # generated
    """Answers Infer with the recorded response for the request's number of candidates."""

    def __init__(self, canned: dict[int, pb.InferResponse]) -> None:
        self.canned = canned

    async def Infer(  # noqa: N802 (gRPC method name)
        self, request: pb.InferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InferResponse:
        rows = max(len(c.int64_values) + len(c.string_values) for c in request.context)
        return self.canned[rows]


async def _serve_empty(canned: dict[int, bytes], port: int, ready: Any) -> None:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 1), ("grpc.max_send_message_length", 64 << 20)]
    )
    responses = {rows: pb.InferResponse.FromString(data) for rows, data in canned.items()}
    pb_grpc.add_InferflowServicer_to_server(EmptyInferflow(responses), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.put(os.getpid())
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def _empty_worker(canned: dict[int, bytes], port: int, ready: Any) -> None:
    import uvloop  # the real workers' loop

    uvloop.run(_serve_empty(canned, port, ready))


def start_empty_ceiling(
    canned: dict[int, bytes], workers: int
) -> tuple[list[multiprocessing.process.BaseProcess], str]:
    """The empty-call ceiling: `workers` processes sharing one port, like `inferstack serve`."""
    context = multiprocessing.get_context("spawn")
    port = free_port("127.0.0.1")
    ready = context.Queue()
    processes: list[multiprocessing.process.BaseProcess] = [
        context.Process(target=_empty_worker, args=(canned, port, ready)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    try:
        for _ in processes:
            ready.get(timeout=START_TIMEOUT)
    except queue.Empty:
        stop_processes(processes)
        raise SystemExit("the empty-call ceiling server did not start") from None
    return processes, f"127.0.0.1:{port}"


def stop_processes(processes: Sequence[multiprocessing.process.BaseProcess]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.join(10)


# --- measuring ----------------------------------------------------------------------------


async def run_window(
    draw: Callable[[], tuple[int, IntArray]],
    call: Callable[[int, IntArray], Awaitable[Result]],
    seconds: float,
    in_flight: int,
    server: Sequence[int],
    label: tuple[str, str],
) -> tuple[Row, list[tuple[float, Result]]]:
    """Keep `in_flight` calls outstanding for `seconds`; each request is drawn fresh before
    its timer starts. Returns the row and (client seconds, result) per request."""
    for _ in range(WARM_UP_REQUESTS):
        await call(*draw())
    results: list[tuple[float, Result]] = []
    issued = itertools.count()
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < deadline and next(issued) < MAX_REQUESTS:
            user, candidates = draw()
            started = time.perf_counter()
            result = await call(user, candidates)
            results.append((time.perf_counter() - started, result))

    server_before, client_before = cpu_seconds(server), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    server_cpu = cpu_seconds(server) - server_before
    client_cpu = time.process_time() - client_before
    row = summarise(label, in_flight, [t for t, _ in results], wall, client_cpu)
    if server:
        row.server_cpu_ms = 1e3 * float(server_cpu.sum()) / max(row.requests, 1)
        # Whether the calls reached every worker: each one's share of the server CPU.
        row.worker_cpu_share = [
            round(float(c / max(server_cpu.sum(), 1e-9)), 3) for c in server_cpu
        ]
    return row, results


def summarise(
    label: tuple[str, str], in_flight: int, timings: list[float], wall: float, client_cpu: float
) -> Row:
    count = max(len(timings), 1)
    ms = np.array(timings or [np.nan]) * 1e3
    p50, p95, p99 = (float(v) for v in np.percentile(ms, [50, 95, 99]))
    shape, target = label
    return Row(
        shape, target, in_flight, len(timings), wall, p50, p95, p99,
        len(timings) / wall, None, 1e3 * client_cpu / count,
    )  # fmt: skip


def shape_name(candidates: int) -> str:
    return f"1 user x {candidates} candidates"


def request_stream(sampler: CandidateSampler, seed: int, candidates: int) -> Any:
    """The same seed gives every target the same sequence of fresh requests."""
    rng = np.random.default_rng(seed)
    return lambda: sampler.draw(rng, candidates)


async def measure_server(
    target: str,
    server: Sequence[int],
    sampler: CandidateSampler,
    selectors: dict[str, list[str]],
    args: argparse.Namespace,
) -> tuple[list[Row], list[StageSplit]]:
    rows: list[Row] = []
    splits: list[StageSplit] = []
    inferflow = AsyncInferflowClient(target, connections=CONNECTIONS)
    # Separate clients, each with its own connection, as separate caller processes would be.
    stores = [AsyncFeatureStoreClient(target, connections=1) for _ in range(CONNECTIONS)]
    next_store = itertools.cycle(stores).__next__

    async def infer(user: int, candidates: IntArray) -> Scores:
        scores = await inferflow.infer(
            MODEL, {"user_id": user, "product_ids": candidates}, explain=True
        )
        if scores.count != len(candidates):
            raise SystemExit(f"inferflow answered {scores.count} rows for {len(candidates)}")
        return scores

    async def fetch_alone(user: int, candidates: IntArray) -> None:
        _, products = await next_store().retrieve_batch(
            [
                Query("user", {"user_id": [user]}, selectors["user"]),
                Query("product", {"product_id": candidates}, selectors["product"]),
            ]
        )
        category = next(name for name in products.columns if name.endswith(".category_id"))
        keys = {"user_id": np.full(len(candidates), user), "category_id": products[category]}
        await next_store().retrieve_batch([Query("user_category", keys, selectors["affinity"])])

    try:
        for candidates, in_flight in itertools.product(args.shapes, args.in_flight):
            shape, seed = shape_name(candidates), candidates * 1000 + in_flight
            row, results = await run_window(
                request_stream(sampler, seed, candidates), infer, args.seconds, in_flight,
                server, (shape, "inferflow"),
            )  # fmt: skip
            print(format_row(row), flush=True)
            rows.append(row)
            splits.append(stage_split(shape, in_flight, results))
            row, _ = await run_window(
                request_stream(sampler, seed, candidates), fetch_alone, args.seconds, in_flight,
                server, (shape, "feature-store calls alone (ceiling)"),
            )  # fmt: skip
            print(format_row(row), flush=True)
            rows.append(row)
    finally:
        await inferflow.close()
        for store in stores:
            await store.close()
    return rows, splits


async def measure_empty(
    target: str, server: Sequence[int], sampler: CandidateSampler, args: argparse.Namespace
) -> list[Row]:
    rows = []
    async with AsyncInferflowClient(target, connections=CONNECTIONS) as client:

        async def infer(user: int, candidates: IntArray) -> Scores:
            return await client.infer(
                MODEL, {"user_id": user, "product_ids": candidates}, explain=True
            )

        for candidates, in_flight in itertools.product(args.shapes, args.in_flight):
            label = (shape_name(candidates), "empty call (ceiling)")
            stream = request_stream(sampler, candidates * 1000 + in_flight, candidates)
            row, _ = await run_window(stream, infer, args.seconds, in_flight, server, label)
            print(format_row(row), flush=True)
            rows.append(row)
    return rows


def record_responses(
    target: str, sampler: CandidateSampler, shapes: Sequence[int]
) -> dict[int, bytes]:
    """One real Infer response (explain on) per shape, for the empty-call ceiling."""
    rng = np.random.default_rng(1)
    canned = {}
    with grpc.insecure_channel(
        target, options=[("grpc.max_receive_message_length", 64 << 20)]
    ) as channel:
        call = channel.unary_unary(
            INFER_METHOD, request_serializer=None, response_deserializer=None
        )
        for candidates in shapes:
            user, products = sampler.draw(rng, candidates)
            request = request_to_proto(
                MODEL, {"user_id": user, "product_ids": products}, explain=True
            )
            canned[candidates] = call(request.SerializeToString(), timeout=30)
    return canned


def model_ceiling(sample: Path, shapes: Sequence[int], seconds: float) -> list[Row]:
    """pctr then pcvr on random float32 matrices of the served shape, in this process."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as the server's runtime: one thread per call
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sessions = [
        ort.InferenceSession(str(sample / name), options, providers=["CPUExecutionProvider"])
        for name in ("pctr.onnx", "pcvr.onnx")
    ]
    inputs = [(s, s.get_inputs()[0].name, int(s.get_inputs()[0].shape[1])) for s in sessions]
    rng = np.random.default_rng(5)
    rows = []
    for candidates in shapes:
        for session, name, width in inputs:  # warm: lazy set-up on first call
            session.run(None, {name: np.zeros((candidates, width), dtype=np.float32)})
        timings: list[float] = []
        client_before = time.process_time()
        started = deadline = time.perf_counter()
        deadline += seconds
        while time.perf_counter() < deadline and len(timings) < MAX_REQUESTS:
            matrices = [rng.random((candidates, width), dtype=np.float32) for _, _, width in inputs]
            call_started = time.perf_counter()
            for (session, name, _), matrix in zip(inputs, matrices, strict=True):
                session.run(None, {name: matrix})
            timings.append(time.perf_counter() - call_started)
        wall = time.perf_counter() - started
        label = (shape_name(candidates), "model calls alone (ceiling)")
        row = summarise(label, 1, timings, wall, time.process_time() - client_before)
        row.note = "in process; requests/s of back-to-back call pairs incl. matrix generation"
        print(format_row(row), flush=True)
        rows.append(row)
    return rows


# --- stage split --------------------------------------------------------------------------


def stage_group(stage: str) -> str:
    if stage.startswith("fetch "):
        return "fetch"
    if stage.startswith("model "):
        return "model"
    return "orchestration"


def stage_split(shape: str, in_flight: int, results: list[tuple[float, Scores]]) -> StageSplit:
    if not results:
        raise SystemExit(f"{shape}, {in_flight} in flight: no request completed")
    per_stage: dict[str, list[float]] = {}
    groups: dict[str, list[float]] = {"fetch": [], "model": [], "orchestration": []}
    server: list[float] = []
    for _, scores in results:
        totals = dict.fromkeys(groups, 0.0)
        for stage, ms in scores.timings:
            per_stage.setdefault(stage, []).append(ms)
            totals[stage_group(stage)] += ms
        for name, total in totals.items():
            groups[name].append(total)
        server.append(sum(totals.values()))
    client = [1e3 * seconds for seconds, _ in results]

    def stats(values: list[float]) -> dict[str, float]:
        return {"mean_ms": float(np.mean(values)), "p50_ms": float(np.median(values))}

    sums = {name: float(np.sum(values)) for name, values in groups.items()}
    client_sum, server_sum = float(np.sum(client)), float(np.sum(server))
    return StageSplit(
        shape,
        in_flight,
        len(results),
        {stage: stats(values) for stage, values in per_stage.items()},
        {
            **{name: stats(values) for name, values in groups.items()},
            "server total (explain)": stats(server),
            "client total": stats(client),
        },
        sums["orchestration"] / server_sum,
        sums["orchestration"] / client_sum,
        (client_sum - sums["fetch"] - sums["model"]) / client_sum,
    )


# --- output -------------------------------------------------------------------------------

HEADER = (
    "| shape | target | in flight | p50 ms | p95 ms | p99 ms | requests/s "
    "| server CPU ms/request | client CPU ms/request |\n|---|---|---|---|---|---|---|---|---|"
)


def format_row(row: Row) -> str:
    server = f"{row.server_cpu_ms:.2f}" if row.server_cpu_ms is not None else "-"
    return (
        f"| {row.shape} | {row.target} | {row.in_flight} | {row.p50_ms:.2f} | {row.p95_ms:.2f} | "
        f"{row.p99_ms:.2f} | {row.requests_per_s:,.0f} | {server} | {row.client_cpu_ms:.2f} |"
    )


def print_splits(splits: list[StageSplit]) -> None:
    print("\nTime per stage (server, from explain; 'client total' is the client's latency):")
    print("| shape | in flight | stage | mean ms | p50 ms |\n|---|---|---|---|---|")
    for split in splits:
        for stage, values in [*split.stages.items(), *split.groups.items()]:
            name = stage if stage in split.stages else f"**{stage}**"
            print(
                f"| {split.shape} | {split.in_flight} | {name} | {values['mean_ms']:.3f} "
                f"| {values['p50_ms']:.3f} |"
            )
    print("\nOrchestration (everything but fetch and model stages):")
    print(
        "| shape | in flight | of server total | of client total "
        "| (client - fetch - model) / client |\n|---|---|---|---|---|"
    )
    for split in splits:
        print(
            f"| {split.shape} | {split.in_flight} | {split.orchestration_of_server:.1%} "
            f"| {split.orchestration_of_client:.1%} | {split.client_minus_fetch_model:.1%} |"
        )


def verdicts(rows: list[Row], splits: list[StageSplit], shapes: Sequence[int]) -> list[str]:
    lines = []

    def find(shape: str, target: str, in_flight: int) -> Row | None:
        return next(
            (r for r in rows if (r.shape, r.target, r.in_flight) == (shape, target, in_flight)),
            None,
        )

    def verdict(value: float, goal: float) -> str:
        return "met" if value <= goal else "missed"

    for candidates in shapes:
        shape = shape_name(candidates)
        served = find(shape, "inferflow", 1)
        fetch = find(shape, "feature-store calls alone (ceiling)", 1)
        model = find(shape, "model calls alone (ceiling)", 1)
        empty = find(shape, "empty call (ceiling)", 1)
        if served is None:
            continue
        line = f"{shape}, 1 in flight: p99 {served.p99_ms:.2f} ms"
        goal = TARGETS.get(candidates)
        if goal is not None:
            line += f" (target <= {goal:g} ms: {verdict(served.p99_ms, goal)})"
        if fetch is not None and model is not None:
            floor = fetch.p50_ms + model.p50_ms
            line += (
                f"; p50 {served.p50_ms:.2f} ms = {served.p50_ms / floor:.2f}x feature-store "
                f"calls alone + model calls alone ({fetch.p50_ms:.2f} + {model.p50_ms:.2f} ms)"
            )
        if empty is not None:
            line += f"; empty call p50 {empty.p50_ms:.2f} ms"
        lines.append(line)
    for split in splits:
        server, client = split.orchestration_of_server, split.client_minus_fetch_model
        lines.append(
            f"{split.shape}, {split.in_flight} in flight: orchestration = {server:.1%} of the "
            f"server's time (target <= {ORCHESTRATION_TARGET:.0%} read as server time: "
            f"{verdict(server, ORCHESTRATION_TARGET)}); client total - fetch - model = "
            f"{client:.1%} of the client's time (read as client time, gRPC and decoding "
            f"included: {verdict(client, ORCHESTRATION_TARGET)})"
        )
    return lines


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,16, got '{text}'")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="sample data size")
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--shapes", type=int_list, default=[100, 500], help="candidates")
    parser.add_argument("--in-flight", type=int_list, default=[1, 16])
    args = parser.parse_args()

    load_start = os.getloadavg()
    sample, store = prepare_data(args.scale)
    sampler = CandidateSampler(sample)
    selectors = fetch_selectors(sample)
    probe = np.random.default_rng(0)
    started = time.perf_counter()
    for _ in range(200):
        sampler.draw(probe, max(args.shapes))
    draw_us = (time.perf_counter() - started) / 200 * 1e6

    notes = [
        f"drawing one request ({max(args.shapes)} candidates) takes {draw_us:.0f} us in the "
        "client, before its timer starts",
        "feature-store ceiling: AsyncFeatureStoreClient takes no channel options, so its "
        "module's CHANNEL_OPTIONS got grpc.use_local_subchannel_pool while creating "
        f"{CONNECTIONS} clients (one connection each, used in turn), like the inferflow client",
        "feature-store ceiling: the user x category call has one key per candidate, as a "
        "caller would send it; inferflow sends each distinct (user, category) once",
        "explain stages run from the decoded request to the built response: gRPC's own "
        "parsing and serialisation are outside them (the empty call shows that cost); with "
        "several requests in flight a stage also includes waiting for the worker's event loop",
    ]
    print(
        f"data scale {args.scale:g}: {sampler.users:,} users, {sampler.products:,} products; "
        f"server: {args.workers} workers, embedded; load average {load_start[0]:.2f}"
    )
    for note in notes:
        print(f"note: {note}")
    print(HEADER)
    server = start_server(store, args.workers)
    target = server.grpc_target
    try:
        pids = worker_pids(server.pid)
        if len(pids) != args.workers:
            raise SystemExit(f"expected {args.workers} workers under {server.pid}, found {pids}")
        rows, splits = asyncio.run(measure_server(target, pids, sampler, selectors, args))
        if sorted(worker_pids(server.pid)) != sorted(pids):
            notes.append(f"a worker was restarted during the run: {pids} -> CPU figures are off")
        canned = record_responses(target, sampler, args.shapes)
    finally:
        server.stop_or_kill()

    processes, empty_target = start_empty_ceiling(canned, args.workers)
    try:
        empty_pids = [p.pid for p in processes if p.pid is not None]
        rows += asyncio.run(measure_empty(empty_target, empty_pids, sampler, args))
    finally:
        stop_processes(processes)
    rows += model_ceiling(sample, args.shapes, args.seconds)

    print_splits(splits)
    print()
    lines = verdicts(rows, splits, args.shapes)
    for line in lines:
        print(line)
    load_end = os.getloadavg()
    print(f"load average: {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"inferflow-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps(
            {
                "args": vars(args),
                "data": {"users": sampler.users, "products": sampler.products},
                "load_average": {"start": load_start, "end": load_end},
                "notes": notes,
                "rows": [asdict(r) for r in rows],
                "stages": [asdict(s) for s in splits],
                "verdicts": lines,
            },
            indent=1,
        )
    )
    print(f"results: {out}")


if __name__ == "__main__":
    main()
