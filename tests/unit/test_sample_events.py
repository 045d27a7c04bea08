"""The sample day of events: the same bytes for a seed, and every event valid for its type."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import yaml

from inferstack.core.documents import DefinitionsFile
from inferstack.core.events import EventBatch
from inferstack.core.registry import Registry, plan
from inferstack.interactions.events import InteractionCatalog, encode_batch
from inferstack.sampledata.events import generate_events
from inferstack.sampledata.generate import definitions_text

END_MS = 1_800_000_000_000


def test_events_are_deterministic_and_valid_for_the_sample_types(tmp_path: Path) -> None:
    first = generate_events(tmp_path / "a", scale=0.002, end_ms=END_MS)
    second = generate_events(tmp_path / "b", scale=0.002, end_ms=END_MS)
    assert first.counts == second.counts and first.counts["click"] > first.counts["order"] > 0
    for name, path in first.files.items():
        assert path.read_bytes() == second.files[name].read_bytes()

    parsed = DefinitionsFile.model_validate(yaml.safe_load(definitions_text()))
    catalog = InteractionCatalog(plan(Registry(), [], [], [], parsed.interaction_types).registry)
    for name, path in first.files.items():
        table = pq.read_table(path).to_pydict()
        kind = catalog.type(name)
        attributes = {a.name: table[a.name] for a in kind.attributes if a.name in table}
        batch = EventBatch(
            name, table["event_id"], table["user_id"], table["product_id"], table["ts"], attributes
        )
        encoded = encode_batch(catalog, batch, f"file {path.name}", END_MS)
        assert len(encoded.rows) == first.counts[name]
        assert max(table["ts"]) < END_MS and min(table["ts"]) >= END_MS - 86_400_000
