"""The console's pure logic: value display, catalog diffs and search, key parsing, the graph
layout, and rates and percentiles from Prometheus readings."""

from __future__ import annotations

import numpy as np
import pytest

from inferstack.console.catalog import catalog_view, search, version_diffs
from inferstack.console.graph import columns_of, edge_label, layout
from inferstack.console.health import History, health_view, parse, quantile
from inferstack.console.lookup import parse_keys
from inferstack.console.tryit import context_of, random_ids
from inferstack.console.values import default_text, number, raw_bytes, seconds, shown, text
from inferstack.core.definitions import Entity, FeatureGroup
from inferstack.core.errors import InvalidArgumentError
from inferstack.core.registry import Registry, SchemaVersion, plan
from inferstack.core.types import FeatureType
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow.describe import plan_graph
from inferstack.inferflow.graph import compile_plan
from tests.unit.test_inferflow_wire import small_registry


def test_values_are_shown_short_and_escaped() -> None:
    assert number(np.float32(0.1)) == "0.1"
    assert number(float("nan")) == "NaN" and number(float("-inf")) == "-Infinity"
    assert number(np.int64(-7)) == "-7" and number(np.bool_(True)) == "true"
    assert text("a\nb\u200bc\x1b") == "a\\nb\\u200bc\\x1b"
    assert text("x" * 200).endswith("… (200 chars)")
    assert raw_bytes(b'\x00A"\\\xff') == 'b"\\x00A\\x22\\x5c\\xff"'
    vector = shown(FeatureType.parse("float32[16]"), np.arange(16, dtype=np.float32))
    assert vector.text == "[0, 1, 2, 3, \u2026] \u00d716"
    assert vector.full.startswith("[0, 1, 2, 3, 4,")
    html = shown(FeatureType.parse("string"), b"<b>x</b>")
    assert html.text == '"<b>x</b>"'  # the template escapes it; here it stays as written
    assert shown(FeatureType.parse("float32"), np.float32(0.5)).value == "0.5"
    assert default_text(FeatureType.parse("string"), "unknown") == '"unknown"'
    assert [seconds(v) for v in (None, 86_400 * 30, 3600, 90, 0.5)] == [
        "never",
        "30d",
        "1h",
        "90s",
        "0.5s",
    ]


def test_version_diffs_say_what_each_version_changed() -> None:
    versions = [
        SchemaVersion(version=1, features=[("a", "float32"), ("b", "int64")]),
        SchemaVersion(version=2, features=[("a", "float32"), ("c", "string")]),
        SchemaVersion(version=3, features=[("a", "float32"), ("c", "string"), ("d", "bytes")]),
    ]
    first, second, third = version_diffs(versions)
    assert first.added == ["a float32", "b int64"] and first.removed == []
    assert second.added == ["c string"] and second.removed == ["b int64"]
    assert third.added == ["d bytes"] and third.features == 3


def test_catalog_search_matches_every_word_in_name_type_or_description() -> None:
    entity = Entity(name="user", keys=[{"name": "user_id", "type": "int64"}])
    group = FeatureGroup(
        name="profile",
        entity="user",
        features=[
            {"name": "age", "type": "int64", "description": "Years since birth"},
            {"name": "clicks_7d", "type": "float32", "description": "Clicks in a week"},
        ],
    )
    view = catalog_view(plan(Registry(), [entity], [group]).registry)
    assert search(view, "") is None
    assert search(view, "CLICKS week") == {"profile.clicks_7d"}
    assert search(view, "birth") == {"profile.age"}
    assert search(view, "profile int64") == {"profile.age"}
    assert search(view, "nothing") == set()
    assert view.groups[0].features[0].since == 1


def test_keys_are_parsed_per_column_and_must_line_up() -> None:
    entity = Entity(
        name="uc",
        keys=[{"name": "user_id", "type": "int64"}, {"name": "category", "type": "string"}],
    )
    keys = parse_keys(entity, {"user_id": "1, 2", "category": "a b\n\n c,d \n"})
    assert keys == {"user_id": ["1", "2"], "category": ["a b", "c,d"]}
    with pytest.raises(InvalidArgumentError, match="same number of values"):
        parse_keys(entity, {"user_id": "1 2 3", "category": "a"})
    with pytest.raises(InvalidArgumentError, match="at least one key"):
        parse_keys(entity, {})


def test_try_it_context_and_random_candidates() -> None:
    registry = small_registry()
    config = registry.models["ranker"].definition
    context = context_of(config, {"user_id": " 42 ", "product_ids": "1,2\n3 4"})
    assert context == {"user_id": ["42"], "product_ids": ["1", "2", "3", "4"]}
    with pytest.raises(InvalidArgumentError, match="'user_id' needs a value"):
        context_of(config, {"product_ids": "1"})
    drawn = random_ids(100, 150, np.random.default_rng(1))
    assert len(set(drawn)) == 100 and min(drawn) >= 1 and max(drawn) <= 150
    assert sorted(random_ids(100, 5, np.random.default_rng(1))) == [1, 2, 3, 4, 5]


def test_graph_columns_follow_stages_and_labels_show_key_recipes() -> None:
    registry = small_registry()
    stored = registry.models["ranker"]
    graph = plan_graph(compile_plan(stored.definition, Catalog(registry), stored.version))
    column = columns_of(graph)
    assert column["context:user_id"] == column["context:product_ids"] == 0
    assert column["fetch:user"] == column["fetch:product"] == 1  # concurrent: one column
    assert column["fetch:affinity"] == 2
    assert column["model:pctr"] < column["model:pcvr"] < column["expression:score"]
    assert column["response"] == max(column.values())
    derived = next(
        e for e in graph.edges if (e.source, e.target) == ("fetch:product", "fetch:affinity")
    )
    assert edge_label(derived) == "product.category_id → category_id"
    drawing = layout(graph)
    assert {box.node.id for box in drawing.boxes} == {node.id for node in graph.nodes}
    assert len(drawing.links) == len(graph.edges)
    for box in drawing.boxes:  # everything inside the drawing, nothing overlapping
        assert box.x >= 0 and box.x + box.width <= drawing.width
        assert box.y >= 0 and box.y + box.height <= drawing.height
    for a in drawing.boxes:
        for b in drawing.boxes:
            if a is not b:
                apart = a.x + a.width <= b.x or b.x + b.width <= a.x
                assert apart or a.y + a.height <= b.y or b.y + b.height <= a.y


def test_quantiles_interpolate_inside_the_bucket() -> None:
    buckets = [(0.001, 50.0), (0.01, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.001)
    assert quantile(0.7, buckets) == pytest.approx(0.001 + 0.009 * 0.5)
    assert quantile(0.99, buckets) == pytest.approx(0.01 + 0.09 * 0.9)
    assert quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.1, 1.0), (float("inf"), 10.0)]) == 0.1  # beyond the last bound


EXPOSITION = """# HELP inferstack_requests_total Calls.
# TYPE inferstack_requests_total counter
inferstack_requests_total{{method="retrieve",code="OK"}} {ok}
inferstack_requests_total{{method="retrieve",code="NOT_FOUND"}} {bad}
# HELP inferstack_request_seconds Time.
# TYPE inferstack_request_seconds histogram
inferstack_request_seconds_bucket{{method="retrieve",le="0.001"}} {fast}
inferstack_request_seconds_bucket{{method="retrieve",le="0.01"}} {total}
inferstack_request_seconds_bucket{{method="retrieve",le="+Inf"}} {total}
inferstack_request_seconds_count{{method="retrieve"}} {total}
inferstack_request_seconds_sum{{method="retrieve"}} 1.0
# HELP inferstack_cache_lookups_total Lookups.
# TYPE inferstack_cache_lookups_total counter
inferstack_cache_lookups_total{{level="local",result="hit"}} {hits}
inferstack_cache_lookups_total{{level="local",result="miss"}} {misses}
"""


def reading(ok: int, bad: int, fast: int, hits: int, misses: int) -> str:
    total = ok + bad
    return EXPOSITION.format(ok=ok, bad=bad, fast=fast, total=total, hits=hits, misses=misses)


def test_health_rates_and_percentiles_are_over_the_window() -> None:
    history = History()
    first = parse(reading(ok=100, bad=0, fast=100, hits=10, misses=90))
    assert history.add(1000.0, first) is None
    view = health_view(1000.0, first, None)  # no window yet: since start, no rates
    assert view.window is None and view.methods[0].per_second is None
    assert view.methods[0].total == 100
    second = parse(reading(ok=190, bad=10, fast=100, hits=100, misses=100))
    before = history.add(1010.0, second)
    assert before is not None and before[0] == 1000.0
    view = health_view(1010.0, second, before)
    (method,) = view.methods
    assert method.per_second == pytest.approx(10.0)  # 100 calls in 10 s
    assert method.errors_per_second == pytest.approx(1.0)
    assert method.quantiles[0] == pytest.approx(0.001 + 0.009 * 0.5)  # all 100 new ones slow
    (cache,) = view.caches
    assert cache.level == "local" and cache.group == ""
    assert cache.hit_rate == pytest.approx(0.9)  # 90 hits, 10 misses in the window
    assert cache.lookups_per_second == pytest.approx(10.0)
    assert view.total_per_second == pytest.approx(10.0)


def test_history_keeps_a_minute_of_readings_at_most_one_a_second() -> None:
    history = History()
    samples = parse(reading(1, 0, 1, 0, 0))
    history.add(0.0, samples)
    history.add(0.5, samples)  # too soon: not kept
    assert history.add(30.0, samples) == (0.0, samples)
    assert history.add(70.0, samples) == (30.0, samples)  # the reading at 0 s is too old


def test_cache_hit_rates_per_level_and_per_group_when_labelled() -> None:
    text = """# HELP inferstack_cache_lookups_total Lookups.
# TYPE inferstack_cache_lookups_total counter
inferstack_cache_lookups_total{level="local",result="hit",feature_group="a"} 30
inferstack_cache_lookups_total{level="local",result="miss",feature_group="a"} 10
inferstack_cache_lookups_total{level="local",result="hit",feature_group="b"} 0
inferstack_cache_lookups_total{level="local",result="miss",feature_group="b"} 60
"""
    view = health_view(0.0, parse(text), None)
    rates = {(row.level, row.group): row.hit_rate for row in view.caches}
    assert rates == {
        ("local", ""): pytest.approx(0.3),
        ("local", "a"): pytest.approx(0.75),
        ("local", "b"): pytest.approx(0.0),
    }


def test_admission_numbers_when_the_server_reports_them() -> None:
    text = """# HELP inferstack_calls_in_flight Calls.
# TYPE inferstack_calls_in_flight gauge
inferstack_calls_in_flight 3
# HELP inferstack_calls_queued Calls.
# TYPE inferstack_calls_queued gauge
inferstack_calls_queued 2
# HELP inferstack_shed_total Refused.
# TYPE inferstack_shed_total counter
inferstack_shed_total{method="retrieve",reason="queue_full"} {shed}
"""
    first, second = parse(text.replace("{shed}", "5")), parse(text.replace("{shed}", "25"))
    view = health_view(10.0, second, (0.0, first))
    assert view.admission is not None
    assert (view.admission.in_flight, view.admission.queued) == (3, 2)
    assert view.admission.shed_per_second == pytest.approx(2.0)
    assert (
        health_view(
            0.0, parse(EXPOSITION.format(ok=1, bad=0, fast=1, total=1, hits=0, misses=0)), None
        ).admission
        is None
    )
