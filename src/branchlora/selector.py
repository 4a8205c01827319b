"""The task selector: per-task image and text keys, and the choice of a task router at test time.

    t* = argmax_t cos(e_img, k_img^t) + cos(e_txt, k_txt^t)

e_img is the mean of the frozen vision tower's patch features (per model family, models/family.py), e_txt
the mean of the language model's input embeddings over the instruction tokens (image tokens, padding and the
answer excluded).  Keys are
either trained with L_align = sum (1 - cos(e, k)) (the paper) or computed in one pass as the normalised
mean of the normalised embeddings, which is the optimum of that same loss when the encoders are frozen.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from branchlora.models.family import require_family


@torch.no_grad()
def embed(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(e_img (B, d_vision), e_txt (B, d_text)) from the frozen parts of a vision-language model; the image
    side is the model family's (models/family.py): the mean of the vision tower's patch features."""
    e_img = require_family(model).embed_image(model, batch)
    ids = batch["input_ids"]
    keep = batch["attention_mask"].bool() & (ids != model.config.image_token_id)  # (B, L)
    if "labels" in batch:
        keep &= batch["labels"] == -100  # the instruction, not the answer
    tokens = model.get_input_embeddings()(ids).float()  # (B, L, d_t)
    m = keep.unsqueeze(-1).float()
    e_txt = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    return e_img, e_txt


def similarity(e_img: torch.Tensor, e_txt: torch.Tensor, k_img: torch.Tensor, k_txt: torch.Tensor) -> torch.Tensor:
    """(B, d_v), (B, d_t), (T, d_v), (T, d_t) -> (B, T): cos(e_img, k_img^t) + cos(e_txt, k_txt^t)."""
    img = F.normalize(e_img, dim=-1) @ F.normalize(k_img, dim=-1).t()
    txt = F.normalize(e_txt, dim=-1) @ F.normalize(k_txt, dim=-1).t()
    return img + txt


def select_task(e_img: torch.Tensor, e_txt: torch.Tensor, k_img: torch.Tensor, k_txt: torch.Tensor) -> torch.Tensor:
    """The task whose keys are closest to each sample: (B,) indices into the T keys."""
    return similarity(e_img, e_txt, k_img, k_txt).argmax(dim=-1)


def align_loss(e: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """sum over samples of 1 - cos(e, key): pulls one task's key towards its samples' embeddings."""
    return (1 - F.cosine_similarity(e, key.unsqueeze(0), dim=-1)).sum()


def prototype(embeddings: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """(n, d) -> (d,): the normalised mean of the normalised embeddings (the optimum of align_loss).

    `total` sums the per-process sums (sharding.process_sum), so that processes holding shards of the data agree
    on the prototype of all of it; the normalisation makes a sum as good as a mean."""
    return F.normalize(total(F.normalize(embeddings, dim=-1).sum(dim=0)), dim=0)


def confusion(true: list[int], chosen: list[int], n_tasks: int) -> list[list[int]]:
    """counts[i][j]: samples of task i routed to task j's router."""
    counts = [[0] * n_tasks for _ in range(n_tasks)]
    for i, j in zip(true, chosen, strict=True):
        counts[i][j] += 1
    return counts
