"""Generate the sample data set as Parquet files, the same bytes for the same seed."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute
import pyarrow.parquet as pq
import yaml

FULL_SIZES = {"product": 200_000, "user": 100_000, "user_category": 500_000}
CATEGORIES = 400
BRANDS = 2_000
REGIONS = 60
USER_CATEGORIES_PER_USER = 5
DEFINITIONS_FILE = "ecommerce.yaml"
#: Which generated file feeds which feature group.
GROUP_FILES = {
    "user_profile": "user.parquet",
    "product_stats": "product.parquet",
    "user_category_affinity": "user_category.parquet",
}


@dataclass(frozen=True)
class SampleFiles:
    definitions: Path
    product: Path
    user: Path
    user_category: Path
    rows: dict[str, int]


def definitions_text() -> str:
    return resources.files("inferstack.sampledata").joinpath(DEFINITIONS_FILE).read_text()


def category_of(product_ids: np.ndarray) -> list[str]:
    """The category of each product; a pure function so benchmarks can derive keys."""
    return [f"c{int(p) % CATEGORIES:04d}" for p in product_ids]


def candidate_products(
    user_category_file: Path, user_id: int, count: int, rng: np.random.Generator, products: int
) -> list[int]:
    """Product ids to rank for a user: half from the user's own categories, half at random,
    the way a retrieval stage mixes personal and popular candidates."""
    table = pq.read_table(user_category_file, columns=["user_id", "category_id"])
    mask = pa.compute.equal(table["user_id"], user_id)
    categories = [int(c[1:]) for c in table.filter(mask)["category_id"].to_pylist()]
    chosen: list[int] = []
    if categories:
        per_category = np.arange(0, products, CATEGORIES)
        own = np.concatenate([per_category + c for c in categories])
        own = own[(own >= 1) & (own <= products)]
        chosen = rng.choice(own, min(len(own), count // 2), replace=False).tolist()
    rest = rng.choice(np.arange(1, products + 1), count * 2, replace=False)
    chosen += [int(p) for p in rest if p not in set(chosen)][: count - len(chosen)]
    return chosen


def _float_features(group: str, rng: np.random.Generator, count: int) -> dict[str, np.ndarray]:
    spec = yaml.safe_load(definitions_text())
    features = next(g for g in spec["feature_groups"] if g["name"] == group)["features"]
    return {
        f["name"]: rng.gamma(2.0, 2.0, count).astype(np.float32)
        for f in features
        if f["type"] == "float32"
    }


def generate(out: Path, scale: float = 1.0, seed: int = 7) -> SampleFiles:
    """Write definitions and one Parquet file per feature group under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    sizes = {name: max(1, int(size * scale)) for name, size in FULL_SIZES.items()}
    rng = np.random.default_rng(seed)

    products = np.arange(1, sizes["product"] + 1, dtype=np.int64)
    product = _float_features("product_stats", rng, len(products))
    product_table = pa.table(
        {
            "product_id": products,
            **product,
            "seller_id": rng.integers(1, 50_000, len(products), dtype=np.int64),
            "listed_ts": rng.integers(1_600_000_000, 1_790_000_000, len(products), dtype=np.int64),
            "images": rng.integers(1, 12, len(products), dtype=np.int64),
            "variants": rng.integers(1, 8, len(products), dtype=np.int64),
            "shipping_days": rng.integers(1, 10, len(products), dtype=np.int64),
            "category_id": category_of(products),
            "brand": [f"brand-{b:04d}" for b in rng.integers(0, BRANDS, len(products))],
        }
    )

    users = np.arange(1, sizes["user"] + 1, dtype=np.int64)
    embeddings = rng.standard_normal((len(users), 16)).astype(np.float32)
    user_table = pa.table(
        {
            "user_id": users,
            **_float_features("user_profile", rng, len(users)),
            "age": rng.integers(18, 80, len(users), dtype=np.int64),
            "lifetime_orders": rng.integers(0, 500, len(users), dtype=np.int64),
            "last_seen_ts": rng.integers(1_780_000_000, 1_790_000_000, len(users), dtype=np.int64),
            "region_id": [f"r{r:02d}" for r in rng.integers(0, REGIONS, len(users))],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.ravel()), 16),
        }
    )

    # Each user gets `per_user` consecutive (so distinct) categories from a random start.
    pairs = sizes["user_category"]
    per_user = max(1, min(CATEGORIES, -(-pairs // len(users))))
    pair_users = np.repeat(users, per_user)[:pairs]
    offsets = rng.integers(0, CATEGORIES, len(users))
    slot = np.tile(np.arange(per_user), len(users))[:pairs]
    category_numbers = (np.repeat(offsets, per_user)[:pairs] + slot) % CATEGORIES
    user_category_table = pa.table(
        {
            "user_id": pair_users,
            "category_id": [f"c{int(c):04d}" for c in category_numbers],
            **_float_features("user_category_affinity", rng, pairs),
        }
    )

    definitions = out / DEFINITIONS_FILE
    definitions.write_text(definitions_text())
    files = {}
    for name, table in (
        ("product", product_table),
        ("user", user_table),
        ("user_category", user_category_table),
    ):
        files[name] = out / f"{name}.parquet"
        pq.write_table(table, files[name], row_group_size=65_536)
    return SampleFiles(
        definitions,
        files["product"],
        files["user"],
        files["user_category"],
        {
            "product": product_table.num_rows,
            "user": user_table.num_rows,
            "user_category": user_category_table.num_rows,
        },
    )
