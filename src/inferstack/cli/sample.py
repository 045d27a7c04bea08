"""`inferstack sample`: generate the e-commerce sample data set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inferstack.cli.common import JsonOption, console, print_json
from inferstack.sampledata.generate import generate

app = typer.Typer(help="The e-commerce sample data set.", no_args_is_help=True)


@app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")] = Path(
        "sample-data"
    ),
    scale: Annotated[
        float, typer.Option(help="1.0 = 200k products, 100k users, 500k pairs.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, same data.")] = 7,
    as_json: JsonOption = False,
) -> None:
    """Write definitions and Parquet files for products, users and user x category."""
    with console.status("generating sample data", spinner="dots"):
        files = generate(out, scale=scale, seed=seed)
    if as_json:
        print_json(
            {
                "definitions": str(files.definitions),
                "rows": files.rows,
                "files": {
                    "product": str(files.product),
                    "user": str(files.user),
                    "user_category": str(files.user_category),
                },
            }
        )
        return
    console.print(f"Definitions: {files.definitions}")
    for name, rows in files.rows.items():
        console.print(f"{name}: {rows:,} rows -> {getattr(files, name)}")
