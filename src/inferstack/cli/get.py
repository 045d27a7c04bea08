"""`inferstack get`: print features of some keys from a running server."""

from __future__ import annotations

from typing import Annotated, Any

import grpc
import numpy as np
import typer
from rich.table import Table

from inferstack.cli.common import (
    CaOption,
    CertOption,
    JsonOption,
    KeyOption,
    TargetOption,
    TokenOption,
    client_security,
    console,
    fail,
    print_json,
)
from inferstack.client.channels import DEFAULT_TARGET
from inferstack.client.featurestore import FeatureFrame, FeatureStoreClient
from inferstack.core.rowformat import RowStatus


def get(
    entity: Annotated[str, typer.Argument(help="Entity name, e.g. user.")],
    keys: Annotated[
        list[str],
        typer.Argument(help="One key per argument: NAME=VALUE[,NAME=VALUE] (e.g. user_id=7)."),
    ],
    features: Annotated[
        list[str] | None,
        typer.Option("--feature", "-f", help="group, group.* or group.feature; repeatable."),
    ] = None,
    target: TargetOption = DEFAULT_TARGET,
    token: TokenOption = None,
    ca: CaOption = None,
    cert: CertOption = None,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fetch features for keys from a running server and print them."""
    columns = parse_keys(keys)
    try:
        with FeatureStoreClient(target, **client_security(token, ca, cert, key)) as client:
            frame = client.retrieve(entity, columns, features or [])
    except grpc.RpcError as exc:
        fail(f"{exc.code().name}: {exc.details()}")
    rows = frame_rows(frame, columns)
    if as_json:
        print_json(rows)
        return
    # One column per key and one row per feature: feature lists are long, key lists short.
    table = Table("", *(f"key {i + 1}" for i in range(len(rows))), title=f"{entity} @ {target}")
    for field in rows[0] if rows else []:
        table.add_row(field, *(_short(row[field]) for row in rows))
    console.print(table)


def parse_keys(keys: list[str]) -> dict[str, list[str]]:
    """`user_id=1,category_id=c3` per key → one list of values per key name."""
    columns: dict[str, list[str]] = {}
    for position, text in enumerate(keys):
        parts = dict(part.split("=", 1) for part in text.split(",") if "=" in part)
        if not parts or len(parts) != len(text.split(",")):
            fail(f"key {position + 1} '{text}': expected NAME=VALUE[,NAME=VALUE]")
        if position and set(parts) != set(columns):
            fail(
                f"key {position + 1} '{text}': names differ from the first key's "
                f"({', '.join(columns)})"
            )
        for name, value in parts.items():
            columns.setdefault(name, []).append(value)
    return columns


def frame_rows(frame: FeatureFrame, keys: dict[str, list[str]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for index in range(frame.count):
        row: dict[str, Any] = {name: values[index] for name, values in keys.items()}
        for group, status in frame.status.items():
            row[f"{group}:status"] = RowStatus(int(status[index])).name.lower()
        for name, values in frame.columns.items():
            value = values[index]
            row[name] = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
        rows.append(row)
    return rows


def _short(value: Any) -> str:
    if isinstance(value, list):
        shown = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value[:3])
        return f"[{shown}{', …' if len(value) > 3 else ''}] ({len(value)})"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
