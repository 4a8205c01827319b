"""Helpers many test files share: random adapter weights, a run's full state and its bit-for-bit comparison,
restoring a checkpoint into a fresh model, and a benchmark YAML written over given items."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image
from torch import nn

from branchlora.adapters import adapter_layers
from branchlora.continual import load_checkpoint
from branchlora.data.benchmark import TestExample
from branchlora.methods import Method, get_method
from branchlora.models.parts import projector

from engine_support import ADAPTER, LORA


def adapter_for(name: str) -> dict:
    """A small adapter that method `name` accepts: branches for the routed ones, a sub-rank for LiLoRA."""
    if name.startswith(("branch", "hydra", "moe")):
        return ADAPTER
    return {**LORA, "sub_rank": 4} if name.startswith("lilora") else LORA


def randomise(module: nn.Module, std: float = 1.0, seed: int | None = None) -> nn.Module:
    """Fill every adapter tensor of `module` (one adapter layer, or a model holding them) with N(0, std^2):
    B (and LiLoRA's B0, P) start at zero, so the math is only tested once every tensor is non-zero."""
    layers = [module] if hasattr(module, "adapter_parameters") else [layer for _, layer in adapter_layers(module)]
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in layers:
            for p in layer.adapter_parameters().values():
                p.copy_(std * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested state (dicts, lists, tensors, numbers) as {"a.0.b": leaf}; tensors detached on the CPU."""
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    if isinstance(tree, list | tuple):
        return {k: v for i, value in enumerate(tree) for k, v in flatten(value, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): tree.detach().cpu() if isinstance(tree, torch.Tensor) else tree}


def run_state(method: Method, model: nn.Module) -> dict[str, Any]:
    """Everything a resumed run must get back, optimizer aside: every adapter layer's tensors, shape (grown
    branches, routers, tasks) and frozen set (which tensors train), the projector, the method's own state."""
    state = {}
    for name, layer in adapter_layers(model):
        state |= flatten(layer.state_dict(), f"{name}.")
        state |= flatten(layer.structure(), f"{name}.structure.")
        state[f"{name}.trains"] = [n for n, p in layer.named_parameters() if p.requires_grad]
    proj = projector(model)
    if proj is not None:
        state |= flatten(proj.state_dict(), "projector.")
        state["projector.trains"] = [n for n, p in proj.named_parameters() if p.requires_grad]
    return state | flatten(method.state_dict(), "method.")


def assert_same_state(expected: dict[str, Any], got: dict[str, Any]) -> None:
    """The same keys and, for each, the same value bit for bit (tensors: dtype, shape and every element)."""
    assert expected.keys() == got.keys(), sorted(expected.keys() ^ got.keys())
    for key, value in expected.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor) and value.dtype == got[key].dtype, key
            assert torch.equal(value, got[key]), key
        else:
            assert value == got[key], key


def restored(name: str, adapter: dict, base: nn.Module, folder: Path, options: dict | None = None) -> tuple:
    """(method, model): checkpoint `folder` of method `name` loaded into a fresh copy of `base`."""
    method, model = get_method(name)(adapter, options), copy.deepcopy(base)
    method.setup(model)
    load_checkpoint(folder, model, method)
    return method, model


def write_benchmark(folder: Path, tasks: dict[str, Iterable[TestExample]], name: str = "bench") -> Path:
    """FOLDER/bench.yaml in CoIN's formats: per task (in the given order) a train and a test JSON over the same
    items, scored by exact match; images by absolute path."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for task, examples in tasks.items():
        examples = list(examples)
        test = [{"question_id": x.question_id, "image": str(x.image), "text": x.instruction, "answer": x.answer}
                for x in examples]  # fmt: skip
        turns = [[{"from": "human", "value": x.instruction}, {"from": "gpt", "value": x.answer}] for x in examples]
        train = [{"image": str(x.image), "conversations": t} for x, t in zip(examples, turns, strict=True)]
        (folder / f"{task}-test.json").write_text(json.dumps(test))
        (folder / f"{task}-train.json").write_text(json.dumps(train))
        entries.append({"name": task, "train": f"{task}-train.json", "test": f"{task}-test.json",
                        "metric": "exact_match"})  # fmt: skip
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump({"name": name, "image_root": "/", "tasks": entries}))
    return path


GOOD_TRAIN = {"id": 0, "image": "a.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}  # fmt: skip
GOOD_TEST = {"question_id": 7, "image": "a.png", "text": "What colour?", "answer": "red"}


def one_task_stream(
    root: Path, *, train: list | None = None, test: list | None = None, metric: str = "exact_match",
    task: dict | None = None, suffix: str = ".json", image: bytes | None = None,
) -> Path:  # fmt: skip
    """ROOT/b.yaml: one task 't' (train / test files in CoIN's formats, image root ROOT/img holding a.png) whose
    parts the arguments replace: the items (default one good item each), the metric, extra task fields, JSON or
    JSON Lines (`suffix`), and a.png's bytes (default a red 8x8 PNG)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    if image is None:
        Image.new("RGB", (8, 8), "red").save(root / "img" / "a.png")
    else:
        (root / "img" / "a.png").write_bytes(image)
    for name, items in (
        ("train", [GOOD_TRAIN] if train is None else train),
        ("test", [GOOD_TEST] if test is None else test),
    ):
        lines = [json.dumps(x) for x in items]
        (root / f"{name}{suffix}").write_text("\n".join(lines) if suffix == ".jsonl" else f"[{', '.join(lines)}]")
    entry = {"name": "t", "train": f"train{suffix}", "test": f"test{suffix}", "metric": metric, **(task or {})}
    (root / "b.yaml").write_text(yaml.safe_dump({"name": "s", "image_root": "img", "tasks": [entry]}))
    return root / "b.yaml"
