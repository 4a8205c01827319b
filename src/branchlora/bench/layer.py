"""Layer level: one wrapped Linear at LLaVA-1.5-7B sizes, forward + backward, per method.

Two timings per method: the whole wrapped layer, and the adapter path alone (the base Linear's
forward replaced by a precomputed output, so the frozen matmul is not timed).  The adapter path is
what the overhead and the ratios use: subtracting two large, noisy whole-layer timings is not reliable.
The adapter paths of all methods are timed interleaved (bench/interleave.py), summed over the shapes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from branchlora.adapters import ADAPTERS, AdapterConfig
from branchlora.bench.interleave import interleave
from branchlora.bench.ops import count_ops
from branchlora.bench.timing import device_ms, fwd_bwd_seconds, saved_mb, summarise, time_fwd_bwd, tunable

METHODS = ("linear", "peft_lora", "lora", "moelora", "hydralora", "branchlora")
ADAPTED = METHODS[1:]


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


@dataclass
class Shape:
    """One (d_in -> d_out) Linear with every method wrapped around the same frozen base."""

    base: nn.Linear
    x: torch.Tensor  # (B, L, d_in), requires grad
    grad: torch.Tensor  # fixed dL/dy
    out: torch.Tensor  # the base's output, which the stub returns
    layers: dict[str, nn.Module]

    def forward(self, method: str) -> torch.Tensor:
        return self.call(self.layers[method])

    def call(self, layer: nn.Module) -> torch.Tensor:
        """`layer` on x, with the gradients of x and of the layer cleared."""
        self.x.grad = None
        layer.zero_grad(set_to_none=True)
        return layer(self.x)

    def step(self, method: str) -> None:
        self.forward(method).backward(self.grad)


def build_shape(d_in: int, d_out: int, sizes, device: torch.device, dtype: torch.dtype) -> Shape:
    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out, bias=False, device=device, dtype=dtype).requires_grad_(False)
    x = torch.randn(*sizes.tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(*sizes.tokens, d_out, device=device, dtype=dtype)
    with torch.no_grad():
        out = base(x)
    return Shape(base, x, grad, out, {m: wrap(m, base, sizes.r, sizes.n, sizes.k) for m in METHODS})


def adapter_sampler(shapes: list[Shape], method: str, device: torch.device, log: dict) -> Callable[[], float]:
    """One sample: the adapter path's forward + backward on every shape; forward and backward times go to log."""

    def sample() -> float:
        fwd = bwd = 0.0
        for shape in shapes:
            f, b = fwd_bwd_seconds(lambda s=shape: s.forward(method), shape.grad, device)
            fwd, bwd = fwd + f, bwd + b
        log["fwd"].append(fwd)
        log["bwd"].append(bwd)
        return fwd + bwd

    return sample


def layer_kernels(sizes, device: torch.device, dtype: torch.dtype) -> dict:
    """{method: {device_ms, adapter_device_ms}}: GPU kernel time summed over the shapes."""
    table = {m: {"device_ms": 0.0, "adapter_device_ms": 0.0} for m in METHODS}
    for d_in, d_out in sizes.shapes:
        shape = build_shape(d_in, d_out, sizes, device, dtype)
        for method in METHODS:
            table[method]["device_ms"] += device_ms(lambda m=method, s=shape: s.step(m), sizes.repeats)
            if method != "linear":
                with stubbed_base(shape.base, shape.out):
                    table[method]["adapter_device_ms"] += device_ms(lambda m=method, s=shape: s.step(m), sizes.repeats)
    return table


def whole_layer(shape: Shape, method: str, sizes, device: torch.device) -> dict:
    """The wrapped layer with its frozen matmul, timed in a block; its parameters and activation memory."""
    forward = lambda: shape.forward(method)  # noqa: E731
    return {
        "layer": time_fwd_bwd(forward, shape.grad, sizes.whole_warmup, sizes.whole_repeats, device),
        "tunable": tunable(shape.layers[method]),
        "saved_mb": saved_mb(forward, [shape.x, shape.out, *shape.layers[method].parameters()]),
    }


def frozen_branch_ops(shape: Shape) -> dict:
    """BranchLoRA's ops per Linear once two branches are frozen, as on every task after the first."""
    layer = copy.deepcopy(shape.layers["branchlora"])
    layer.freeze_branches([0, 1])
    return count_ops(lambda: shape.call(layer).backward(shape.grad))


def bench_layers(sizes, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    """({method: {median_ms, overhead_ms, adapter_fwd_ms, ..., ops, shapes}}, the interleaved comparison).

    The whole layer is timed per method in a block (the frozen matmul dominates it and no ratio uses it);
    the adapter paths are timed interleaved, all shapes per sample.
    """
    shapes = [build_shape(i, o, sizes, device, dtype) for i, o in sizes.shapes]
    per_shape: dict[str, dict] = {}
    for (d_in, d_out), shape in zip(sizes.shapes, shapes, strict=True):
        per_shape[f"{d_in}->{d_out}"] = {m: whole_layer(shape, m, sizes, device) for m in METHODS}
    logs = {m: {"fwd": [], "bwd": []} for m in ADAPTED}
    with ExitStack() as stack:
        for shape in shapes:
            stack.enter_context(stubbed_base(shape.base, shape.out))
        ops = {m: count_ops(lambda m=m: shapes[0].step(m)) for m in ADAPTED}  # the same on every shape
        ops["branchlora_frozen"] = frozen_branch_ops(shapes[0])
        samplers = {m: adapter_sampler(shapes, m, device, logs[m]) for m in ADAPTED}
        comparison = interleave(samplers, LAYER_RATIOS, sizes.schedule(sizes.warmup, sizes.repeats, sizes.layer_cap_s))
    table = {}
    for method in METHODS:
        rows = [shape[method] for shape in per_shape.values()]
        entry = {
            "median_ms": sum(row["layer"]["total"]["median_ms"] for row in rows),
            "overhead_ms": 0.0,
            "tunable": sum(row["tunable"] for row in rows),
            "saved_mb": sum(row["saved_mb"] for row in rows),
            "shapes": {name: shape[method] for name, shape in per_shape.items()},
        }
        if method != "linear":
            entry["overhead_ms"] = comparison["times"][method]["median_ms"]
            entry["adapter_fwd_ms"] = summarise(logs[method]["fwd"])["median_ms"]
            entry["adapter_bwd_ms"] = summarise(logs[method]["bwd"])["median_ms"]
            entry["adapter"] = comparison["times"][method]
            entry["ops"] = ops[method]  # per wrapped Linear, forward + backward
        if method == "branchlora":
            entry["ops_frozen"] = ops["branchlora_frozen"]
        table[method] = entry
    return table, comparison


LAYER_RATIOS = {
    "branchlora_vs_moelora_layer": ("branchlora", "moelora"),
    "branchlora_vs_peft_lora_layer": ("branchlora", "peft_lora"),
    "lora_vs_peft_lora_layer": ("lora", "peft_lora"),
}
