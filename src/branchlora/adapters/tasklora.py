"""A LoRA block per task: the layer of O-LoRA, SEFE's RegLoRA, HiDe-LLaVA and ProgLoRA.

    y = W0 x + s * sum_t w_t B_t A_t dropout(x),   A_t: (r, d_in), B_t: (d_out, r), s = alpha / r

Block t is added when task t starts (A_t initialised, B_t zero) and trains on that task only; the
blocks of earlier tasks are frozen for good.  The weights w_t are 1 for every block (O-LoRA and
RegLoRA sum their tasks' updates, which is what merging each into W0 would give), or a (B, T) weight
per sample that a subclass supplies (ProgLoRA's allocation, HiDe's top-layer mix).
All blocks run as one matmul on the concatenated A's and one on the concatenated B's.  The blocks that cannot
change during a forward (the frozen ones; all of them where no gradient is recorded, as in generation) are
concatenated once and kept until one of them changes, so a generated token concatenates nothing; a block
that still trains is joined to them per forward (a copy of r (d_in + d_out) entries per block, less than the
second x-sized input gradient a separate projection of it would cost).  The kept copy costs the frozen blocks'
memory once more.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from branchlora.adapters.base import AdapterLayer, flat_addmm, init_down
from branchlora.adapters.config import AdapterConfig

Built = TypeVar("Built")


class TaskLoRA(AdapterLayer):
    kind = "tasklora"
    adapter_param_names = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__(base_layer, config)
        self.lora_A = nn.ParameterList()  # T x (r, d_in)
        self.lora_B = nn.ParameterList()  # T x (d_out, r)
        self._kept: dict[str, tuple[tuple, object]] = {}  # name -> (the blocks' identity, what was built of them)
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

    def fixed_blocks(self) -> int:
        """How many leading blocks cannot change during this forward: every block where autograd records
        nothing, else those that do not train (only the newest trains)."""
        if not torch.is_grad_enabled():
            return self.n_blocks
        trains = [a.requires_grad or b.requires_grad for a, b in zip(self.lora_A, self.lora_B, strict=True)]
        return trains.index(True) if True in trains else self.n_blocks

    def kept(self, name: str, n: int, build: Callable[[list[nn.Parameter], list[nn.Parameter]], Built]) -> Built:
        """build(A's, B's) of blocks 0..n-1, built once and kept until one of them changes: edited in place
        (its version counter moves: an optimizer step, load_state_dict), moved or re-cast (new storage)."""
        a, b = list(self.lora_A)[:n], list(self.lora_B)[:n]
        key = (n, torch.is_inference_mode_enabled(), *((p.data_ptr(), p._version, p.dtype, p.device) for p in a + b))
        hit = self._kept.get(name)
        if hit is None or hit[0] != key:
            with torch.no_grad():  # fixed blocks: nothing to differentiate
                hit = self._kept[name] = (key, build(a, b))
        return hit[1]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of every block side by side: (T * r, d_in) and (d_out, T * r); the fixed blocks' part is kept."""
        n = self.fixed_blocks()
        a, b = list(self.lora_A)[n:], list(self.lora_B)[n:]
        if n:
            fixed_a, fixed_b = self.kept("stacked", n, lambda a, b: (torch.cat(a), torch.cat(b, dim=1)))
            a, b = [fixed_a, *a], [fixed_b, *b]
        return _joined(a, 0), _joined(b, 1)

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w = self.weights(x)
        stacked_a, stacked_b = self.stacked()
        z, _, keep = self.project(x, stacked_a)  # (B, ..., T * r): every block at once
        if w is not None:
            if w.shape != (x.shape[0], self.n_blocks):
                raise ValueError(f"block weights {tuple(w.shape)} do not fit B={x.shape[0]}, T={self.n_blocks}")
            gates = w.repeat_interleave(self.config.r, dim=-1).to(z.dtype)  # (B, T * r): block t's chunk = w_t
            z = z * gates.view(x.shape[0], *(1,) * (x.dim() - 2), -1)  # broadcast over tokens
        return flat_addmm(out, z, stacked_b, self.scale * keep)

    def delta_weight(self) -> torch.Tensor:
        """The summed update s * sum_t B_t A_t: (d_out, d_in)."""
        stacked_a, stacked_b = self.stacked()
        return self.scale * stacked_b @ stacked_a

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, blocks={self.n_blocks}"


def _joined(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The parts concatenated along `dim`; a single part as it is (torch.cat would copy it)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)
