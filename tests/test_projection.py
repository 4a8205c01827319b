"""The fused dropout + down-projection against autograd on the unfused math, and its dropout statistics."""

import pytest
import torch

from branchlora.adapters.projection import DroppedProjection, dropout_mask


def unfused(x, weight, dropped, rows):
    xd = x if dropped is None else torch.where(dropped, 0.0, x)
    return xd @ weight.t(), None if rows is None else x[rows]


@pytest.mark.parametrize("with_mask", [True, False])
@pytest.mark.parametrize("with_rows", [True, False])
@pytest.mark.parametrize("weight_trains", [True, False])  # a frozen A (BranchLoRA's frozen-trunk variant)
def test_values_and_gradients_equal_autograd_on_the_unfused_math(with_mask, with_rows, weight_trains):
    x = torch.randn(10, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 7, dtype=torch.float64, requires_grad=weight_trains)
    dropped = torch.rand(10, 7) < 0.3 if with_mask else None
    rows = torch.tensor([0, 4, 4, 9]) if with_rows else None  # a repeated row: its gradients add up
    got = DroppedProjection.apply(x, weight, dropped, rows)
    expected = unfused(x, weight, dropped, rows)
    outputs = [t for t in got if t is not None]
    grads = [torch.randn_like(t) for t in outputs]
    inputs = [x, weight] if weight_trains else [x]
    ours = torch.autograd.grad(outputs, inputs, grads)
    theirs = torch.autograd.grad([t for t in expected if t is not None], inputs, grads)
    for a, b in zip([*outputs, *ours], [*(t for t in expected if t is not None), *theirs], strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda x, w: DroppedProjection.apply(x, w, dropped, rows)[0], (x, weight))
    if with_rows:  # the routing rows' gradient alone, through h
        assert torch.autograd.gradcheck(lambda x: DroppedProjection.apply(x, weight, dropped, rows)[1], (x,))


def test_under_autocast_the_backward_follows_the_forward_dtype():
    x = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(4, 8, requires_grad=True)
    dropped = torch.rand(6, 8) < 0.2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, _ = DroppedProjection.apply(x, weight, dropped, None)
        z_ref, _ = unfused(x, weight, dropped, None)
    assert z.dtype == z_ref.dtype == torch.bfloat16
    g = torch.randn_like(z)
    ours = torch.autograd.grad(z, [x, weight], g)
    theirs = torch.autograd.grad(z_ref, [x, weight], g)
    for a, b in zip(ours, theirs, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("packed", [True, False])  # the CPU's packed 16-bit draws, the GPU's bernoulli_
def test_dropout_mask_drops_p_and_reports_the_rescale(packed):
    x = torch.empty(400, 500)
    dropped, keep = dropout_mask(x, 0.05, packed)
    assert dropped.shape == x.shape and dropped.dtype == torch.bool
    assert dropped.float().mean().item() == pytest.approx(0.05, abs=0.002)  # 200k draws: sd 0.0005
    assert keep == pytest.approx(1 / 0.95, rel=1e-4)
    assert dropout_mask(x, 0.0) == (None, 1.0)
    assert dropout_mask(torch.empty(3, 5), 0.5)[0].shape == (3, 5)  # a size not divisible by four
