"""LoRA: y = W0 x + s * B A dropout(x), s = alpha / r."""

from __future__ import annotations

import torch
from torch import nn

from branchlora.adapters.base import AdapterLayer, flat_addmm, init_down
from branchlora.adapters.config import AdapterConfig


class LoRA(AdapterLayer):
    kind = "lora"
    adapter_param_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        f = self._factory()
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, **f))  # (r, d_in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, **f))  # (d_out, r)
        init_down(self.lora_A, config.init)

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z, _, keep = self.project(x, self.lora_A)  # (..., r)
        return flat_addmm(out, z, self.lora_B, self.scale * keep)

    def delta_weight(self) -> torch.Tensor:
        return self.scale * self.lora_B @ self.lora_A  # (d_out, d_in)
