"""Feature store traffic the way callers send it, shared by the feature store benchmarks.

Every request draws fresh keys from the whole data set (users uniform; products uniform or
Zipf with s = 1.1, the hot-product skew of a shop) and goes through the public clients, so
a run measures the path a caller pays for (request building, transport, the server's read
path with its caches, decoding) rather than a warmed pool of repeated requests.

A ranking service needs shape (a) in one of two ways:
  - one RetrieveBatch: it already knows each candidate's category (here `category_of`);
  - two round trips: user + candidates first, then the user x category rows keyed by each
    candidate's `product_stats.category_id` from the first answer.

Writes are patterns too (`Persist`): whole `product_stats` rows of products drawn the same
way, whose cost includes dropping the written keys from every cache (see `Persist`).
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq
from procstat import process_tree_cpu

from inferstack.client.featurestore import (
    AsyncFeatureStoreClient,
    FeatureFrame,
    FeatureStoreClient,
    Keys,
    Query,
)
from inferstack.core.definitions import FeatureGroup
from inferstack.featurestore.catalog import Catalog
from inferstack.sampledata.generate import FULL_SIZES, GROUP_FILES, category_of

ZIPF_S = 1.1
PERSIST_GROUP = "product_stats"  # what the Persist patterns write, keyed by PERSIST_KEY
PERSIST_KEY = "product_id"


class KeyDraw:
    """Draws user and product ids from the whole key space of a sample data set."""

    def __init__(self, scale: float, distribution: str, seed: int = 7) -> None:
        self.users = max(1, int(FULL_SIZES["user"] * scale))
        self.products = max(1, int(FULL_SIZES["product"] * scale))
        self.distribution = distribution
        self.rng = np.random.default_rng(seed)
        if distribution == "zipf":
            # Rank r is drawn with probability ~ r^-s; ranks map to products through a fixed
            # permutation so the hot products are spread over the id (and key) space.
            weights = np.arange(1, self.products + 1, dtype=np.float64) ** -ZIPF_S
            self._cdf = np.cumsum(weights) / weights.sum()
            self._by_rank = self.rng.permutation(self.products) + 1
        elif distribution != "uniform":
            raise ValueError(f"distribution must be uniform or zipf, not {distribution!r}")

    def user(self) -> int:
        return int(self.rng.integers(1, self.users + 1))

    def products_for(self, count: int) -> list[int]:
        """`count` distinct products: a candidate list never repeats an item."""
        count = min(count, self.products)
        chosen: dict[int, None] = {}
        while len(chosen) < count:
            chosen.update(dict.fromkeys(self._draw(2 * count).tolist()))
        return list(chosen)[:count]

    def _draw(self, count: int) -> npt.NDArray[np.int64]:
        if self.distribution == "uniform":
            return self.rng.integers(1, self.products + 1, count)
        ranks = np.searchsorted(self._cdf, self.rng.random(count))
        return self._by_rank[np.minimum(ranks, self.products - 1)]


@dataclass(frozen=True)
class Pattern(ABC):
    """One way a caller calls: `draw` picks a request's keys (before any timer starts),
    `call` (sync) and `acall` (asyncio) make the request. `Read`s and `Persist`s share the
    measuring loops below and the benchmarks' tables."""

    name: str
    products: int  # products per request; 0 = one product alone (read shape c)
    values: int  # feature values per request (returned, or written), for values/s

    @property
    @abstractmethod
    def rows(self) -> int:
        """Rows per request (returned, or written), for rows/s."""

    @abstractmethod
    def draw(self, keys: KeyDraw) -> tuple[int, list[int]]:
        """(user, products) of one request; user 0 when the pattern has none."""

    @abstractmethod
    def call(self, client: FeatureStoreClient, user: int, products: list[int]) -> int: ...

    @abstractmethod
    async def acall(
        self, client: AsyncFeatureStoreClient, user: int, products: list[int]
    ) -> int: ...

    def budget(self, seconds: float) -> int:
        """Requests drawn up front, each used once: more than a window can serve on 2 cores
        (a window that runs out ends early and reports its real length)."""
        per_second = 5000 if self.products <= 1 else 150_000 // self.products
        return int(seconds * per_second) + 100


@dataclass(frozen=True)
class Read(Pattern):
    """Shapes (a)-(c): Retrieve / RetrieveBatch of every feature of every group."""

    round_trips: int

    @property
    def rows(self) -> int:
        return 1 if self.products == 0 else 1 + 2 * self.products

    def draw(self, keys: KeyDraw) -> tuple[int, list[int]]:
        if self.products == 0:
            return 0, keys.products_for(1)
        return keys.user(), keys.products_for(self.products)

    def call(self, client: FeatureStoreClient, user: int, products: list[int]) -> int:
        if self.products == 0:
            return client.retrieve("product", {"product_id": products}).count
        if self.round_trips == 1:
            return _total(client.retrieve_batch(batch_of(user, products)))
        first = client.retrieve_batch(batch_of(user, products)[:2])
        second = client.retrieve("user_category", derived_keys(user, first[1]))
        return _total([*first, second])

    async def acall(self, client: AsyncFeatureStoreClient, user: int, products: list[int]) -> int:
        if self.products == 0:
            return (await client.retrieve("product", {"product_id": products})).count
        if self.round_trips == 1:
            return _total(await client.retrieve_batch(batch_of(user, products)))
        first = await client.retrieve_batch(batch_of(user, products)[:2])
        second = await client.retrieve("user_category", derived_keys(user, first[1]))
        return _total([*first, second])


@dataclass(frozen=True)
class Persist(Pattern):
    """Whole `product_stats` rows of `products` drawn products, in one Persist: the write,
    then the written keys dropped from every cache (this worker's, Redis, and every other
    worker's through the config store's key feed).

    `columns` holds every feature's values for `products` rows, built once (see
    `persist_columns`) and sent for whichever products are drawn; only `category_id`
    follows the keys (`category_of`, as generated), so the read patterns' user x category
    keys stay right."""

    columns: Mapping[str, npt.NDArray[Any]] = field(compare=False)

    @property
    def rows(self) -> int:
        return self.products

    def draw(self, keys: KeyDraw) -> tuple[int, list[int]]:
        return 0, keys.products_for(self.products)

    def request(self, products: list[int]) -> tuple[Keys, dict[str, npt.NDArray[Any] | list[str]]]:
        """The keys and feature columns of one Persist of `products`."""
        return {PERSIST_KEY: products}, {
            **self.columns,
            "category_id": category_of(np.array(products)),
        }

    def call(self, client: FeatureStoreClient, user: int, products: list[int]) -> int:
        return client.persist(PERSIST_GROUP, *self.request(products))

    async def acall(self, client: AsyncFeatureStoreClient, user: int, products: list[int]) -> int:
        return await client.persist(PERSIST_GROUP, *self.request(products))


def batch_of(user: int, products: list[int]) -> list[Query]:
    """Shape (a)/(b) in one batch; the caller knows each product's category."""
    return [
        Query("user", {"user_id": [user]}),
        Query("product", {"product_id": products}),
        Query(
            "user_category",
            {"user_id": [user] * len(products), "category_id": category_of(np.array(products))},
        ),
    ]


def derived_keys(user: int, products: FeatureFrame) -> dict[str, Any]:
    """Round trip 2's keys: the user with each product's fetched category."""
    categories = products["product_stats.category_id"]
    return {"user_id": [user] * len(categories), "category_id": categories}


def _total(frames: list[FeatureFrame]) -> int:
    return sum(frame.count for frame in frames)


def patterns(values_per_row: dict[str, int]) -> list[Pattern]:
    """The read shapes of bench/README.md, (a) both ways a caller can ask."""
    user, product, pair = (values_per_row[e] for e in ("user", "product", "user_category"))

    def values(n: int) -> int:
        return user + n * (product + pair)

    return [
        Read("(a) 1 user + 100 products + 100 user x category, one RetrieveBatch", 100,
             values(100), round_trips=1),
        Read("(a) the same in two round trips", 100, values(100), round_trips=2),
        Read("(b) 1 user + 500 products + 500 user x category, one RetrieveBatch", 500,
             values(500), round_trips=1),
        Read("(c) 1 product", 0, product, round_trips=1),
    ]  # fmt: skip


def persist_patterns(catalog: Catalog, sample: Path) -> list[Pattern]:
    """The writes of bench/README.md: one product row, and 100 products' rows, per Persist."""
    group = catalog.group(PERSIST_GROUP)
    per_row = sum(max(1, f.type.length) for f in group.features)  # a float32[16] counts 16
    out: list[Pattern] = []
    for name, count in (
        ("(p1) Persist 1 product row", 1),
        ("(p100) Persist 100 product rows", 100),
    ):
        columns = persist_columns(group, sample, count)
        rows = len(next(iter(columns.values())))  # fewer than `count` on a tiny data set
        out.append(Persist(name, rows, rows * per_row, columns))
    return out


def persist_columns(
    group: FeatureGroup, sample: Path, count: int, seed: int = 11
) -> dict[str, npt.NDArray[Any]]:
    """`count` rows of every feature of `group` but `category_id` (which Persist derives
    from the keys), copied from random rows of the sample data: the generator's values, each
    column of its feature's type (numpy dtype; vectors [count, length]; strings and bytes as
    object arrays), as a caller holding real rows would send them."""
    names = [f.name for f in group.features if f.name != "category_id"]
    table = pq.read_table(sample / GROUP_FILES[group.name], columns=names)
    count = min(count, table.num_rows)
    picked = table.take(np.random.default_rng(seed).choice(table.num_rows, count, replace=False))
    columns: dict[str, npt.NDArray[Any]] = {}
    for feature in group.features:
        if feature.name in names:
            values = np.array(picked[feature.name].to_pylist(), dtype=feature.type.numpy_dtype)
            columns[feature.name] = values.reshape(count, -1) if feature.type.length else values
    return columns


@dataclass
class Window:
    """Latencies of one timed window plus what the server's processes spent in it."""

    latencies: list[float]
    seconds: float
    server_cpu_s: float
    errors: dict[str, int]


def run_sync(
    target: str, pattern: Pattern, keys: KeyDraw, seconds: float, server_pids: list[int]
) -> Window:
    """One caller, one request at a time, through FeatureStoreClient."""
    with FeatureStoreClient(target) as client:
        for _ in range(3):  # connect; not a cache warm-up: keys are fresh every call
            pattern.call(client, *pattern.draw(keys))
        drawn = [pattern.draw(keys) for _ in range(pattern.budget(seconds))]
        latencies: list[float] = []
        errors: dict[str, int] = {}
        cpu_before = sum(map(process_tree_cpu, server_pids))
        started = time.perf_counter()
        deadline = started + seconds
        for user, products in drawn:
            if time.perf_counter() >= deadline:
                break
            begin = time.perf_counter()
            try:
                pattern.call(client, user, products)
            except Exception as exc:  # counted, not fatal: overload answers are part of it
                name = type(exc).__name__
                errors[name] = errors.get(name, 0) + 1
                continue
            latencies.append(time.perf_counter() - begin)
        elapsed = time.perf_counter() - started
        cpu = sum(map(process_tree_cpu, server_pids)) - cpu_before
    return Window(latencies, elapsed, cpu, errors)


async def run_async(
    target: str,
    pattern: Pattern,
    keys: KeyDraw,
    seconds: float,
    in_flight: int,
    server_pids: list[int],
    connections: int,
) -> Window:
    """`in_flight` callers sharing one AsyncFeatureStoreClient with its own connections."""
    client = make_async_client(target, connections)
    try:
        await asyncio.gather(*(pattern.acall(client, *pattern.draw(keys)) for _ in range(4)))
        drawn = [pattern.draw(keys) for _ in range(pattern.budget(seconds))]
        latencies: list[float] = []
        errors: dict[str, int] = {}
        next_request = iter(drawn)
        cpu_before = sum(map(process_tree_cpu, server_pids))
        started = time.perf_counter()
        deadline = started + seconds

        async def caller() -> None:
            for user, products in next_request:
                if time.perf_counter() >= deadline:
                    return
                begin = time.perf_counter()
                try:
                    await pattern.acall(client, user, products)
                except Exception as exc:
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                    continue
                latencies.append(time.perf_counter() - begin)

        await asyncio.gather(*(caller() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        cpu = sum(map(process_tree_cpu, server_pids)) - cpu_before
    finally:
        await client.close()
    return Window(latencies, elapsed, cpu, errors)


def make_async_client(target: str, connections: int) -> AsyncFeatureStoreClient:
    return AsyncFeatureStoreClient(target, connections=connections)


def measure(
    target: str,
    pattern: Pattern,
    keys: KeyDraw,
    seconds: float,
    in_flight: int,
    server_pids: list[int],
    connections: int = 4,
) -> Window:
    if in_flight == 1:
        return run_sync(target, pattern, keys, seconds, server_pids)
    run: Callable[[], Coroutine[Any, Any, Window]] = lambda: run_async(  # noqa: E731
        target, pattern, keys, seconds, in_flight, server_pids, connections
    )
    return asyncio.run(run())
