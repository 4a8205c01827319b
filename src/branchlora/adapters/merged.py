"""Per-task merged inference for BranchLoRA with first-token routing.

With routing input "first", a layer's router reads the first non-padding token, which in a causal LM
is BOS: its hidden state is the same for every input, so each task's branch choice (idx, w) is fixed.
Then W_t = W0 + s * (sum_j w_j B_{idx_j}) A folds into one plain Linear per layer, and the selected
task is served at the base model's speed.  `merge_task` records the routing on one forward, swaps
every adapter layer for such a Linear (W0 itself is untouched), and `unmerge_task` swaps them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.adapters.branchlora import BranchLoRA
from branchlora.adapters.inject import _set_submodule, adapter_layers, routing_context


@dataclass
class MergedTask:
    """What `merge_task` took out of the model, so that `unmerge_task` can put it back exactly."""

    task_id: int
    layers: dict[str, BranchLoRA] = field(default_factory=dict)


def _check_mergeable(layers: dict[str, nn.Module]) -> None:
    for name, layer in layers.items():
        if not isinstance(layer, BranchLoRA):
            raise TypeError(f"merge_task folds BranchLoRA layers; {name} is {type(layer).__name__}")
        if layer.routing != "first":
            raise ValueError(
                f"{name} routes on {layer.routing!r}: that choice depends on each input, so no single "
                "weight per task exists; only routing 'first' can be merged"
            )


@torch.no_grad()
def record_routes(model: nn.Module, task_id: int, example_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each BranchLoRA layer's (N,) gates for task `task_id`, recorded on one forward of `example_inputs`
    (keyword inputs, e.g. input_ids, attention_mask, pixel_values); their first tokens fix the routing,
    which must agree across the batch."""
    layers = dict(adapter_layers(model))
    if not layers:
        raise ValueError("the model holds no adapter layers to merge")
    _check_mergeable(layers)
    was_training = model.training
    model.eval()  # no router noise while recording
    mask = example_inputs.get("attention_mask")
    try:
        with routing_context(model, task_ids=task_id, attention_mask=mask, reuse=True):
            model(**example_inputs)
            routes = {name: layer._cached_route for name, layer in layers.items()}
    finally:
        model.train(was_training)
    for name, gates in routes.items():  # (B, N) each; check all before anyone uses one
        if not torch.allclose(gates, gates[:1].expand_as(gates)):
            raise ValueError(f"{name}: the example inputs route differently (their first tokens differ)")
    return {name: gates[0] for name, gates in routes.items()}


@torch.no_grad()
def merge_task(model: nn.Module, task_id: int, example_inputs: dict[str, torch.Tensor]) -> MergedTask:
    """Fold task `task_id`'s routed update into a copy of each W0 and swap it in; see module doc and
    `record_routes` for `example_inputs`."""
    routes = record_routes(model, task_id, example_inputs)
    layers = dict(adapter_layers(model))
    handle = MergedTask(task_id)
    for name, layer in layers.items():
        base = layer.base_layer
        merged = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        merged = merged.to(device=base.weight.device, dtype=base.weight.dtype).requires_grad_(False)
        merged.weight.copy_(base.weight + layer.routed_delta_weight(routes[name]).to(base.weight.dtype))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        _set_submodule(model, name, merged)
        handle.layers[name] = layer
    return handle


def unmerge_task(model: nn.Module, handle: MergedTask) -> None:
    """Put the adapter layers back: the model routes per input again, bit for bit as before."""
    for name, layer in handle.layers.items():
        _set_submodule(model, name, layer)
    handle.layers.clear()
