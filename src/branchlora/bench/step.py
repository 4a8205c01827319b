"""Step level: one training step (forward, backward, AdamW) of a LLaMA decoder stack at 7B width.

At LLaVA-1.5-7B width the adapters' arithmetic is visible; on the tiny LLaVA, Python overhead hides it.
Random weights; each method wraps all seven Linear types of every layer.  The methods' steps are timed
interleaved (bench/interleave.py).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from branchlora.adapters import AdapterConfig, inject_adapters
from branchlora.bench.interleave import interleave
from branchlora.bench.ops import count_ops
from branchlora.bench.timing import device_ms, sync, tunable
from branchlora.train import make_optimizer

METHODS = ("lora", "moelora", "branchlora")
SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def build_stack(hidden: int, ffn: int, layers: int, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A randomly initialised LlamaForCausalLM (small vocabulary), frozen."""
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // 128)
    config = LlamaConfig(
        hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads, vocab_size=1024, max_position_embeddings=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.requires_grad_(False).train()


def training_step(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    """One forward, backward and AdamW update of `model` on ids (B, L), as a closure; the optimizer is the
    training loop's own (train.make_optimizer)."""
    optimizer = make_optimizer([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-4}], 0.0)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def step_sampler(step: Callable[[], None], device: torch.device, inner: int) -> Callable[[], float]:
    """One sample: `inner` steps run back to back (as a training loop runs them: it does not wait for the
    device between steps) between two device syncs; returns seconds per step."""

    def sample() -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        sync(device)
        return (time.perf_counter() - t0) / inner

    return sample


def method_models(sizes, device: torch.device, dtype: torch.dtype) -> dict[str, nn.Module]:
    """{"frozen", "lora", "moelora", "branchlora": model}, all sharing one set of frozen weights (so that
    they can be timed in turns without four copies in memory).  "frozen" trains only its own copy of the
    embedding table, so its backward still runs through every layer: the floor no adapter can go below."""
    base = build_stack(sizes.hidden, sizes.ffn, sizes.step_layers, device, dtype)
    embedding = base.get_input_embeddings().weight
    shared = {id(t): t for t in [*base.parameters(), *base.buffers()] if t is not embedding}
    models = {}
    for method in ("frozen", *METHODS):
        model = copy.deepcopy(base, memo=dict(shared))
        if method == "frozen":
            model.get_input_embeddings().weight.requires_grad_(True)
        else:
            cfg = AdapterConfig(kind=method, r=sizes.r, alpha=2 * sizes.r, n_branches=sizes.n, top_k=sizes.k,
                                targets=SEVEN)  # fmt: skip
            inject_adapters(model, cfg)
        models[method] = model
    return models


def bench_step(sizes, device: torch.device, dtype: torch.dtype, kernels: bool = False) -> tuple[dict, dict]:
    """({method: {median_ms, iqr_ms, min_ms, n, tunable, ops[, peak_mb]}}, the interleaved comparison).

    kernels=True: ({method: {device_ms}}, {}) instead, the GPU kernel time of one step.
    """
    models = method_models(sizes, device, dtype)
    ids = torch.randint(2, 1024, sizes.step_tokens, generator=torch.Generator().manual_seed(0)).to(device)
    steps = {method: training_step(model, ids) for method, model in models.items()}
    if kernels:
        for step in steps.values():
            step()  # warm-up: AdamW allocates its state at the first step
        return {m: {"device_ms": device_ms(step, sizes.step_repeats)} for m, step in steps.items()}, {}
    ops = {method: count_ops(step) for method, step in steps.items()}
    peak = {method: step_peak_mb(step, device) for method, step in steps.items()} if device.type == "cuda" else {}
    samplers = {m: step_sampler(step, device, sizes.step_inner) for m, step in steps.items()}
    schedule = sizes.schedule(sizes.step_warmup, sizes.step_repeats, sizes.step_cap_s)
    comparison = interleave(samplers, STEP_RATIOS, schedule)
    results = {m: {**comparison["times"][m], "tunable": tunable(models[m]), "ops": ops[m]} for m in models}
    for method, mb in peak.items():
        results[method]["peak_mb"] = mb
    return results, comparison


def step_peak_mb(step: Callable[[], None], device: torch.device) -> float:
    """MiB a step allocates above what is resident (every method's model stays resident while they take turns)."""
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - resident) / 2**20


STEP_RATIOS = {
    "branchlora_vs_moelora_step": ("branchlora", "moelora"),
    "frozen_floor_vs_moelora_step": ("frozen", "moelora"),
    "lora_vs_moelora_step": ("lora", "moelora"),
}
