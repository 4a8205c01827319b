"""Parameter accounting: what a method trains on a model, counted on the meta device."""

from __future__ import annotations

from collections import defaultdict

from torch import nn

from branchlora.adapters import adapter_layers, tunable_count
from branchlora.methods import Task, get_method
from branchlora.models.parts import projector
from branchlora.models.presets import LinearStack, build_meta_model


def count_parameters(
    model_spec: str, method_name: str, adapter: dict | None = None, options: dict | None = None, n_tasks: int = 8
) -> dict:
    """{"method", "model", "tunable", "total", "by_part"} for `method_name` on `model_spec` at task 1.

    The method is set up exactly as training would set it up (so what is counted as tunable is
    what would train), on a model with no weights.  A method that grows per task also reports, in
    by_part, what trains at task `n_tasks` and everything trained over the `n_tasks` tasks.
    """
    model, method = meta_method(model_spec, method_name, adapter, options)
    result = {
        "method": method_name,
        "model": model_spec,
        "tunable": tunable_count(model),
        "total": sum(p.numel() for p in model.parameters()),
        "by_part": parts(model),
    }
    if method.grows:
        result["by_part"].update(stream_counts(model, method, n_tasks))
    return result


def meta_method(model_spec: str, method_name: str, adapter: dict | None = None, options: dict | None = None):
    """(model, method) on the meta device, the method set up as training sets it up and its first task started."""
    model = build_meta_model(model_spec)
    adapter = dict(adapter or {})
    if isinstance(model, LinearStack):
        adapter.setdefault("targets", ".*")  # a plain Linear stack: wrap every Linear
    method = get_method(method_name)(adapter, options)
    method.setup(model)
    method.on_task_start(model, Task(0, "task-1"))
    return model, method


def stream_counts(model: nn.Module, method, n_tasks: int) -> dict[str, int]:
    """For a method that grows per task: what trains at the last task, and all that trained over the stream.

    The task starts of the stream are replayed on the meta model (no data, so nothing that a task's
    end would freeze is frozen).
    """
    trained = {id(p): p for p in model.parameters() if p.requires_grad}
    for t in range(1, n_tasks):
        method.on_task_start(model, Task(t, f"task-{t + 1}"))
        trained.update({id(p): p for p in model.parameters() if p.requires_grad})
    return {
        f"tunable_at_task_{n_tasks}": tunable_count(model),
        f"trained_over_{n_tasks}_tasks": sum(p.numel() for p in trained.values()),
    }


def parts(model: nn.Module) -> dict[str, int]:
    """Tunable parameters by part (each adapter parameter name, the projector), and the frozen rest."""
    by_part: dict[str, int] = defaultdict(int)
    seen: set[int] = set()
    for _, layer in adapter_layers(model):
        for name, p in layer.adapter_parameters().items():
            if p.requires_grad:
                by_part[f"adapter.{name.split('.')[0]}"] += p.numel()
            seen.add(id(p))
    proj = projector(model)
    if proj is not None:
        by_part["projector"] = sum(p.numel() for p in proj.parameters() if p.requires_grad and id(p) not in seen)
        seen.update(id(p) for p in proj.parameters())
    by_part["frozen"] = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    by_part["other_tunable"] = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in seen)
    return dict(by_part)
