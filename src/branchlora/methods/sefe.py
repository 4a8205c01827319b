"""SEFE's RegLoRA (Chen et al., ICML 2025): after each task, the elements of its weight update that mattered
most are recorded, and later tasks' updates are held at zero there.

Per task t a fresh LoRA block trains and then counts as merged into W0 (the blocks are summed: the same
function as merging, kept separate so checkpoints stay adapter-only).  At task end, in every wrapped
Linear, the top p of the entries of |B_t A_t| (unscaled) join the layer's mask M (a union over tasks).
In later tasks
    L = L_task + lambda * mean_layers mean_{(i, j) in M} |(B_new A_new)_ij|,
an L1 pull of the new update towards zero at the positions earlier tasks rely on.  Defaults (official
code): p = 2 %, lambda = 2500.  Masks are per Linear and kept as flat int32 indices (half of int64's memory:
~0.9B indices by task 8 at 7B), on the device of the layer they index, read with index_select (which takes
int32 as is: no int64 copy per step); a position recorded by two tasks counts once (the official code
concatenates the lists and would count it twice).
SEFE's other half, answer-style diversification, rewrites training answers with a multimodal LLM and
is not offered here (see docs/methods.md, the method notes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.adapters import TaskLoRA, adapter_layers
from branchlora.methods.base import MethodOptions, StepContext, Task, TaskRun
from branchlora.methods.blocks import PerTaskLoRA
from branchlora.methods.registry import register_method


def key_elements(delta: torch.Tensor, fraction: float) -> torch.Tensor:
    """Flat indices of the int(fraction * numel) largest entries of |delta| (at least one)."""
    k = max(1, int(fraction * delta.numel()))
    return delta.detach().abs().flatten().topk(k).indices


def masked_l1(delta: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of |delta| over the flat positions `mask` (int32 or int64)."""
    return delta.flatten().index_select(0, mask).abs().mean()


def index_dtype(numel: int) -> torch.dtype:
    """int32 for flat indices into a tensor of `numel` entries, int64 where int32 cannot reach them all."""
    return torch.int32 if numel <= torch.iinfo(torch.int32).max else torch.int64


@dataclass
class SEFEOptions(MethodOptions):
    reg_weight: float = field(default=2500.0, metadata={"help": "lambda of RegLoRA's masked L1 loss", "min": 0})
    top_fraction: float = field(
        default=0.02, metadata={"help": "p: share of the largest entries of B A kept per task", "above": 0, "max": 1}
    )


@register_method("sefe", "SEFE's RegLoRA: a LoRA per task, merged; later updates held at earlier key elements")
class RegLoRA(PerTaskLoRA):
    Options = SEFEOptions
    options: SEFEOptions

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        self.masks: dict[str, torch.Tensor] = {}  # wrapped Linear's name -> flat indices into (d_out, d_in)

    def _named_blocks(self, model: nn.Module) -> list[tuple[str, TaskLoRA]]:
        return [(name, layer) for name, layer in adapter_layers(model) if isinstance(layer, TaskLoRA)]

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        if not self.masks or not self.options.reg_weight:
            return
        terms = []
        for name, layer in self._named_blocks(model):
            mask = self._mask(name, layer.lora_A[-1].device)
            terms.append(masked_l1(layer.lora_B[-1] @ layer.lora_A[-1], mask))
        ctx.add_loss("reg", self.options.reg_weight * torch.stack(terms).mean())

    @torch.no_grad()
    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        for name, layer in self._named_blocks(model):
            new = key_elements(layer.lora_B[-1].float() @ layer.lora_A[-1].float(), self.options.top_fraction)
            old = self.masks.get(name)
            union = new if old is None else torch.cat([old.to(new), new])
            self.masks[name] = union.unique().to(index_dtype(layer.in_features * layer.out_features))

    def _mask(self, name: str, device: torch.device) -> torch.Tensor:
        """The layer's mask on `device`, moved there once (a resumed run reads its masks on the CPU)."""
        if self.masks[name].device != device:
            self.masks[name] = self.masks[name].to(device)
        return self.masks[name]

    def state_dict(self) -> dict:
        return {"masks": {name: mask.cpu() for name, mask in self.masks.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.masks = dict(state["masks"])
