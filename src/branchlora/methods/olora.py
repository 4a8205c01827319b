"""O-LoRA (Wang et al., Findings of EMNLP 2023): a LoRA block per task, learned in a subspace orthogonal
to the earlier tasks' ones; every block is summed at test time, so no task id is needed.

    L = L_task + lambda_1 * sum_layers sum_{i<t} |A_i A_t^T|_1 + lambda_2 * sum_layers (|A_t|_F + |B_t|_F)

A_i: (r, d_in) the frozen A of task i, A_t the one in training; |.|_1 sums absolute entries, |.|_F is
the Frobenius norm (not squared), as in the official code.  Defaults lambda_1 0.5, lambda_2 0 (its scripts).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.methods.base import MethodOptions, StepContext
from branchlora.methods.blocks import PerTaskLoRA
from branchlora.methods.registry import register_method


def orthogonality_loss(old: list[torch.Tensor], new: torch.Tensor) -> torch.Tensor:
    """sum_i |A_i A_new^T|_1: zero when the new rows span a subspace orthogonal to every earlier one."""
    return (torch.cat(old) @ new.t()).abs().sum()


@dataclass
class OLoRAOptions(MethodOptions):
    orth_weight: float = field(default=0.5, metadata={"help": "lambda_1 of the orthogonality loss"})
    l2_weight: float = field(default=0.0, metadata={"help": "lambda_2 of the norm of the new block"})


@register_method("olora", "O-LoRA: a LoRA block per task, orthogonal to earlier ones' A, all summed at test")
class OLoRA(PerTaskLoRA):
    Options = OLoRAOptions
    options: OLoRAOptions

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        layers = self.blocks(model)
        if self.options.orth_weight and ctx.task.index > 0:
            orth = torch.stack([orthogonality_loss(list(m.lora_A)[:-1], m.lora_A[-1]) for m in layers]).sum()
            ctx.add_loss("orthogonal", self.options.orth_weight * orth)
        if self.options.l2_weight:
            norms = [m.lora_A[-1].norm() + m.lora_B[-1].norm() for m in layers]
            ctx.add_loss("l2", self.options.l2_weight * torch.stack(norms).sum())
