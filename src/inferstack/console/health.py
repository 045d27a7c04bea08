"""The Health page's numbers, from the server's own Prometheus metrics.

Counters and histograms only ever grow, so "now" is the difference between two readings:
each worker keeps its last readings for a minute (at most one a second) and the page shows
rates and latency percentiles over the window between the oldest of them and now. Under
`inferstack serve` every worker's reading covers all workers (metrics.py), so it does not
matter which worker answers a refresh.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
KEEP_SECONDS = 60.0
MIN_SPACING = 1.0  # seconds between kept readings
QUANTILES = (0.5, 0.9, 0.99)


def parse(text: str) -> Samples:
    """Exposition text -> {(sample name, sorted labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class History:
    """Recent readings of the metrics, oldest first."""

    def __init__(self) -> None:
        self._readings: deque[tuple[float, Samples]] = deque()

    def add(self, now: float, samples: Samples) -> tuple[float, Samples] | None:
        """Keep this reading (if the last is a second old) and return the oldest one kept
        from before `now`, to measure the window against; None on the first reading."""
        while self._readings and now - self._readings[0][0] > KEEP_SECONDS:
            self._readings.popleft()
        oldest = self._readings[0] if self._readings else None
        if not self._readings or now - self._readings[-1][0] >= MIN_SPACING:
            self._readings.append((now, samples))
        return oldest if oldest is not None and oldest[0] < now else None


@dataclass(frozen=True)
class MethodRow:
    method: str
    per_second: float | None  # None without a window
    errors_per_second: float | None
    quantiles: list[float | None]  # seconds, for QUANTILES
    total: int


@dataclass(frozen=True)
class CacheRow:
    level: str
    group: str  # "" when the metrics do not say which group
    hit_rate: float | None  # over the window (or since start without one)
    lookups_per_second: float | None


@dataclass(frozen=True)
class PartRow:
    model: str
    part: str
    quantiles: list[float | None]


@dataclass(frozen=True)
class Admission:
    in_flight: float  # calls executing now, over every worker
    queued: float  # calls waiting for a slot now
    shed_per_second: float | None  # calls refused (queue full, deadline, waited too long)


@dataclass(frozen=True)
class HealthView:
    window: float | None  # seconds the rates are over; None: since the server started
    methods: list[MethodRow]
    caches: list[CacheRow]
    keys_per_group: list[tuple[str, float | None, int]]  # group, keys/s, total
    storage_keys_per_second: float | None
    infer_parts: list[PartRow]
    default_rows: list[tuple[str, str, float | None, int]]  # model, fetch, rows/s, total
    admission: Admission | None = None  # where the server has admission control

    @property
    def total_per_second(self) -> float | None:
        rates = [m.per_second for m in self.methods if m.per_second is not None]
        return sum(rates) if rates else None


def health_view(now: float, samples: Samples, before: tuple[float, Samples] | None) -> HealthView:
    window = now - before[0] if before is not None else None
    delta = _Delta(samples, before[1] if before is not None else {}, window)
    return HealthView(
        window,
        _methods(delta),
        _caches(delta),
        [
            (dict(labels).get("feature_group", "?"), delta.rate(name, labels), int(value))
            for (name, labels), value in sorted(samples.items())
            if name == "inferstack_keys_total"
        ],
        delta.rate("inferstack_storage_keys_total", ()),
        _infer_parts(delta),
        [
            (
                dict(labels).get("model", "?"),
                dict(labels).get("fetch", "?"),
                delta.rate(name, labels),
                int(value),
            )
            for (name, labels), value in sorted(samples.items())
            if name == "inferstack_infer_default_rows_total"
        ],
        _admission(delta),
    )


def _admission(delta: _Delta) -> Admission | None:
    in_flight = delta.now.get(("inferstack_calls_in_flight", ()))
    if in_flight is None:
        return None
    shed = [
        delta.rate("inferstack_shed_total", labels)
        for labels in delta.series("inferstack_shed_total")
    ]
    known = [rate for rate in shed if rate is not None]
    return Admission(
        in_flight,
        delta.now.get(("inferstack_calls_queued", ()), 0.0),
        sum(known) if known or delta.window else None,
    )


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a histogram given as (upper bound, cumulative count) pairs,
    interpolated linearly inside its bucket (as Prometheus' histogram_quantile does)."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # in the open-ended bucket: the highest finite bound
            inside = count - lower_count
            fraction = (rank - lower_count) / inside if inside > 0 else 1.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return lower_bound


class _Delta:
    """Counter values over the window (or since start), and rates."""

    def __init__(self, now: Samples, before: Samples, window: float | None) -> None:
        self.now = now
        self.before = before
        self.window = window

    def value(self, name: str, labels: Labels) -> float:
        current = self.now.get((name, labels), 0.0)
        if self.window is None:
            return current
        previous = self.before.get((name, labels), 0.0)
        return current - previous if current >= previous else current  # a reset: from zero

    def rate(self, name: str, labels: Labels) -> float | None:
        if not self.window:
            return None
        return self.value(name, labels) / self.window

    def series(self, name: str) -> list[Labels]:
        return sorted(labels for sample, labels in self.now if sample == name)

    def quantiles(self, histogram: str, labels: Labels) -> list[float | None]:
        buckets = [
            (float(dict(bucket).get("le", "+Inf")), self.value(f"{histogram}_bucket", bucket))
            for bucket in self.series(f"{histogram}_bucket")
            if tuple(item for item in bucket if item[0] != "le") == labels
        ]
        return [quantile(q, buckets) for q in QUANTILES]


def _methods(delta: _Delta) -> list[MethodRow]:
    calls: dict[str, list[Labels]] = {}
    for labels in delta.series("inferstack_requests_total"):
        calls.setdefault(dict(labels).get("method", "?"), []).append(labels)
    rows = []
    for method, series in sorted(calls.items()):
        per_code = {dict(labels).get("code", ""): labels for labels in series}
        rates = {
            code: delta.rate("inferstack_requests_total", lab) for code, lab in per_code.items()
        }
        known = [r for r in rates.values() if r is not None]
        errors = [r for code, r in rates.items() if code != "OK" and r is not None]
        rows.append(
            MethodRow(
                method,
                sum(known) if known else None,
                sum(errors) if known else None,
                delta.quantiles("inferstack_request_seconds", (("method", method),)),
                int(sum(delta.now.get(("inferstack_requests_total", lab), 0) for lab in series)),
            )
        )
    return rows


def _caches(delta: _Delta) -> list[CacheRow]:
    """One row per cache level over every group, then one per level and group where the
    metrics carry a `feature_group` label."""
    counts: dict[tuple[str, str], list[float]] = {}  # (level, group) -> [hits, misses]
    for labels in delta.series("inferstack_cache_lookups_total"):
        named = dict(labels)
        result = named.get("result", "")
        if result not in ("hit", "miss"):
            continue
        value = delta.value("inferstack_cache_lookups_total", labels)
        column = 0 if result == "hit" else 1
        level = named.get("level", "?")
        places = [(level, "")]
        if named.get("feature_group"):
            places.append((level, named["feature_group"]))
        for place in places:
            counts.setdefault(place, [0.0, 0.0])[column] += value
    rows = []
    for (level, group), (hits, misses) in sorted(counts.items()):
        lookups = hits + misses
        rows.append(
            CacheRow(
                level,
                group,
                hits / lookups if lookups else None,
                lookups / delta.window if delta.window else None,
            )
        )
    return rows


def _infer_parts(delta: _Delta) -> list[PartRow]:
    series = {
        tuple(item for item in labels if item[0] != "le")
        for labels in delta.series("inferstack_infer_seconds_bucket")
    }
    return [
        PartRow(
            dict(labels).get("model", "?"),
            dict(labels).get("part", "?"),
            delta.quantiles("inferstack_infer_seconds", labels),
        )
        for labels in sorted(series)
    ]
