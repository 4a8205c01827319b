"""What every adapter layer shares: the frozen base Linear, the input dropout, the routing context."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from branchlora.adapters.config import AdapterConfig
from branchlora.adapters.projection import project

ADAPTER_DTYPE = torch.float32  # every trainable tensor, whatever the base's dtype


@dataclass
class RoutingContext:
    """Per-forward information shared by every layer of one model (set by `routing_context`).

    task_ids: which task router each sample uses (int for the whole batch, or a (B,) tensor).
    attention_mask: (B, L) mask of the model input; routed layers use it to skip padding.
    reuse: when True, routed layers compute their routing once (at prefill) and reuse it for every
        later forward inside the context, as KV-cached generation needs.
    allocation: (B, T) per-sample weights over task blocks, computed once per forward by a model-level
        allocator (ProgLoRA) and read by every layer; cleared when a context opens.
    first_rows: (attention_mask, (B, L), rows): the routing-token positions the first routed layer found,
        reused by every later layer that sees the same mask and shape; cleared when a context opens.
    rows: computes (N,) the sample of each row of a layer input whose rows are not samples (Qwen-VL's
        projector sees every image's merged patches as one sequence, LLaVA-NeXT's every crop); called only
        by the layers that need it, as it reads sizes on the host.
    """

    task_ids: int | torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    reuse: bool = False
    allocation: torch.Tensor | None = None
    first_rows: tuple[torch.Tensor | None, tuple[int, int], torch.Tensor] | None = None
    rows: Callable[[], torch.Tensor | None] | None = None


def init_down(weight: torch.Tensor, init: str) -> None:
    """Init a down-projection (A): N(0, 0.01^2) as in CoIN's MoELoRA, or PEFT's Kaiming-uniform."""
    if init == "gaussian":
        nn.init.normal_(weight, std=0.01)
    else:
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))


class AdapterLayer(nn.Module):
    """A frozen `nn.Linear` plus a low-rank update; subclasses hold the math in `add_delta`.

    `adapter_param_names` names the adapter's own parameters (as PEFT does), so that generic code
    (freeze, count, save, load) can act on any adapter without knowing which one it is.
    """

    kind: str = ""
    adapter_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{self.kind} wraps nn.Linear modules, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.config = config
        self.scale = config.scale
        self.context = RoutingContext()

    def _factory(self) -> dict:
        """Device and dtype of new adapter parameters: the base weight's device, and float32 for a half-precision
        base (as PEFT's autocast_adapter_dtype: AdamW on bf16 / fp16 weights loses small updates)."""
        return {"device": self.base_layer.weight.device, "dtype": self.adapter_dtype}

    @property
    def adapter_dtype(self) -> torch.dtype:
        """float32, or the base's dtype where wider (a float64 layer, as the reference tests build)."""
        return torch.promote_types(self.base_layer.weight.dtype, ADAPTER_DTYPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)  # the frozen weight as it is: under autocast a bf16 weight is not re-cast
        # Under autocast the adapter's matmuls run in its dtype; outside, x meets the float32 adapter of a half
        # base in float32 (a float64 layer stays float64), and `add_delta` writes into `out` in out's dtype.
        if torch.is_autocast_enabled(x.device.type):
            return self.add_delta(out, x)
        return self.add_delta(out, x.to(self.adapter_dtype))

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Return out + the adapter's update for input x, written into `out` in place where possible.

        `out` is the fresh base output; adding into it saves allocating and writing a second
        (tokens, d_out) tensor, the largest memory traffic of the adapter path on a CPU.
        """
        raise NotImplementedError

    def project(self, x: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor | None = None):
        """(dropout(x) @ weight^T, x's flat token rows `rows` undropped or None, dropout's rescale 1 / (1 - p)).

        The rescale is returned, not applied, so that each adapter folds it into the scale of its update.
        """
        return project(x, weight, self.config.dropout if self.training else 0.0, rows)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The adapter's own parameters by name (the base layer excluded)."""
        return {name: p for name, p in self.named_parameters() if name.split(".")[0] in self.adapter_param_names}

    def mark_trainable(self) -> None:
        """Make the adapter trainable, honouring whatever the adapter keeps frozen."""
        for p in self.adapter_parameters().values():
            p.requires_grad_(True)

    def partly_frozen(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """(parameter, (n,) bool mask of its frozen rows) for each trainable parameter whose masked rows do
        not train (BranchLoRA's frozen branches, which share one tensor with the branches that do)."""
        return []

    def structure(self) -> dict:
        """Shapes a saved file must reproduce before its tensors can load (grown routers, branches)."""
        return {}

    def restructure(self, structure: dict) -> None:
        """Grow to the saved `structure` (inverse of `structure`)."""

    def delta_weight(self) -> torch.Tensor:
        """The dense (d_out, d_in) update, for merging into W0; only input-independent adapters have one."""
        raise NotImplementedError(f"{self.kind} routes per input and has no single mergeable weight")

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, r={self.config.r}, s={self.scale:g}"


def flat_addmm(out: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """out + scale * z @ weight.T, accumulated into `out` in place (no delta tensor, no new output).

    The in-place op acts on `out` itself, never on a reshaped view of it: autograd would otherwise
    record a CopySlices node that clones the whole output gradient in the backward pass.
    """
    z, weight = z.to(out.dtype), weight.to(out.dtype)  # autocast does not cast in-place ops
    if out.dim() == 2:
        return out.addmm_(z, weight.t(), alpha=scale)  # (T, d_out)
    if out.dim() == 3:
        return out.baddbmm_(z, weight.t().expand(out.shape[0], -1, -1), alpha=scale)  # (B, L, d_out)
    d_out = out.shape[-1]
    fused = torch.addmm(out.reshape(-1, d_out), z.reshape(-1, z.shape[-1]), weight.t(), alpha=scale)
    return fused.view(out.shape)
