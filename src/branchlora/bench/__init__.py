"""`branchlora bench`: adapter cost at layer, training-step and generation level, as one JSON object."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, replace

import torch

from branchlora.bench.audit import audit_step, check_branchlora
from branchlora.bench.generation import bench_generation
from branchlora.bench.interleave import Schedule, load_average
from branchlora.bench.layer import bench_layers, layer_kernels
from branchlora.bench.step import bench_step


@dataclass(frozen=True)
class BenchSizes:
    """Every size and repeat count of one bench run; defaults are LLaVA-1.5-7B's widths."""

    shapes: tuple[tuple[int, int], ...] = ((4096, 4096), (4096, 11008), (11008, 4096))
    tokens: tuple[int, int] = (4, 512)  # (batch, sequence) at layer level
    warmup: int = 2  # rounds of every interleaved comparison that are not kept
    repeats: int = 10  # adapter path: least rounds
    tolerance: float = 0.05  # interleaved comparisons run until each ratio's 95 % interval is within +-5 % ...
    max_rounds: int = 200
    layer_cap_s: float = 120.0  # ... or a level's comparison has run this long
    step_cap_s: float = 240.0
    gen_cap_s: float = 60.0
    whole_warmup: int = 1
    whole_repeats: int = 3  # whole layer: the frozen matmul dominates and is slow on a CPU
    r: int = 128
    n: int = 8
    k: int = 2
    hidden: int = 4096
    ffn: int = 11008
    step_layers: int = 1  # one decoder layer: a CPU takes about 5 s per step at 7B width
    step_tokens: tuple[int, int] = (2, 256)
    step_warmup: int = 1
    step_repeats: int = 3
    step_inner: int = 1  # steps back to back per timed sample (a GPU overlaps one step's launches with the last)
    gen_hidden: int = 512
    gen_ffn: int = 1376
    gen_layers: int = 4
    gen_prompt: int = 32
    gen_new: int = 32
    gen_repeats: int = 7

    def schedule(self, warmup: int, least: int, cap_s: float) -> Schedule:
        return Schedule(warmup=warmup, min_rounds=least, max_rounds=max(least, self.max_rounds), cap_s=cap_s,
                        tolerance=self.tolerance)  # fmt: skip


FULL = BenchSizes()
QUICK = replace(FULL, tokens=(1, 128), repeats=20, whole_warmup=0, whole_repeats=1, layer_cap_s=30.0,
                step_tokens=(1, 32), step_warmup=2, step_repeats=10, step_cap_s=45.0,
                gen_new=16, gen_repeats=12, gen_cap_s=20.0)  # fmt: skip
# A GPU runs each adapter path in about a millisecond: many more repeats for the same confidence.  At 4 x 512
# tokens an H100 is host-bound (launch and Python time exceed kernel time), so the GPU run uses a LLaVA
# training micro-batch, 16 x 1024 tokens (and 8 x 512 for the step), where the device's work shows.
GPU = replace(FULL, tokens=(16, 1024), warmup=10, repeats=50, whole_warmup=5, whole_repeats=30, step_layers=2,
              step_tokens=(8, 512), step_warmup=2, step_repeats=10, step_inner=5, gen_repeats=10)  # fmt: skip


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("nan")


def device_ratios(layer: dict, step: dict) -> dict:
    """On a GPU, the same ratios in kernel time (the device's work, host overhead excluded)."""
    if "adapter_device_ms" not in layer["branchlora"]:
        return {}
    return {
        "branchlora_vs_moelora_layer_device": ratio(
            layer["branchlora"]["adapter_device_ms"], layer["moelora"]["adapter_device_ms"]
        ),
        "branchlora_vs_moelora_step_device": ratio(step["branchlora"]["device_ms"], step["moelora"]["device_ms"]),
        "branchlora_vs_peft_lora_layer_device": ratio(
            layer["branchlora"]["adapter_device_ms"], layer["peft_lora"]["adapter_device_ms"]
        ),
    }


def run_bench(
    sizes: BenchSizes = FULL, device: str = "cpu", dtype: str = "float32", kernel_times: bool | None = None
) -> dict:
    """Run the three levels and return {device, layer, step, generation, ratios, intervals, ...}.

    Each level times its variants interleaved until every ratio's bootstrap interval is within
    sizes.tolerance (or its time cap): `ratios` holds the estimates, `intervals` their intervals and
    `comparisons` how many rounds each level took and the machine's load around it.

    kernel_times (default: on a GPU) adds each layer's and step's GPU kernel time, measured after every
    wall-clock timing: the profiler leaves CUPTI attached, which slows every later kernel launch
    (pytorch/pytorch#144455), so no wall-clock figure may be taken after it.
    """
    dev, dt = torch.device(device), getattr(torch, dtype)
    load_start = load_average()
    layer, layer_cmp = bench_layers(sizes, dev, dt)
    step, step_cmp = bench_step(sizes, dev, dt)
    generation, gen_cmp = bench_generation(sizes, dev, dt)
    comparisons = {"layer": layer_cmp, "step": step_cmp, "generation": gen_cmp}
    if dev.type == "cuda" if kernel_times is None else kernel_times:
        for method, kernels in layer_kernels(sizes, dev, dt).items():
            layer[method].update(kernels)
        for method, kernels in bench_step(sizes, dev, dt, kernels=True)[0].items():
            step[method].update(kernels)
    audit = {method: audit_step(method, dev, sizes) for method in ("frozen", "lora", "moelora", "branchlora")}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine()
    intervals = {name: stats for cmp in comparisons.values() for name, stats in cmp.pop("ratios").items()}
    return {
        "device": f"{dev.type} ({name}, {torch.get_num_threads()} threads)",
        "dtype": dtype,
        "torch": torch.__version__,
        "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(), "load": [load_start, load_average()]},
        "sizes": asdict(sizes),
        "layer": layer,
        "step": step,
        "generation": generation,
        "audit": audit,  # one bf16-autocast training step: host syncs and float32 matmul share per method
        "check": check_branchlora(dev, dt),  # relative errors against float64 on the CPU
        "ratios": {**{k: v["ratio"] for k, v in intervals.items()}, **device_ratios(layer, step)},
        "intervals": intervals,  # per ratio: {ratio, low, high, half_width, rounds}
        "comparisons": {
            k: {key: v[key] for key in ("rounds", "seconds", "converged", "load")} for k, v in comparisons.items()
        },  # fmt: skip
        "ops": {
            "layer": {m: row["ops"] for m, row in layer.items() if "ops" in row}  # per wrapped Linear fwd + bwd
            | {"branchlora_frozen": layer["branchlora"]["ops_frozen"]},  # two of its branches frozen
            "step": {m: row["ops"] for m, row in step.items()},  # per training step
        },
    }
