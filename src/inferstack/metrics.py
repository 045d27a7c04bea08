"""Prometheus metrics, shared by every worker process.

Workers share one port, so a scrape reaches whichever worker the kernel picks. The
supervisor therefore gives all workers one PROMETHEUS_MULTIPROC_DIR, each worker records
into memory-mapped files there, and any worker's `/metrics` answers for all of them.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

if os.environ.get(MULTIPROC_ENV):
    # Multi-process values ask for the pid on every update, to notice a fork; a request
    # makes a dozen updates, and getpid is a system call. Keep the pid here instead, renewed
    # in a forked child, so forks are still noticed.
    _pid = os.getpid()

    def _renew_pid() -> None:
        global _pid
        _pid = os.getpid()

    os.register_at_fork(after_in_child=_renew_pid)
    values.ValueClass = values.MultiProcessValue(  # type: ignore[no-untyped-call]
        process_identifier=lambda: _pid
    )

REQUESTS = Counter(
    "inferstack_requests_total", "Calls answered, by method and status code.", ["method", "code"]
)
LATENCY = Histogram(
    "inferstack_request_seconds",
    "Time to answer a call inside the server.",
    ["method"],
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
KEYS = Counter("inferstack_keys_total", "Keys asked for, by feature group.", ["feature_group"])
CACHE_LOOKUPS = Counter(
    "inferstack_cache_lookups_total",
    "Keys looked up in a cache, by level, result and feature group.",
    ["level", "result", "feature_group"],
)
INFER_SECONDS = Histogram(
    "inferstack_infer_seconds",
    "Inferflow time per request inside the server, by model config and part "
    "(fetch, model, expression, other = checking, matrix, response).",
    ["model", "part"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.1, 1.0),
)
INFER_DEFAULT_ROWS = Counter(
    "inferstack_infer_default_rows_total",
    "Candidate rows whose feature group had no stored row, by model config and fetch.",
    ["model", "fetch"],
)
STORAGE_KEYS = Counter(
    "inferstack_storage_keys_total", "Keys read from storage (cache misses, coalesced)."
)

# Admission control (server/admission.py). The gauges are written when a call queues or is
# shed and once a second otherwise; "livesum" adds up the workers that are alive.
IN_FLIGHT = Gauge(
    "inferstack_calls_in_flight",
    "Calls executing (admitted by admission control), summed over live workers.",
    multiprocess_mode="livesum",
)
QUEUED = Gauge(
    "inferstack_calls_queued",
    "Calls waiting for an execution slot, summed over live workers.",
    multiprocess_mode="livesum",
)
QUEUE_WAIT = Histogram(
    "inferstack_queue_wait_seconds",
    "Time calls that found every slot taken waited for one (admitted or not).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
SHED = Counter(
    "inferstack_shed_total",
    "Calls refused by admission control, by method and reason "
    "(queue_full, deadline, queue_timeout).",
    ["method", "reason"],
)
SLOW_BODIES = Counter(
    "inferstack_http_slow_bodies_total",
    "HTTP requests refused (408) because their body did not arrive within "
    "http_body_timeout, by route.",
    ["method"],
)
WORKER_CALLS = Counter(
    "inferstack_worker_calls_total",
    "Calls admitted, by worker process id: how evenly the kernel spreads connections.",
    ["worker"],
)

# Callers (server/auth.py): only when callers are configured; names are the callers'.
CALLER_REQUESTS = Counter(
    "inferstack_caller_requests_total",
    "Calls by authenticated caller and method.",
    ["caller", "method"],
)
AUTH_DENIALS = Counter(
    "inferstack_auth_denials_total",
    "Calls refused by authentication or authorization, by caller ('' when unknown), method "
    "and reason (no_token, bad_token, permission).",
    ["caller", "method", "reason"],
)

# LMDB (kv/lmdb.py): a process killed mid-read leaves its reader slot
# pinning an old snapshot, so no page freed since can be reused, until a check frees it.
SWEEP_FAILURES = Counter(
    "inferstack_interactions_sweep_failures_total",
    "Sweeps of the interaction store that failed (and are retried), by cause: the error's "
    "class (UnavailableError: a tier did not answer).",
    ["cause"],
)
LMDB_STALE_READERS = Counter(
    "inferstack_lmdb_stale_readers_cleared_total",
    "LMDB reader slots of dead processes freed, by environment directory.",
    ["path"],
)


# Label children resolved once: the label sets are few (methods x codes, feature groups),
# and `labels()` takes a lock and builds a key on every call.


@functools.lru_cache(maxsize=4096)
def _request_children(method: str, code: str) -> tuple[Counter, Histogram]:
    return REQUESTS.labels(method, code), LATENCY.labels(method)


@functools.lru_cache(maxsize=4096)
def _keys_child(group: str) -> Counter:
    return KEYS.labels(group)


def count_request(method: str, code: str, seconds: float) -> None:
    """One call answered: its status code and how long the server took."""
    requests, latency = _request_children(method, code)
    requests.inc()
    latency.observe(seconds)


def count_keys(group: str, keys: int) -> None:
    _keys_child(group).inc(keys)


def render() -> bytes:
    """The exposition text: every worker's numbers when running under the supervisor."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (in-flight, queued) from the shared directory."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@contextmanager
def shared_directory() -> Iterator[str]:
    """A fresh directory for the workers' metric files, removed when serving stops."""
    directory = tempfile.mkdtemp(prefix="inferstack-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = directory  # spawned workers inherit it
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)
