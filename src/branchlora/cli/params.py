"""`branchlora params`: total and tunable parameters of a method on a model, without allocating weights."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from branchlora.cli.errors import user_errors
from branchlora.params import count_parameters


def params(
    model: str = typer.Option(
        "llava-1.5-7b",
        help="llava-1.5-7b, -13b, llava-next-7b, llava-onevision-7b, qwen2-vl-7b, qwen2.5-vl-7b, or PATH/config.json",
    ),
    method: str = typer.Option("branchlora", help="a registered method name"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Count a method's tunable parameters on a model (meta device: no weights, no download)."""
    with user_errors():
        result = count_parameters(model, method)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{method} on {model}")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    for part, n in result["by_part"].items():
        table.add_row(part, f"{n:,}")
    table.add_row("[bold]tunable", f"[bold]{result['tunable']:,} ({result['tunable'] / 1e6:.2f}M)")
    table.add_row("total", f"{result['total']:,} ({result['total'] / 1e9:.3f}B)")
    Console().print(table)
