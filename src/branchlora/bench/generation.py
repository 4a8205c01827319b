"""Generation: tokens per second of the frozen base, BranchLoRA routed, and BranchLoRA merged per task.

A small random LLaMA-style causal LM (greedy decoding, batch 1, KV cache): at this size per-step
Python overhead, which the merged model removes, is what separates the three.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from branchlora.adapters import AdapterConfig, adapter_layers, inject_adapters, routing_context
from branchlora.adapters.merged import merge_task
from branchlora.bench.interleave import interleave
from branchlora.bench.step import SEVEN, build_stack
from branchlora.bench.timing import sync


def generate(model: nn.Module, prompt: torch.Tensor, sizes, device: torch.device) -> tuple[float, torch.Tensor]:
    """(seconds, ids) of one greedy generation; routing computed once, at prefill."""
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad(), routing_context(model, task_ids=0, reuse=True):
        ids = model.generate(
            prompt, max_new_tokens=sizes.gen_new, min_new_tokens=sizes.gen_new, do_sample=False, pad_token_id=0
        )
    sync(device)
    return time.perf_counter() - t0, ids


def bench_generation(sizes, device: torch.device, dtype: torch.dtype) -> tuple[dict, dict]:
    """({base, branchlora_unmerged, branchlora_merged: tokens/s ...}, the interleaved comparison)."""
    model = build_stack(sizes.gen_hidden, sizes.gen_ffn, sizes.gen_layers, device, dtype).eval()
    prompt = torch.randint(2, 1024, (1, sizes.gen_prompt), generator=torch.Generator().manual_seed(0))
    prompt[:, 0] = 1  # BOS first, as a tokenizer writes it: first-token routing is then fixed per task
    prompt = prompt.to(device)
    base = copy.deepcopy(model)
    inject_adapters(
        model, AdapterConfig(r=sizes.r, alpha=2 * sizes.r, n_branches=sizes.n, top_k=sizes.k, targets=SEVEN)
    )
    with torch.no_grad():
        for _, layer in adapter_layers(model):
            for b in layer.lora_B:
                b.normal_(std=0.01)
    merged = copy.deepcopy(model)
    merge_task(merged, 0, {"input_ids": prompt})
    models = {"base": base, "branchlora_unmerged": model, "branchlora_merged": merged}
    ids = {name: generate(m, prompt, sizes, device)[1] for name, m in models.items()}
    samplers = {name: lambda m=m: generate(m, prompt, sizes, device)[0] for name, m in models.items()}
    comparison = interleave(samplers, GENERATION_RATIOS, sizes.schedule(1, sizes.gen_repeats, sizes.gen_cap_s))
    tokens = sizes.gen_new * prompt.shape[0]
    return {
        "model": f"random LLaMA, hidden {sizes.gen_hidden}, FFN {sizes.gen_ffn}, {sizes.gen_layers} layers, "
        f"prompt {sizes.gen_prompt}, {sizes.gen_new} new tokens, batch 1, greedy",
        **{name: {"tokens_per_s": tokens / (t["median_ms"] / 1e3), **t} for name, t in comparison["times"].items()},
        "merged_equals_unmerged": bool(torch.equal(ids["branchlora_unmerged"], ids["branchlora_merged"])),
    }, comparison


# In time per generation base / merged: the merged model's tokens per second relative to the base's.
GENERATION_RATIOS = {"merged_generation_vs_base": ("base", "branchlora_merged")}
