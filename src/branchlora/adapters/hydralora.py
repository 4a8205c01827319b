"""HydraLoRA (NeurIPS 2024): shared A (r x d_in), N heads B_i (d_out x r), per-token dense softmax router.

It is BranchLoRA's asymmetric layer with full-rank branches and dense per-token routing, so it reuses
that math rather than copying it.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from branchlora.adapters.branchlora import BranchLoRA
from branchlora.adapters.config import AdapterConfig


class HydraLoRA(BranchLoRA):
    kind = "hydralora"

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        dense = replace(config, routing="token", top_k=config.n_branches)
        super().__init__(base_layer, dense, branch_rank=config.r)
