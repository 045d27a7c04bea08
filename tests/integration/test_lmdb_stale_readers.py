"""A process killed inside an LMDB read transaction does not make the embedded server's files
grow (issue 14).

Such a process leaves its reader slot behind, pinning the snapshot it read: until the slot is
freed LMDB reuses no page freed since, so every rewrite of a row takes new pages and data.mdb
grows with the writes. The server's workers free the slots of dead processes
(`Environment.reader_check`) at start-up and every few seconds.

Here a real `inferstack serve` (2 workers, embedded storage) takes Persists that rewrite the
same rows, while a process that opened the feature store's environment with the server's own
flags is SIGKILLed inside a read transaction, several times. After each kill, small writes go
on until the slot is gone from LMDB's reader table (a worker freed it; bounded wait), then a
burst of full rewrites follows. With the slot freed, the burst reuses pages and data.mdb stays
near its size before; with it pinned, every rewrite of the burst adds the data's size again.
"""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from inferstack.client import FeatureStoreClient
from inferstack.kv.lmdb import LmdbStorage
from inferstack.server.worker import STALE_READERS_EVERY
from tests.helpers import kill_mid_read
from tests.servers import RunningServer, inferstack, start_server

DEFINITIONS = """
entities:
  - name: item
    keys: [{name: item_id, type: int64}]
feature_groups:
  - name: item_vectors
    entity: item
    features:
      - {name: vector, type: "float32[256]"}
"""
ROWS = 500  # of 1 KiB: a full rewrite touches about 0.5 MiB of pages
WARM_UP = 20  # full rewrites before the baseline size: the free pages settle
ROUNDS = 3  # processes killed mid-read
BURST = 30  # full rewrites after each kill: about 15 MiB of new pages if the slot stays
TRICKLE = 10  # rows per small write while waiting for the slot to be freed
WAIT = 2 * STALE_READERS_EVERY + 5  # bound on that wait: a hang guard, not a speed check
ADAPTER = "inferstack.kv.lmdb:LmdbStorage"
MiB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    (tmp_path / "items.yaml").write_text(DEFINITIONS)
    inferstack("apply", "-f", str(tmp_path / "items.yaml"), data_dir=tmp_path / "data")
    running = start_server(tmp_path / "data", workers=2)
    yield running
    assert running.stop() == 0


def reader_pids(storage: LmdbStorage) -> set[int]:
    """Processes holding a reader slot with a snapshot, from LMDB's reader table."""
    lines = storage._env.readers().splitlines()[1:]  # a header, then pid / thread / txnid
    return {int(line.split()[0]) for line in lines if line.split()[:1] != ["(no"]}


def cleared_by_server(server: RunningServer) -> float:
    with urllib.request.urlopen(f"{server.http_base}/metrics", timeout=5) as response:
        text = response.read().decode()
    prefix = "inferstack_lmdb_stale_readers_cleared_total{"
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def test_a_reader_killed_mid_read_does_not_make_lmdb_grow(server: RunningServer) -> None:
    path = server.log.parent / "lmdb"
    data_file = path / "data.mdb"
    keys = list(range(ROWS))
    rng = np.random.default_rng(14)

    with FeatureStoreClient(server.grpc_target, timeout=30) as client:

        def write(ids: list[int]) -> None:
            vectors = rng.random((len(ids), 256), dtype=np.float32)
            assert client.persist("item_vectors", {"item_id": ids}, {"vector": vectors}) == len(ids)

        for _ in range(WARM_UP):
            write(keys)
        baseline = data_file.stat().st_size
        bound = baseline + BURST * ROWS * 1024 // 2  # half of what one pinned burst adds
        observer = LmdbStorage(path)  # only reads LMDB's reader table; never reader_check
        try:
            for round in range(1, ROUNDS + 1):
                dead = kill_mid_read(ADAPTER, path)
                deadline = time.monotonic() + WAIT
                while dead in reader_pids(observer) and time.monotonic() < deadline:
                    write(keys[:TRICKLE])  # writes go on while the slot is pinned
                    time.sleep(0.2)
                for _ in range(BURST):
                    write(keys)
                size = data_file.stat().st_size
                assert size <= bound, (
                    f"round {round}: data.mdb grew from {baseline / MiB:.1f} MiB to "
                    f"{size / MiB:.1f} MiB (bound {bound / MiB:.1f}): the reader slot of "
                    f"killed process {dead} was still pinned: {sorted(reader_pids(observer))}"
                )
        finally:
            observer.close_sync()
        print(f"\ndata.mdb: {baseline / MiB:.1f} MiB before, {size / MiB:.1f} MiB after")

    deadline = time.monotonic() + 10  # workers publish counters as they go: a hang guard
    while cleared_by_server(server) < ROUNDS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert cleared_by_server(server) == ROUNDS
    assert "freed 1 reader slot(s) left by dead processes" in server.log.read_text()
