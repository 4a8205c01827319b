"""Wiring: find target Linears, wrap them in adapters, unwrap, merge, and set the routing context."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from branchlora.adapters.base import AdapterLayer, RoutingContext
from branchlora.adapters.branchlora import BranchLoRA
from branchlora.adapters.clmoe import CLMoE
from branchlora.adapters.config import PRESETS, AdapterConfig
from branchlora.adapters.hide import HiDeLoRA
from branchlora.adapters.hydralora import HydraLoRA
from branchlora.adapters.lilora import LiLoRA
from branchlora.adapters.lora import LoRA
from branchlora.adapters.moelora import MoELoRA
from branchlora.adapters.proglora import ProgLoRA
from branchlora.adapters.tasklora import TaskLoRA
from branchlora.models.family import family_of

ADAPTERS: dict[str, type[AdapterLayer]] = {
    cls.kind: cls for cls in (LoRA, MoELoRA, BranchLoRA, HydraLoRA, ProgLoRA, LiLoRA, TaskLoRA, HiDeLoRA, CLMoE)
}


def _matches(name: str, targets: str | list[str]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def _resolve(model: nn.Module, targets: str | list[str]) -> str | list[str]:
    """A preset as a regex: through the model family's anatomy when it has one, else the generic pattern."""
    if not isinstance(targets, str) or targets not in PRESETS:
        return targets
    family = family_of(model)
    return family.targets(targets) if family is not None else PRESETS[targets]


def find_targets(model: nn.Module, targets: str | list[str]) -> list[str]:
    """Names of the nn.Linear modules that `targets` selects (a preset, a regex, or names / suffixes)."""
    pattern = _resolve(model, targets)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, pattern)]
    if not names:
        raise ValueError(
            f"targets {targets!r} match no nn.Linear module of {type(model).__name__}; "
            f"some Linear names: {[n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:8]}"
        )
    return names


def rank_note(model: nn.Module, names: list[str], r: int) -> str | None:
    """What a rank above a target's width means, or None: that layer's update has rank at most min(d_in, d_out),
    so the rest of r only costs memory.  A note, not a refusal: shape stand-ins of real models (a 64-wide LLaVA
    under a 7B config's r=128) are built this way on purpose."""
    narrowest = min(names, key=lambda n: min(model.get_submodule(n).in_features, model.get_submodule(n).out_features))
    layer = model.get_submodule(narrowest)
    width = min(layer.in_features, layer.out_features)
    if r <= width:
        return None
    return (
        f"adapter.r={r} is more than target {narrowest!r} ({layer.in_features} -> {layer.out_features}) can "
        f"use: its update has rank at most {width}, the rest only costs memory"
    )


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def inject_adapters(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Wrap every target Linear in an adapter of `config.kind`; every layer shares one RoutingContext."""
    if config.kind not in ADAPTERS:
        raise ValueError(f"unknown adapter kind {config.kind!r}; valid kinds: {', '.join(ADAPTERS)}")
    if any(True for _ in adapter_layers(model)):
        raise ValueError("the model already holds adapters: unwrap it first")
    context = RoutingContext()
    names = find_targets(model, config.targets)
    for name in names:
        base = model.get_submodule(name)
        layer = ADAPTERS[config.kind](base, config).train(base.training)  # keep the model's mode
        layer.context = context
        _set_submodule(model, name, layer)
    model.branchlora_adapter_config = config  # read by save_adapters
    return names


def adapter_layers(model: nn.Module) -> Iterator[tuple[str, AdapterLayer]]:
    """(name, layer) for every adapter layer in the model."""
    for name, module in model.named_modules():
        if isinstance(module, AdapterLayer):
            yield name, module


def tunable_count(model: nn.Module) -> int:
    """Parameters that train: those requiring a gradient, less the frozen rows of partly frozen ones."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(
        p[0].numel() * int(mask.sum()) for _, layer in adapter_layers(model) for p, mask in layer.partly_frozen()
    )
    return total - frozen


def unwrap(model: nn.Module) -> nn.Module:
    """Put the original Linear modules back (updates are dropped; use `merge` to keep them)."""
    for name, layer in list(adapter_layers(model)):
        _set_submodule(model, name, layer.base_layer)
    model.__dict__.pop("branchlora_adapter_config", None)
    return model


@torch.no_grad()
def merge(model: nn.Module) -> nn.Module:
    """Fold each adapter's update into W0 and unwrap; only input-independent adapters (LoRA) can."""
    deltas = [(name, layer, layer.delta_weight()) for name, layer in adapter_layers(model)]  # all or none
    for name, layer, delta in deltas:
        layer.base_layer.weight += delta.to(layer.base_layer.weight.dtype)
        _set_submodule(model, name, layer.base_layer)
    model.__dict__.pop("branchlora_adapter_config", None)
    return model


@contextmanager
def routing_context(
    model: nn.Module,
    task_ids: int | torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    reuse: bool = False,
    rows: Callable[[], torch.Tensor | None] | None = None,
) -> Iterator[RoutingContext]:
    """Tell every routed layer which task router to use and where the padding is, for the forwards inside.

    With reuse=True (generation), the routing computed at the first forward (prefill) serves every
    later decoding step, instead of being recomputed from the newest token.  `rows` computes, when a layer
    asks, the sample of each row of a projector input whose rows are not samples (models.family.sample_rows).
    """
    layers = [layer for _, layer in adapter_layers(model)]
    if not layers:
        yield RoutingContext()
        return
    context = layers[0].context
    saved = (context.task_ids, context.attention_mask, context.reuse, context.allocation, context.rows)
    context.task_ids, context.attention_mask, context.reuse, context.rows = task_ids, attention_mask, reuse, rows
    context.allocation = context.first_rows = None  # filled at the first forward inside
    _clear_cached_routes(layers)
    try:
        yield context
    finally:
        context.task_ids, context.attention_mask, context.reuse, context.allocation, context.rows = saved
        context.first_rows = None
        _clear_cached_routes(layers)


def _clear_cached_routes(layers: list[AdapterLayer]) -> None:
    for layer in layers:
        if isinstance(layer, (BranchLoRA, LiLoRA)):
            layer._cached_route = None
