"""Micro-benchmark of the feature store handler's own work for one shape-(a) call.

Shape (a) = 1 user + 100 products + their 100 user x category rows, every feature, as one
RetrieveBatch (see bench/README.md). Everything runs in this process, no gRPC and no server,
so each step of the handler can be timed alone:

    proto keys   keys_from_proto of the three queries (wire.py)
    encode keys  encode_keys of the three queries (core/keys.py)
    read         LmdbStorage.read_sync of the three groups (no cache)
    decode       GroupCodec.decode of the three groups (core/rowformat.py)
    encode       encode_responses of the three results: the RetrieveBatchResponse's bytes
    handler      all of it through FeatureService.retrieve_all (LMDB, caches off) + encode

Rows are the sample catalog's (src/inferstack/sampledata/ecommerce.yaml) with values like the
generated sample's, written to a temporary LMDB: every user and product exists; a user has 5
of 400 categories, so about half the user x category rows of a request are missing, as in
the real benchmark. Figures are microseconds per call (median and mean over `--seconds` of
calls per step, cycling 200 different requests).

    .venv/bin/python bench/hotpath.py [--seconds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from inferstack.core.documents import DefinitionsFile
from inferstack.core.keys import KeyValues, encode_keys
from inferstack.core.registry import Registry, plan
from inferstack.core.rowformat import Column, GroupCodec, var_column
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.rows import RowSource
from inferstack.featurestore.service import FeatureService, Query, ResultColumn, RetrieveResult
from inferstack.kv.lmdb import LmdbStorage
from inferstack.proto.featurestore.v1 import featurestore_pb2 as pb
from inferstack.sampledata.generate import CATEGORIES, category_of, definitions_text
from inferstack.server.grpc.featurestore import encode_responses
from inferstack.wire.columns import keys_from_proto

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
USERS = 5_000
PRODUCTS = 40_000
CATEGORIES_PER_USER = 5
PRODUCTS_PER_REQUEST = 100
VARIANTS = 200
#: Which group each query of shape (a) reads, in request order.
QUERIES = (
    ("user", "user_profile"),
    ("product", "product_stats"),
    ("user_category", "user_category_affinity"),
)


@dataclass
class Step:
    step: str
    calls: int
    p50_us: float
    mean_us: float


def sample_catalog() -> Catalog:
    parsed = DefinitionsFile.model_validate(yaml.safe_load(definitions_text()))
    return Catalog(plan(Registry(), parsed.entities, parsed.feature_groups).registry)


def sample_columns(codec: GroupCodec, count: int, rng: np.random.Generator) -> dict[str, Column]:
    """Values shaped like the generated sample's: gamma floats, small ints, short strings."""
    columns: dict[str, Column] = {}
    for feature in codec.definition.features:
        feature_type = codec.types[feature.name]
        if feature_type.is_variable:
            labels = rng.integers(0, 2_000, count)
            columns[feature.name] = var_column([f"label-{v:04d}".encode() for v in labels])
        elif feature_type.length:
            shape = (count, feature_type.length)
            columns[feature.name] = rng.standard_normal(shape).astype(feature_type.scalar_dtype)
        elif feature_type.scalar_dtype.kind == "f":
            columns[feature.name] = rng.gamma(2.0, 2.0, count).astype(feature_type.scalar_dtype)
        else:
            columns[feature.name] = rng.integers(0, 500, count).astype(feature_type.scalar_dtype)
    return columns


def user_categories(user_ids: np.ndarray, seed: int = 3) -> dict[int, list[int]]:
    offsets = np.random.default_rng(seed).integers(0, CATEGORIES, USERS + 1)
    return {
        int(u): [int(offsets[u] + i) % CATEGORIES for i in range(CATEGORIES_PER_USER)]
        for u in user_ids
    }


def store_rows(storage: LmdbStorage, catalog: Catalog, rng: np.random.Generator) -> None:
    users = np.arange(1, USERS + 1, dtype=np.int64)
    products = np.arange(1, PRODUCTS + 1, dtype=np.int64)
    pairs = [(u, c) for u, cats in user_categories(users).items() for c in cats]
    keyed: dict[str, dict[str, KeyValues]] = {
        "user_profile": {"user_id": users},
        "product_stats": {"product_id": products},
        "user_category_affinity": {
            "user_id": np.array([u for u, _ in pairs], dtype=np.int64),
            "category_id": [f"c{c:04d}" for _, c in pairs],
        },
    }
    for group, keys in keyed.items():
        codec = catalog.codecs[group]
        entity = catalog.entity(codec.definition.entity)
        encoded = encode_keys(entity, keys)
        rows = codec.current.encode(
            sample_columns(codec, len(encoded), rng), len(encoded), codec.expiry_for(time.time())
        )
        storage.write_sync(group, list(zip(encoded, rows, strict=True)))


def shape_a_requests(rng: np.random.Generator) -> list[pb.RetrieveBatchRequest]:
    """Half the candidates from the user's own categories, half at random (as the sample's
    candidate_products does), so about half the user x category rows exist."""
    users = rng.integers(1, USERS + 1, VARIANTS)
    own = user_categories(users)
    requests = []
    for user in users.tolist():
        mine = [c + CATEGORIES * rng.integers(0, PRODUCTS // CATEGORIES) for c in own[user]]
        picked = rng.choice(mine, PRODUCTS_PER_REQUEST // 2).tolist()
        picked += rng.integers(1, PRODUCTS + 1, PRODUCTS_PER_REQUEST - len(picked)).tolist()
        products = [max(1, int(p)) for p in picked]
        requests.append(
            pb.RetrieveBatchRequest(
                requests=[
                    pb.RetrieveRequest(
                        entity="user", keys=[pb.KeyColumn(name="user_id", int64_values=[user])]
                    ),
                    pb.RetrieveRequest(
                        entity="product",
                        keys=[pb.KeyColumn(name="product_id", int64_values=products)],
                    ),
                    pb.RetrieveRequest(
                        entity="user_category",
                        keys=[
                            pb.KeyColumn(name="user_id", int64_values=[user] * len(products)),
                            pb.KeyColumn(
                                name="category_id", string_values=category_of(np.array(products))
                            ),
                        ],
                    ),
                ]
            )
        )
    return requests


def time_step(name: str, calls: list[Callable[[], Any]], seconds: float) -> Step:
    """Run the calls round-robin for `seconds` (at least once each); per-call durations."""
    for call in calls[:20]:  # warm-up: first-touch costs are not the steady state
        call()
    durations: list[int] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not durations:
        for call in calls:
            started = time.perf_counter_ns()
            call()
            durations.append(time.perf_counter_ns() - started)
    return _step(name, durations)


async def time_async_step(
    name: str, calls: list[Callable[[], Awaitable[Any]]], seconds: float
) -> Step:
    """As time_step, awaiting each call inside one running event loop, as a server does."""
    for call in calls[:20]:
        await call()
    durations: list[int] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not durations:
        for call in calls:
            started = time.perf_counter_ns()
            await call()
            durations.append(time.perf_counter_ns() - started)
    return _step(name, durations)


def _step(name: str, durations: list[int]) -> Step:
    return Step(
        name, len(durations), statistics.median(durations) / 1e3, statistics.fmean(durations) / 1e3
    )


def measure(seconds: float) -> list[Step]:
    rng = np.random.default_rng(11)
    catalog = sample_catalog()
    with tempfile.TemporaryDirectory(prefix="hotpath-") as directory:
        storage = LmdbStorage(Path(directory))
        store_rows(storage, catalog, rng)
        requests = shape_a_requests(rng)
        service = FeatureService(RowSource(storage), catalog)
        codecs = [catalog.codecs[group] for _, group in QUERIES]
        entities = [catalog.entity(entity) for entity, _ in QUERIES]
        features = [tuple(f.name for f in codec.definition.features) for codec in codecs]
        now = time.time()

        keys = [[keys_from_proto(query.keys) for query in r.requests] for r in requests]
        encoded = [[encode_keys(e, k) for e, k in zip(entities, ks, strict=True)] for ks in keys]
        rows = [
            [storage.read_sync(group, e) for (_, group), e in zip(QUERIES, es, strict=True)]
            for es in encoded
        ]
        results = [
            [
                _result(entity, codec, feats, codec.decode(group_rows, feats, now))
                for (entity, _), codec, feats, group_rows in zip(
                    QUERIES, codecs, features, per_request, strict=True
                )
            ]
            for per_request in rows
        ]

        def proto_keys(r: pb.RetrieveBatchRequest) -> Callable[[], Any]:
            return lambda: [keys_from_proto(query.keys) for query in r.requests]

        def encode(ks: list[dict[str, KeyValues]]) -> Callable[[], Any]:
            return lambda: [encode_keys(e, k) for e, k in zip(entities, ks, strict=True)]

        def read(es: list[list[bytes]]) -> Callable[[], Any]:
            return lambda: [storage.read_sync(g, e) for (_, g), e in zip(QUERIES, es, strict=True)]

        def decode(rs: list[list[bytes | None]]) -> Callable[[], Any]:
            return lambda: [
                c.decode(r, f, now) for c, f, r in zip(codecs, features, rs, strict=True)
            ]

        def encode_answer(done: list[RetrieveResult]) -> Callable[[], Any]:
            return lambda: encode_responses(done, batch=True)

        async def handle(r: pb.RetrieveBatchRequest) -> bytes:
            results = await service.retrieve_all(
                [
                    Query(query.entity, keys_from_proto(query.keys), list(query.features))
                    for query in r.requests
                ]
            )
            return encode_responses(results, batch=True)

        def handler(r: pb.RetrieveBatchRequest) -> Callable[[], Awaitable[Any]]:
            return lambda: handle(r)

        loop = asyncio.new_event_loop()
        for r in requests[:10]:  # every answer parses as the message it claims to be
            pb.RetrieveBatchResponse.FromString(loop.run_until_complete(handle(r)))
        steps = [
            time_step("proto keys", [proto_keys(r) for r in requests], seconds),
            time_step("encode keys", [encode(k) for k in keys], seconds),
            time_step("read (LMDB)", [read(e) for e in encoded], seconds),
            time_step("decode", [decode(r) for r in rows], seconds),
            time_step("encode response", [encode_answer(r) for r in results], seconds),
            loop.run_until_complete(
                time_async_step("handler (all of it)", [handler(r) for r in requests], seconds)
            ),
        ]
        loop.close()
        return steps


def _result(
    entity: str, codec: GroupCodec, features: tuple[str, ...], decoded: Any
) -> RetrieveResult:
    group = codec.definition.name
    columns = [
        ResultColumn(f"{group}.{n}", codec.types[n], decoded.columns[n], codec.type_names[n])
        for n in features
    ]
    return RetrieveResult(entity, len(decoded.status), columns, {group: decoded.status})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=2.0, help="per step (default 2)")
    args = parser.parse_args()
    steps = measure(args.seconds)
    print("| step (shape (a), per call) | calls | p50 us | mean us |")
    print("|---|---:|---:|---:|")
    for step in steps:
        print(f"| {step.step} | {step.calls} | {step.p50_us:.1f} | {step.mean_us:.1f} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"hotpath-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"args": vars(args), "steps": [asdict(s) for s in steps]}, indent=1))
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
