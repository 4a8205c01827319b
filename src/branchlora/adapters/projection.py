"""The input side every adapter shares: dropout of x and the down-projection z = dropout(x) A^T, fused.

Autograd's graph for `where(mask, 0, x) @ A.T` plus a routing gather `x[rows]` allocates, per call, five
tensors the size of x: the dropped input (saved for dA), the matmul's input gradient, a zero tensor and
an output for the where's backward, and a zero tensor for the gather's backward.  On a CPU each fresh
x-sized tensor costs about as much as the rank-r matmul (page faults on a new allocation), and on a GPU
each is a full pass over memory.  `DroppedProjection` keeps only the boolean mask, recomputes the dropped
input in the backward, and lets that same buffer receive the input gradient: two x-sized tensors per
call, not five.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def dropout_mask(x: torch.Tensor, p: float, packed: bool | None = None) -> tuple[torch.Tensor | None, float]:
    """(boolean mask of dropped entries or None, the rescale 1 / (1 - p) the caller folds into its scale).

    On a GPU, `bernoulli_` writes the mask in one kernel.  On a CPU it draws one float per element serially
    (about 4.5 ns each), so there (`packed`, the default off a GPU) one 64-bit draw yields four 16-bit
    uniforms and p is quantised to a multiple of 1/65536 (0.05 -> 0.050003).
    """
    drop = round(p * 65536)  # dropped values of 65536
    if drop == 0:
        return None, 1.0
    if not (x.device.type == "cpu" if packed is None else packed):
        return torch.empty_like(x, dtype=torch.bool).bernoulli_(p), 1 / (1 - p)
    bits = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
    draws = bits.view(torch.int16)
    draws = draws if draws.numel() == x.numel() else draws[: x.numel()]  # no slice op in the common case
    return draws.view(x.shape) < drop - 32768, 65536 / (65536 - drop)


class DroppedProjection(torch.autograd.Function):
    """(z, h) = (x with `dropped` entries zeroed, times weight^T;  x's flat token rows `rows`, undropped).

    x: (..., d_in), contiguous; weight: (r, d_in); dropped: x's shape, bool, or None; rows: (R,) indices
    into x viewed as (T, d_in), or None (then h is None).  x keeps its shape so that its gradient is a
    fresh tensor, which autograd can then accumulate other gradients of x into in place.  The matmul
    follows autocast in the forward; the backward computes in z's dtype, as autograd would through
    autocast's casts.
    """

    @staticmethod
    def forward(ctx, x, weight, dropped, rows):
        xd = x if dropped is None else x.masked_fill(dropped, 0.0)
        z = xd @ weight.t()  # (..., r)
        ctx.save_for_backward(x, weight, dropped, rows)
        return z, None if rows is None else x.view(-1, x.shape[-1]).index_select(0, rows)

    @staticmethod
    @once_differentiable
    def backward(ctx, dz, dh):
        x, weight, dropped, rows = ctx.saved_tensors
        dx = dweight = xd = None
        d_in, dz = x.shape[-1], dz.reshape(-1, dz.shape[-1])  # (T, r)
        if ctx.needs_input_grad[1]:
            xd = x if dropped is None else x.masked_fill(dropped, 0.0)  # recomputed: only the mask was kept
            dweight = (dz.t() @ xd.view(-1, d_in).to(dz.dtype)).to(weight.dtype)  # (r, d_in)
        if ctx.needs_input_grad[0]:
            reuse = xd is not None and xd is not x and xd.dtype == dz.dtype  # our buffer, no longer needed
            dx = xd if reuse else torch.empty_like(x, dtype=dz.dtype)  # (..., d_in)
            torch.mm(dz, weight.to(dz.dtype), out=dx.view(-1, d_in))
            if dropped is not None:
                dx.masked_fill_(dropped, 0)
            if rows is not None and dh is not None:
                dx.view(-1, d_in).index_add_(0, rows, dh.to(dx.dtype))
        return dx, dweight, None, None


def project(
    x: torch.Tensor, weight: torch.Tensor, p: float, rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """(dropout_p(x) @ weight^T of shape (..., r), x's flat token rows `rows` undropped, 1 / (1 - p))."""
    x = x.contiguous()
    dropped, keep = dropout_mask(x, p)
    z, h = DroppedProjection.apply(x, weight, dropped, rows)
    return z, h, keep
