"""`inferstack interactions`: read, ingest, hydrate and sweep users' events on a running server.

`ingest` sends Parquet, CSV or JSON-lines files to a server in batches of 10k events, one
Ingest call each: the flow is `interactions/ingest.py`; this module parses options, sends
over gRPC and prints the summary.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from inferstack.cli.common import (
    CaOption,
    CertOption,
    ConfigOption,
    DataDirOption,
    JsonOption,
    KeyOption,
    TokenOption,
    client_security,
    console,
    fail,
    print_json,
    settings_from,
)
from inferstack.cli.infer import cell
from inferstack.client.channels import DEFAULT_TARGET
from inferstack.client.interactions import (
    AsyncInteractionsClient,
    EventHistory,
    InteractionsClient,
)
from inferstack.core.errors import InferstackError, InvalidArgumentError
from inferstack.core.events import EventBatch
from inferstack.core.interactiontypes import EVENT_ID, TIMESTAMP, InteractionType
from inferstack.interactions.eventfiles import EventFile
from inferstack.interactions.events import InteractionCatalog
from inferstack.interactions.ingest import (
    BATCH_EVENTS,
    IngestStoppedError,
    IngestSummary,
    ingest_event_files,
    open_event_files,
    total_events,
)
from inferstack.server.components import open_config_store
from inferstack.wire.interactions import since_ms
from inferstack.wire.json import json_values

app = typer.Typer(
    help="The interaction store: users' recent events (clicks, orders...).", no_args_is_help=True
)

DEFAULT_LAST = 20
SHOWN_REJECTIONS = 20

# -t is the interaction type here, so the target has no short flag (unlike `inferstack infer`).
TargetOption = Annotated[
    str, typer.Option("--target", envvar="INFERSTACK_TARGET", help="gRPC address of a server.")
]
UserArgument = Annotated[
    str, typer.Argument(help="The user's id (parsed by each type's user key type).")
]
TypesOption = Annotated[
    list[str] | None,
    typer.Option("--type", "-t", help="Interaction type; repeatable [default: every type]."),
]


# ---- get, hydrate, sweep ---------------------------------------------------------------------


@app.command("get")
def get(
    user: UserArgument,
    types: TypesOption = None,
    last: Annotated[
        int | None, typer.Option("--last", "-n", min=1, help=f"Newest N per type [{DEFAULT_LAST}].")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only events since: unix ms, or ISO 8601 (UTC unless an offset)."),
    ] = None,
    target: TargetOption = DEFAULT_TARGET,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a user's events per type, newest first, hot and cold merged."""
    limit, since_value = window(last, since)
    try:
        with InteractionsClient(
            target, connections=1, **client_security(token, ca, cert, key)
        ) as client:
            histories = client.get(user, types or [], limit, since_value)
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    if as_json:
        print_json(histories_json(histories))
        return
    for history in histories.values():
        console.print(history_table(history, user))


def window(last: int | None, since: str | None) -> tuple[int | None, int | None]:
    """(limit, since in unix ms); neither given means the newest DEFAULT_LAST."""
    if since is None:
        return last or DEFAULT_LAST, None
    try:
        return last, since_ms(since)
    except InferstackError as exc:
        fail(str(exc))


def history_table(history: EventHistory, user: str) -> Table:
    shown = [name for name in history.columns if name not in (EVENT_ID, TIMESTAMP)]
    title = (
        f"{history.type}: {history.count} event(s) of user {user}, newest first "
        f"({history.hot} hot, {history.count - history.hot} cold)"
    )
    table = Table("time (UTC)", EVENT_ID, *shown, title=title)
    for row in range(history.count):
        stamp = int(history.timestamps[row])
        table.add_row(
            format_ms(stamp),
            str(history.event_ids[row]),
            *(cell(history.columns[name][row]) for name in shown),
        )
    return table


def format_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def histories_json(histories: dict[str, EventHistory]) -> dict[str, Any]:
    return {
        name: {
            "count": history.count,
            "hot": history.hot,
            "columns": {key: json_values(v.tolist()) for key, v in history.columns.items()},
        }
        for name, history in histories.items()
    }


@app.command("hydrate")
def hydrate(
    user: UserArgument,
    types: TypesOption = None,
    target: TargetOption = DEFAULT_TARGET,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Load a user's cold history into the hot tier (as on app open); safe to repeat."""
    try:
        with InteractionsClient(
            target, connections=1, **client_security(token, ca, cert, key)
        ) as client:
            loaded = client.hydrate(user, types or [])
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    if as_json:
        print_json({"loaded": loaded})
        return
    counts = ", ".join(f"{count:,} {name}" for name, count in loaded.items()) or "nothing"
    console.print(f"Loaded {counts} event(s) of user {user} into the hot tier.", highlight=False)


@app.command("sweep")
def sweep(
    limit: Annotated[
        int, typer.Option(min=0, help="Most users to move; 0: the server's default.")
    ] = 0,
    target: TargetOption = DEFAULT_TARGET,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Move the hot events of users past their inactivity deadline to the cold tier now."""
    try:
        with InteractionsClient(
            target, connections=1, **client_security(token, ca, cert, key)
        ) as client:
            swept = client.sweep(limit)
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    if as_json:
        print_json(asdict(swept))
        return
    console.print(
        f"Moved {swept.events:,} event(s) of {swept.users:,} user(s) to the cold tier "
        f"({swept.lost_claims:,} claim(s) lost to other sweepers).",
        highlight=False,
    )


# ---- ingest ----------------------------------------------------------------------------------


@app.command("ingest")
def ingest(
    files: Annotated[list[Path], typer.Argument(help=".parquet, .csv or .jsonl files.")],
    type_name: Annotated[str, typer.Option("--type", "-t", help="The interaction type.")],
    target: TargetOption = DEFAULT_TARGET,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    batch_events: Annotated[
        int, typer.Option(min=1, help="Events per Ingest call.")
    ] = BATCH_EVENTS,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Send events from files to a server over gRPC.

    Columns: event_id, the type's user and item key names (e.g. user_id, product_id), ts
    (unix ms, or a timestamp column) and any of the type's attributes (missing or null ones
    read as their defaults). The type's definition is read from the config store (--config,
    --data-dir). Exits 1 if any batch was rejected.
    """
    settings = settings_from(config, data_dir=data_dir)
    try:
        store = open_config_store(settings)
        try:
            catalog = InteractionCatalog(store.registry.load())
        finally:
            store.close()
        kind = catalog.type(type_name)
        opened = open_event_files(kind, files)
    except InferstackError as exc:
        fail(str(exc))
    security = client_security(token, ca, cert, key)
    try:
        summary = asyncio.run(send_files(kind, opened, target, batch_events, as_json, security))
    except IngestStoppedError as exc:
        fail(str(exc))
    if as_json:
        print_json(asdict(summary))
    else:
        print_summary(summary)
    if summary.rejected_batches:
        raise typer.Exit(1)


async def send_files(
    kind: InteractionType,
    files: list[EventFile],
    target: str,
    size: int,
    quiet: bool,
    security: dict[str, Any] | None = None,
) -> IngestSummary:
    """ingest_event_files to a server over gRPC, with a progress bar unless `quiet`."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeElapsedColumn(),
    )
    async with AsyncInteractionsClient(target, timeout=60.0, **(security or {})) as client:

        async def send(batch: EventBatch) -> int:
            try:
                return await client.ingest_batches([batch])
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise InvalidArgumentError(exc.details() or "rejected") from None
                raise InferstackError(f"{exc.code().name}: {exc.details()}") from None

        with Progress(*columns, console=console, disable=quiet) as progress:
            task = progress.add_task(f"ingest {kind.name}", total=total_events(files))
            return await ingest_event_files(
                kind,
                files,
                send,
                batch_events=size,
                progress=lambda events: progress.advance(task, events),
            )


def print_summary(summary: IngestSummary) -> None:
    rate = summary.events_stored / summary.seconds if summary.seconds else 0.0
    rejected = summary.events_rejected
    console.print(
        f"[green]{summary.events_stored:,}[/] {summary.type} events stored from "
        f"{len(summary.files)} file(s) in {summary.seconds:.1f}s ({rate:,.0f} events/s); "
        f"[{'red' if rejected else 'green'}]{rejected:,}[/] rejected in "
        f"{len(summary.rejected_batches)} batch(es).",
        highlight=False,
    )
    for path, names in summary.ignored_columns.items():
        console.print(f"{path}: ignored column(s) {', '.join(names)}", highlight=False)
    if summary.rejected_batches:
        table = Table("file", "batch", "events", "event", "reason", title="Rejected batches")
        for batch in summary.rejected_batches[:SHOWN_REJECTIONS]:
            events = f"{batch.first_event}..{batch.first_event + batch.events - 1}"
            event = "" if batch.event is None else str(batch.event)
            table.add_row(batch.file, str(batch.batch), events, event, batch.reason)
        console.print(table)
        hidden = len(summary.rejected_batches) - SHOWN_REJECTIONS
        if hidden > 0:
            console.print(f"... and {hidden:,} more (use --json for all).")
