"""Layer level: one wrapped Linear at LLaVA-1.5-7B sizes, forward + backward, per method.

Two timings per method: the whole wrapped layer, and the adapter path alone (the base Linear's
forward replaced by a precomputed output, so the frozen matmul is not timed).  The adapter path is
what the overhead and the ratios use: subtracting two large, noisy whole-layer timings is not reliable.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from branchlora.adapters import ADAPTERS, AdapterConfig
from branchlora.bench.timing import device_ms, saved_mb, time_fwd_bwd, tunable

METHODS = ("linear", "peft_lora", "lora", "moelora", "hydralora", "branchlora")


def wrap(method: str, base: nn.Linear, r: int, n: int, k: int) -> nn.Module:
    """The base Linear wrapped by `method`, its B's random (no zero-B shortcut anywhere)."""
    if method == "linear":
        return base
    if method == "peft_lora":
        from peft import LoraConfig
        from peft.tuners.lora import Linear as PeftLinear

        peft_config = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.05)  # PEFT reads dropout from here
        layer = PeftLinear(base, "default", peft_config, r=r, lora_alpha=2 * r)
    else:  # HydraLoRA: rank r/N heads, so that it holds as many parameters as BranchLoRA
        rank = r // n if method == "hydralora" else r
        layer = ADAPTERS[method](base, AdapterConfig(kind=method, r=rank, alpha=2 * rank, n_branches=n, top_k=k))
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    return layer.train()


@contextmanager
def stubbed_base(base: nn.Linear, out: torch.Tensor) -> Iterator[None]:
    """Make the base Linear return `out` (a fresh alias each call) instead of computing x W0^T."""
    base.forward = lambda *args, **kwargs: out.detach()
    try:
        yield
    finally:
        del base.forward


def bench_shape(d_in: int, d_out: int, sizes, device: torch.device, dtype: torch.dtype, kernels: bool = False) -> dict:
    """Every method on one (d_in -> d_out) Linear: whole layer, adapter path, memory, parameters.

    kernels=True measures instead the GPU kernel time of the whole layer and of the adapter path.
    """
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype).requires_grad_(False)
    x = torch.randn(*sizes.tokens, d_in, device=device, dtype=dtype, requires_grad=True)  # (B, L, d_in)
    grad = torch.randn(*sizes.tokens, d_out, device=device, dtype=dtype)  # fixed dL/dy
    with torch.no_grad():
        out = base(x)  # (B, L, d_out), the stub's precomputed base output
    results = {}
    for method in METHODS:
        layer = wrap(method, base, sizes.r, sizes.n, sizes.k)

        def forward(layer: nn.Module = layer) -> torch.Tensor:
            x.grad = None
            layer.zero_grad(set_to_none=True)
            return layer(x)

        if kernels:
            results[method] = {"device_ms": device_ms(lambda: forward().backward(grad), sizes.repeats)}
            if method != "linear":
                with stubbed_base(base, out):
                    results[method]["adapter_device_ms"] = device_ms(lambda: forward().backward(grad), sizes.repeats)
            continue
        whole = time_fwd_bwd(forward, grad, sizes.whole_warmup, sizes.whole_repeats, device)
        entry = {
            "layer": whole,
            "tunable": tunable(layer),
            "saved_mb": saved_mb(forward, [x, out, *layer.parameters()]),
        }
        if method != "linear":
            with stubbed_base(base, out):
                entry["adapter"] = time_fwd_bwd(forward, grad, sizes.warmup, sizes.repeats, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            forward().backward(grad)
            entry["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        results[method] = entry
    return results


def layer_kernels(sizes, device: torch.device, dtype: torch.dtype) -> dict:
    """{method: {device_ms, adapter_device_ms}}: GPU kernel time summed over the shapes."""
    per_shape = [bench_shape(i, o, sizes, device, dtype, kernels=True) for i, o in sizes.shapes]
    return {
        method: {
            key: sum(shape[method].get(key, 0.0) for shape in per_shape) for key in ("device_ms", "adapter_device_ms")
        }
        for method in METHODS
    }


def bench_layers(sizes, device: torch.device, dtype: torch.dtype) -> dict:
    """{method: {median_ms, overhead_ms, ..., shapes: {"d_in->d_out": ...}}}, summed over the shapes."""
    per_shape = {f"{i}->{o}": bench_shape(i, o, sizes, device, dtype) for i, o in sizes.shapes}
    table = {}
    for method in METHODS:
        rows = [shape[method] for shape in per_shape.values()]
        adapter = [row.get("adapter") for row in rows]
        table[method] = {
            "median_ms": sum(row["layer"]["total"]["median_ms"] for row in rows),
            "overhead_ms": sum(a["total"]["median_ms"] for a in adapter) if adapter[0] else 0.0,
            "adapter_fwd_ms": sum(a["fwd"]["median_ms"] for a in adapter) if adapter[0] else 0.0,
            "adapter_bwd_ms": sum(a["bwd"]["median_ms"] for a in adapter) if adapter[0] else 0.0,
            "tunable": sum(row["tunable"] for row in rows),
            "saved_mb": sum(row["saved_mb"] for row in rows),
            "shapes": {name: shape[method] for name, shape in per_shape.items()},
        }
    return table
