"""CL-MoE's dual-router mixture of LoRA experts (Huai et al., CVPR 2025).

    g   = beta * softmax(W_r x) + (1 - beta) * softmax(g_t)          (..., E)
    y   = W0 x + s * sum_i g_i B_i A_i dropout(x),   experts of rank r/E, s = alpha / r

softmax(W_r x) is the instance-level router (per token, shared by all tasks, MoELoRA's); g_t is the
task-level router of task t: E logits per layer, trained on its task, then frozen.  t is the context's
task id: the task in training, or at test time the one the method's selector (or the oracle) names.
While training, each layer sums its instance-router weights per expert (`usage`), the statistic the
method's momentum merge reads at task end (methods/clmoe.py).
"""

from __future__ import annotations

import torch
from torch import nn

from branchlora.adapters.config import AdapterConfig
from branchlora.adapters.moelora import MoELoRA


class CLMoE(MoELoRA):
    kind = "clmoe"
    adapter_param_names = ("lora_A", "lora_B", "router", "task_logits")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        self.beta = 0.5  # set by the method from its options
        self.task_logits = nn.ParameterList()  # T x (E,)
        self.register_buffer("usage", torch.zeros(self.n_experts, device=self._factory()["device"]), persistent=False)
        self.add_task()

    @property
    def n_tasks(self) -> int:
        return len(self.task_logits)

    def add_task(self) -> None:
        """A task router for a new task (zero logits: every expert alike); older ones freeze."""
        for old in self.task_logits:
            old.requires_grad_(False)
        self.task_logits.append(nn.Parameter(torch.zeros(self.n_experts, **self._factory())))

    def mark_trainable(self) -> None:
        """Experts and the instance router train on every task; of the task routers, the newest."""
        super().mark_trainable()
        for old in list(self.task_logits)[:-1]:
            old.requires_grad_(False)

    def structure(self) -> dict:
        return {"n_tasks": self.n_tasks}

    def restructure(self, structure: dict) -> None:
        while self.n_tasks < structure["n_tasks"]:
            self.add_task()
        self.mark_trainable()

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        instance = torch.softmax(self.router(x), dim=-1)  # (..., E)
        if self.training:
            self.usage += instance.detach().reshape(-1, self.n_experts).sum(0).to(self.usage.dtype)
        task = self.context.task_ids
        task = self.n_tasks - 1 if task is None else task
        if isinstance(task, int):
            per_task = torch.softmax(self.task_logits[task], dim=-1)  # (E,)
        else:  # (B,) one task per sample
            per_task = torch.softmax(torch.stack(tuple(self.task_logits))[task.to(x.device)], dim=-1)
            per_task = per_task.view(x.shape[0], *(1,) * (x.dim() - 2), -1)  # (B, 1.., E)
        return self.beta * instance + (1 - self.beta) * per_task.to(instance.dtype)

    def expert(self, i: int) -> slice:
        """Expert i's rows of A, and columns of B."""
        return slice(i * self.expert_rank, (i + 1) * self.expert_rank)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, E={self.n_experts}, tasks={self.n_tasks}, beta={self.beta:g}"
