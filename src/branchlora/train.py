"""The one training loop, used by every method: Accelerate, a fresh AdamW per task, warmup + cosine.

A method changes behaviour only through its hooks (see methods/base.py): which router the adapters
use, extra losses added to a StepContext, extra parameter groups, and what happens at task start / end.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch import nn
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader
from transformers import get_cosine_schedule_with_warmup

from branchlora.adapters import adapter_layers, routing_context, tunable_count
from branchlora.batch import model_inputs
from branchlora.methods.base import Method, StepContext, Task
from branchlora.models.family import sample_rows
from branchlora.models.parts import projector
from branchlora.selector import embed
from branchlora.sharding import average_gradients, check_replicated, gathered, shard_frozen
from branchlora.typed import check_fields

PRECISIONS = ("no", "bf16")
KEEP = ("all", "last")
HOW = ("gradient_checkpointing", "num_workers", "save_every", "keep")  # how a run trains, not what it learns
LOSS_EVERY = 10  # optimizer steps between reads of the losses on the host


# Task i reseeds numpy, torch and random with seed * 1000 + i, and numpy takes seeds below 2**32 (< 1000 tasks).
SEED_MAX = (2**32 - 1000) // 1000


@dataclass
class TrainConfig:
    """How each task is trained (the CoIN recipe's defaults where they fit a tiny model)."""

    epochs: float = field(default=1.0, metadata={"help": "passes over each task's training data", "above": 0})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps per task (0: from epochs)", "min": 0})
    batch_size: int = field(default=8, metadata={"help": "samples per forward, per process", "min": 1})
    grad_accum: int = field(default=1, metadata={"help": "forwards per optimizer step", "min": 1})
    lr: float = field(default=2e-4, metadata={"help": "learning rate of the adapters", "above": 0})
    projector_lr: float = field(default=2e-5, metadata={"help": "learning rate of the projector", "min": 0})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "min": 0})
    warmup_ratio: float = field(default=0.03, metadata={"help": "share of steps for linear warmup", "min": 0, "max": 1})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (0: off)", "min": 0})
    mixed_precision: str = field(
        default="no", metadata={"help": "no, or bf16 (GPU; on CPU: torch's bf16 autocast)", "choices": PRECISIONS}
    )
    seed: int = field(
        default=0, metadata={"help": "seed; each task reseeds from it, so resume is exact", "min": 0, "max": SEED_MAX}
    )
    shard_frozen: bool = field(
        default=False, metadata={"help": "several processes: shard the frozen base (FSDP2), adapters stay whole"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "recompute each layer's activations in backward: less memory, one more forward"},
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes (0: collate inline)", "min": 0})
    save_every: int = field(
        default=0, metadata={"help": "optimizer steps between checkpoints inside a task (--resume; 0: off)", "min": 0}
    )
    keep: str = field(
        default="all",
        metadata={
            "help": "stages whose weights are kept: all, or the last only (state.json of each stays)",
            "choices": KEEP,
        },
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def joint(self, n_tasks: int) -> TrainConfig:
        """The budget of the joint (multi-task) bound: n_tasks tasks' worth of steps on their union."""
        return replace(self, max_steps=self.max_steps * n_tasks)

    def steps(self, n_examples: int, processes: int = 1) -> int:
        """Optimizer steps of a task with `n_examples` training items on `processes` processes (max_steps, or
        from epochs): each process sees ceil(n / (processes x batch_size)) batches per epoch, and a partial
        accumulation at an epoch's end is a step of its own, so one epoch is ceil(n / (processes x batch x accum))."""
        batches = math.ceil(n_examples / (processes * self.batch_size))  # per process and epoch
        return self.max_steps or max(1, math.ceil(self.epochs * math.ceil(batches / self.grad_accum)))


def routed(model: nn.Module, batch: dict[str, torch.Tensor], task_ids: Any) -> AbstractContextManager:
    """The routing context of this batch (task router, padding, the sample of each projector row)."""
    return routing_context(model, task_ids, batch["attention_mask"], rows=partial(sample_rows, model, batch))


def launched_processes() -> int:
    """The processes this run is launched on (torchrun and accelerate launch set WORLD_SIZE), known
    without starting them (the dry run)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def forward(model: nn.Module, batch: dict[str, torch.Tensor], task_ids: Any, accelerator: Accelerator) -> Any:
    """A model forward with the routing context of this batch."""
    with routed(model, batch, task_ids), accelerator.autocast():
        return model(**model_inputs(batch))


@dataclass
class LoopState:
    """Where a task's loop stands after an optimizer step: enough to go on bit for bit (train.save_every).

    `sampler` is the shuffle generator's state at the start of the current epoch and `batches` the
    micro-batches of that epoch already consumed (per process), so the same order is drawn again and
    those batches skipped without loading them; `rng` holds the global generators (dropout, router noise)."""

    step: int
    batches: int
    sampler: torch.Tensor
    optimizer: dict
    scheduler: dict
    rng: dict
    last: dict[str, float]


def rng_state() -> dict:
    """The global random generators' states, as plain tensors and lists (weights_only loading reads them)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]}  # fmt: skip
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_ratio: float, updates: int) -> LRScheduler:
    """Linear warm-up over int(warmup_ratio x updates) optimizer steps, then a cosine to zero at `updates`.

    Stepped once per optimizer step by the loop and never handed to `accelerator.prepare`: Accelerate's
    wrapper steps it once per process on every optimizer step, which would end the cosine N times early
    and climb it back."""
    return get_cosine_schedule_with_warmup(optimizer, int(warmup_ratio * updates), updates)


def enable_checkpointing(model: nn.Module) -> None:
    """Gradient checkpointing on every layer that supports it (language model and vision tower; a frozen
    tower has no graph to replay), non-reentrant: frozen inputs need no require-grads hook, and the routing
    context stays open through backward (see train_task), so the replayed forward routes as the first did."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@dataclass
class TaskRunner:
    """What a method's task-end hook may use: the task's batches (in order) and a routed forward."""

    examples: Sequence
    collate: Callable[[list], dict[str, torch.Tensor]]
    task_ids: Any
    accelerator: Accelerator
    batch_size: int

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        loader = DataLoader(self.examples, batch_size=self.batch_size, collate_fn=self.collate)
        yield from self.accelerator.prepare_data_loader(loader)

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any:
        return forward(model, batch, self.task_ids, self.accelerator)

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The selector's embeddings of a batch, under the run's autocast as its forwards."""
        with self.accelerator.autocast():
            return embed(model, batch)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean over processes of a statistic each computed on its shard (identity on one process)."""
        return self.accelerator.reduce(tensor, reduction="mean") if self.accelerator.num_processes > 1 else tensor


def make_accelerator(
    config: TrainConfig, cpu: bool, log_with: list | None = None, project_dir: str | None = None
) -> Accelerator:
    """The run's Accelerator; `log_with` names its experiment trackers (tracking.resolve_trackers), which
    write under `project_dir`."""
    # Branches a step's routing did not choose get no gradient: DDP must allow unused parameters.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    state = AcceleratorState._shared_state
    if (
        state
        and state.get("_mixed_precision") not in (None, config.mixed_precision)
        and PartialState().num_processes == 1
    ):
        # A second run in this Python process (a notebook, a test) with another precision: Accelerate keeps one
        # state per process and refuses to change it, so the one-process state is reset (launched runs have one).
        AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision, kwargs_handlers=[ddp],
                              log_with=log_with or None, project_dir=project_dir)  # fmt: skip
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "Accelerate's FSDP wrapping cannot follow the parameters continual methods add and freeze between "
            "tasks; launch with a multi-GPU config (configs/accelerate/fsdp-8gpu.yaml) and set "
            "train.shard_frozen=true, which shards the frozen base itself"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        check_deepspeed(accelerator.state.deepspeed_plugin.deepspeed_config, config)
    return accelerator


def check_deepspeed(deepspeed_config: dict, config: TrainConfig) -> None:
    """DeepSpeed accumulates by its own config's count: it must be train.grad_accum, or the loop's steps and
    schedule count something else than DeepSpeed's updates; its optimizer state is partitioned, which the
    checkpoints inside a task (train.save_every) do not gather."""
    theirs = deepspeed_config.get("gradient_accumulation_steps")
    if theirs != config.grad_accum:
        raise ValueError(
            f"the DeepSpeed launch config's gradient_accumulation_steps is {theirs} but train.grad_accum is "
            f"{config.grad_accum}; set them equal (in the launch config, or --set train.grad_accum={theirs})"
        )
    if config.save_every:
        raise ValueError("train.save_every is not supported under DeepSpeed (partitioned optimizer state); set it to 0")


def param_groups(model: nn.Module, method: Method, config: TrainConfig) -> list[dict]:
    """Adapters at lr, the projector at projector_lr, and whatever the method trains beside the model."""
    proj = projector(model)
    # Adapters that wrap the projector's own Linears (LiLoRA) train at the adapters' lr.
    adapter_ids = {id(p) for _, layer in adapter_layers(model) for p in layer.adapter_parameters().values()}
    proj_all = list(proj.parameters()) if proj is not None else []
    proj_params = [p for p in proj_all if p.requires_grad and id(p) not in adapter_ids]
    proj_ids = {id(p) for p in proj_params}
    adapters = [p for p in model.parameters() if p.requires_grad and id(p) not in proj_ids]
    groups = [{"params": adapters, "lr": config.lr}, {"params": proj_params, "lr": config.projector_lr}]
    return [g for g in groups + method.param_groups(config.lr) if g["params"]]


def float32_groups(groups: list[dict]) -> list[dict]:
    """The groups with every parameter in float32, in place (the projector of a bf16 base, a method's keys):
    AdamW keeps its states in the parameter's dtype, and 0.02 + 2e-5 rounds back to 0.02 in bfloat16."""
    for p in (p for g in groups for p in g["params"]):
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    return groups


def make_optimizer(groups: list[dict], weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one op per step where every parameter allows it (floating, on a CPU or GPU).

    The default implementation on a CPU loops over parameters in Python, about ten ops each: BranchLoRA's
    eight branch parameters per layer then cost more host time in the update than in the layer.
    """
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=fused)


def hold_frozen(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Keep the frozen rows of partly frozen parameters exactly where they are under weight decay.

    Their gradient is zero and the optimizer's state fresh, so Adam moves them by exactly zero; AdamW's
    decoupled decay shrinks every element all the same, so with decay the rows are put back after each step.
    """
    if not any(group["weight_decay"] for group in optimizer.param_groups):
        return
    held = [
        (p, mask, p.detach()[mask].clone()) for _, layer in adapter_layers(model) for p, mask in layer.partly_frozen()
    ]
    if not held:
        return

    @torch.no_grad()
    def restore(*_: object) -> None:
        for p, mask, rows in held:
            p[mask] = rows

    optimizer.register_step_post_hook(restore)


def train_task(
    model: nn.Module,
    method: Method,
    task: Task,
    examples: Sequence,
    collate: Callable[[list], dict[str, torch.Tensor]],
    config: TrainConfig,
    accelerator: Accelerator,
    on_step: Callable[[int, int, dict[str, float]], None] | None = None,
    on_log: Callable[[dict[str, float]], None] | None = None,
    replay: Sequence = (),
    save: Callable[[LoopState], None] | None = None,
    restore: Callable[[], LoopState] | None = None,
) -> dict[str, float]:
    """Train one task: a fresh optimizer and schedule, the method's losses, gradient accumulation.

    `replay` (earlier tasks' items) joins the task's examples in training only: the task-end hook sees the
    task's own examples.

    `on_step(step, total, losses)` follows progress on every step (losses as last read); `on_log` gets
    {"step", "lr", "loss_<name>"...} on each step whose losses are read.  A non-finite loss, or
    parameters that are not finite at the end, raise DivergedError before the task's hooks run.
    `save` gets the loop's state every train.save_every optimizer steps (not after the last); `restore`, called
    once the task has started (the method grew what the task adds), loads a saved model and method state and
    returns the loop's, from which training goes on as if never stopped."""
    set_seed(config.seed * 1000 + task.index)  # the task's randomness depends on nothing before it
    method.on_task_start(model, task)
    resumed = restore() if restore is not None else None
    sharded = config.shard_frozen and accelerator.num_processes > 1
    if sharded:
        shard_frozen(model)  # the first task shards; later ones check that what trains is whole
        check_replicated(model)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    groups = float32_groups(param_groups(model, method, config))
    tunable = tunable_count(model)  # what this task trains
    generator = torch.Generator().manual_seed(config.seed * 1000 + task.index)
    mixed = [*examples, *replay] if replay else examples
    loader = DataLoader(mixed, batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator,
                        num_workers=config.num_workers, pin_memory=accelerator.device.type == "cuda")  # fmt: skip
    updates = config.steps(len(mixed), accelerator.num_processes)
    optimizer = make_optimizer(groups, config.weight_decay)
    hold_frozen(model, optimizer)
    scheduler = warmup_cosine(optimizer, config.warmup_ratio, updates)
    if accelerator.distributed_type == DistributedType.NO or sharded:  # no wrapper: one process, or sharding.py
        wrapped = model
        optimizer, loader = accelerator.prepare(optimizer, loader)
    else:  # DDP, or DeepSpeed ZeRO-2 from `accelerate launch --config_file ...`: model and optimizer together
        wrapped, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    accelerator.gradient_accumulation_steps = config.grad_accum
    accelerator.step = 0  # a task starts a fresh accumulation
    task_ids = method.train_task_ids(task)
    # Clip the model's gradients only: they are the ones DDP keeps equal on every process.
    trainable = [p for p in model.parameters() if p.requires_grad]
    # What trains beside the model (a method's task keys) is not in DDP's wrapper: its gradients are averaged
    # over the processes here, as DDP averages the model's, so every process keeps the same keys.
    beside = [p for g in method.param_groups(config.lr) for p in g["params"]] if accelerator.num_processes > 1 else []
    step, skip, last = 0, 0, {}
    if resumed is not None:
        optimizer.load_state_dict(resumed.optimizer)
        scheduler.load_state_dict(resumed.scheduler)
        generator.set_state(resumed.sampler)
        step, skip, last = resumed.step, resumed.batches, resumed.last
        set_rng_state(resumed.rng)
    model.train()
    start = time.perf_counter()
    while step < updates:
        epoch_start, seen = generator.get_state(), skip  # the generator draws the epoch's order from here
        for batch in accelerator.skip_first_batches(loader, skip) if skip else loader:
            seen, skip = seen + 1, 0
            # The routing context stays open through backward: gradient checkpointing replays the forward there.
            with accelerator.accumulate(wrapped), routed(wrapped, batch, task_ids):
                ctx = StepContext(task, batch)
                # The method's losses too (LwF's teacher, the selector's embeddings run the model), as HF's
                # Trainer computes its loss: under bf16 every Linear meets its input in autocast's dtype.
                with accelerator.autocast():
                    ctx.outputs = wrapped(**model_inputs(batch))
                    ctx.add_loss("task", ctx.outputs.loss)
                    method.extra_loss(model, ctx)
                loss = sum(ctx.losses.values())
                accelerator.backward(loss)
                if accelerator.sync_gradients and (sharded or beside):
                    average_gradients((trainable if sharded else []) + beside)  # what DDP's wrapper does for the model
                if accelerator.sync_gradients and config.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
                lr = optimizer.param_groups[0]["lr"]  # the adapters' lr for this step (a float: no sync)
                optimizer.step()  # a no-op until the accumulation syncs
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            if step % LOSS_EVERY == 0 or step == updates:  # .item() waits for the device: not every step
                last = {name: value.item() for name, value in ctx.losses.items()}
                check_finite(last, method, task, step)
                if on_log is not None:
                    on_log({"step": step, "lr": lr, **_prefixed(last)})
            if on_step is not None:
                on_step(step, updates, last)
            if step >= updates:
                break
            if save is not None and config.save_every and step % config.save_every == 0:
                state = LoopState(step, seen, epoch_start, optimizer.state_dict(), scheduler.state_dict(),
                                  rng_state(), last)  # fmt: skip
                save(state)
        skip = 0  # resumed at an epoch's end: every batch skipped, the next epoch starts whole (else: no step, forever)
    check_finite_parameters(trainable, method, task, step)  # the last update may have overflowed
    model.eval()
    runner = TaskRunner(examples, collate, task_ids, accelerator, config.batch_size)
    with gathered(model):  # the task-end passes may differ in length between processes
        method.on_task_end(model, task, runner)
    accelerator.free_memory()
    return {"steps": step, "seconds": time.perf_counter() - start, "tunable": tunable, **_prefixed(last)}


def _prefixed(losses: dict[str, float]) -> dict[str, float]:
    return {f"loss_{k}": v for k, v in losses.items()}


class DivergedError(ValueError):
    """Training produced a non-finite loss or parameters: a ValueError, as the cause is a setting
    (lr, precision, data) the user chose, so the CLI prints it as one line and exits with status 2."""


def check_finite(losses: dict[str, float], method: Method, task: Task, step: int) -> None:
    """Stop at the first read of a non-finite loss: later steps and checkpoints would only carry NaN on."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise DivergedError(
            f"{method.name}: the loss became non-finite ({shown}) on task {task.name!r} by step {step}; "
            "training stopped, the checkpoints of earlier tasks are kept (try a lower train.lr)"
        )


def check_finite_parameters(params: list[torch.Tensor], method: Method, task: Task, step: int) -> None:
    """One host sync per task: the trained parameters are finite (no NaN adapters reach a checkpoint)."""
    if params and not torch.stack([p.detach().isfinite().all() for p in params]).all().item():
        raise DivergedError(
            f"{method.name}: parameters became non-finite on task {task.name!r} at step {step}; training "
            "stopped, the checkpoints of earlier tasks are kept (try a lower train.lr)"
        )
