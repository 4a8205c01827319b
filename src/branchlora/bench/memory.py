"""Measured peak memory and time of training steps on this machine's CPU, against memory.py's estimate.

Each measurement runs in a fresh process (`python -m branchlora.bench.memory ...`): ru_maxrss is the
process's peak, so the estimate is compared with (peak RSS) - (RSS after imports, before the model).
Random weights at a config's real widths, fp32 (mixed_precision "no"), a LLaVA batch of random tokens
whose first `image_tokens` positions are the image; each step is the loop's own: the routed forward,
backward, AdamW (train.make_optimizer).  Seconds per step are split into the input pipeline, the forward
(by forward hooks: vision tower, decoder layers without their adapters, the adapters' own time, the rest:
embeddings, projector, lm_head and loss), the backward and AdamW.

    python -m branchlora.bench.memory --config CONFIG.json --method lora --batch 1 --seq-len 640 --steps 2
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

KIB = 1024


def rss_bytes() -> int:
    """The current resident set size (Linux /proc), in bytes."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def reset_peak() -> None:
    """Reset the kernel's peak RSS (VmHWM) to the current RSS (Linux >= 4.0: clear_refs 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_bytes() -> int:
    """The peak RSS since the last `reset_peak` (VmHWM), in bytes."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    return int(line.split()[1]) * KIB


def shrunk(config):
    """The same architecture at toy widths: a warm-up step on it pages in the library code every step runs, so
    that code does not count as the measured model's memory."""
    small = copy.deepcopy(config)
    for sub, width in ((small.text_config, 64), (small.vision_config, 32)):
        sub.hidden_size, sub.intermediate_size, sub.num_hidden_layers = width, 2 * width, 1
        sub.num_attention_heads = 2
        if hasattr(sub, "num_key_value_heads"):
            sub.num_key_value_heads = 2
        if hasattr(sub, "head_dim"):
            sub.head_dim = width // 2
    return small


class PartTimer:
    """Forward wall time inside modules, by part, from forward pre / post hooks (backward hooks would clash
    with the adapters' in-place update of the base output, so the backward is timed as a whole)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._start: dict[int, float] = {}

    def watch(self, module: nn.Module, part: str) -> None:
        def begin(*_) -> None:
            self._start[id(module)] = time.perf_counter()

        def end(*_) -> None:
            self.seconds[part] += time.perf_counter() - self._start.pop(id(module))

        module.register_forward_pre_hook(begin)
        module.register_forward_hook(end)

    def wrap(self, fn: Callable, part: str) -> Callable:
        """`fn` with its wall time added to `part` on every call (a collate function, the backward)."""

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start

        return timed

    def watch_llava(self, model: nn.Module) -> None:
        """Time a LLaVA's vision tower, decoder layers, lm_head and adapter layers (the adapters' own time is
        adapter_layers - adapter_base_linears)."""
        from branchlora.adapters import adapter_layers

        self.watch(model.model.vision_tower, "vision_tower")
        for layer in model.model.language_model.layers:
            self.watch(layer, "decoder_layers")
        for _, layer in adapter_layers(model):
            self.watch(layer, "adapter_layers")  # its base Linear counts here too
            self.watch(layer.base_layer, "adapter_base_linears")
        self.watch(model.lm_head, "lm_head")


def random_batch(config, batch: int, seq_len: int, image_tokens: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random text ids after `image_tokens` image placeholders, the image as random pixels; labels = ids."""
    g = torch.Generator().manual_seed(seed)
    text = config.text_config
    ids = torch.randint(0, text.vocab_size - 1, (batch, seq_len), generator=g)
    ids += ids >= config.image_token_id  # every id but the image's
    ids[:, :image_tokens] = config.image_token_id
    labels = ids.clone()
    labels[:, :image_tokens] = -100
    vision = config.vision_config
    pixels = torch.randn(batch, 3, vision.image_size, vision.image_size, generator=g)
    mask = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "labels": labels}


def measure(config_path: str, method_name: str, batch: int, seq_len: int, steps: int) -> dict:
    """Peak RSS over `steps` training steps and seconds per step by part (the first step is warm-up)."""
    from transformers import AutoConfig

    data = json.loads(Path(config_path).read_text())
    config = AutoConfig.for_model(**{k: v for k, v in data.items() if not k.startswith("_")})
    steps_on(shrunk(config), method_name, batch=1, seq_len=seq_len, steps=1)  # page in the code
    gc.collect()
    before = rss_bytes()
    reset_peak()
    seconds = steps_on(config, method_name, batch, seq_len, steps)
    return {"measured_bytes": peak_rss_bytes() - before, "split": seconds}


def steps_on(config, method_name: str, batch: int, seq_len: int, steps: int) -> dict:
    """Build a random model of `config`, set the method up, run steps + 1 training steps; seconds by part."""
    from transformers import LlavaForConditionalGeneration

    from branchlora.methods import Task, get_method
    from branchlora.methods.base import StepContext
    from branchlora.train import TrainConfig, forward, make_optimizer, param_groups

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).requires_grad_(False)
    method = get_method(method_name)()
    method.setup(model)
    task = Task(0, "task-1")
    method.on_task_start(model, task)
    optimizer = make_optimizer(param_groups(model, method, TrainConfig()), 0.0)
    accelerator = Accelerator(cpu=True)
    timer = PartTimer()
    timer.watch_llava(model)
    image_tokens = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
    model.train()
    totals, per_step = defaultdict(float), []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        b = random_batch(config, batch, seq_len, image_tokens, seed=i)
        t1 = time.perf_counter()
        timer.seconds.clear()
        ctx = StepContext(task, b)
        ctx.outputs = forward(model, b, method.train_task_ids(task), accelerator)
        ctx.add_loss("task", ctx.outputs.loss)
        method.extra_loss(model, ctx)
        t2 = time.perf_counter()
        sum(ctx.losses.values()).backward()
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ctx = None
        t4 = time.perf_counter()
        if i:  # the first step allocates and warms up
            per_step.append(t4 - t0)
            for part, s in (("input_pipeline", t1 - t0), ("forward", t2 - t1), ("backward", t3 - t2),
                            ("adamw", t4 - t3), *timer.seconds.items()):  # fmt: skip
                totals[part] += s
    seconds = {k: v / steps for k, v in totals.items()}
    adapters = seconds["adapter_layers"] - seconds["adapter_base_linears"]
    split = {
        "input_pipeline": seconds["input_pipeline"],
        "forward_vision_tower": seconds["vision_tower"],
        "forward_language_model_without_adapters": seconds["decoder_layers"] - adapters,
        "forward_adapters": adapters,
        "forward_rest": seconds["forward"] - seconds["vision_tower"] - seconds["decoder_layers"],
        "backward": seconds["backward"],
        "adamw": seconds["adamw"],
        "total": sum(per_step) / steps,
    }
    return split


def main(argv: list[str] | None = None) -> None:
    from branchlora.memory import Setting, estimate_memory

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="a LLaVA config.json (random weights at its widths)")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=640)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args(argv)
    result = measure(args.config, args.method, args.batch, args.seq_len, args.steps)
    estimate = estimate_memory(args.config, args.method, Setting(args.batch, args.seq_len, "no", tasks=1))
    result |= {"method": args.method, "batch": args.batch, "seq_len": args.seq_len,
               "estimated_bytes": estimate["peak_bytes"], "estimate_terms": estimate["bytes"],
               "ratio_measured_to_estimate": result["measured_bytes"] / estimate["peak_bytes"]}  # fmt: skip
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
