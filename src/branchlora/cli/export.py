"""`branchlora export`: the model as it serves one task, as a transformers folder or a PEFT adapter."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from branchlora.cli.errors import user_errors


def export(
    checkpoint: Path = typer.Option(..., help="a task checkpoint (runs/x/branchlora/task-07) or a method folder"),
    out: Path = typer.Option(..., help="the new folder to write (refused when it exists and is not empty)"),
    task: str = typer.Option(None, help="the task the model serves (required for methods with a router per task)"),
    format: str = typer.Option("hf", "--format", help="hf: a transformers folder, merged; peft: a PEFT LoRA adapter"),
    push_to_hub: str = typer.Option(None, help="also upload the folder to this Hugging Face Hub repository id"),
) -> None:
    """Write the trained model as transformers, PEFT and the Hub load it, without this package."""
    with user_errors():
        from branchlora.export import export_checkpoint

        folder = export_checkpoint(checkpoint, out, task, format, push_to_hub)
    where = f" and uploaded to {push_to_hub}" if push_to_hub else ""
    Console().print(escape(f"exported {format} to {folder}{where}"))
