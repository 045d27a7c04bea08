"""`inferstack ingest`: load Parquet or CSV files into a feature group."""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from inferstack.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    errors,
    fail,
    print_json,
    settings_from,
)
from inferstack.configstore.base import CacheFeedStore
from inferstack.core.errors import InferstackError
from inferstack.featurestore.catalog import Catalog
from inferstack.featurestore.ingest import (
    DEFAULT_CHUNK_ROWS,
    IngestReport,
    count_rows,
    ingest_files,
)
from inferstack.server.components import open_config_store, open_storage
from inferstack.server.settings import ServeSettings

SHOWN_REJECTIONS = 20
BUMP_INTERVAL = 5.0  # seconds between cache generation bumps during a long ingest


def ingest(
    files: Annotated[list[Path], typer.Argument(help="Parquet (.parquet) or CSV (.csv) files.")],
    feature_group: Annotated[
        str, typer.Option("--feature-group", "-g", help="Target feature group.")
    ],
    strict: Annotated[
        bool, typer.Option("--strict", help="Check every row first; write nothing if any is bad.")
    ] = False,
    chunk_rows: Annotated[
        int, typer.Option(help="Rows per chunk held in memory.")
    ] = DEFAULT_CHUNK_ROWS,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write rows from files into a feature group, reporting every rejected row.

    Without --strict, good rows are written and bad ones reported by row number.
    Exits 1 if any row was rejected.
    """
    settings = settings_from(config, data_dir=data_dir)
    try:
        store = open_config_store(settings)
        catalog = Catalog(store.registry.load())
    except InferstackError as exc:
        fail(str(exc))
    follower = _CacheBump(store.cache_feed, feature_group)
    try:
        report = asyncio.run(
            _run(settings, catalog, feature_group, files, strict, chunk_rows, as_json, follower)
        )
        if report.rows_written:
            follower.bump()  # the last rows are in: every server's caches move on
    except BaseException:
        follower.bump()  # stopped halfway: the rows written so far must be seen too
        raise
    finally:
        store.close()
    if as_json:
        print_json(asdict(report))
    else:
        _print_report(report)
    if follower.failure:
        errors.print(
            f"[red]error:[/red] rows were written, but servers could not be told to drop "
            f"cached rows of {feature_group} (config store: {follower.failure}); they may "
            "serve old values until the group's cache ttl",
            highlight=False,
            soft_wrap=True,
        )
    if report.rows_rejected or follower.failure:
        raise typer.Exit(1)


class _CacheBump:
    """Moves the group to a new cache generation (configstore/cachefeed.py): at the end of
    an ingest, and every BUMP_INTERVAL seconds while a long one writes, so servers never
    serve rows older than that from their caches."""

    def __init__(self, feed: CacheFeedStore, group: str) -> None:
        self.feed = feed
        self.group = group
        self.failure: str | None = None
        self._last = time.monotonic()

    def bump(self) -> None:
        try:
            self.feed.bump_generations([self.group])
            self.failure = None
        except Exception as exc:  # unreachable config store, disk errors: reported, not fatal
            self.failure = str(exc)
        self._last = time.monotonic()

    def written(self) -> None:
        """Called after each chunk is written."""
        if time.monotonic() - self._last >= BUMP_INTERVAL:
            self.bump()


async def _run(
    settings: ServeSettings,
    catalog: Catalog,
    group: str,
    files: list[Path],
    strict: bool,
    chunk_rows: int,
    quiet: bool,
    follower: _CacheBump,
) -> IngestReport:
    storage = open_storage(settings)
    try:
        await storage.prepare(catalog.registry)
        known = [count_rows(f) if f.exists() else None for f in files]
        total = (
            sum(n for n in known if n is not None) if all(n is not None for n in known) else None
        )
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("rows"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
            task = progress.add_task(f"ingest {group}", total=total)

            def advance(_file: str, rows: int) -> None:
                progress.advance(task, rows)
                follower.written()

            return await ingest_files(
                catalog,
                storage,
                group,
                files,
                strict=strict,
                chunk_rows=chunk_rows,
                progress=advance,
            )
    except InferstackError as exc:
        fail(str(exc))
    finally:
        await storage.close()


def _print_report(report: IngestReport) -> None:
    rate = report.rows_written / report.seconds if report.seconds else 0.0
    if report.written:
        console.print(
            f"[green]{report.rows_written:,}[/] rows written to {report.feature_group} in "
            f"{report.seconds:.1f}s ({rate:,.0f} rows/s); "
            f"[{'red' if report.rows_rejected else 'green'}]{report.rows_rejected:,}[/] rejected."
        )
    else:
        console.print(
            f"[red]Nothing written[/]: --strict found {report.rows_rejected:,} bad row(s) "
            f"in {report.rows_read:,}."
        )
    if report.rejections:
        table = Table("file", "row", "reason", title="Rejected rows")
        for rejection in report.rejections[:SHOWN_REJECTIONS]:
            table.add_row(rejection.file, str(rejection.row), rejection.reason)
        console.print(table)
        hidden = report.rows_rejected - min(SHOWN_REJECTIONS, len(report.rejections))
        if hidden:
            console.print(f"... and {hidden:,} more (use --json for up to 1,000).")
