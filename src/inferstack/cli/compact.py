"""`inferstack compact`: delete expired rows from embedded (LMDB) storage now."""

from __future__ import annotations

import functools
import time
from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from inferstack.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    fail,
    print_json,
    settings_from,
)
from inferstack.core.errors import InferstackError
from inferstack.featurestore.compaction import GroupCompaction, compact_group
from inferstack.kv.lmdb import LmdbStorage
from inferstack.kv.settings import CassandraSettings
from inferstack.server.components import open_config_store


def compact(
    feature_groups: Annotated[
        list[str] | None,
        typer.Option(
            "--feature-group", "-g", help="Compact only this group (repeatable; default all)."
        ),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Rows examined per write transaction.")] = 1000,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete rows whose expiry has passed, group by group, in short transactions.

    Servers keep serving meanwhile (they read expired rows as absent anyway, and also
    compact slowly in the background). Freed pages are reused by later writes.
    """
    settings = settings_from(config, data_dir=data_dir)
    if isinstance(settings.storage, CassandraSettings):
        fail(
            f"compact works on embedded (LMDB) storage; {settings.storage.type} removes "
            "expired rows itself (every row is written with the group's TTL)"
        )
    try:
        store = open_config_store(settings)
        try:
            defined = sorted(store.registry.load().feature_groups)
        finally:
            store.close()
    except InferstackError as exc:
        fail(str(exc))
    unknown = [g for g in feature_groups or [] if g not in defined]
    if unknown:
        fail(f"no feature group '{unknown[0]}' (defined: {', '.join(defined) or 'none'})")
    groups = sorted(set(feature_groups)) if feature_groups else defined
    storage = LmdbStorage(settings.storage.path or settings.data_dir / "lmdb")
    try:
        reports = _compact(storage, groups, batch, quiet=as_json)
    finally:
        storage.close_sync()
    if as_json:
        print_json({"feature_groups": [asdict(report) for report in reports]})
    else:
        _print(reports)


def _compact(
    storage: LmdbStorage, groups: list[str], batch: int, *, quiet: bool
) -> list[GroupCompaction]:
    now = time.time()  # one moment for the whole run: what "expired" means does not drift
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
    )
    reports = []
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        for group in groups:
            task = progress.add_task(f"compact {group}", total=storage.entry_count(group))
            advance = functools.partial(progress.advance, task)
            reports.append(compact_group(storage, group, batch=batch, now=now, progress=advance))
    return reports


def _print(reports: list[GroupCompaction]) -> None:
    table = Table("feature group", "rows examined", "expired rows deleted", "bytes freed")
    for report in reports:
        table.add_row(
            report.feature_group,
            f"{report.rows_examined:,}",
            f"{report.rows_deleted:,}",
            f"{report.bytes_freed:,}",
        )
    console.print(table)
    deleted = sum(report.rows_deleted for report in reports)
    console.print(
        f"[green]{deleted:,}[/] expired row(s) deleted; freed pages are reused by writes."
    )
