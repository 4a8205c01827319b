"""Timing and memory helpers shared by the layer, step and generation benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn


def sync(device: torch.device) -> None:
    """Wait for queued kernels, so a wall-clock reading covers the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarise(seconds: list[float]) -> dict:
    """Median and spread (inter-quartile range, min) in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median_ms": statistics.median(ms), "iqr_ms": q[2] - q[0], "min_ms": ms[0], "n": len(ms)}


def fwd_bwd_seconds(
    forward: Callable[[], torch.Tensor], grad: torch.Tensor, device: torch.device
) -> tuple[float, float]:
    """(forward, backward) seconds of one call: forward, then backward given the fixed output gradient `grad`."""
    sync(device)
    t0 = time.perf_counter()
    y = forward()
    sync(device)
    t1 = time.perf_counter()
    y.backward(grad)
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def time_fwd_bwd(
    forward: Callable[[], torch.Tensor], grad: torch.Tensor, warmup: int, repeats: int, device: torch.device
) -> dict:
    """Forward, then backward given the fixed output gradient `grad`, timed apart: {fwd, bwd, total}."""
    fwd, bwd = [], []
    for i in range(warmup + repeats):
        f, b = fwd_bwd_seconds(forward, grad, device)
        if i >= warmup:
            fwd.append(f)
            bwd.append(b)
    return {
        "fwd": summarise(fwd),
        "bwd": summarise(bwd),
        "total": summarise([f + b for f, b in zip(fwd, bwd, strict=True)]),
    }


def device_ms(fn: Callable[[], object], repeats: int) -> float:
    """GPU kernel time per call of fn, summed over its kernels: the device's work without the host's overhead.

    On a GPU a small step is often host-bound (Python and kernel launches take longer than the kernels), so
    wall time ranks the number of ops, not the work; this ranks the work.  torch.profiler, CUDA only.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.self_device_time_total for e in kernels) / repeats / 1e3  # microseconds -> ms


def saved_mb(forward: Callable[[], torch.Tensor], exclude: list[torch.Tensor]) -> float:
    """MiB of tensors autograd keeps for the backward pass, `exclude` (input, weights) not counted.

    A device-agnostic measure of the activation memory a layer adds (a CPU has no peak counter).
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        forward()
    return sum(kept.values()) / 2**20


def tunable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
