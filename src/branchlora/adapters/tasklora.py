"""A LoRA block per task: the layer of O-LoRA, SEFE's RegLoRA, HiDe-LLaVA and ProgLoRA.

    y = W0 x + s * sum_t w_t B_t A_t dropout(x),   A_t: (r, d_in), B_t: (d_out, r), s = alpha / r

Block t is added when task t starts (A_t initialised, B_t zero) and trains on that task only; the
blocks of earlier tasks are frozen for good.  The weights w_t are 1 for every block (O-LoRA and
RegLoRA sum their tasks' updates, which is what merging each into W0 would give), or a (B, T) weight
per sample that a subclass supplies (ProgLoRA's allocation, HiDe's top-layer mix).
All blocks run as one matmul on the concatenated A's and one on the concatenated B's.
"""

from __future__ import annotations

import torch
from torch import nn

from branchlora.adapters.base import AdapterLayer, flat_addmm, init_down
from branchlora.adapters.config import AdapterConfig


class TaskLoRA(AdapterLayer):
    kind = "tasklora"
    adapter_param_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        self.lora_A = nn.ParameterList()  # T x (r, d_in)
        self.lora_B = nn.ParameterList()  # T x (d_out, r)
        self.add_block()

    @property
    def n_blocks(self) -> int:
        return len(self.lora_A)

    def add_block(self) -> None:
        """A fresh block for a new task (A initialised, B zero); earlier blocks freeze for good."""
        f = self._factory()
        a = torch.empty(self.config.r, self.in_features, **f)
        init_down(a, self.config.init)
        for p in (*self.lora_A, *self.lora_B):
            p.requires_grad_(False)
        self.lora_A.append(nn.Parameter(a))
        self.lora_B.append(nn.Parameter(torch.zeros(self.out_features, self.config.r, **f)))

    def mark_trainable(self) -> None:
        """Only the newest block trains."""
        for i, (a, b) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            a.requires_grad_(i == self.n_blocks - 1)
            b.requires_grad_(i == self.n_blocks - 1)

    def structure(self) -> dict:
        return {"n_blocks": self.n_blocks}

    def restructure(self, structure: dict) -> None:
        while self.n_blocks < structure["n_blocks"]:
            self.add_block()
        self.mark_trainable()

    def weights(self, x: torch.Tensor) -> torch.Tensor | None:
        """Per-block weights: None (every block counts once), or (B, T) per sample (subclasses)."""
        return None

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        z, _, keep = self.project(x, torch.cat(tuple(self.lora_A)))  # (B, ..., T * r): every block at once
        if w is not None:
            if w.shape != (x.shape[0], self.n_blocks):
                raise ValueError(f"block weights {tuple(w.shape)} do not fit B={x.shape[0]}, T={self.n_blocks}")
            gates = w.repeat_interleave(self.config.r, dim=-1).to(z.dtype)  # (B, T * r): block t's chunk = w_t
            z = z * gates.view(x.shape[0], *(1,) * (x.dim() - 2), -1)  # broadcast over tokens
        return flat_addmm(out, z, torch.cat(tuple(self.lora_B), dim=1), self.scale * keep)

    def delta_weight(self) -> torch.Tensor:
        """The summed update s * sum_t B_t A_t: (d_out, d_in)."""
        return self.scale * torch.cat(tuple(self.lora_B), dim=1) @ torch.cat(tuple(self.lora_A))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, blocks={self.n_blocks}"
