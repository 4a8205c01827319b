"""HiDe-LLaVA's lifecycle: a LoRA block per task in every wrapped Linear, task anchors, and at test time
the top layer's blocks mixed by the sample's similarity to the anchors, the other layers' blocks fused.

    w = softmax_i( (cos(e_img, a_img^i) + cos(e_txt, a_txt^i)) / 2 / tau ),   tau = 0.1 (official code)

Anchors are the tasks' prototype image and text embeddings (the project's selector embeddings: the
vision tower's mean patch feature and the instruction's mean token embedding; HiDe uses CLIP's image and
text encoders, which a LLaVA checkpoint does not carry in full).  The math is in adapters/hide.py.
Decisions where the code and paper leave room: the softmax spans the learned tasks only (the official
code also gives untrained slots a share); `hide-oracle` serves each sample with its true task's expert.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.adapters import inject_adapters
from branchlora.adapters.hide import FUSIONS
from branchlora.methods.base import MethodOptions, Task, TaskRun
from branchlora.methods.blocks import PerTaskLoRA
from branchlora.methods.registry import register_method
from branchlora.methods.task_keys import IDENTITIES, KeyedMethod, TaskKeys

LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.")


def top_layer(names: list[str]) -> list[str]:
    """The names among `names` that sit in the highest-numbered decoder layer (`...layers.<i>....`)."""
    index = {name: int(m.group(1)) for name in names if (m := LAYER_INDEX.search(name))}
    if not index:
        raise ValueError(
            f"HiDe expands the top decoder layer, but no target sits in a '.layers.<i>.' module: {names[:4]}"
        )
    top = max(index.values())
    return [name for name, i in index.items() if i == top]


@dataclass
class HiDeOptions(MethodOptions):
    temperature: float = field(default=0.1, metadata={"help": "tau of the softmax over task similarities", "above": 0})
    fusion: str = field(
        default="factors", metadata={"help": "lower layers at test: factors (official) or updates", "choices": FUSIONS}
    )
    task_identity: str = field(
        default="select", metadata={"help": "test-time expert: select (anchors) or oracle", "choices": IDENTITIES}
    )
    stats_batches: int = field(default=0, metadata={"help": "batches of the anchor pass (0: all)", "min": 0})


@register_method("hide", "HiDe-LLaVA: a LoRA per task; top layer mixed by task anchors, lower layers fused")
class HiDe(PerTaskLoRA, KeyedMethod):
    adapter_defaults = {"kind": "hide"}  # A ~ N(0, 0.01^2), B zero, as the official code
    Options = HiDeOptions
    options: HiDeOptions

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        if self.adapter.kind != "hide":
            raise ValueError(f"method hide needs adapter.kind 'hide', got {self.adapter.kind!r}")
        self.keys = TaskKeys("prototype")

    def setup(self, model: nn.Module) -> None:
        names = inject_adapters(model, self.adapter)
        top = set(top_layer(names))
        for name in names:
            layer = model.get_submodule(name)
            layer.top, layer.fusion = name in top, self.options.fusion
        self.set_trainable(model)

    def train_task_ids(self, task: Task) -> int:
        return task.index

    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        self.keys.end_task(model, run, self.options.stats_batches)

    def eval_task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task: Task, oracle: bool = False
    ) -> int | torch.Tensor | None:
        """(B, T) weights over the learned tasks' top-layer experts, or the true task with the oracle."""
        oracle = oracle or self.options.task_identity == "oracle"
        if oracle or not len(self.keys):  # the keys' own rule: the true (or newest learned) task, None before any
            return self.keys.task_ids(model, batch, task.index, oracle=True)
        similarity = self.keys.similarity(model, batch)  # (B, T): cos_img + cos_txt
        return torch.softmax(similarity / 2 / self.options.temperature, dim=-1)


@register_method("hide-oracle", "HiDe-LLaVA with the true task id choosing the top layer's expert")
class OracleHiDe(HiDe):
    option_defaults = {"task_identity": "oracle"}
