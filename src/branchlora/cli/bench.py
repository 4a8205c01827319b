"""`branchlora bench`: time the adapters at layer, training-step and generation level."""

from __future__ import annotations

import json

import torch
import typer
from rich.console import Console
from rich.table import Table

from branchlora.bench import FULL, GPU, QUICK, run_bench


def _ratio_table(result: dict) -> Table:
    """Each ratio with its 95 % interval and rounds ("-" for the GPU kernel-time ratios, which have none)."""
    table = Table(title="ratios (interleaved; median of per-round ratios, 95 % bootstrap interval)")
    for col in ("ratio", "estimate", "interval", "rounds"):
        table.add_column(col, justify="left" if col == "ratio" else "right")
    for name, value in result["ratios"].items():
        iv = result["intervals"].get(name)
        cells = [f"{iv['low']:.3f} - {iv['high']:.3f}", str(iv["rounds"])] if iv else ["-", "-"]
        table.add_row(name, f"{value:.3f}", *cells)
    return table


def _print_tables(result: dict) -> None:
    console = Console()
    gpu = "adapter_device_ms" in result["layer"]["branchlora"]  # kernel time, measured on a GPU only
    layer = Table(title=f"layer level, summed over {len(result['sizes']['shapes'])} shapes ({result['device']})")
    columns = ["method", "layer ms", "adapter fwd+bwd ms", "fwd ms", "bwd ms", "saved MiB", "tunable", "aten ops",
               "kernels"]  # fmt: skip
    for col in columns + (["layer kernel ms", "adapter kernel ms"] if gpu else []):
        layer.add_column(col, justify="left" if col == "method" else "right")
    for method, row in result["layer"].items():
        cells = [f"{row.get(k, 0.0):.1f}" for k in ("median_ms", "overhead_ms", "adapter_fwd_ms", "adapter_bwd_ms",
                                                     "saved_mb")]  # fmt: skip
        ops = [str(row["ops"][k]) if "ops" in row else "-" for k in ("aten_ops", "kernel_ops")]
        kernel = [f"{row['device_ms']:.2f}", f"{row['adapter_device_ms']:.2f}"] if gpu else []
        layer.add_row(method, *cells, f"{row['tunable']:,}", *ops, *kernel)
    console.print(layer)
    step = Table(
        title=f"training step ({result['sizes']['step_layers']} decoder layer(s) at width {result['sizes']['hidden']})"
    )
    for col in ["method", "median ms", "iqr ms", "tunable", "aten ops", "kernels"] + (["kernel ms"] if gpu else []):
        step.add_column(col, justify="left" if col == "method" else "right")
    for method, row in result["step"].items():
        kernel = [f"{row['device_ms']:.2f}"] if gpu else []
        ops = [str(row["ops"][k]) for k in ("aten_ops", "kernel_ops")]
        step.add_row(method, f"{row['median_ms']:.0f}", f"{row['iqr_ms']:.0f}", f"{row['tunable']:,}", *ops, *kernel)
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
    console.print(_ratio_table(result))
    load = result["machine"]["load"]
    console.print(f"{result['machine']['cpus']} CPUs, 1-minute load {load[0]} at start, {load[1]} at end; "
                  + ", ".join(f"{k} {v['rounds']} rounds in {v['seconds']:.0f} s"
                              + ("" if v["converged"] else " (time cap: interval wider than the tolerance)")
                              for k, v in result["comparisons"].items()))  # fmt: skip


def _print_loop(result: dict) -> None:
    table = Table(title=f"training loop, seconds per step ({result['model']}, {result['threads']} threads)")
    for col in ("variant", "median ms", "iqr ms", "samples"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, t in result["seconds_per_step"].items():
        table.add_row(name, f"{t['median_ms']:.1f}", f"{t['iqr_ms']:.1f}", str(t["n"]))
    console = Console()
    console.print(table)
    console.print(_ratio_table(result))
    console.print(f"{result['rounds']} rounds in {result['seconds']:.0f} s, 1-minute load {result['load']}")


def bench(
    device: str = typer.Option("cpu", help="cpu or cuda"),
    dtype: str = typer.Option("float32", help="float32 or bfloat16"),
    quick: bool = typer.Option(False, "--quick", help="small token counts and few repeats (under a minute)"),
    threads: int = typer.Option(
        1,
        min=0,
        help="CPU threads for torch (0: torch's default, every core); 1 keeps ratios stable on a shared machine",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    loop: bool = typer.Option(
        False, "--loop", help="instead: our training loop (lora, branchlora) against PEFT LoRA in a plain torch loop"
    ),
) -> None:
    """Time LoRA, PEFT LoRA, MoELoRA, HydraLoRA and BranchLoRA at LLaVA-1.5-7B sizes (or, with --loop, whole
    training loops on the tiny base).  Variants take turns until each ratio's 95 % interval is within 5 %."""
    if device not in ("cpu", "cuda") or dtype not in ("float32", "bfloat16"):
        raise typer.BadParameter(f"device must be cpu|cuda and dtype float32|bfloat16, got {device}, {dtype}")
    if device == "cuda" and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda: no CUDA device is available")
    if loop and device != "cpu":
        raise typer.BadParameter("--loop runs on the CPU (the tiny base); use --device cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        if loop:
            from branchlora.bench import loop as loop_bench

            result = loop_bench.bench_loop(loop_bench.DEFAULT)
        else:
            result = run_bench(QUICK if quick else GPU if device == "cuda" else FULL, device, dtype)
    finally:
        torch.set_num_threads(before)  # a caller in the same process (tests, notebooks) keeps its setting
    if as_json:
        print(json.dumps(result))
    else:
        (_print_loop if loop else _print_tables)(result)
