"""Bulk ingest of interaction events from files (`inferstack interactions ingest`).

Parquet, CSV or JSON-lines files (`eventfiles.py`) are read in batches of `batch_events`
events and each batch goes to a `Send` (the CLI's sends it as one Ingest call to a server),
`in_flight` batches at a time. A batch is stored whole or not at all, so a bad event rejects
its batch, and the summary names the file, the batch and the event's index in the file. Any
other failure (a server away, a file that cannot be read further) stops the ingest:
`IngestStoppedError` says how many events were stored before.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from inferstack.core.errors import InferstackError, InvalidArgumentError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import InteractionType
from inferstack.interactions.eventfiles import BadEventError, EventFile, to_batch

BATCH_EVENTS = 5_000  # the most one Ingest takes (core/limits.py MAX_EVENTS)
IN_FLIGHT = 4  # batches sent concurrently: a server's workers each take one
# How the service names a refused event (interactions/events.py): "batch 0, event 17: ...".
REFUSED_EVENT = re.compile(r"^batch \d+(?:, event (\d+))?: (.*)$", re.DOTALL)

# Stores one batch whole and returns how many events it stored. A refused batch raises
# InvalidArgumentError (the service's "batch 0, event 17: reason", or a BadEventError); any
# other InferstackError stops the ingest.
Send = Callable[[EventBatch], Awaitable[int]]
Progress = Callable[[int], None]  # events of a batch just sent (stored or rejected)


@dataclass
class RejectedBatch:
    file: str
    batch: int  # 0-based batch of the file
    first_event: int  # 0-based index in the file of the batch's first event
    events: int  # events in the batch (none of them stored)
    event: int | None  # 0-based index in the file of the event at fault, when known
    reason: str


@dataclass
class IngestSummary:
    type: str
    files: list[str]
    events_read: int = 0
    events_stored: int = 0
    events_rejected: int = 0
    rejected_batches: list[RejectedBatch] = field(default_factory=list)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)  # per file
    seconds: float = 0.0


class IngestStoppedError(InferstackError):
    """A failure that is not a rejected batch; `summary` counts what was done before."""

    def __init__(self, cause: InferstackError, summary: IngestSummary) -> None:
        super().__init__(f"{cause} ({summary.events_stored:,} events stored before)")
        self.status = cause.status
        self.summary = summary


def open_event_files(kind: InteractionType, paths: Sequence[Path]) -> list[EventFile]:
    """Every file opened and checked (format, required columns) before any event is sent."""
    return [EventFile(path, kind) for path in paths]


def total_events(files: Sequence[EventFile]) -> int | None:
    """Events in all files, when every file knows its count cheaply (Parquet)."""
    known = [f.events for f in files]
    return None if None in known else sum(n or 0 for n in known)


def rejection(message: str) -> BadEventError:
    """The service's "batch 0, event 17: reason" as the event's index in the batch and the
    reason (index -1 when no single event is at fault)."""
    match = REFUSED_EVENT.match(message)
    if match is None:
        return BadEventError(-1, message)
    index = int(match.group(1)) if match.group(1) is not None else -1
    return BadEventError(index, match.group(2))


async def ingest_event_files(
    kind: InteractionType,
    files: Sequence[EventFile],
    send: Send,
    *,
    batch_events: int = BATCH_EVENTS,
    in_flight: int = IN_FLIGHT,
    progress: Progress | None = None,
) -> IngestSummary:
    """Send every file's events in batches of `batch_events`, `in_flight` at a time.

    Rejected batches are listed in the summary (in file and batch order); other failures
    raise IngestStoppedError once the batches in flight are cancelled.
    """
    if batch_events < 1 or in_flight < 1:
        raise ValueError("batch_events and in_flight must be at least 1")
    summary = IngestSummary(kind.name, [str(f.path) for f in files])
    summary.ignored_columns = {str(f.path): f.ignored for f in files if f.ignored}
    started = time.perf_counter()
    slots = asyncio.Semaphore(in_flight)
    pending: set[asyncio.Task[None]] = set()

    async def send_one(file: EventFile, number: int, first: int, table: pa.Table) -> None:
        try:
            summary.events_stored += await _send(send, kind, table)
        except BadEventError as bad:
            event = None if bad.index < 0 else first + bad.index
            summary.rejected_batches.append(
                RejectedBatch(str(file.path), number, first, table.num_rows, event, bad.reason)
            )
            summary.events_rejected += table.num_rows
        finally:
            if progress is not None:
                progress(table.num_rows)
            slots.release()

    try:
        for file in files:
            for number, (first, table) in enumerate(file.tables(batch_events)):
                summary.events_read += table.num_rows
                await slots.acquire()
                pending.add(asyncio.create_task(send_one(file, number, first, table)))
                pending = _reap(pending)
        await asyncio.gather(*pending)
    except BaseException as exc:
        for running in pending:
            running.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if isinstance(exc, InferstackError):
            raise IngestStoppedError(exc, summary) from exc
        raise
    summary.rejected_batches.sort(key=lambda r: (summary.files.index(r.file), r.batch))
    summary.seconds = time.perf_counter() - started
    return summary


async def _send(send: Send, kind: InteractionType, table: pa.Table) -> int:
    """One batch; an event refused here or by the service is BadEventError with its index in
    the batch."""
    batch = to_batch(kind, table)
    try:
        return await send(batch)
    except BadEventError:
        raise
    except InvalidArgumentError as exc:
        raise rejection(str(exc) or "rejected") from None


def _reap(tasks: set[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
    """The tasks still running; a finished one that failed raises its error here."""
    for task in tasks:
        if task.done():
            task.result()
    return {task for task in tasks if not task.done()}
