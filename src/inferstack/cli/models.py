"""`inferstack models`: list the applied model configs, show one's resolved graph, prune files.

`show` compiles the config exactly as servers do (`inferflow.graph.compile_plan` against the
stored registry) and prints what a request will run: context inputs, fetch stages with their
key recipes and which fetches run concurrently, models and expressions in order with their
matrix columns, and the response; `--dot` prints the same graph for Graphviz.

`prune` deletes stored model files (blobs) that no model config of the current registry
uses and that were stored longer ago than a grace period; configstore/pruning.py decides
which, and says why servers never need the others.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from inferstack.cli.common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    console,
    fail,
    print_json,
    settings_from,
)
from inferstack.configstore.base import BlobInfo, BlobStore, ConfigStore
from inferstack.configstore.pruning import (
    DEFAULT_GRACE_SECONDS,
    blobs_to_prune,
    referenced_digests,
)
from inferstack.core.durations import format_duration, parse_duration
from inferstack.core.errors import InferstackError
from inferstack.core.registry import Registry
from inferstack.featurestore.catalog import Catalog
from inferstack.inferflow.describe import describe, plan_dot, plan_text
from inferstack.inferflow.graph import compile_plan
from inferstack.server.components import open_config_store

app = typer.Typer(help="Model configs applied to the registry.", no_args_is_help=True)
# Deleting a blob is one round trip (or one unlink): a bar only helps for many of them.
PROGRESS_FROM = 10


@app.command("list")
def list_models(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Every applied model config with its version and size."""
    registry = load_registry(config, data_dir)
    rows = [
        {
            "name": name,
            "version": stored.version,
            "fetches": len(stored.definition.fetches),
            "models": len(stored.definition.models),
            "expressions": len(stored.definition.expressions),
            "description": stored.definition.description,
        }
        for name, stored in sorted(registry.models.items())
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        console.print(f"No model configs applied (registry revision {registry.revision}).")
        return
    table = Table(*rows[0], title=f"models @ revision {registry.revision}")
    for row in rows:
        table.add_row(*(str(value) for value in row.values()))
    console.print(table)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Model config name, e.g. ranker.")],
    dot: Annotated[bool, typer.Option("--dot", help="Print a Graphviz digraph.")] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print the resolved graph of one model config: stages, keys, concurrency, models."""
    registry = load_registry(config, data_dir)
    stored = registry.models.get(name)
    if stored is None:
        known = ", ".join(sorted(registry.models)) or "none applied"
        fail(f"model '{name}' not found (models: {known})")
    try:
        plan = compile_plan(stored.definition, Catalog(registry), stored.version)
    except InferstackError as exc:
        fail(f"model '{name}' v{stored.version}: {exc}")
    if as_json:
        print_json(describe(plan))
    else:  # plain text, so it pipes into `dot -Tsvg` or a file as it is
        typer.echo(plan_dot(plan) if dot else plan_text(plan))


@app.command("prune")
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            help="Grace period: keep files stored more recently than this (e.g. 10m, 2h, 0s).",
        ),
    ] = format_duration(DEFAULT_GRACE_SECONDS),
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be deleted; delete nothing.")
    ] = False,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete stored model files no model config of the current registry uses.

    A file is deleted when the current registry does not reference it and it was stored
    longer ago than --older-than (default 1h). The grace period protects an apply in
    progress, which stores its files before the registry that names them; an apply that
    re-uses an old file refreshes its stored time. Servers need no file the current registry
    does not reference: a worker reads files only while loading a registry it was just
    given, every watch gives it the newest one, and models it still serves are in memory.
    So older revisions' files may go; only a worker still loading the previous revision
    within a second of an apply could miss one, and it moves on to the current revision.
    """
    try:
        grace = parse_duration(older_than)
    except ValueError as exc:
        fail(f"--older-than: {exc}")
    store = _open_store(config, data_dir)
    try:
        # Blobs before the registry: the registry is then at least as new as the listing,
        # so a file an apply stored and saved meanwhile is seen referenced, not orphaned.
        blobs = store.blobs.list()
        registry = store.registry.load()
        now = time.time()
        prunable = blobs_to_prune(blobs, referenced_digests(registry), now, grace)
        deleted = set() if dry_run else _delete(store.blobs, prunable, quiet=as_json)
    except InferstackError as exc:
        fail(str(exc))
    finally:
        store.close()
    report = _prune_report(blobs, prunable, deleted, now, grace, dry_run)
    if as_json:
        print_json(report)
    else:
        _print_prune(report, registry.revision)


def _open_store(config: Path | None, data_dir: Path | None) -> ConfigStore:
    try:
        return open_config_store(settings_from(config, data_dir=data_dir))
    except InferstackError as exc:
        fail(str(exc))


def _delete(store: BlobStore, blobs: list[BlobInfo], *, quiet: bool) -> set[str]:
    """Delete each blob unless it was stored again since it was listed; the deleted ones."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("files"),
        TimeElapsedColumn(),
    )
    deleted: set[str] = set()
    disable = quiet or len(blobs) < PROGRESS_FROM
    with Progress(*columns, console=console, disable=disable, transient=False) as progress:
        task = progress.add_task("prune model files", total=len(blobs))
        for blob in blobs:
            if store.delete(blob.digest, if_stored_at=blob.stored_at):
                deleted.add(blob.digest)
            progress.advance(task)
    return deleted


def _prune_report(
    blobs: list[BlobInfo],
    prunable: list[BlobInfo],
    deleted: set[str],
    now: float,
    grace: float,
    dry_run: bool,
) -> dict[str, Any]:
    return {
        "dry_run": dry_run,
        "older_than_seconds": grace,
        "stored": {"blobs": len(blobs), "bytes": sum(blob.size for blob in blobs)},
        "prunable": [
            {
                "digest": blob.digest,
                "size": blob.size,
                "age_seconds": round(now - blob.stored_at, 3),
                "deleted": blob.digest in deleted,
            }
            for blob in prunable
        ],
        "deleted": len(deleted),
        "bytes_freed": sum(blob.size for blob in prunable if blob.digest in deleted),
    }


def _print_prune(report: dict[str, Any], revision: int) -> None:
    grace = format_duration(report["older_than_seconds"])
    stored = report["stored"]
    if not stored["blobs"]:
        console.print("Nothing to prune: no model files stored.")
        return
    if not report["prunable"]:
        young = f" or stored within {grace}" if report["older_than_seconds"] else ""
        console.print(
            f"Nothing to prune: {stored['blobs']} model file(s) stored, each referenced by "
            f"revision {revision}{young}."
        )
        return
    # Whole digests, wrapped on a narrow terminal rather than cut: people copy them.
    table = Table(Column("digest", overflow="fold"), "size (bytes)", "age", "outcome")
    for row in report["prunable"]:
        if report["dry_run"]:
            outcome = "[yellow]would delete[/]"
        else:
            outcome = "[red]deleted[/]" if row["deleted"] else "kept: stored again meanwhile"
        table.add_row(row["digest"], f"{row['size']:,}", _age(row["age_seconds"]), outcome)
    console.print(table)
    if report["dry_run"]:
        would_free = sum(row["size"] for row in report["prunable"])
        console.print(
            f"Dry run: {len(report['prunable'])} model file(s), {would_free:,} bytes, "
            "would be deleted."
        )
    else:
        console.print(
            f"Deleted {report['deleted']} model file(s) not referenced by revision {revision}; "
            f"freed {report['bytes_freed']:,} bytes."
        )


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.1f}s"


def load_registry(config: Path | None, data_dir: Path | None) -> Registry:
    try:
        store = open_config_store(settings_from(config, data_dir=data_dir))
        try:
            return store.registry.load()
        finally:
            store.close()
    except InferstackError as exc:
        fail(str(exc))
