"""Save and load adapters: tensors in safetensors, the kind, hyper-parameters and structure in JSON."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from branchlora.adapters.branchlora import BranchLoRA
from branchlora.adapters.config import AdapterConfig
from branchlora.adapters.inject import adapter_layers, inject_adapters
from branchlora.atomic import atomic_path, write_json
from branchlora.files import CheckpointError, check_tensors, read_json, read_tensors, require

WEIGHTS = "adapters.safetensors"
CONFIG = "adapters.json"
FORMAT = "branchlora-adapters/2"
OLD_FORMATS = ("branchlora-adapters/1",)  # 1: BranchLoRA's branches as N separate (d_out, r/N) tensors


def _adapter_state(layer: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in layer.state_dict().items() if not k.startswith("base_layer.")}


def save_adapters(model: nn.Module, directory: str | Path) -> None:
    """Write DIR/adapters.safetensors and DIR/adapters.json, each atomically."""
    config: AdapterConfig | None = getattr(model, "branchlora_adapter_config", None)
    if config is None:
        raise ValueError("the model holds no adapters to save (inject_adapters first)")
    directory = Path(directory)
    tensors, layers = {}, {}
    for name, layer in adapter_layers(model):
        layers[name] = layer.structure()
        for key, value in _adapter_state(layer).items():
            tensors[f"{name}.{key}"] = value.detach().contiguous().cpu()
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(directory / CONFIG, {"format": FORMAT, "adapter": config.to_dict(), "layers": layers})


def read_adapter_config(directory: str | Path) -> tuple[AdapterConfig, dict]:
    """The saved AdapterConfig and per-layer structure; a clear error when DIR holds no adapters."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: {directory} holds no saved adapters")
    data = read_json(path)
    if data.get("format") not in (FORMAT, *OLD_FORMATS):
        raise CheckpointError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
    adapter, layers = require(data, "adapter", dict, path), require(data, "layers", dict, path)
    try:
        return AdapterConfig.from_dict(adapter), layers
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: field 'adapter': {err}") from None


def load_adapters(model: nn.Module, directory: str | Path) -> None:
    """Rebuild exactly what was saved: inject if needed, grow routers / branches, then load tensors."""
    directory = Path(directory)
    config, structure = read_adapter_config(directory)
    current: AdapterConfig | None = getattr(model, "branchlora_adapter_config", None)
    if current is None:
        inject_adapters(model, config)
    elif current.kind != config.kind:
        have = f"holds {config.kind!r} adapters but the model has {current.kind!r} ones"
        raise CheckpointError(f"{directory / CONFIG} {have}")
    layers = dict(adapter_layers(model))
    if set(layers) != set(structure):
        missing = sorted(set(structure) ^ set(layers))[:5]
        raise CheckpointError(f"{directory / CONFIG}: saved adapter layers differ from the model's, e.g. {missing}")
    for name, layer in layers.items():
        try:
            layer.restructure(structure[name])  # also restores which parts are frozen: shapes follow
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"{directory / CONFIG}: layer {name}: bad structure ({err!r})") from None
    expected = {f"{name}.{key}": v for name, layer in layers.items() for key, v in _adapter_state(layer).items()}
    tensors = upgrade_branches(read_tensors(directory / WEIGHTS), layers)
    check_tensors(directory / WEIGHTS, tensors, expected)
    for name, layer in layers.items():
        layer.load_state_dict({key: tensors[f"{name}.{key}"] for key in _adapter_state(layer)}, strict=False)


def upgrade_branches(tensors: dict[str, torch.Tensor], layers: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Format 1 saved BranchLoRA's branches as N tensors NAME.lora_B.i of shape (d_out, r/N); stack them
    into today's one (N, r/N, d_out) tensor NAME.lora_B, so older checkpoints keep loading."""
    for name, layer in layers.items():
        old = [f"{name}.lora_B.{i}" for i in range(layer.n_branches)] if isinstance(layer, BranchLoRA) else []
        if old and all(key in tensors for key in old):  # else check_tensors names what is missing
            tensors[f"{name}.lora_B"] = torch.stack([tensors.pop(key).t() for key in old])
    return tensors
