"""`inferstack sample`: generate the e-commerce sample data set and train models on it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from inferstack.cli.common import JsonOption, console, fail, print_json
from inferstack.core.errors import InferstackError
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


@app.command("train")
def train_command(
    data: Annotated[
        Path, typer.Option("--data", "-d", help="The generated sample data directory.")
    ] = Path("sample-data"),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Where to write pctr.onnx, pcvr.onnx, ranker.yaml.")
    ] = Path("sample-models"),
    seed: Annotated[int, typer.Option(help="Same seed and data, same models.")] = 11,
    rows: Annotated[int, typer.Option(help="Synthetic impressions to draw.")] = 60_000,
    as_json: JsonOption = False,
) -> None:
    """Train pCTR and pCVR on synthetic impressions, export ONNX and the `ranker` config."""
    # scikit-learn and onnx are development dependencies: import them only when training.
    from inferstack.sampledata.models import train

    try:
        with console.status("training sample models", spinner="dots") as status:
            trained = train(data, out, seed=seed, rows=rows, progress=status.update)
    except InferstackError as exc:
        fail(str(exc))
    report = trained.report()
    if as_json:
        print_json(report)
        return
    table = Table("model", "inputs", "train rows", "held-out rows", "positive rate", "AUC")
    for name, model in report["models"].items():
        table.add_row(
            name,
            str(len(model["inputs"])),
            f"{model['train_rows']:,}",
            f"{model['holdout_rows']:,}",
            f"{model['positive_rate']:.1%}",
            f"{model['auc']:.3f}",
        )
    console.print(table)
    rates = report["base_rates"]
    console.print(
        f"{report['impressions']:,} impressions: CTR {rates['ctr']:.1%}, "
        f"CVR after a click {rates['cvr_given_click']:.1%}"
    )
    for name, model in report["models"].items():
        console.print(f"{name} inputs: {', '.join(model['inputs'])}")
    console.print(f"Model config: {report['config']} (apply it with the sample definitions)")


@app.command("events")
def events_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")] = Path(
        "sample-data"
    ),
    scale: Annotated[float, typer.Option(help="The sample's scale (1.0 = 100k users).")] = 1.0,
    clicks_per_user: Annotated[float, typer.Option(help="Clicks per user in the day.")] = 20.0,
    seed: Annotated[int, typer.Option(help="Same seed, same events.")] = 13,
    as_json: JsonOption = False,
) -> None:
    """Write a day of shopper events (up to now) as one Parquet file per interaction type."""
    from inferstack.sampledata.events import generate_events

    with console.status("generating events", spinner="dots"):
        events = generate_events(
            out,
            scale=scale,
            clicks_per_user=clicks_per_user,
            end_ms=int(time.time() * 1000),
            seed=seed,
        )
    if as_json:
        print_json({"counts": events.counts, "files": {k: str(v) for k, v in events.files.items()}})
        return
    table = Table("interaction type", "events", "file")
    for name, path in events.files.items():
        table.add_row(name, f"{events.counts[name]:,}", str(path))
    console.print(table)
