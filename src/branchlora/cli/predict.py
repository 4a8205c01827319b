"""`branchlora predict`: answer one question with a trained checkpoint; say which task served it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from branchlora.cli.errors import user_errors


def predict(
    checkpoint: Path = typer.Option(..., help="a task checkpoint (runs/x/branchlora/task-07) or a method folder"),
    image: Path = typer.Option(..., help="the image file"),
    prompt: str = typer.Option(..., help="the instruction"),
    task: str = typer.Option(None, help="use this task's router (default: the task selector chooses)"),
) -> None:
    """Print the answer, and the task the selector chose with its similarity scores."""
    console = Console()
    with user_errors():
        from branchlora.inference import load_trained, prompt_text
        from branchlora.inference import predict as run_predict

        prompt_text(prompt)  # refused before the checkpoint loads

        result = run_predict(load_trained(checkpoint), image, prompt, task)
    console.print(f"[bold]answer:[/] {escape(result['answer'])}")  # a box answer is "[x1, y1, x2, y2]"
    if result.get("task") is not None:
        how = " (given)" if task else " (chosen by the task selector)"
        console.print(escape(f"task: {result['task']}{how}"))
    for name, score in (result.get("similarity") or {}).items():
        console.print(escape(f"  similarity {name}: {score:.4f}"))
