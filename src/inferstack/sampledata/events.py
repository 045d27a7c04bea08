"""A day of synthetic shopper events for the sample users, as one Parquet file per type.

Users browse in sessions; most clicks fall in their own categories (the user x category rows
of the sample), some clicks lead to a cart add, fewer to an order; wishlists and shares are
rarer still. Same seed, same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from inferstack.sampledata.generate import CATEGORIES, FULL_SIZES

DAY_MS = 86_400_000
#: Events of each type per click, on average.
FOLLOW_UPS = {"add_to_cart": 0.2, "order": 0.1, "wishlist": 0.05, "share": 0.02}
SOURCES = np.array(["home", "search", "category", "recommendation"], dtype=object)
CHANNELS = np.array(["link", "whatsapp", "email"], dtype=object)


@dataclass(frozen=True)
class SampleEvents:
    files: dict[str, Path]  # interaction type -> Parquet file
    counts: dict[str, int]


def generate_events(
    out: Path,
    *,
    scale: float,
    clicks_per_user: float = 20.0,
    end_ms: int,
    seed: int = 13,
) -> SampleEvents:
    """Events of the day before `end_ms` (unix ms) for the sample at `scale`."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    users = max(1, int(FULL_SIZES["user"] * scale))
    products = max(1, int(FULL_SIZES["product"] * scale))
    active = np.arange(1, users + 1, dtype=np.int64)
    per_user = rng.poisson(clicks_per_user, len(active))
    click_users = np.repeat(active, per_user)
    count = len(click_users)
    # Each user favours a few categories; a product's category is product_id % CATEGORIES.
    favourite = (click_users * 7919) % CATEGORIES
    own = rng.random(count) < 0.7
    category = np.where(own, favourite, rng.integers(0, CATEGORIES, count))
    per_category = max(1, products // CATEGORIES)
    product = category + CATEGORIES * rng.integers(0, per_category, count)
    product = np.where(product == 0, CATEGORIES, product)
    product = np.minimum(product, products)
    ts = end_ms - DAY_MS + np.sort(rng.integers(0, DAY_MS, count))
    clicks = {
        "user_id": click_users,
        "product_id": product.astype(np.int64),
        "ts": ts.astype(np.int64),
        "category_id": _categories(product),
        "source": SOURCES[rng.integers(0, len(SOURCES), count)],
    }
    tables = {"click": _with_ids("click", clicks)}
    for name, rate in FOLLOW_UPS.items():
        chosen = np.flatnonzero(rng.random(count) < rate)
        later = np.minimum(ts[chosen] + rng.integers(1_000, 600_000, len(chosen)), end_ms - 1)
        columns: dict[str, npt.NDArray[Any]] = {
            "user_id": click_users[chosen],
            "product_id": product[chosen].astype(np.int64),
            "ts": later.astype(np.int64),
        }
        if name in ("add_to_cart", "order"):
            columns["category_id"] = _categories(product[chosen])
            columns["quantity"] = rng.integers(1, 4, len(chosen)).astype(np.int32)
        if name == "order":
            columns["price"] = rng.gamma(2.0, 15.0, len(chosen)).astype(np.float32)
        if name == "share":
            columns["channel"] = CHANNELS[rng.integers(0, len(CHANNELS), len(chosen))]
        tables[name] = _with_ids(name, columns)
    files: dict[str, Path] = {}
    for name, table in tables.items():
        files[name] = out / f"events-{name}.parquet"
        pq.write_table(table, files[name], row_group_size=65_536)
    return SampleEvents(files, {name: table.num_rows for name, table in tables.items()})


def _categories(product: npt.NDArray[np.int64]) -> npt.NDArray[np.object_]:
    return np.array([f"c{int(p) % CATEGORIES:04d}" for p in product.tolist()], dtype=object)


def _with_ids(
    name: str, columns: dict[str, npt.NDArray[np.object_] | npt.NDArray[np.int64]]
) -> pa.Table:
    count = len(columns["user_id"])
    ids = [f"{name}-{i:09d}" for i in range(count)]
    return pa.table({"event_id": ids, **{k: pa.array(v) for k, v in columns.items()}})
