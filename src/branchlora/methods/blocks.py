"""The base of the methods whose layers hold one LoRA block per task (adapters/tasklora.py)."""

from __future__ import annotations

from torch import nn

from branchlora.adapters import TaskLoRA, adapter_layers
from branchlora.methods.base import Method, Task


class PerTaskLoRA(Method):
    """A new block in every wrapped Linear when a task starts; only that block (and the projector) trains."""

    adapter_defaults = {"kind": "tasklora", "init": "kaiming"}  # PEFT-style blocks
    grows = True

    def blocks(self, model: nn.Module) -> list[TaskLoRA]:
        return [layer for _, layer in adapter_layers(model) if isinstance(layer, TaskLoRA)]

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        for layer in self.blocks(model):
            while layer.n_blocks <= task.index:
                layer.add_block()
        self.set_trainable(model)
