"""Feature store traffic the way callers send it, shared by the feature store benchmarks.

Every request draws fresh keys from the whole data set (users uniform; products uniform or
Zipf with s = 1.1, the hot-product skew of a shop) and goes through the public clients, so
a run measures the path a caller pays for (request building, transport, the server's read
path with its caches, decoding) rather than a warmed pool of repeated requests.

A ranking service needs shape (a) in one of two ways:
  - one RetrieveBatch: it already knows each candidate's category (here `category_of`);
  - two round trips: user + candidates first, then the user x category rows keyed by each
    candidate's `product_stats.category_id` from the first answer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inferstack.client.featurestore import (
    AsyncFeatureStoreClient,
    FeatureFrame,
    FeatureStoreClient,
    Query,
)
from inferstack.sampledata.generate import FULL_SIZES, category_of

ZIPF_S = 1.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
class Pattern:
    """One way a caller asks: `call` (sync) and `acall` (asyncio) make one request."""

    name: str
    products: int  # candidates per request; 0 = one product alone (shape c)
    round_trips: int
    values: int  # feature values in the answer, for values/s

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
    """The shapes of bench/README.md, (a) both ways a caller can ask."""
    user, product, pair = (values_per_row[e] for e in ("user", "product", "user_category"))

    def values(n: int) -> int:
        return user + n * (product + pair)

    return [
        Pattern("(a) 1 user + 100 products + 100 user x category, one RetrieveBatch", 100, 1,
                values(100)),
        Pattern("(a) the same in two round trips", 100, 2, values(100)),
        Pattern("(b) 1 user + 500 products + 500 user x category, one RetrieveBatch", 500, 1,
                values(500)),
        Pattern("(c) 1 product", 0, 1, product),
    ]  # fmt: skip


@dataclass
class Window:
    """Latencies of one timed window plus what the server's processes spent in it."""

    latencies: list[float]
    seconds: float
    server_cpu_s: float
    errors: dict[str, int]


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants, from /proc."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while we looked
    return total


def run_sync(
    target: str, pattern: Pattern, keys: KeyDraw, seconds: float, server_pids: list[int]
) -> Window:
    """One caller, one request at a time, through FeatureStoreClient."""
    with FeatureStoreClient(target) as client:
        for _ in range(3):  # connect; not a cache warm-up: keys are fresh every call
            pattern.call(client, *pattern.draw(keys))
        drawn = [pattern.draw(keys) for _ in range(_budget(pattern, seconds))]
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
        drawn = [pattern.draw(keys) for _ in range(_budget(pattern, seconds))]
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


def _budget(pattern: Pattern, seconds: float) -> int:
    """Requests drawn up front, each used once: more than a window can serve on 2 cores
    (a window that runs out ends early and reports its real length)."""
    per_second = 5000 if pattern.products == 0 else 150_000 // pattern.products
    return int(seconds * per_second) + 100


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
