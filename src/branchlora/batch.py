"""Batches as the model sees them."""

from __future__ import annotations

from collections.abc import Iterator

import torch

# image_grid_thw, mm_token_type_ids: Qwen-VL's patch grid per image, image tokens; image_sizes: LLaVA-NeXT's.
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids", "image_sizes",
                "labels")  # fmt: skip


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a batch that the model's forward takes."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def samples(batch: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Each row of a batch as a batch of one, its padding removed: the tokens (and labels) where the
    attention mask is 1, so that the sample is exactly what a batch of one would have held."""
    mask = batch["attention_mask"]
    patches = None  # Qwen-VL: every image's patches in one tensor, image i's are its grid's t * h * w rows
    if "image_grid_thw" in batch:
        patches = batch["pixel_values"].split(batch["image_grid_thw"].prod(dim=-1).tolist())
    elif "num_patches" in batch:  # InternVL: every image's tiles in one batch, image i's are its num_patches
        patches = batch["pixel_values"].split(batch["num_patches"].tolist())
    for i in range(mask.shape[0]):
        keep = mask[i].bool()
        sample = {k: (v[i : i + 1, keep] if v.shape == mask.shape else v[i : i + 1]) for k, v in batch.items()}
        if patches is not None:
            sample["pixel_values"] = patches[i]
        yield sample
