"""Experiment logs through Accelerate's trackers (TensorBoard, W&B, MLflow, ...), chosen by `log_with`.

Each method's run logs under "<method>/seed<k>/": the losses and learning rate of every step whose losses
are read (the optimizer step over the whole stream on the x axis), each stage's scores (the accuracy
matrix row by row: "after_<task>/<scored task>"), the selector's accuracy per stage, and at the end the
metrics (ACC, MAA, BWT, ...).  Nothing is required offline: "auto" is TensorBoard when it is installed.
"""

from __future__ import annotations

import importlib.util

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

AUTO, NONE = "auto", "none"
# The import that makes each of Accelerate's trackers available.
MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "aim": "aim", "comet_ml": "comet_ml",
           "clearml": "clearml", "dvclive": "dvclive", "swanlab": "swanlab", "trackio": "trackio"}  # fmt: skip


def _installed(name: str) -> bool:
    module = MODULES[name]
    if name == "tensorboard":  # Accelerate's TensorBoard tracker also accepts tensorboardX
        return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
    return importlib.util.find_spec(module) is not None


def resolve_trackers(names: list[str]) -> list[str | GeneralTracker]:
    """What Accelerate's `log_with` receives: "auto" is TensorBoard when installed (else nothing), "none" is
    nothing; any other name must be one of Accelerate's trackers and installed, or a ValueError says which."""
    chosen: list[str] = []
    for name in names:
        if name == NONE:
            continue
        if name == AUTO:
            chosen += ["tensorboard"] if _installed("tensorboard") else []
            continue
        if name not in MODULES:
            valid = ", ".join([AUTO, NONE, *MODULES])
            raise ValueError(f"log_with: unknown tracker {name!r}; valid: {valid}")
        if not _installed(name):
            raise ValueError(f"log_with: tracker {name!r} is not installed (pip install {MODULES[name]})")
        chosen.append(name)
    return list(dict.fromkeys(chosen))


def flat_config(settings: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """A nested config as the flat scalar mapping trackers store as hyper-parameters."""
    flat: dict = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, (str, int, float, bool)) else str(value)
    return flat


class RunLog:
    """One method's run (a seed) as the trackers see it; does nothing when no tracker is active."""

    def __init__(self, accelerator: Accelerator, method: str, seed: int) -> None:
        self.accelerator, self.prefix = accelerator, f"{method}/seed{seed}/"
        self.offset = 0  # optimizer steps of the tasks before the current one

    @property
    def active(self) -> bool:
        return bool(self.accelerator.trackers)

    def step(self, record: dict) -> None:
        """A step's {"step", "lr", "loss_<name>"...}, at its step over the whole stream."""
        if self.active:
            values = {f"{self.prefix}{k}": v for k, v in record.items() if k != "step"}
            self.accelerator.log(values, step=self.offset + record["step"])

    def stage(
        self, stage: int, task: str, steps: int, names: list[str], row: list[float | None], selector: float | None
    ):
        """The scores after training `task` (stage `stage`), one row of the matrix; `steps` ends the task."""
        self.offset += steps
        if self.active:
            scored = {name: score for name, score in zip(names, row, strict=True) if score is not None}  # eval.future
            values = {f"{self.prefix}after_{task}/{name}": score for name, score in scored.items()}
            values[f"{self.prefix}mean_score"] = sum(scored.values()) / len(scored) if scored else None
            if selector is not None:
                values[f"{self.prefix}selector_accuracy"] = selector
            self.accelerator.log({k: v for k, v in values.items() if v is not None}, step=stage)

    def final(self, metrics: dict[str, float], selector: float | None) -> None:
        if self.active:
            values = {f"{self.prefix}final/{k}": v for k, v in metrics.items() if v is not None}
            if selector is not None:
                values[f"{self.prefix}final/selector_accuracy"] = selector
            self.accelerator.log(values)
