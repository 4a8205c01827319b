"""LiLoRA's continual lifecycle: per-task P_t, Q_t, f_t, a shared A kept steady, task keys for inference.

Per task t: every wrapped Linear gains P_t, Q_t, f_t (adapters/lilora.py holds the math); A trains on
every task, B0 on the first only.  The loss adds the stability term on the shared A,
    lambda * sum_layers (1 - cos(vec(A), vec(A_{t-1}))),   A_{t-1} the snapshot at task start,
and the project's L_align for the task keys.  At test time a sample uses B_t of the task the selector
picks from the keys (`lilora`), or of its true task (`lilora-oracle`, as the public code does).
Targets: gate/up/down of the language model and the projector's Linears, which wraps the projector:
its own weights stay frozen and its adapters train (Method.set_trainable marks adapters last).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from branchlora.adapters import LiLoRA, adapter_layers, merge, routing_context
from branchlora.methods.base import MethodOptions, StepContext, Task, TaskRun
from branchlora.methods.registry import register_method
from branchlora.methods.task_keys import IDENTITIES, KEY_MODES, KeyedMethod, TaskKeys


def stability_loss(current: list[torch.Tensor], anchors: list[torch.Tensor]) -> torch.Tensor:
    """sum over layers of 1 - cos(vec(A), vec(A_anchor)): zero while no shared A has turned."""
    pairs = zip(current, anchors, strict=True)
    return torch.stack([1 - F.cosine_similarity(a.flatten(), b.flatten().to(a), dim=0) for a, b in pairs]).sum()


@torch.no_grad()
def merge_lilora_task(model: nn.Module, task: int) -> nn.Module:
    """Fold task `task`'s update s * B_t A into every wrapped W0 and unwrap: a plain model for that task."""
    with routing_context(model, task_ids=task):
        return merge(model)


@dataclass
class LiLoRAOptions(MethodOptions):
    stability_weight: float = field(default=1.0, metadata={"help": "lambda of the cosine stability loss on A"})
    task_identity: str = field(
        default="select",
        metadata={"help": "test-time task: select (task keys) or oracle (the true id)", "choices": IDENTITIES},
    )
    keys: str = field(default="loss", metadata={"help": "task keys: loss (L_align) or prototype"})
    align_weight: float = field(default=1.0, metadata={"help": "lambda of L_align"})
    key_lr: float = field(default=1e-2, metadata={"help": "learning rate of the keys (keys=loss)"})
    stats_batches: int = field(default=0, metadata={"help": "batches of the prototype pass (0: all)"})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and ranges of every field
        if self.keys not in KEY_MODES:
            raise ValueError(f"keys must be one of {KEY_MODES}, got {self.keys!r}")


@register_method("lilora", "LiLoRA: shared A and B0, per-task P_t Q_t and gate, stability loss, task selector")
class LiLoRAMethod(KeyedMethod):
    adapter_defaults = {"kind": "lilora", "init": "kaiming", "targets": "ffn+projector"}
    Options = LiLoRAOptions
    options: LiLoRAOptions
    grows = True

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        self.keys = TaskKeys(self.options.keys, self.options.align_weight, self.options.key_lr)
        self._anchors: list[torch.Tensor] = []  # A of every layer at the start of the current task

    def _layers(self, model: nn.Module) -> list[LiLoRA]:
        return [layer for _, layer in adapter_layers(model) if isinstance(layer, LiLoRA)]

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        layers = self._layers(model)
        for layer in layers:
            if task.index >= layer.n_tasks:
                layer.add_task()
        self.set_trainable(model)
        self._anchors = [layer.lora_A.detach().clone() for layer in layers] if task.index > 0 else []
        self.keys.start(model)

    def train_task_ids(self, task: Task) -> int:
        return task.index

    def param_groups(self, lr: float) -> list[dict]:
        return self.keys.param_groups()

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        if self._anchors and self.options.stability_weight:
            shared = [layer.lora_A for layer in self._layers(model)]
            ctx.add_loss("stability", self.options.stability_weight * stability_loss(shared, self._anchors))
        self.keys.add_align_loss(model, ctx)

    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        self.keys.end_task(model, run, self.options.stats_batches)
        self._anchors = []

    def eval_task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task: Task, oracle: bool = False
    ) -> int | torch.Tensor | None:
        oracle = oracle or self.options.task_identity == "oracle"
        return self.keys.task_ids(model, batch, task.index, oracle)  # None before any: the newest task


@register_method("lilora-oracle", "LiLoRA as published: the true task id picks B_t at test time")
class OracleLiLoRA(LiLoRAMethod):
    option_defaults = {"task_identity": "oracle"}
