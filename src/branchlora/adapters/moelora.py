"""MoELoRA (CoIN): E experts of rank r/E, a per-token dense softmax router, no top-k.

y = W0 x + s * sum_i softmax_i(W_r x) * B_i A_i dropout(x).  The E experts are stored
concatenated (A: (r, d_in), B: (d_out, r), expert i = its r/E rows / columns), so the sum over experts
is one matmul on a gate-scaled rank-r vector.
"""

from __future__ import annotations

import torch
from torch import nn

from branchlora.adapters.base import AdapterLayer, flat_addmm, init_down
from branchlora.adapters.config import AdapterConfig


class MoELoRA(AdapterLayer):
    kind = "moelora"
    adapter_param_names = ("lora_A", "lora_B", "router")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        f = self._factory()
        self.n_experts = config.n_branches
        self.expert_rank = config.r // config.n_branches
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, **f))  # (E * r/E, d_in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, **f))  # (d_out, E * r/E)
        self.router = nn.Linear(self.in_features, self.n_experts, bias=False, **f)
        init_down(self.lora_A, config.init)

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """(..., E) expert weights of each token: the dense softmax router."""
        return torch.softmax(self.router(x), dim=-1)

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates(x)  # (..., E)
        z, _, keep = self.project(x, self.lora_A)  # (..., E * r/E)
        z = z * gates.repeat_interleave(self.expert_rank, dim=-1)  # expert i's chunk scaled by g_i
        return flat_addmm(out, z, self.lora_B, self.scale * keep)
