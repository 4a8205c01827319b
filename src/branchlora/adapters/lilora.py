"""LiLoRA (LoRA in LoRA): a shared A, a shared B0, and per task a low-rank correction P_t Q_t behind a gate.

    B_t = sigmoid(f_t) B0 + (1 - sigmoid(f_t)) P_t Q_t          (d_out, r)
    y   = W0 x + s * B_t A dropout(x),    s = alpha / r

A: (r, d_in), shared and trained on every task.  B0: (d_out, r), trained on the first task only.
P_t: (d_out, s_r), Q_t: (s_r, r), f_t: a scalar gate, trained on task t only, then frozen.
Init: A and Q_t Kaiming-uniform(a = sqrt 5), B0 and P_t zero, f_t ~ N(0, 1).
Each sample uses the B_t of its task (the context's task ids; the newest when none is given), so a
task's update s * B_t A is one dense matrix that can be folded into W0 (`delta_weight`).  When the routing
context asks for reuse (generation), the B_t of the prefill serve every generated token: they are built
once per generate call, not per token.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from branchlora.adapters.base import AdapterLayer, flat_addmm, init_down
from branchlora.adapters.config import AdapterConfig


class LiLoRA(AdapterLayer):
    kind = "lilora"
    adapter_param_names = ("lora_A", "lora_B0", "lora_P", "lora_Q", "gates")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        f = self._factory()
        self.sub_rank = config.sub_rank
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, **f))  # (r, d_in)
        init_down(self.lora_A, config.init)
        self.lora_B0 = nn.Parameter(torch.zeros(self.out_features, config.r, **f))  # (d_out, r)
        self.lora_P = nn.ParameterList()  # T x (d_out, s_r)
        self.lora_Q = nn.ParameterList()  # T x (s_r, r)
        self.gates = nn.ParameterList()  # T x (1,): f_t
        self._cached_route: torch.Tensor | None = None  # B_t of the prefill, kept for KV-cached generation
        self.add_task()

    @property
    def n_tasks(self) -> int:
        return len(self.gates)

    def add_task(self) -> None:
        """P_t, Q_t and f_t of a new task; those of earlier tasks freeze, and so does B0."""
        f = self._factory()
        q = torch.empty(self.sub_rank, self.config.r, **f)
        nn.init.kaiming_uniform_(q, a=math.sqrt(5))
        gate = torch.randn(1, dtype=f["dtype"]).to(f["device"])
        self.lora_P.append(nn.Parameter(torch.zeros(self.out_features, self.sub_rank, **f)))
        self.lora_Q.append(nn.Parameter(q))
        self.gates.append(nn.Parameter(gate))
        self.mark_trainable()

    def mark_trainable(self) -> None:
        """A trains on every task, B0 on the first only, P, Q and f of the newest task only."""
        self.lora_A.requires_grad_(True)
        self.lora_B0.requires_grad_(self.n_tasks == 1)
        for i in range(self.n_tasks):
            for p in (self.lora_P[i], self.lora_Q[i], self.gates[i]):
                p.requires_grad_(i == self.n_tasks - 1)

    def structure(self) -> dict:
        return {"n_tasks": self.n_tasks}

    def restructure(self, structure: dict) -> None:
        while self.n_tasks < structure["n_tasks"]:
            self.add_task()

    def task_b(self, t: int) -> torch.Tensor:
        """B_t = sigmoid(f_t) B0 + (1 - sigmoid(f_t)) P_t Q_t: (d_out, r)."""
        if not 0 <= t < self.n_tasks:
            raise IndexError(f"task {t} does not exist: this layer holds {self.n_tasks} task(s)")
        g = torch.sigmoid(self.gates[t])
        return g * self.lora_B0 + (1 - g) * (self.lora_P[t] @ self.lora_Q[t])

    def _task(self) -> int | torch.Tensor:
        task_ids = self.context.task_ids
        return self.n_tasks - 1 if task_ids is None else task_ids

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        b = self._route(x)  # (d_out, r) for the whole batch, or (N, d_out, r): row n's B_t
        if b.dim() == 2:
            z, _, keep = self.project(x, self.lora_A)  # (..., r)
            return flat_addmm(out, z, b, self.scale * keep)
        if x.dim() == 2:  # a bare (N, d_in) input: one-token sequences
            return self._per_sample(out.unsqueeze(1), x.unsqueeze(1), b).squeeze(1)
        return self._per_sample(out, x, b)

    def _route(self, x: torch.Tensor) -> torch.Tensor:
        """B_t of the context's task, or of each row's task; built at the first forward of a context that
        asks for reuse and kept for the later ones (the decoding steps)."""
        if self.context.reuse and self._cached_route is not None:
            return self._cached_route
        task = self._task()
        if isinstance(task, int):
            b = self.task_b(task)  # (d_out, r)
        else:
            if x.shape[0] != task.shape[0]:  # rows are not samples (a projector's input of Qwen's merged
                rows = self.context.rows and self.context.rows()  # patches or crops): each row takes its
                if rows is None or rows.shape[0] != x.shape[0]:  # sample's task
                    raise ValueError(f"{x.shape[0]} input rows, {task.shape[0]} task ids and no row-to-sample map")
                task = task.to(rows.device)[rows]
            tasks, which = task.unique(return_inverse=True)  # a few distinct tasks, never a loop over samples
            b = torch.stack([self.task_b(t) for t in tasks.tolist()])[which.to(x.device)]  # (N, d_out, r)
        if self.context.reuse:
            self._cached_route = b
        return b

    def _per_sample(self, out: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, L, d) inputs, each sample with its own B_t: b (B, d_out, r)."""
        z, _, keep = self.project(x, self.lora_A)  # (B, L, r)
        return out.baddbmm_(z.to(out.dtype), b.transpose(1, 2).to(out.dtype), alpha=self.scale * keep)

    def delta_weight(self) -> torch.Tensor:
        """s * B_t A for the context's task (an int) or the newest one: (d_out, d_in)."""
        task = self._task()
        if not isinstance(task, int):
            raise ValueError("merging folds one task into W0: give a single task id, not one per sample")
        return self.scale * self.task_b(task) @ self.lora_A

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, s_r={self.sub_rank}, tasks={self.n_tasks}"
