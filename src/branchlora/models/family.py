"""One seam per model family: where a loaded model keeps its vision tower, projector and language decoder,
which Linears the adapters wrap by default, and how the selector reads an image embedding from it.

Everything that needs a model's anatomy (adapter targets, the projector's learning rate, the selector's
keys, ProgLoRA's allocator, LiLoRA's targets, parameter counts) asks `family_of(model)`.  Adding a family is
one entry in FAMILIES plus its tests.  Families come through transformers' own classes (no remote code).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

LINEAR_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _patch_mean(tower: nn.Module, batch: dict[str, torch.Tensor], skip: int) -> torch.Tensor:
    """(B, d_vision): the mean of the tower's last hidden states per image, its first `skip` (CLS) excluded."""
    dtype = next(tower.parameters()).dtype
    pixels = batch["pixel_values"].to(dtype)
    if pixels.dim() == 5:  # LLaVA-NeXT / OneVision: (B, crops, C, H, W); the first crop is the whole image
        pixels = pixels[:, 0]
    return tower(pixels).last_hidden_state[:, skip:].float().mean(dim=1)


def _tile_mean(tower: nn.Module, batch: dict[str, torch.Tensor], skip: int) -> torch.Tensor:
    """(B, d_vision): InternVL's tiles of all images come as one (tiles, C, H, W) batch, image i's being its
    `num_patches` (the collator counts them); each image's embedding is the mean of its tiles' patch means."""
    tiles = _patch_mean(tower, batch, skip)
    counts = batch.get("num_patches")
    if counts is None:  # one tile per image
        return tiles
    return torch.stack([part.mean(dim=0) for part in torch.split(tiles, counts.tolist())])


def _merged_counts(tower: nn.Module, grid: torch.Tensor) -> torch.Tensor:
    """(B,) Qwen-VL's merged tokens of each image: t * h * w patches over the merge window's area."""
    return grid.prod(dim=-1) // tower.spatial_merge_size**2


def _merged_mean(tower: nn.Module, batch: dict[str, torch.Tensor], skip: int) -> torch.Tensor:
    """(B, d): Qwen-VL's tower returns every image's merged patches in one sequence; average each image's."""
    grid = batch["image_grid_thw"]  # (B, 3): t, h, w patches of each image
    dtype = next(tower.parameters()).dtype
    out = tower(batch["pixel_values"].to(dtype), grid_thw=grid)
    feats = out.pooler_output if getattr(out, "pooler_output", None) is not None else out
    feats = feats.last_hidden_state if hasattr(feats, "last_hidden_state") else feats
    counts = _merged_counts(tower, grid).tolist()
    return torch.stack([part.float().mean(dim=0) for part in torch.split(feats, counts)])


@dataclass(frozen=True)
class Family:
    """A model family's anatomy, as dotted paths from the outer (…ForConditionalGeneration) model."""

    name: str
    model_types: tuple[str, ...]
    vision: str
    projector: str
    language: str = "model.language_model"
    image_embedding: Callable[[nn.Module, dict, int], torch.Tensor] = _patch_mean
    cls_tokens: int = 1  # leading positions of the tower's output that are not patches

    def part(self, model: nn.Module, which: str) -> nn.Module:
        """The vision tower, projector or language model; also inside a wrapper (PEFT, DDP) that prefixes names."""
        path = getattr(self, which)
        try:
            return model.get_submodule(path)
        except AttributeError:
            found = next((m for name, m in model.named_modules() if name.endswith("." + path)), None)
            if found is None:
                raise ValueError(f"{type(model).__name__} has no module {path!r} ({self.name} {which})") from None
            return found

    def targets(self, preset: str) -> str:
        """A target preset as a regex over this family's module names: "llava", the seven Linear types of every
        decoder layer of the language model; "ffn+projector", its feed-forward Linears and the projector's."""
        layers = rf"(.*\.)?{re.escape(self.language)}\.layers\.\d+\."
        if preset == "llava":
            return rf"{layers}(self_attn|mlp)\.({'|'.join(LINEAR_TYPES)})"
        return rf"{layers}mlp\.(gate_proj|up_proj|down_proj)|(.*\.)?{re.escape(self.projector)}\..+"

    def vision_width(self, model: nn.Module) -> int:
        """Width of the selector's image embedding (Qwen2.5-VL: the merger's output, out_hidden_size)."""
        config = model.config.vision_config
        return getattr(config, "out_hidden_size", None) or config.hidden_size

    def embed_image(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.image_embedding(self.part(model, "vision"), batch, self.cls_tokens)


FAMILIES = (
    Family("llava", ("llava",), vision="model.vision_tower", projector="model.multi_modal_projector"),
    Family("llava-next", ("llava_next",), vision="model.vision_tower", projector="model.multi_modal_projector"),
    Family("llava-onevision", ("llava_onevision",), vision="model.vision_tower",
           projector="model.multi_modal_projector", cls_tokens=0),  # SigLIP: no CLS token
    Family("internvl", ("internvl",), vision="model.vision_tower", projector="model.multi_modal_projector",
           image_embedding=_tile_mean),
    Family("qwen-vl", ("qwen2_vl", "qwen2_5_vl"), vision="model.visual", projector="model.visual.merger",
           image_embedding=_merged_mean, cls_tokens=0),
)  # fmt: skip


def family_of(model: nn.Module) -> Family | None:
    """The family of a transformers vision-language model (None for other modules, e.g. a plain Linear stack)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def require_family(model: nn.Module) -> Family:
    family = family_of(model)
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        known = ", ".join(t for f in FAMILIES for t in f.model_types)
        raise ValueError(f"model type {model_type!r} is not a supported vision-language family; supported: {known}")
    return family


def sample_rows(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(N,) the sample of each row of the projector's input where its rows are not samples; None elsewhere.

    Qwen-VL's merger sees all images' merged patches as one sequence (image i's: t * h * w / merge^2 rows);
    LLaVA-NeXT and OneVision project every crop of every image (image i's: its number of crops), InternVL
    every tile (image i's: its `num_patches`).
    It reads sizes on the host, so the routing context takes it as a callable that only LiLoRA's projector
    adapters call (see `routing_context`), never on every step."""
    if (grid := batch.get("image_grid_thw")) is not None:
        counts = _merged_counts(require_family(model).part(model, "vision"), grid)
    elif (sizes := batch.get("image_sizes")) is not None:
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        pinpoints, side = model.config.image_grid_pinpoints, model.config.vision_config.image_size
        counts = torch.tensor([image_size_to_num_patches(size, pinpoints, side) for size in sizes.tolist()])
    elif (tiles := batch.get("num_patches")) is not None:
        counts = tiles
    else:
        return None
    device = batch["input_ids"].device
    return torch.repeat_interleave(torch.arange(len(counts), device=device), counts.to(device))
