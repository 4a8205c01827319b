"""BranchLoRA's continual lifecycle: a router per task, freezing of the most-used branches."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.adapters import BranchLoRA, adapter_layers
from branchlora.methods.base import Method, MethodOptions, Task, TaskRun
from branchlora.methods.registry import register_method


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
    task_routers: bool = field(default=True, metadata={"help": "a new router per task (False: one shared)"})
    router_init: str = field(default="fresh", metadata={"help": "new router: fresh (random) or copy"})
    router_noise: float = field(default=0.0, metadata={"help": "noisy top-k: logit noise std in training"})
    freeze: bool = field(default=True, metadata={"help": "freeze the k most active branches after a task"})
    freeze_k: int = field(default=0, metadata={"help": "branches frozen per task (0: the adapter's top_k)"})
    max_frozen_fraction: float = field(default=1.0, metadata={"help": "cap on the frozen share of branches"})
    exhaustion: str = field(
        default="stop",
        metadata={
            "help": "fewer than k tunable branches left: stop (train router, A, "
            "projector only) or grow (add k fresh branches)"
        },
    )
    freeze_a_after_first: bool = field(default=False, metadata={"help": "freeze the trunk A after task 1"})
    freeze_projector_after_first: bool = field(
        default=False, metadata={"help": "freeze the projector after task 1"}
    )

    def __post_init__(self) -> None:
        if self.router_init not in ("fresh", "copy"):
            raise ValueError(f"router_init must be 'fresh' or 'copy', got {self.router_init!r}")
        if self.exhaustion not in ("stop", "grow"):
            raise ValueError(f"exhaustion must be 'stop' or 'grow', got {self.exhaustion!r}")
        if not 0.0 <= self.max_frozen_fraction <= 1.0:
            raise ValueError(f"max_frozen_fraction must be in [0, 1], got {self.max_frozen_fraction}")


@register_method(
    "branchlora", "BranchLoRA: shared trunk A, 8 branches, top-2 routing, task routers, freezing"
)
class BranchLoRAMethod(Method):
    adapter_defaults = {"kind": "branchlora"}
    Options = BranchLoRAOptions
    options: BranchLoRAOptions

    def _layers(self, model: nn.Module) -> list[BranchLoRA]:
        return [layer for _, layer in adapter_layers(model) if isinstance(layer, BranchLoRA)]

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
            if opts.freeze_projector_after_first:
                from branchlora.models.parts import projector

                proj = projector(model)
                if proj is not None:
                    proj.requires_grad_(False)

    def train_task_ids(self, task: Task) -> int | None:
        return task.index if self.options.task_routers else 0

    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        """Count how each layer's router used the branches on the task's data, then freeze the most used."""
        if not self.options.freeze:
            return
        layers = self._layers(model)
        for layer in layers:
            layer.activity.zero_()
            layer.track_activity = True
        try:
            with torch.no_grad():
                for batch in run.batches():
                    run.forward(model, batch)
        finally:
            for layer in layers:
                layer.track_activity = False
        k = self.options.freeze_k or self.adapter.top_k
        for layer in layers:
            cap = int(self.options.max_frozen_fraction * layer.n_branches)
            layer.freeze_branches(freeze_most_active(layer.activity, layer.frozen, k, cap))
