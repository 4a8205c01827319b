"""`branchlora bench`: time the adapters at layer, training-step and generation level."""

from __future__ import annotations

import json

import torch
import typer
from rich.console import Console
from rich.table import Table

from branchlora.bench import FULL, GPU, QUICK, run_bench


def _print_tables(result: dict) -> None:
    console = Console()
    gpu = "adapter_device_ms" in result["layer"]["branchlora"]  # kernel time, measured on a GPU only
    layer = Table(title=f"layer level, summed over {len(result['sizes']['shapes'])} shapes ({result['device']})")
    columns = ["method", "layer ms", "adapter fwd+bwd ms", "fwd ms", "bwd ms", "saved MiB", "tunable"]
    for col in columns + (["layer kernel ms", "adapter kernel ms"] if gpu else []):
        layer.add_column(col, justify="left" if col == "method" else "right")
    for method, row in result["layer"].items():
        cells = [f"{row[k]:.1f}" for k in ("median_ms", "overhead_ms", "adapter_fwd_ms", "adapter_bwd_ms", "saved_mb")]
        kernel = [f"{row['device_ms']:.2f}", f"{row['adapter_device_ms']:.2f}"] if gpu else []
        layer.add_row(method, *cells, f"{row['tunable']:,}", *kernel)
    console.print(layer)
    step = Table(title="training step (2 decoder layers)")
    for col in ["method", "median ms", "iqr ms", "tunable"] + (["kernel ms"] if gpu else []):
        step.add_column(col, justify="left" if col == "method" else "right")
    for method, row in result["step"].items():
        kernel = [f"{row['device_ms']:.2f}"] if gpu else []
        step.add_row(method, f"{row['median_ms']:.0f}", f"{row['iqr_ms']:.0f}", f"{row['tunable']:,}", *kernel)
    console.print(step)
    gen = result["generation"]
    console.print(f"generation ({gen['model']}): tokens/s " + ", ".join(
        f"{k} {gen[k]['tokens_per_s']:.1f}" for k in ("base", "branchlora_unmerged", "branchlora_merged")
    ))  # fmt: skip
    console.print("bf16 training step, host syncs / float32 share of matmul FLOPs: " + ", ".join(
        f"{m} {sum(a['host_syncs'].values())} / {a['float32_matmul_share']:.4f}" for m, a in result["audit"].items()
    ))  # fmt: skip
    check = result["check"]
    console.print(f"BranchLoRA on {result['dtype']} vs float64: max relative error "
                  f"{max(v for k, v in check.items() if k != 'routing_agrees'):.2e}, "
                  f"routing agrees: {check['routing_agrees']}")  # fmt: skip
    console.print("ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in result["ratios"].items()))


def bench(
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16"),
    quick: bool = typer.Option(False, "--quick", help="small token counts and few repeats (under a minute)"),
    threads: int = typer.Option(0, help="CPU threads for torch (0: torch's default)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Time LoRA, PEFT LoRA, MoELoRA, HydraLoRA and BranchLoRA at LLaVA-1.5-7B sizes."""
    if device not in ("cpu", "cuda") or dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"device must be cpu|cuda and dtype float32|bfloat16, got {device}, {dtype}")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda: no CUDA device is available")
    if threads:
        torch.set_num_threads(threads)
    result = run_bench(QUICK if quick else GPU if device == "cuda" else FULL, device, dtype)
    if as_json:
        print(json.dumps(result))
    else:
        _print_tables(result)
