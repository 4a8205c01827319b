"""`branchlora evaluate`: score a saved checkpoint on a benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from branchlora.cli.errors import user_errors


def evaluate(
    checkpoint: Path = typer.Option(..., help="a task checkpoint or a method folder"),
    benchmark: str = typer.Option(..., help="a built-in benchmark name or a benchmark YAML file"),
    oracle: bool = typer.Option(False, help="route with the true task id instead of the selector"),
    limit: int = typer.Option(0, min=0, help="test items per task, drawn as eval.limit draws them (0: all)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Score every task of a benchmark with a trained checkpoint."""
    with user_errors():
        from branchlora.data.benchmark import load_benchmark
        from branchlora.evaluation.evaluate import EvalConfig
        from branchlora.inference import evaluate_checkpoint, load_trained

        bench = load_benchmark(benchmark)
        result = evaluate_checkpoint(load_trained(checkpoint), bench, EvalConfig(oracle=oracle, limit=limit))
    if as_json:
        print(json.dumps(result))
        return
    console = Console()
    table = Table(title=escape(f"{result['checkpoint']} on {bench.name}"))
    table.add_column("task")
    table.add_column("score", justify="right")
    for name, score in result["scores"].items():
        table.add_row(escape(name), f"{score:.2f}")
    table.add_row("[bold]mean", f"[bold]{result['mean']:.2f}")
    console.print(table)
    if "selector_accuracy" in result:
        console.print(f"task selector: {result['selector_accuracy']:.1f}% of the learned tasks' samples routed to "
                      "their own task's router")  # fmt: skip
    if "not_learned" in result:
        console.print(escape(f"not learned by this checkpoint (scored, but left out of the selector accuracy): "
                             f"{', '.join(result['not_learned'])}"))  # fmt: skip
