"""`branchlora run`: train and evaluate methods on a benchmark (the engine lands with the run issue)."""

from __future__ import annotations

import typer


def run() -> None:
    """Train methods on a task stream and report the accuracy matrix (not built yet)."""
    typer.echo(
        "branchlora run: the training engine and the embedded benchmark are not built yet; "
        "today `branchlora params` counts parameters. Nothing was trained."
    )
    raise typer.Exit(1)
