"""What the adapters ask of a device beyond arithmetic: host syncs, matmuls left in float32, and accuracy.

`audit_step` watches every aten op of one training forward + backward through a TorchDispatchMode, on
any device, so the same audit runs in the test suite on a CPU and in `branchlora bench --device cuda`.
`check_branchlora` compares BranchLoRA on the bench's device and dtype with a float64 CPU copy.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from branchlora.adapters import AdapterConfig, BranchLoRA, inject_adapters, routing_context
from branchlora.bench.ops import OpAudit
from branchlora.bench.step import SEVEN, build_stack


def audit_step(method: str, device: torch.device, sizes) -> dict:
    """One training forward + backward of a small LLaMA stack under bf16 autocast (`train.mixed_precision=bf16`).

    Returns {"host_syncs": {op: count}, "float32_matmul_share": share of matmul FLOPs run in float32}.
    Method "frozen" (no adapter, the embedding trains) is the baseline: the syncs the base model makes itself.
    """
    model = build_stack(256, 688, 2, device, torch.float32)
    if method == "frozen":
        model.get_input_embeddings().weight.requires_grad_(True)
    else:
        kw = {"r": sizes.r, "alpha": 2 * sizes.r, "n_branches": sizes.n, "top_k": sizes.k, "targets": SEVEN}
        inject_adapters(model, AdapterConfig(kind=method, **kw))
    ids = torch.randint(2, 1024, (2, 64), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)

    def step() -> None:
        with routing_context(model, task_ids=0, attention_mask=mask), torch.autocast(device.type, torch.bfloat16):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()

    step()  # warm-up: lazy initialisation is not the step's
    with OpAudit() as audit:
        step()
    total = sum(audit.matmul_flops.values())
    return {"host_syncs": dict(audit.syncs), "float32_matmul_share": audit.matmul_flops["float32"] / total}


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """||got - reference|| / ||reference||, in float64 on the CPU."""
    got, reference = got.detach().double().cpu(), reference.detach().double().cpu()
    return float((got - reference).norm() / reference.norm())


def check_branchlora(device: torch.device, dtype: torch.dtype) -> dict:
    """BranchLoRA (first-token routing, left padding, two task routers) on `device`/`dtype` against float64
    on the CPU: the relative error of the output and of every gradient (input, A, branches, router).

    As a run holds it: the frozen base in `dtype`, the adapter in float32, under autocast to `dtype` when that
    is a half precision."""
    torch.manual_seed(0)
    reference = BranchLoRA(nn.Linear(512, 384), AdapterConfig(r=64, n_branches=8, top_k=2, dropout=0.0)).double()
    reference.add_router()
    with torch.no_grad():
        for b in reference.lora_B:
            b.normal_(std=0.02)
    layer = copy.deepcopy(reference).to(device, torch.float32)
    layer.base_layer.to(dtype)
    half = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    x = torch.randn(4, 32, 512, dtype=torch.float64)
    mask = torch.ones(4, 32, dtype=torch.long)
    mask[0, :5] = 0
    grad = torch.randn(4, 32, 384, dtype=torch.float64)
    results, routes = {}, {}
    for name, module, amp in (("reference", reference, contextlib.nullcontext()), ("device", layer, half)):
        factory = {"device": module.base_layer.weight.device, "dtype": module.base_layer.weight.dtype}
        xi = x.to(**factory, copy=True).requires_grad_(True)
        with routing_context(nn.Sequential(module), task_ids=1, attention_mask=mask.to(factory["device"])), amp:
            out = module(xi)
        out.backward(grad.to(**factory))
        with amp:
            routes[name] = module.route(module.routing_input(xi.detach())).cpu() > 0  # the chosen branches
        results[name] = {
            "out": out,
            "grad_x": xi.grad,
            "grad_A": module.lora_A.grad,
            "grad_B": module.lora_B.grad,
            "grad_router": module.routers[1].grad,
        }
    errors = {key: relative_error(results["device"][key], results["reference"][key]) for key in results["reference"]}
    return {**errors, "routing_agrees": bool(torch.equal(routes["device"], routes["reference"]))}
