"""The method plug-in: continual-learning behaviour as hooks on the one training loop.

Every hook does nothing by default, so a method overrides only what it changes.  The loop calls, per
task: on_task_start -> (per step: routing, extra_loss) -> on_task_end.  Extra losses travel in a
StepContext (`ctx.add_loss(name, value)`): the loop sums and logs them; no method edits the loop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from branchlora.adapters import AdapterConfig, adapter_layers, inject_adapters
from branchlora.models.parts import projector
from branchlora.typed import check_fields


@dataclass(frozen=True)
class Task:
    """A task as the methods see it: its position in the stream and its name."""

    index: int
    name: str


@dataclass
class StepContext:
    """One training step as the hooks see it; methods add named losses, the loop sums them."""

    task: Task
    batch: dict[str, torch.Tensor]
    outputs: Any = None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)

    def add_loss(self, name: str, value: torch.Tensor) -> None:
        self.losses[name] = self.losses[name] + value if name in self.losses else value


class TaskRun(Protocol):
    """What the loop lends a hook that needs the task's data: its batches, a forward with routing, and the
    selector's embeddings (both under the run's autocast)."""

    def batches(self) -> Iterable[dict[str, torch.Tensor]]: ...

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> Any: ...

    def embed(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def mean(self, tensor: torch.Tensor) -> torch.Tensor: ...


@dataclass
class MethodOptions:
    """Knobs every method has; a method's own Options dataclass extends this."""

    train_projector: bool = field(default=True, metadata={"help": "train the vision-language projector"})

    def __post_init__(self) -> None:
        check_fields(self)


class Method:
    """Base plug-in: sequential fine-tuning of the method's adapter (plus the projector)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    adapter_defaults: ClassVar[dict] = {"kind": "lora"}
    Options: ClassVar[type[MethodOptions]] = MethodOptions
    option_defaults: ClassVar[dict] = {}  # a named variant changes these, the user overrides them
    joint: ClassVar[bool] = False  # trained once on the union of all tasks (the multi-task bound)
    grows: ClassVar[bool] = False  # adds parameters per task: `branchlora params` also counts a whole stream

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        self.adapter = AdapterConfig.from_dict({**self.adapter_defaults, **(adapter or {})})
        self.options = _build_options(self.Options, {**self.option_defaults, **(options or {})}, self.name)

    # ---- set-up and trainability -------------------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        """Wrap the model's targets in this method's adapter and mark what trains."""
        inject_adapters(model, self.adapter)
        self.set_trainable(model)

    def set_trainable(self, model: nn.Module) -> None:
        """Freeze everything, then unfreeze the projector and the adapters (as each allows).

        Adapters come last: where they wrap the projector's own Linears (LiLoRA), those stay frozen
        and the adapters inside still train.
        """
        model.requires_grad_(False)
        proj = projector(model)
        if proj is not None:
            proj.requires_grad_(self.options.train_projector)
        for _, layer in adapter_layers(model):
            layer.base_layer.requires_grad_(False)
            layer.mark_trainable()

    # ---- hooks (no-ops by default) -------------------------------------------------------------------
    def on_task_start(self, model: nn.Module, task: Task) -> None:
        """Before the first step of a task (add routers, snapshot a teacher, ...)."""

    def train_task_ids(self, task: Task) -> int | None:
        """Which task router the adapters use while training on `task` (None: the newest)."""
        return None

    def eval_task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task: Task, oracle: bool = False
    ) -> int | torch.Tensor | None:
        """Which task router serves each test sample: None (the newest), one id, (B,) ids, or (B, T)
        weights over the learned tasks (a soft choice, HiDe's); routed methods choose."""
        return None

    def task_similarity(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T) selector scores of each sample against each learned task, for methods that select."""
        return None

    def param_groups(self, lr: float) -> list[dict]:
        """Optimizer groups for what the method trains outside the model (e.g. task keys)."""
        return []

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        """Add regularisers with ctx.add_loss(name, value)."""

    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        """After the last step of a task (freeze branches, estimate a Fisher, ...)."""

    def state_dict(self) -> dict[str, Any]:
        """The method's own state beyond the model's parameters (saved with every checkpoint)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what state_dict returned."""


def chosen_tasks(task_ids: int | torch.Tensor | None) -> list[int]:
    """Per sample, the task a choice picked (the heaviest of soft weights); [] for one choice for all."""
    if not isinstance(task_ids, torch.Tensor):
        return []
    return (task_ids.argmax(dim=-1) if task_ids.is_floating_point() else task_ids).tolist()


def _build_options(cls: type, values: dict, method: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method {method!r}; valid: {sorted(known)}")
    return replace(cls(), **values)
