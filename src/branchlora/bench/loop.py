"""`branchlora bench --loop`: our training loop against the obvious alternative, PEFT's LoRA in a plain torch
loop, on the same tiny LLaVA (the embedded base), the same task data, batch, steps and trainable set.

The plain loop is what a user writes without this library, with HF Trainer's defaults where it has them:
get_peft_model on the same seven Linear types (same r, alpha, dropout), the projector trained beside it at
its own lr (as LLaVA's LoRA recipe does and our methods do), fused AdamW (Trainer's default optimizer on
torch >= 2.8), warmup + cosine, gradient clipping at 1.0, the same shuffled DataLoader and collator.
Each sample trains a fresh copy of the base and times steps 2..N from the loop's own per-step callback
(the first step allocates optimizer state; the methods' task-end passes are not training).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from branchlora.adapters.config import LLAVA_TARGETS, AdapterConfig
from branchlora.batch import model_inputs
from branchlora.bench.interleave import Schedule, interleave
from branchlora.methods import Task, get_method
from branchlora.models.parts import projector
from branchlora.train import TrainConfig, make_accelerator, make_optimizer, train_task

LOOP_RATIOS = {"lora_vs_peft_loop": ("lora", "peft_lora"), "branchlora_vs_peft_loop": ("branchlora", "peft_lora")}


@dataclass(frozen=True)
class LoopSizes:
    task: str = "scienceqa"  # the default stream's first task
    steps: int = 12  # optimizer steps per sample (the first is not timed)
    batch_size: int = 16  # the default preset's
    r: int = 32  # the default preset's adapter
    alpha: float = 64.0
    warmup: int = 1
    least: int = 6
    cap_s: float = 300.0
    tolerance: float = 0.05


class StepClock:
    """Called after every optimizer step; keeps the time from the end of step 1 to the end of the last."""

    def __init__(self) -> None:
        self.first = self.last = 0.0

    def __call__(self, step: int, *_) -> None:
        now = time.perf_counter()
        self.first = now if step == 1 else self.first
        self.last = now

    def seconds_per_step(self, steps: int) -> float:
        return (self.last - self.first) / (steps - 1)


def peft_loop(model: nn.Module, examples: Sequence, collate: Callable, config: TrainConfig, adapter: AdapterConfig,
              on_step: Callable[[int], None]) -> int:  # fmt: skip
    """Train `model` with PEFT's LoRA in a plain torch loop (see the module docstring); returns the number
    of parameters trained."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout, target_modules=LLAVA_TARGETS)
    with warnings.catch_warnings():  # transformers' deprecation notice for a call inside PEFT
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(model.requires_grad_(False), lora)
    proj = projector(model).requires_grad_(True)
    proj_ids = {id(p) for p in proj.parameters()}
    lora_params = [p for p in model.parameters() if p.requires_grad and id(p) not in proj_ids]
    groups = [{"params": lora_params, "lr": config.lr}, {"params": list(proj.parameters()), "lr": config.projector_lr}]
    optimizer = make_optimizer(groups, config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * config.max_steps), config.max_steps
    )
    generator = torch.Generator().manual_seed(config.seed * 1000)
    loader = DataLoader(examples, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator)
    params = [p for group in groups for p in group["params"]]
    tunable = sum(p.numel() for p in params)
    model.train()
    step = 0
    while step < config.max_steps:
        for batch in loader:
            model(**model_inputs(batch)).loss.backward()
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            on_step(step)
            if step == config.max_steps:
                return tunable
    return tunable


DEFAULT = LoopSizes()


def bench_loop(sizes: LoopSizes = DEFAULT) -> dict:
    """{"seconds_per_step": {variant: ...}, "ratios", "intervals", "rounds", ...} on the CPU."""
    from branchlora.config import load_config
    from branchlora.data.benchmark import load_benchmark
    from branchlora.data.collate import Collator
    from branchlora.models.loading import load_base_from

    defaults = load_config("default")
    base, processor = load_base_from("tiny", progress=False)
    collate = Collator(processor).train_batch
    examples = load_benchmark("minicoin", **defaults.benchmark_options).train_examples(sizes.task)
    examples = examples[: sizes.steps * sizes.batch_size]  # one pass: every variant sees the same batches
    config = replace(defaults.train, max_steps=sizes.steps, batch_size=sizes.batch_size)
    adapter = {"r": sizes.r, "alpha": sizes.alpha}
    accelerator = make_accelerator(config, cpu=True)
    tunable: dict[str, int] = {}

    def ours(name: str) -> Callable[[], float]:
        def sample() -> float:
            model, clock = copy.deepcopy(base), StepClock()
            method = get_method(name)(adapter, {"stats_batches": 1} if name == "branchlora" else None)
            method.setup(model)
            stats = train_task(model, method, Task(0, sizes.task), examples, collate, config, accelerator, clock)
            tunable[name] = stats["tunable"]
            return clock.seconds_per_step(sizes.steps)

        return sample

    def theirs() -> float:
        clock = StepClock()
        lora = AdapterConfig(kind="lora", **adapter)
        tunable["peft_lora"] = peft_loop(copy.deepcopy(base), examples, collate, config, lora, clock)
        return clock.seconds_per_step(sizes.steps)

    samplers = {"peft_lora": theirs, "lora": ours("lora"), "branchlora": ours("branchlora")}
    schedule = Schedule(warmup=sizes.warmup, min_rounds=sizes.least, cap_s=sizes.cap_s, tolerance=sizes.tolerance)
    comparison = interleave(samplers, LOOP_RATIOS, schedule)
    intervals = comparison.pop("ratios")
    return {
        "model": f"the embedded tiny base, task {sizes.task}, batch {sizes.batch_size}, {sizes.steps} steps "
        f"per sample (steps 2..{sizes.steps} timed), r {sizes.r}, alpha {sizes.alpha:g}",
        "threads": torch.get_num_threads(),
        "seconds_per_step": comparison.pop("times"),
        "tunable": tunable,  # parameters each variant trained: lora and peft_lora must match
        "ratios": {k: v["ratio"] for k, v in intervals.items()},
        "intervals": intervals,
        **comparison,
    }
