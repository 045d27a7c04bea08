"""What the interaction store needs from a cold tier (Cassandra/ScyllaDB, or LMDB embedded).

One row per (type, user): the merged history, encoded by `interactions/coldrow.py`
(checksummed, typed, versioned). Only the sweeper writes rows (read-merge-write of one user
at a time, under its claim); reads and hydrate read them.

A sweeper's write must never replace a row that another sweeper wrote after it read: one
that stalled past its lease (a GC or VM pause, a slow sweep) would otherwise overwrite the
row of the sweeper that took over, after that one already removed the events from the hot
tier. Each write therefore says what it read and carries its claim's fence (`hot/base.py`),
and each adapter refuses the stale write in the way its engine does cheaply and exactly:

- LMDB compares the row with the one the sweeper read inside the write transaction, and
  reports the users whose row changed (their sweeper then leaves them hot: its claim is lost).
- Cassandra writes each row with the fence as its write timestamp. Of two writes of a row it
  keeps the later fence whatever the order they land in, so a stale sweeper's row is never
  visible; it cannot tell the sweeper, whose release then fails because its claim was taken.
  A lightweight transaction would tell, at four round trips and several times the CPU per
  row. This relies on the sweeper's read seeing the latest acknowledged row: it reads with
  `latest`, at the write consistency.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from inferstack.core.registry import Registry


class ColdWrite(NamedTuple):
    user: bytes
    row: bytes  # the new row
    expected: bytes | None  # the row the writer read and merged into `row` (None: none)


class ColdStore(Protocol):
    async def prepare(self, registry: Registry) -> None:
        """Create what new interaction types need (tables, named databases)."""
        ...

    async def read(
        self, type: str, users: Sequence[bytes], *, latest: bool = False
    ) -> list[bytes | None]:
        """One row per user, in order; None where the user has no history of this type.

        `latest`: every write acknowledged before this read is seen (a sweeper's read before
        it merges); plain reads may be served by any replica."""
        ...

    async def write(self, type: str, rows: Sequence[ColdWrite], fence: int) -> list[bytes]:
        """Each user's row replaced by `row`, durably, unless another writer replaced it
        since the writer read `expected`; returns the users whose row was left as it was
        because of that (as far as the adapter can tell: see the module docstring).

        `fence` is the writer's claim fence: a write under a smaller fence never replaces
        one under a larger fence."""
        ...

    async def close(self) -> None: ...
