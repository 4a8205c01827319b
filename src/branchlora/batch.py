"""Batches as the model sees them."""

from __future__ import annotations

import torch

MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values", "labels")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The keys of a batch that the model's forward takes."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}
