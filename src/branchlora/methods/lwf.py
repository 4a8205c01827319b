"""LwF on top of LoRA: distil the model as it was before the task on the new task's inputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from branchlora.batch import model_inputs
from branchlora.methods.base import Method, MethodOptions, StepContext, Task
from branchlora.methods.registry import register_method


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 * KL(teacher || student) of the softened next-token distributions, averaged over mask positions.

    student, teacher: (B, L, V) logits; mask: (B, L) bool of the positions to distil.
    """
    log_p_student = F.log_softmax(student[mask] / temperature, dim=-1)  # (n, V)
    log_p_teacher = F.log_softmax(teacher[mask] / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
    return temperature**2 * kl


@dataclass
class LwFOptions(MethodOptions):
    lwf_alpha: float = field(default=1.0, metadata={"help": "weight of the distillation term"})
    temperature: float = field(default=2.0, metadata={"help": "softmax temperature T"})


@register_method("lwf", "LwF on LoRA: distil the previous model's answers on the new task's inputs")
class LwF(Method):
    Options = LwFOptions
    options: LwFOptions

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        self.teacher: dict[str, torch.Tensor] = {}

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        # The teacher is the model before this task: only the trainable tensors differ, so keep a copy of
        # those and run the shared model with them swapped in (no second model in memory).
        if task.index > 0:
            self.teacher = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        if not self.teacher:
            return
        inputs = {k: v for k, v in model_inputs(ctx.batch).items() if k != "labels"}
        with torch.no_grad():
            teacher = functional_call(model, self.teacher, args=(), kwargs=inputs).logits
        mask = ctx.batch["labels"][:, 1:] != -100  # positions whose next token is an answer token
        student = ctx.outputs.logits[:, :-1]
        loss = distillation_loss(student, teacher[:, :-1], mask, self.options.temperature)
        ctx.add_loss("lwf", self.options.lwf_alpha * loss)
