"""Save and load adapters: tensors in safetensors, the kind, hyper-parameters and structure in JSON."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from branchlora.adapters.config import AdapterConfig
from branchlora.adapters.inject import adapter_layers, inject_adapters
from branchlora.atomic import atomic_path, write_json

WEIGHTS = "adapters.safetensors"
CONFIG = "adapters.json"
FORMAT = "branchlora-adapters/1"


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
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r} is not {FORMAT!r}")
    return AdapterConfig.from_dict(data["adapter"]), data["layers"]


def load_adapters(model: nn.Module, directory: str | Path) -> None:
    """Rebuild exactly what was saved: inject if needed, grow routers / branches, then load tensors."""
    directory = Path(directory)
    config, structure = read_adapter_config(directory)
    current: AdapterConfig | None = getattr(model, "branchlora_adapter_config", None)
    if current is None:
        inject_adapters(model, config)
    elif current.kind != config.kind:
        raise ValueError(f"{directory} holds {config.kind!r} adapters but the model has {current.kind!r} ones")
    layers = dict(adapter_layers(model))
    if set(layers) != set(structure):
        missing = sorted(set(structure) ^ set(layers))[:5]
        raise ValueError(f"{directory}: saved adapter layers differ from the model's, e.g. {missing}")
    tensors = load_file(str(directory / WEIGHTS))
    for name, layer in layers.items():
        layer.restructure(structure[name])  # also restores which parts are frozen
        expected = _adapter_state(layer)
        state = {key: tensors.get(f"{name}.{key}") for key in expected}
        for key, value in state.items():
            if value is None:
                raise ValueError(f"{directory / WEIGHTS}: tensor {name}.{key} is missing")
            if value.shape != expected[key].shape:
                raise ValueError(
                    f"{directory / WEIGHTS}: {name}.{key} has shape {tuple(value.shape)} but the model "
                    f"expects {tuple(expected[key].shape)} (saved for another model or hyper-parameters?)"
                )
        layer.load_state_dict(state, strict=False)
