"""CL-MoE's lifecycle: dual routers (adapters/clmoe.py), a task router per task, and the dynamic momentum
merge of the experts after each task.

After task t (t >= 1), in every wrapped Linear, with theta_i the expert's weights when the task started
and phi_i those it ended with:
    theta_i <- lambda_i theta_i + (1 - lambda_i) phi_i,
    lambda_i = 1 - momentum  if expert i is among task t's top-k experts and not task t-1's (specific to
                             the new task: it takes mostly the new weights),
    lambda_i = momentum      otherwise (shared with the previous task, or unused: mostly the old weights).
The top-k experts of a task are those with the most instance-router weight over its training tokens.
momentum 0.7 and k 2 follow the official code's constants; its merge compares key names that never match
(a no-op as released), and its rule is written for the opposite sets: we follow the paper's stated aim
(new experts absorb the task, the others keep what earlier tasks taught them).  The instance router keeps
its new weights.  At test time the task router is the selector's task (task keys, as BranchLoRA's), or
the true task with `clmoe-oracle`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.adapters import adapter_layers
from branchlora.adapters.clmoe import CLMoE
from branchlora.methods.base import MethodOptions, Task, TaskRun
from branchlora.methods.registry import register_method
from branchlora.methods.task_keys import IDENTITIES, KeyedMethod, TaskKeys


def momentum_weights(new_top: set[int], old_top: set[int], n_experts: int, momentum: float) -> torch.Tensor:
    """(E,) lambda_i: 1 - momentum for the experts specific to the new task, momentum for the rest."""
    return torch.tensor([1 - momentum if i in new_top - old_top else momentum for i in range(n_experts)])


@torch.no_grad()
def merge_experts(layer: CLMoE, start: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> None:
    """Expert i's A rows and B columns <- keep_i * (their values at task start) + (1 - keep_i) * now."""
    old_a, old_b = start
    for i, lam in enumerate(keep.tolist()):
        rows = layer.expert(i)
        layer.lora_A[rows] = lam * old_a[rows] + (1 - lam) * layer.lora_A[rows]
        layer.lora_B[:, rows] = lam * old_b[:, rows] + (1 - lam) * layer.lora_B[:, rows]


@dataclass
class CLMoEOptions(MethodOptions):
    beta: float = field(
        default=0.5, metadata={"help": "weight of the instance router (1 - beta: the task router)", "min": 0, "max": 1}
    )
    momentum: float = field(
        default=0.7, metadata={"help": "share of the old weights an expert keeps, or gives up", "min": 0, "max": 1}
    )
    top_experts: int = field(default=2, metadata={"help": "k: the experts that count as a task's own", "min": 1})
    task_identity: str = field(
        default="select", metadata={"help": "test-time task router: select or oracle", "choices": IDENTITIES}
    )
    stats_batches: int = field(default=0, metadata={"help": "batches of the task-key pass (0: all)", "min": 0})


@register_method("clmoe", "CL-MoE: LoRA experts with instance and task routers, momentum merge between tasks")
class CLMoEMethod(KeyedMethod):
    adapter_defaults = {"kind": "clmoe"}
    Options = CLMoEOptions
    options: CLMoEOptions
    grows = True  # a task router per task

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        if self.adapter.kind != "clmoe":
            raise ValueError(f"method clmoe needs adapter.kind 'clmoe', got {self.adapter.kind!r}")
        if not 1 <= self.options.top_experts <= self.adapter.n_branches:
            raise ValueError(f"top_experts must be in 1..{self.adapter.n_branches}, got {self.options.top_experts}")
        self.keys = TaskKeys("prototype")
        self.top: list[list[int]] = []  # each learned task's top-k experts, per layer (in layer order)
        self._start: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._training: list[CLMoE] = []  # the layers while a task trains (their `usage` is its statistic)

    def _layers(self, model: nn.Module) -> list[CLMoE]:
        return [layer for _, layer in adapter_layers(model) if isinstance(layer, CLMoE)]

    def setup(self, model: nn.Module) -> None:
        super().setup(model)
        for layer in self._layers(model):
            layer.beta = self.options.beta

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        layers = self._layers(model)
        for layer in layers:
            while layer.n_tasks <= task.index:
                layer.add_task()
            layer.usage.zero_()
        self.set_trainable(model)
        self._start = [(layer.lora_A.detach().clone(), layer.lora_B.detach().clone()) for layer in layers]
        self._training = layers

    def train_task_ids(self, task: Task) -> int:
        return task.index

    @torch.no_grad()
    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        layers = self._layers(model)
        k = self.options.top_experts
        top = [run.mean(layer.usage).topk(k).indices.tolist() for layer in layers]  # processes agree
        if self.top and self._start:
            for layer, start, new, old in zip(layers, self._start, top, self.top[-1], strict=True):
                keep = momentum_weights(set(new), set(old), layer.n_experts, self.options.momentum)
                merge_experts(layer, start, keep)
        self.top.append(top)
        self._start, self._training = [], []
        self.keys.end_task(model, run, self.options.stats_batches)

    def eval_task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task: Task, oracle: bool = False
    ) -> int | torch.Tensor | None:
        return self.keys.task_ids(model, batch, task.index, oracle or self.options.task_identity == "oracle")

    def state_dict(self) -> dict:
        """The learned tasks' keys and top experts and, inside a task (train.save_every), the usage so far."""
        state = {**self.keys.state_dict(), "top": self.top}
        if self._training:
            state["usage"] = [layer.usage.cpu() for layer in self._training]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.keys.load_state_dict(state)
        self.top = list(state["top"])
        if "usage" in state and self._training:  # resumed inside the task `on_task_start` began
            for layer, usage in zip(self._training, state["usage"], strict=True):
                layer.usage.copy_(usage)


@register_method("clmoe-oracle", "CL-MoE with the true task id choosing the task router")
class OracleCLMoE(CLMoEMethod):
    option_defaults = {"task_identity": "oracle"}
