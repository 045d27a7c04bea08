"""The `inferstack` command: one sub-command per module in this package."""

from __future__ import annotations

import typer

from inferstack.cli import (
    apply,
    callers,
    compact,
    doctor,
    get,
    infer,
    ingest,
    interactions,
    models,
    sample,
    serve,
    ui,
)

app = typer.Typer(
    name="inferstack",
    help="Real-time ML serving: online feature store, inferflow, interaction store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("apply")(apply.apply)
app.command("ingest")(ingest.ingest)
app.command("compact")(compact.compact)
app.command("serve")(serve.serve)
app.command("get")(get.get)
app.command("infer")(infer.infer)
app.command("ui")(ui.ui)
app.command("doctor")(doctor.doctor)
app.add_typer(models.app, name="models")
app.add_typer(interactions.app, name="interactions")
app.add_typer(sample.app, name="sample")
app.add_typer(callers.app, name="callers")

if __name__ == "__main__":
    app()
