"""Reclaiming expired rows from embedded (LMDB) storage.

A row's expiry is in its header (`expires_at`, unix seconds, 0 = never; core/rowformat.py).
Readers already treat an expired row as absent, but LMDB keeps it until it is deleted, so
compaction walks each group's keys in order, `batch` rows at a time: a read transaction
finds the expired ones, then one write transaction deletes them, re-checking each row so a
row rewritten in between is kept. Pages freed this way are reused by later writes (LMDB
files do not shrink).

Two users: `inferstack compact` (all at once, with progress) and every embedded server in
the background (`run_background`), slowly and by one worker at a time: whichever worker
holds an exclusive lock on `<lmdb>/compaction.lock` compacts; if it dies, the lock goes
with it and another worker takes over after its next pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from inferstack.core.rowformat import HEADER_DTYPE, HEADER_SIZE, MAX_EXPIRY
from inferstack.kv.lmdb import LmdbStorage

log = logging.getLogger(__name__)
LOCK_FILE = "compaction.lock"

Progress = Callable[[int], None]  # rows examined since the last call


@dataclass
class GroupCompaction:
    """What compacting one feature group did."""

    feature_group: str
    rows_examined: int = 0
    rows_deleted: int = 0
    bytes_freed: int = 0
    seconds: float = 0.0


def expired(headers: bytes, now: float) -> npt.NDArray[np.bool_]:
    """Per row header (HEADER_SIZE bytes each, concatenated): expired at `now`? The same
    test readers apply: 0 means never, else expired once `expires_at <= now`."""
    expires_at = np.frombuffer(headers, dtype=HEADER_DTYPE)["expires_at"]
    # 0 - 1 wraps to the largest uint32, which is never below now.
    result: npt.NDArray[np.bool_] = expires_at - np.uint32(1) < np.uint32(min(int(now), MAX_EXPIRY))
    return result


def row_expired(now: float) -> Callable[[bytes], bool]:
    def check(row: bytes) -> bool:
        return len(row) >= HEADER_SIZE and bool(expired(row[:HEADER_SIZE], now)[0])

    return check


def compact_step(
    storage: LmdbStorage, group: str, after: bytes | None, batch: int, now: float
) -> tuple[bytes | None, int, int, int]:
    """One bounded step: examine up to `batch` rows after key `after` and delete the expired
    ones. Returns (where to go on from, None at the end; examined; deleted; bytes freed)."""
    rows = storage.scan(group, after, batch, HEADER_SIZE)
    # Rows too short for a header are corrupt: left alone (they read as CORRUPT).
    whole = [(key, head) for key, head in rows if len(head) == HEADER_SIZE]
    candidates: list[bytes] = []
    if whole:
        mask = expired(b"".join(head for _, head in whole), now)
        candidates = [key for (key, _), gone in zip(whole, mask.tolist(), strict=True) if gone]
    deleted, freed = storage.delete_if(group, candidates, row_expired(now))
    following = rows[-1][0] if len(rows) == batch else None
    return following, len(rows), deleted, freed


def compact_group(
    storage: LmdbStorage,
    group: str,
    *,
    batch: int = 1000,
    now: float | None = None,
    progress: Progress | None = None,
) -> GroupCompaction:
    """Every expired row of `group`, in steps of `batch` rows, as fast as it goes."""
    report = GroupCompaction(group)
    began = time.monotonic()
    moment = time.time() if now is None else now
    after: bytes | None = None
    while True:
        after, examined, deleted, freed = compact_step(storage, group, after, batch, moment)
        report.rows_examined += examined
        report.rows_deleted += deleted
        report.bytes_freed += freed
        if progress is not None:
            progress(examined)
        if after is None:
            break
    report.seconds = time.monotonic() - began
    return report


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Try to become the one compacting under `path`; yields whether this process is."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


async def run_background(
    storage: LmdbStorage,
    groups: Callable[[], list[str]],
    *,
    rows_per_second: int,
    batch: int,
    pause: float,
) -> None:
    """Compact every group over and over at about `rows_per_second`, resting `pause`
    seconds after each pass, while this worker holds the compaction lock; until cancelled.
    Steps run on a thread: a write transaction waits for the disk."""
    batch = max(1, min(batch, rows_per_second))
    step_seconds = batch / rows_per_second
    while True:
        with exclusive(storage.path) as mine:
            while mine:
                try:
                    await _one_pass(storage, groups(), batch, step_seconds)
                except Exception:  # a bad pass must not end compaction for good
                    log.exception("compaction pass failed; trying again after the pause")
                await asyncio.sleep(pause)
        await asyncio.sleep(pause)  # another worker compacts; take over if it goes away


async def _one_pass(
    storage: LmdbStorage, groups: list[str], batch: int, step_seconds: float
) -> None:
    began = time.monotonic()
    examined = deleted = 0
    for group in groups:
        after: bytes | None = None
        while True:
            started = time.monotonic()
            after, seen, gone, _ = await asyncio.to_thread(
                compact_step, storage, group, after, batch, time.time()
            )
            examined += seen
            deleted += gone
            if after is None:
                break
            await asyncio.sleep(max(0.0, step_seconds - (time.monotonic() - started)))
    if deleted:
        log.info(
            "compaction: %d expired row(s) deleted of %d examined in %.1f s",
            deleted,
            examined,
            time.monotonic() - began,
        )
