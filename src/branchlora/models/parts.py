"""Named parts of a LLaVA-style model, found by module name so that any llava-hf model works."""

from __future__ import annotations

from torch import nn

PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector")


def projector(model: nn.Module) -> nn.Module | None:
    """The vision-to-language projector, or None for a model without one."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in PROJECTOR_NAMES:
            return module
    return None
