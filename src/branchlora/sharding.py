"""Sharding the frozen base over processes (FSDP2's `fully_shard`), with the adapters whole on every process.

Continual methods change their parameters between tasks: a router per task, branches that grow, parts that
freeze. FSDP manages the parameters it wrapped once, so only what never trains is sharded: every decoder and
vision-encoder layer's frozen weights, then the rest of the model. Adapter and projector parameters, and any a
method adds later, stay plain tensors on every process; `average_gradients` reduces their gradients as DDP
does, once per optimizer step. Evaluation and task-end passes run `gathered`: the frozen weights unsharded
for the whole pass, so generation issues no collective per token and processes may run different numbers of
forwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from transformers import PreTrainedModel

from branchlora.adapters import adapter_layers
from branchlora.models.parts import projector

LAYER = re.compile(r"(.*\.)?layers\.\d+")  # a decoder or vision-encoder layer (LLaMA, Qwen, CLIP, SigLIP, ...)


def is_sharded(model: nn.Module) -> bool:
    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_frozen(model: nn.Module) -> None:
    """Shard every frozen parameter of `model` over the processes; nothing that trains now, nor any adapter or
    projector parameter, is sharded. Idempotent: a sharded model is left as it is.

    Units: each decoder / vision-encoder layer, then every other module that holds frozen parameters of its
    own (embeddings, norms, the output layer), innermost first. transformers' own model classes are never
    units: sharding changes a module's class, and transformers finds which outputs a model records by its
    class (the vision tower's hidden states). Modules the selector calls outside the model's forward (the
    vision tower, the input embeddings) so gather their own weights. Input embeddings tied to the output
    layer stay whole: one parameter cannot sit in two units."""
    if is_sharded(model):
        return
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("train.shard_frozen needs several processes: launch with torchrun or accelerate launch")
    keep = {p for p in model.parameters() if p.requires_grad}
    keep |= {p for _, layer in adapter_layers(model) for p in layer.adapter_parameters().values()}
    keep |= set(proj.parameters()) if (proj := projector(model)) is not None else set()
    embeddings, output = model.get_input_embeddings(), model.get_output_embeddings()
    if output is not None and output.weight is embeddings.weight:
        keep.add(embeddings.weight)
    units, inside = [], []  # `inside`: names of layer units, whose submodules they cover
    for name, module in model.named_modules():
        if any(name.startswith(f"{prefix}.") for prefix in inside):
            continue
        if LAYER.fullmatch(name):
            units.append(module)
            inside.append(name)
        elif not isinstance(module, PreTrainedModel) and any(p not in keep for p in module.parameters(recurse=False)):
            units.append(module)
    for unit in reversed(units):  # a child before the parent that holds it
        fully_shard(unit, ignored_params=keep)


def check_replicated(model: nn.Module) -> None:
    """Every parameter that trains must be whole on each process (`average_gradients` reduces them)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad and isinstance(p, DTensor)]
    if names:
        raise ValueError(f"train.shard_frozen: {names[:3]} train but were sharded as frozen when the run began")


@torch.no_grad()
def process_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the processes (itself on one process): statistics that must be the same on
    every process and equal to one process's over all the data, e.g. a prototype's sum of embeddings."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    total = tensor.clone()
    dist.all_reduce(total)
    return total


def average_gradients(params: list[nn.Parameter]) -> None:
    """Each gradient becomes its mean over the processes, in one all-reduce; a parameter that got no gradient
    on any process keeps none (as DDP with unused parameters leaves it, so the optimizer skips it)."""
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    flat = torch.cat([*(g.reshape(-1).float() for g in grads), used])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    *chunks, seen = flat.split([p.numel() for p in params] + [len(params)])
    for p, chunk, on_any in zip(params, chunks, seen.tolist(), strict=True):
        p.grad = chunk.view_as(p).to(p.dtype) if on_any > 0 else None


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """The frozen weights unsharded for the whole block (a no-op on a model that is not sharded)."""
    shards = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in shards:
        module.unshard()
        module.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for module in shards:
            module.reshard()
            module.set_reshard_after_forward(True)
