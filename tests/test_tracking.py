"""Experiment logs: Accelerate trackers get every read step's losses and lr, each stage's scores, the end metrics."""

import pytest
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from branchlora.config import load_config
from branchlora.continual import run_method
from branchlora.evaluation.metrics import all_metrics
from branchlora.methods import get_method
from branchlora.tracking import flat_config, resolve_trackers
from branchlora.typed import ConfigError

from engine_support import TOY_EVAL, TOY_TRAIN, fresh


class MemoryTracker(GeneralTracker):
    """A tracker that keeps what it is given, as W&B or TensorBoard would store it."""

    name = "memory"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.logs: list[tuple[int | None, dict]] = []
        self.config: dict | None = None

    @property
    def tracker(self):
        return self.logs

    def store_init_configuration(self, values: dict) -> None:
        self.config = values

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logs.append((step, dict(values)))


def test_a_run_logs_losses_scores_and_metrics(small_toy, tmp_path):
    tracker = MemoryTracker()
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    accelerator.init_trackers("toy", config=flat_config({"train": {"lr": 5e-3}, "methods": ["lora"]}))
    assert tracker.config == {"train.lr": 5e-3, "methods": "['lora']"}
    data = small_toy[1]
    result = run_method(get_method("lora")({"r": 4, "alpha": 8}), fresh(small_toy[0]), data, TOY_TRAIN, TOY_EVAL,
                        tmp_path, accelerator=accelerator)  # fmt: skip
    steps = [(s, v) for s, v in tracker.logs if "lora/seed0/loss_task" in v]
    per_task = TOY_TRAIN.max_steps
    assert [s for s, _ in steps] == [per_task * (t + 1) for t in range(3)]  # read at each task's last step
    assert all("lora/seed0/lr" in v for _, v in steps)
    stages = [(s, v) for s, v in tracker.logs if any("/after_" in k for k in v)]
    assert [s for s, _ in stages] == [0, 1, 2, 3]
    for (stage, values), row in zip(stages, result.matrix, strict=True):
        task = "base" if stage == 0 else data.names[stage - 1]
        assert [values[f"lora/seed0/after_{task}/{name}"] for name in data.names] == row
    final = tracker.logs[-1][1]
    assert final["lora/seed0/final/acc"] == pytest.approx(all_metrics(result.matrix)["acc"])


def test_tracker_names_are_checked():
    assert resolve_trackers(["none"]) == []
    assert resolve_trackers(["auto"]) in ([], ["tensorboard"])  # TensorBoard only when it is installed
    with pytest.raises(ValueError, match="unknown tracker 'tensorbored'"):
        resolve_trackers(["tensorbored"])
    with pytest.raises(ConfigError, match="log_with"):
        load_config("quick", None, [(("log_with",), ["nope"])])


def test_a_missing_tracker_says_what_to_install(monkeypatch):
    from branchlora import tracking

    monkeypatch.setattr(tracking, "_installed", lambda name: False)
    with pytest.raises(ValueError, match="pip install wandb"):
        resolve_trackers(["wandb"])
    assert resolve_trackers(["auto"]) == []  # auto asks for nothing that is not there
    monkeypatch.setattr(tracking, "_installed", lambda name: True)
    assert resolve_trackers(["auto", "tensorboard", "mlflow"]) == ["tensorboard", "mlflow"]
