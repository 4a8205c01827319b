"""BranchLoRA's continual lifecycle: a router per task, freezing of the most-used branches, task keys.

Per task t: add router t (and, with exhaustion="grow", k fresh branches when fewer than k are tunable);
train with L_task + lambda * L_align; then, in one pass over the task's data, count how the router used
the branches and freeze the k most used per layer, and fix the task's keys.  At test time the selector
picks each sample's router from the keys, so no task id is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.adapters import BranchLoRA, adapter_layers
from branchlora.methods.base import MethodOptions, StepContext, Task, TaskRun
from branchlora.methods.registry import register_method
from branchlora.methods.task_keys import KeyedMethod, TaskKeys
from branchlora.models.parts import projector


def freeze_most_active(activity: torch.Tensor, frozen: list[bool], k: int, max_frozen: int) -> list[int]:
    """The branches to freeze after a task: the k most active (used at all), not yet frozen, under the cap.

    activity: (N,) summed top-k gate weight per branch on the task's data; frozen: N flags.
    Branches the task used most stay frozen if they already were; at most `max_frozen` end up frozen.
    """
    top = [i for i in activity.argsort(descending=True, stable=True)[:k].tolist() if activity[i] > 0]
    new = [i for i in top if not frozen[i]]
    room = max(0, max_frozen - sum(frozen))
    return new[:room]


@dataclass
class BranchLoRAOptions(MethodOptions):
    task_routers: bool = field(default=True, metadata={"help": "a router per task + the task selector"})
    router_init: str = field(default="fresh", metadata={"help": "new router: fresh (random) or copy"})
    router_noise: float = field(default=0.0, metadata={"help": "noisy top-k: logit noise std in training"})
    freeze: bool = field(default=True, metadata={"help": "freeze the k most active branches after a task"})
    freeze_k: int = field(default=0, metadata={"help": "branches frozen per task (0: the adapter's top_k)"})
    max_frozen_fraction: float = field(default=1.0, metadata={"help": "cap on the frozen share of branches"})
    exhaustion: str = field(
        default="stop",
        metadata={"help": "fewer than k tunable branches: stop (router, A, projector train) or grow (add k)"},
    )
    freeze_a_after_first: bool = field(default=False, metadata={"help": "freeze the trunk A after task 1"})
    freeze_projector_after_first: bool = field(default=False, metadata={"help": "freeze the projector after task 1"})
    keys: str = field(default="loss", metadata={"help": "task keys: loss (L_align, the paper) or prototype"})
    align_weight: float = field(default=1.0, metadata={"help": "lambda of L_align"})
    key_lr: float = field(default=1e-2, metadata={"help": "learning rate of the keys (keys=loss)"})
    stats_batches: int = field(default=0, metadata={"help": "batches of the task-end pass (0: all)"})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and ranges of every field
        for name, valid in (("router_init", ("fresh", "copy")), ("exhaustion", ("stop", "grow")),
                            ("keys", ("loss", "prototype"))):  # fmt: skip
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {valid}, got {getattr(self, name)!r}")
        if not 0.0 <= self.max_frozen_fraction <= 1.0:
            raise ValueError(f"max_frozen_fraction must be in [0, 1], got {self.max_frozen_fraction}")


@register_method("branchlora", "BranchLoRA: shared trunk A, 8 branches, top-2 routing, task routers, freezing")
class BranchLoRAMethod(KeyedMethod):
    adapter_defaults = {"kind": "branchlora"}
    Options = BranchLoRAOptions
    options: BranchLoRAOptions

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        self.keys = TaskKeys(self.options.keys, self.options.align_weight, self.options.key_lr)

    @property
    def key_img(self) -> list[torch.Tensor]:
        return self.keys.key_img

    @property
    def key_txt(self) -> list[torch.Tensor]:
        return self.keys.key_txt

    def _layers(self, model: nn.Module) -> list[BranchLoRA]:
        return [layer for _, layer in adapter_layers(model) if isinstance(layer, BranchLoRA)]

    # ---- task start: a router (and maybe branches) for the task; what trains ---------------------------
    def on_task_start(self, model: nn.Module, task: Task) -> None:
        opts = self.options
        for layer in self._layers(model):
            layer.router_noise = opts.router_noise
            if opts.task_routers and task.index >= layer.n_routers:
                if opts.exhaustion == "grow" and layer.frozen.count(False) < layer.top_k:
                    layer.add_branches(layer.top_k)
                layer.add_router(copy_previous=opts.router_init == "copy")
        self.set_trainable(model)
        if task.index > 0:
            for layer in self._layers(model):
                layer.lora_A.requires_grad_(not opts.freeze_a_after_first)
            proj = projector(model)
            if proj is not None and opts.freeze_projector_after_first:
                proj.requires_grad_(False)
        if opts.task_routers:
            self.keys.start(model)

    def param_groups(self, lr: float) -> list[dict]:
        return self.keys.param_groups()

    def train_task_ids(self, task: Task) -> int:
        return task.index if self.options.task_routers else 0

    # ---- each step: L_align pulls the task's keys towards its samples --------------------------------
    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        self.keys.add_align_loss(model, ctx)

    # ---- task end: one pass for branch activity, then freeze; fix the task's keys -----------------------
    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        layers = self._layers(model)
        if self.options.freeze:
            self._count_activity(model, layers, run)
            k = self.options.freeze_k or self.adapter.top_k
            for layer in layers:
                cap = int(self.options.max_frozen_fraction * layer.n_branches)
                activity = run.mean(layer.activity)  # every process must freeze the same branches
                layer.freeze_branches(freeze_most_active(activity, layer.frozen, k, cap))
        if self.options.task_routers:
            self.keys.end_task(model, run, self.options.stats_batches)

    @torch.no_grad()
    def _count_activity(self, model: nn.Module, layers: list[BranchLoRA], run: TaskRun) -> None:
        """One routed pass over the task's data summing each branch's top-k gate weight, per layer."""
        for layer in layers:
            layer.activity.zero_()
            layer.track_activity = True
        try:
            for i, batch in enumerate(run.batches()):
                if self.options.stats_batches and i >= self.options.stats_batches:
                    break
                run.forward(model, batch)
        finally:
            for layer in layers:
                layer.track_activity = False

    # ---- test time: the selector picks each sample's router ----------------------------------------------
    def eval_task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task: Task, oracle: bool = False
    ) -> int | torch.Tensor | None:
        if not self.options.task_routers:
            return 0
        return self.keys.task_ids(model, batch, task.index, oracle)  # None before any: the newest router


# The paper's ablation, step by step from MoELoRA to the full method (Table: + shared A, + sparse top-k
# routing, + freezing, + task routers).  "+ shared A" keeps MoELoRA's per-token dense routing; "+ top-k"
# switches to the paper's sparse routing (top-2 on the first token); the full method is "branchlora".
@register_method("branchlora-shared_a", "ablation: MoELoRA + shared A (per-token dense routing, one router)")
class SharedA(BranchLoRAMethod):
    adapter_defaults = {"kind": "branchlora", "routing": "token", "top_k": 8}
    option_defaults = {"task_routers": False, "freeze": False}


@register_method("branchlora-topk", "ablation: + sparse top-2 routing on the first token (one router)")
class SharedATopK(BranchLoRAMethod):
    option_defaults = {"task_routers": False, "freeze": False}


@register_method("branchlora-freeze", "ablation: + freezing of the most-used branches (one router)")
class SharedATopKFreeze(BranchLoRAMethod):
    option_defaults = {"task_routers": False}


# Beyond the paper (research notes: what still forgets is the shared trunk; once branches run out, new
# tasks stop being learned): the same method with one decision changed, to measure against the default.
@register_method("branchlora-grow", "beyond the paper: add k fresh branches when fewer than k are tunable")
class BranchLoRAGrow(BranchLoRAMethod):
    option_defaults = {"exhaustion": "grow"}


@register_method("branchlora-frozen_trunk", "beyond the paper: freeze A and the projector after task 1")
class BranchLoRAFrozenTrunk(BranchLoRAMethod):
    option_defaults = {"freeze_a_after_first": True, "freeze_projector_after_first": True}


@register_method("branchlora-frozen_trunk_grow", "beyond the paper: frozen trunk after task 1 + growing branches")
class BranchLoRAFrozenTrunkGrow(BranchLoRAMethod):
    option_defaults = {"freeze_a_after_first": True, "freeze_projector_after_first": True, "exhaustion": "grow"}
