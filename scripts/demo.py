"""`make demo`: the feature store, inferflow and the interaction store end to end on the
embedded default.

Generates the sample data, trains the sample pCTR and pCVR models and exports them to ONNX,
applies the definitions and the ranker's model config, ingests the data, starts
`inferstack serve`, fetches one user, 100 products and their 100 user x category rows
through the feature store client, ranks the same 100 products for the user with
`inferstack infer ranker ...` (top 10, both scores, the final score, the time of each
stage), replays a day of synthetic events for the sample users and shows user 42's clicks
and orders, lets them go idle (a 15-second inactivity for the demo) until the sweepers have
moved them to the cold tier, hydrates the user back into the hot tier and reads again, and
stops the server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.console import Console
from rich.table import Table

from inferstack.client import FeatureStoreClient, InteractionsClient, Query
from inferstack.sampledata.generate import (
    FULL_SIZES,
    GROUP_FILES,
    candidate_products,
    category_of,
    definitions_text,
    generate,
)
from inferstack.server.supervisor import free_port

ROOT = Path(__file__).resolve().parent.parent
USER_ID = 42
DEMO_INACTIVITY = "15s"  # long enough to see the user hot first
EVENT_TYPES = ("click", "add_to_cart", "order", "wishlist", "share")
console = Console()


def run(*args: str, data_dir: Path) -> None:
    shown = [arg if len(arg) <= 60 else f"{arg[:48]}...({arg.count(',') + 1} ids)" for arg in args]
    console.print(f"[bold cyan]$ inferstack {' '.join(shown)}[/]", highlight=False)
    env = {"COLUMNS": "120", **os.environ, "INFERSTACK_DATA_DIR": str(data_dir)}
    subprocess.run([sys.executable, "-m", "inferstack.cli.main", *args], env=env, check=True)


def wait_until_serving(target: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit(f"inferstack serve exited with {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise SystemExit("inferstack serve did not answer within 60 s")


def fetch(client: FeatureStoreClient, user_id: int, products: list[int]) -> list[Query]:
    return [
        Query("user", {"user_id": [user_id]}),
        Query("product", {"product_id": products}),
        Query(
            "user_category",
            {"user_id": [user_id] * len(products), "category_id": category_of(np.array(products))},
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=0.1, help="1.0 = the full sample set")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    base = ROOT / ".demo"
    sample, data_dir = base / f"sample-{args.scale:g}", base / "data"
    if not (sample / "user_category.parquet").exists():
        with console.status(f"generating sample data (scale {args.scale:g})"):
            generate(sample, scale=args.scale)
    if not (sample / "ranker.yaml").exists():
        run("sample", "train", "--data", str(sample), "--out", str(sample), data_dir=data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    # A user goes cold after 45 idle minutes; the demo waits DEMO_INACTIVITY instead.
    (sample / "ecommerce.yaml").write_text(
        definitions_text().replace("inactivity: 45m", f"inactivity: {DEMO_INACTIVITY}")
    )

    # One apply: the feature definitions and the ranker's model config (with its ONNX files).
    run("apply", "-f", str(sample), data_dir=data_dir)
    for group, file in GROUP_FILES.items():
        run("ingest", "--feature-group", group, str(sample / file), data_dir=data_dir)

    port = free_port("127.0.0.1")
    target = f"127.0.0.1:{port}"
    command = ["serve", "--port", str(port), "--http-port", "-1", "--workers", str(args.workers)]
    console.print(f"[bold cyan]$ inferstack {' '.join(command)}[/]")
    server = subprocess.Popen(
        [sys.executable, "-m", "inferstack.cli.main", *command, "--data-dir", str(data_dir)]
    )
    try:
        wait_until_serving(target, server)
        products = candidate_products(
            sample / "user_category.parquet",
            USER_ID,
            100,
            np.random.default_rng(1),
            int(FULL_SIZES["product"] * args.scale),
        )
        show_features(target, products)
        rank(target, products, data_dir)
        interactions(target, sample, data_dir, args.scale)
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=30)
        console.print(f"server stopped (exit code {code})")


def show_features(target: str, products: list[int]) -> None:
    user_id = USER_ID
    with FeatureStoreClient(target) as client:
        queries = fetch(client, user_id, products)
        client.retrieve_batch(queries)  # warm the connection and the caches
        timings = []
        for _ in range(200):
            started = time.perf_counter()
            user, items, affinity = client.retrieve_batch(queries)
            timings.append((time.perf_counter() - started) * 1000)

    profile = Table(title=f"user {user_id}", show_header=False)
    for name in ("age", "region_id", "orders_30d", "avg_order_value", "embedding"):
        value = user[f"user_profile.{name}"][0]
        shown = f"[{', '.join(f'{v:.2f}' for v in value[:4])}, …]" if name == "embedding" else value
        profile.add_row(name, str(shown))
    console.print(profile)

    table = Table(title="first 10 of 100 candidate products, with user x category affinity")
    for header in ("product_id", "category", "brand", "price", "rating", "ctr_7d", "affinity"):
        table.add_column(header, justify="right")
    for i in range(10):
        table.add_row(
            str(products[i]),
            items["product_stats.category_id"][i],
            items["product_stats.brand"][i],
            f"{items['product_stats.price'][i]:.2f}",
            f"{items['product_stats.rating'][i]:.2f}",
            f"{items['product_stats.ctr_7d'][i]:.3f}",
            f"{affinity['user_category_affinity.affinity'][i]:.2f}"
            if affinity.found()[i]
            else "[dim]none[/]",
        )
    console.print(table)
    values = sum(int(np.prod(v.shape)) for f in (user, items, affinity) for v in f.columns.values())
    p50, p99 = np.percentile(timings, [50, 99])
    console.print(
        f"One RetrieveBatch = 1 user + 100 products + 100 user x category rows = {values:,} "
        f"feature values. Over {len(timings)} calls: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(client and server on this machine)."
    )


def rank(target: str, products: list[int], data_dir: Path) -> None:
    """Inferflow: the ranker's graph, then the same 100 products ranked for the user."""
    run("models", "show", "ranker", data_dir=data_dir)
    candidates = ",".join(str(p) for p in products)
    run(
        "infer", "ranker", f"user_id={USER_ID}", f"product_ids={candidates}",
        "--target", target, "--top", "10", "--explain", data_dir=data_dir,
    )  # fmt: skip


def interactions(target: str, sample: Path, data_dir: Path, scale: float) -> None:
    """A day of events in, user 42's history out; the user goes idle, is swept to the cold
    tier, comes back (hydrate) and reads the same history from the hot tier again."""
    run("sample", "events", "--out", str(sample), "--scale", f"{scale:g}", data_dir=data_dir)
    for kind in EVENT_TYPES:
        events = str(sample / f"events-{kind}.parquet")
        run("interactions", "ingest", "-t", kind, events, "--target", target, data_dir=data_dir)
    user = str(USER_ID)
    show = ["interactions", "get", user, "-t", "click", "-t", "order", "--last", "10"]
    run(*show, "--target", target, data_dir=data_dir)
    console.print(
        f"[bold]Every user is idle now; after {DEMO_INACTIVITY} the sweepers move their "
        "events to the cold tier.[/]"
    )
    with InteractionsClient(target) as client:
        deadline = time.monotonic() + 60
        while client.get(USER_ID, ["click"], limit=10)["click"].hot and (
            time.monotonic() < deadline
        ):
            time.sleep(0.5)
    run(*show, "--target", target, data_dir=data_dir)
    console.print("[bold]User 42 opens the app: their history goes back to the hot tier.[/]")
    run("interactions", "hydrate", user, "--target", target, data_dir=data_dir)
    run(*show, "--target", target, data_dir=data_dir)


if __name__ == "__main__":
    main()
