"""Step level: one training step (forward, backward, AdamW) of a LLaMA decoder stack at 7B width.

At LLaVA-1.5-7B width the adapters' arithmetic is visible; on the tiny LLaVA, Python overhead hides it.
Random weights; each method wraps all seven Linear types of every layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from branchlora.adapters import AdapterConfig, inject_adapters, unwrap
from branchlora.bench.timing import device_ms, summarise, sync, tunable

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
    """One forward, backward and AdamW update of `model` on ids (B, L), as a closure."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def time_steps(step: Callable[[], None], warmup: int, repeats: int, device: torch.device, inner: int = 1) -> dict:
    """Per-step time, each timed sample being `inner` steps run back to back (as a training loop runs them:
    it does not wait for the device between steps) between two device syncs."""
    seconds = []
    for i in range(warmup + repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            step()
        sync(device)
        if i >= warmup:
            seconds.append((time.perf_counter() - t0) / inner)
    return summarise(seconds)


def bench_step(sizes, device: torch.device, dtype: torch.dtype, kernels: bool = False) -> dict:
    """{method: {median_ms, iqr_ms, min_ms, n, tunable[, peak_mb]}} for one shared frozen stack.

    "frozen" trains only the embedding table, so its backward still runs through every layer: the
    floor that no adapter can go below on this machine.  kernels=True: {method: {device_ms}} instead,
    the GPU kernel time of one step.
    """
    model = build_stack(sizes.hidden, sizes.ffn, sizes.step_layers, device, dtype)
    ids = torch.randint(2, 1024, sizes.step_tokens, generator=torch.Generator().manual_seed(0)).to(device)
    embedding = model.get_input_embeddings().weight
    results = {}
    for method in ("frozen", *METHODS):
        embedding.requires_grad_(method == "frozen")
        if method != "frozen":
            cfg = AdapterConfig(
                kind=method, r=sizes.r, alpha=2 * sizes.r, n_branches=sizes.n, top_k=sizes.k, targets=SEVEN
            )
            inject_adapters(model, cfg)
        step = training_step(model, ids)
        if kernels:
            step()  # warm-up: AdamW allocates its state at the first step
            results[method] = {"device_ms": device_ms(step, sizes.step_repeats)}
            unwrap(model)
            continue
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        entry = time_steps(step, sizes.step_warmup, sizes.step_repeats, device, sizes.step_inner)
        entry["tunable"] = tunable(model)
        if device.type == "cuda":
            entry["peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        results[method] = entry
        unwrap(model)
    return results
