"""`inferstack callers add|list|revoke`: who may call the servers, through the config store.

    inferstack callers add ranker --grant read:feature_group/* --grant read:model/ranker
    inferstack callers list [--json]
    inferstack callers revoke ranker

`add` prints the new caller's token once; only a salted hash of it is stored. Every server
worker watches the callers and follows a change within a second. Once any caller was added,
every call needs a token, also after the last caller is revoked.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
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
from inferstack.configstore.base import ConfigStore
from inferstack.core.callers import Callers, Grant, check_caller_name, new_caller
from inferstack.core.errors import InferstackError
from inferstack.server.components import open_config_store

app = typer.Typer(help="Callers: tokens and what each may do.", no_args_is_help=True)

GrantOption = Annotated[
    list[str],
    typer.Option(
        "--grant",
        "-g",
        help="PERMISSION:KIND/NAME, repeatable: read|write|admin, "
        "feature_group|model|interaction_type, a name, a prefix* or *; e.g. "
        "read:feature_group/*, write:interaction_type/click, admin:*.",
    ),
]


def _change(
    config: Path | None, data_dir: Path | None, change: Callable[[Callers], Callers]
) -> Callers:
    """Read, change and store the callers (compare-and-set on the revision)."""
    store = _store(config, data_dir)
    try:
        current = store.callers.load()
        changed = change(current)
        store.callers.save(changed, current.revision)
        return changed
    except InferstackError as exc:
        fail(str(exc))
    finally:
        store.close()


def _store(config: Path | None, data_dir: Path | None) -> ConfigStore:
    settings = settings_from(config, data_dir=data_dir)
    try:
        return open_config_store(settings)
    except InferstackError as exc:
        fail(str(exc))


@app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The caller's name (letters, digits, _ . -).")],
    grants: GrantOption,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add a caller and print its token (shown this once; only its hash is stored)."""
    try:
        check_caller_name(name)
        parsed = [Grant.parse(text) for text in grants]
    except InferstackError as exc:
        fail(str(exc))
    if not parsed:
        fail("give at least one --grant (e.g. --grant read:feature_group/*)")
    caller, token = new_caller(name, parsed, time.time())
    _change(config, data_dir, lambda callers: callers.with_caller(caller))
    if as_json:
        print_json({"name": name, "token": token, "grants": [str(g) for g in parsed]})
        return
    console.print(f"caller '{name}' added with {', '.join(str(g) for g in parsed)}")
    console.print("token (shown only now; send it as 'authorization: Bearer <token>'):")
    print(token, flush=True)


@app.command("list")
def list_callers(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Every caller with its grants (never a token)."""
    store = _store(config, data_dir)
    try:
        callers = store.callers.load()
    except InferstackError as exc:
        fail(str(exc))
    finally:
        store.close()
    rows = [
        {
            "name": caller.name,
            "token_id": caller.token_id,
            "grants": [str(g) for g in caller.grants],
            "created": datetime.fromtimestamp(caller.created, UTC).isoformat(timespec="seconds"),
        }
        for caller in sorted(callers.callers.values(), key=lambda c: c.name)
    ]
    if as_json:
        print_json({"revision": callers.revision, "required": callers.required, "callers": rows})
        return
    if not callers.required:
        console.print("No callers configured: servers on loopback accept every call.")
        return
    table = Table("name", "token id", "grants", "created", title=f"callers @ {callers.revision}")
    for caller in sorted(callers.callers.values(), key=lambda c: c.name):
        created = datetime.fromtimestamp(caller.created, UTC).isoformat(timespec="seconds")
        grants = "\n".join(str(g) for g in caller.grants)
        table.add_row(caller.name, caller.token_id, grants, created)
    console.print(table)
    if not rows:
        console.print("Every caller is revoked: servers refuse every call.")


@app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The caller to remove.")],
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
) -> None:
    """Remove a caller: its token stops working on every server within a second."""
    changed = _change(config, data_dir, lambda callers: callers.without(name))
    console.print(f"caller '{name}' revoked (callers revision {changed.revision})")
