"""Named parts of a vision-language model: through its family's anatomy (models/family.py) when it has one."""

from __future__ import annotations

from torch import nn

from branchlora.models.family import family_of

PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector")


def projector(model: nn.Module) -> nn.Module | None:
    """The vision-to-language projector, or None for a model without one."""
    family = family_of(model)
    if family is not None:
        return family.part(model, "projector")
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in PROJECTOR_NAMES:
            return module
    return None


def language_model(model: nn.Module) -> nn.Module:
    """The language decoder (its input embeddings carry the merged image features)."""
    family = family_of(model)
    return family.part(model, "language") if family is not None else model.get_decoder()
