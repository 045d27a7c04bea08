"""CPU time, resident memory and worker processes read from /proc, shared by the benchmark
scripts."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _ticks(stat: str) -> int:
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)


def cpu_seconds(pids: Sequence[int]) -> npt.NDArray[np.float64]:
    """utime + stime of each process, all its threads (0 for one that is gone)."""
    ticks = []
    for pid in pids:
        try:
            ticks.append(_ticks(Path(f"/proc/{pid}/stat").read_text()))
        except OSError:
            ticks.append(0)
    return np.array(ticks, dtype=np.float64) / CLOCK_TICKS


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += _ticks(Path(f"/proc/{current}/stat").read_text()) / CLOCK_TICKS
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it exited while we looked
    return total


def worker_pids(server_pid: int) -> list[int]:
    """The serve supervisor's worker processes (spawned; not multiprocessing's helpers)."""
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    pids = []
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in command:
            pids.append(int(pid))
    return pids


MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def memory(pid: int) -> dict[str, int]:
    """Resident memory of a process in bytes, as the kernel counts it: VmRSS (= RssAnon +
    RssFile + RssShmem), VmHWM (its peak) and the parts, from /proc/<pid>/status; and Pss from
    /proc/<pid>/smaps_rollup when it can be read (each resident page divided by the number of
    processes mapping it: shared file pages, LMDB's map for one, counted once over them all).
    {} for a process that is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    out = _kilobytes(status, MEMORY_FIELDS)
    with contextlib.suppress(OSError):  # another user's process, or it just exited
        out |= _kilobytes(Path(f"/proc/{pid}/smaps_rollup").read_text(), ("Pss",))
    return out


def _kilobytes(text: str, fields: Sequence[str]) -> dict[str, int]:
    """`Field:   123 kB` lines of a /proc file, in bytes."""
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[name] = int(value.split()[0]) * 1024
    return out
