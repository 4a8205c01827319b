"""`branchlora params`: total and tunable parameters of a method on a model, without allocating weights."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from branchlora.cli.errors import user_errors
from branchlora.memory import GIB, Setting, estimate_memory
from branchlora.params import count_parameters


def params(
    model: str = typer.Option(
        "llava-1.5-7b",
        help="llava-1.5-7b, -13b, llava-next-7b, llava-onevision-7b, qwen2-vl-7b, qwen2.5-vl-7b, or PATH/config.json",
    ),
    method: str = typer.Option("branchlora", help="a registered method name"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    memory: bool = typer.Option(False, "--memory", help="estimate peak GPU memory per process instead (memory.py)"),
    batch: int = typer.Option(4, help="--memory: samples per forward, per process"),
    seq_len: int = typer.Option(2048, help="--memory: tokens per sample (image tokens included)"),
    precision: str = typer.Option("bf16", help="--memory: train.mixed_precision, no (fp32) or bf16"),
    checkpointing: bool = typer.Option(False, help="--memory: gradient checkpointing of the decoder layers"),
    processes: int = typer.Option(1, help="--memory: training processes (GPUs)"),
    shard_frozen: bool = typer.Option(False, help="--memory: train.shard_frozen (FSDP2 shards the frozen base)"),
    tasks: int = typer.Option(8, help="--memory: estimate at the last task of a stream this long"),
) -> None:
    """Count a method's tunable parameters on a model (meta device: no weights, no download); with --memory,
    estimate its peak GPU memory per process."""
    if memory:
        with user_errors():
            setting = Setting(batch, seq_len, precision, checkpointing, processes, shard_frozen, tasks)
            estimate = estimate_memory(model, method, setting)
        print_memory(estimate, as_json)
        return
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


def print_memory(estimate: dict, as_json: bool) -> None:
    """The estimate as JSON, or a table of its terms in GiB."""
    if as_json:
        print(json.dumps(estimate))
        return
    s = estimate["setting"]
    ckpt = "on" if s["checkpointing"] else "off"
    title = (f"{estimate['method']} on {estimate['model']}: batch {s['batch']} x {s['seq_len']} tokens, "
             f"{s['precision']}, checkpointing {ckpt}, {s['processes']} process(es)")  # fmt: skip
    table = Table(title=title)
    table.add_column("term")
    table.add_column("GiB", justify="right")
    for term, value in estimate["bytes"].items():
        table.add_row(term, f"{value / GIB:.2f}")
    table.add_row("[bold]peak (estimate)", f"[bold]{estimate['peak_gib']:.1f}")
    Console().print(table)
