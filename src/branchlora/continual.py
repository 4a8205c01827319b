"""One method through a task stream: train task after task, score every task after each, checkpoint.

    row 0 <- evaluate(all tasks)                       (the model before any task)
    for t in tasks:  train_task(t); row t <- evaluate(all tasks); checkpoint(t)

Checkpoints (adapters, projector, method state, the matrix so far) are written to a temporary folder
and renamed into place, so a killed run leaves only complete ones; `resume` continues after the last.
Each task reseeds from the run's seed, so a resumed run ends with the same matrix as an unbroken one.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch import nn

from branchlora.adapters import load_adapters, save_adapters
from branchlora.atomic import write_json
from branchlora.evaluation.evaluate import EvalConfig, evaluate_task
from branchlora.evaluation.metrics import all_metrics
from branchlora.files import CheckpointError, JsonLines, check_tensors, read_json, read_tensors, read_torch, require
from branchlora.methods.base import Method, Task
from branchlora.models.parts import projector
from branchlora.replay import replay_items
from branchlora.selector import confusion
from branchlora.sharding import gathered
from branchlora.tracking import RunLog
from branchlora.train import LoopState, TrainConfig, train_task

StepCallback = Callable[[str, int, int, dict[str, float]], None]  # (phase, step, total, losses)
IN_TASK = "in-task"  # DIR/in-task/: the latest checkpoint inside the task being trained (train.save_every)
WEIGHTS = ("adapters.safetensors", "projector.safetensors", "method.pt", "loop.pt")  # what train.keep=last drops


@dataclass
class StreamData:
    """The task stream as the runner needs it: names, metrics, examples, and a collator."""

    names: list[str]
    metrics: list[str]
    train: list[list]
    test: list[list]
    collator: object


@dataclass
class MethodResult:
    matrix: list[list[float]] = field(default_factory=list)
    chosen: list[list[int]] = field(default_factory=list)  # the last row's router choice per test sample
    tunable: int = 0
    total: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stats: list[dict] = field(default_factory=list)

    def to_json(self, n_tasks: int) -> dict:
        out = {
            "matrix": [[round(x, 4) for x in row] for row in self.matrix],
            "metrics": all_metrics(self.matrix),
            "params": {"tunable": self.tunable, "total": self.total},
            "train_seconds": round(self.train_seconds, 2),
            "eval_seconds": round(self.eval_seconds, 2),
        }
        if self.stats:
            out["tasks"] = [task_summary(s) for s in self.stats]
        if any(self.chosen):
            true, picked = self._choices()
            out["selector_accuracy"] = self.selector_accuracy()
            out["selector_confusion"] = confusion(true, picked, n_tasks)
        return out

    def _choices(self) -> tuple[list[int], list[int]]:
        """(true task, chosen task) of every test sample of the last row."""
        return [i for i, c in enumerate(self.chosen) for _ in c], [j for c in self.chosen for j in c]

    def selector_accuracy(self) -> float | None:
        """% of the last row's test samples the selector sent to their own task (None: no selector)."""
        if not any(self.chosen):
            return None
        true, picked = self._choices()
        return round(100.0 * sum(a == b for a, b in zip(true, picked, strict=True)) / len(true), 2)


def task_summary(stats: dict) -> dict:
    """A trained task as log.jsonl and report.md show it: steps, timings and the last losses read."""
    seconds = stats["seconds"]
    losses = {k: round(v, 4) for k, v in stats.items() if k.startswith("loss_")}
    return {"task": stats["task"], "steps": stats["steps"], "train_seconds": round(seconds, 2),
            "eval_seconds": round(stats.get("eval_seconds", 0.0), 2),
            "steps_per_s": round(stats["steps"] / seconds, 2) if seconds > 0 else None, **losses}  # fmt: skip


def evaluate_all(
    model, method, data: StreamData, config: EvalConfig, accelerator, learned: list[str] | None = None
) -> tuple[list[float], list]:
    """Score every task of the stream (trained or not): one row of the accuracy matrix.

    Tasks reach the method by name: `learned` lists the tasks behind its routers in order (default: the
    stream's own order), so a task is given the index of the learned task of the same name, and one not
    learned the index after the last (the methods serve it with the newest router)."""
    learned = data.names if learned is None else learned
    row, chosen = [], []
    for name, metric, test in zip(data.names, data.metrics, data.test, strict=True):
        task = Task(learned.index(name) if name in learned else len(learned), name)
        result = evaluate_task(model, method, task, test, metric, data.collator, config, accelerator)
        row.append(result.score)
        chosen.append(result.chosen)
    return row, chosen


def run_method(
    method: Method,
    model: nn.Module,
    data: StreamData,
    train_config: TrainConfig,
    eval_config: EvalConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    replay: int = 0,
    accelerator: Accelerator | None = None,
    on_step: StepCallback | None = None,
    checkpoint_info: dict | None = None,
) -> MethodResult:
    """Train `method` on the stream from `model` (a fresh copy of the base) and fill its accuracy matrix."""
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    set_seed(train_config.seed)
    method.setup(model)
    model.to(accelerator.device)
    result, start = MethodResult(), 0
    if resume and (last := latest_checkpoint(out_dir)) is not None:
        start = load_checkpoint(last, model, method, result) + 1
    track = RunLog(accelerator, method.name, train_config.seed)
    if start == 0:
        t0 = time.perf_counter()
        row, _ = evaluate_all(model, method, data, eval_config, accelerator)
        result.matrix, result.eval_seconds = [row], time.perf_counter() - t0
        track.stage(0, "base", 0, data.names, row, None)
    else:  # the trackers' step axis goes on where the checkpoint's tasks ended
        track.offset = sum(s["steps"] for s in result.stats)
    tasks = [(0, "+".join(data.names), [x for t in data.train for x in t])] if method.joint else [
        (i, name, train) for i, (name, train) in enumerate(zip(data.names, data.train, strict=True))
    ]  # fmt: skip
    if method.joint:
        train_config = train_config.joint(len(data.names))
    log = JsonLines(out_dir / "log.jsonl", accelerator.is_main_process, method=method.name, seed=train_config.seed)
    for index, name, examples in tasks[start:]:
        task = Task(index, name)
        step = (lambda s, n, losses, _name=name: on_step(_name, s, n, losses)) if on_step else None
        t0 = time.perf_counter()
        kept = replay_items(data.train, index, replay, train_config.seed)  # none for task 0 (and the joint bound)

        def on_log(record: dict, _name: str = name) -> None:
            log("step", task=_name, **record)
            track.step(record)

        def save(loop: LoopState, _index: int = index) -> None:
            if accelerator.is_main_process:
                save_checkpoint(out_dir, _index, model, method, result, checkpoint_info or {}, loop)

        restore = in_task_restore(out_dir, index, model, method) if resume and index == start else None
        stats = train_task(model, method, task, examples, data.collator.train_batch, train_config, accelerator, step,
                           on_log, replay=kept, save=save, restore=restore)  # fmt: skip
        if index == 0:  # counted as the papers count: what trains on the first task
            result.tunable, result.total = stats["tunable"], sum(p.numel() for p in model.parameters())
        result.train_seconds += time.perf_counter() - t0
        t0 = time.perf_counter()
        with gathered(model):  # a sharded base is gathered for generation
            row, result.chosen = evaluate_all(model, method, data, eval_config, accelerator)
        stats = {"task": name, **stats, "eval_seconds": time.perf_counter() - t0}
        result.eval_seconds += stats["eval_seconds"]
        rows = len(data.names) if method.joint else 1  # the joint bound: one model for every row
        result.matrix += [row] * rows
        result.stats.append(stats)
        log("task", **task_summary(stats))
        track.stage(index + 1, name, stats["steps"], data.names, row, result.selector_accuracy())
        if accelerator.is_main_process:
            save_checkpoint(out_dir, index, model, method, result, checkpoint_info or {})
            shutil.rmtree(out_dir / IN_TASK, ignore_errors=True)  # the task is done: its inner checkpoint is stale
            if train_config.keep == "last":
                drop_earlier_weights(out_dir, index)
    track.final(all_metrics(result.matrix), result.selector_accuracy())
    return result


def latest_checkpoint(out_dir: Path) -> Path | None:
    done = sorted(out_dir.glob("task-[0-9][0-9]"))
    return done[-1] if done else None


def save_checkpoint(
    out_dir: Path,
    index: int,
    model: nn.Module,
    method: Method,
    result: MethodResult,
    info: dict,
    loop: LoopState | None = None,
) -> Path:
    """DIR/task-XX/: adapters, projector, method state and the matrix, renamed into place when complete.

    `info` is what a later `predict` needs to rebuild the model (the base's name, the task names) and,
    from an experiment, the full config and the run's identity (see `require_same_run`).  With `loop` (a
    step inside task `index`), DIR/in-task/ instead, with the loop's state in loop.pt beside the rest."""
    name = f"task-{index:02d}" if loop is None else IN_TASK
    final, tmp = out_dir / name, out_dir / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_adapters(model, tmp)
    proj = projector(model)
    if proj is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in proj.state_dict().items()}
        save_file(tensors, str(tmp / "projector.safetensors"))
    torch.save(method.state_dict(), tmp / "method.pt")
    state = {"method": method.name, "task_index": index, "adapter": method.adapter.to_dict(),
             "options": vars(method.options), "result": vars(result), **info}  # fmt: skip
    write_json(tmp / "state.json", state)
    if loop is not None:
        torch.save(vars(loop), tmp / "loop.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def in_task_restore(out_dir: Path, index: int, model: nn.Module, method: Method) -> Callable[[], LoopState] | None:
    """What restores DIR/in-task/ into the model and method when it holds a step inside task `index` (None:
    the task starts from its beginning)."""
    folder = out_dir / IN_TASK
    if not (folder / "state.json").is_file() or read_state(folder)["task_index"] != index:
        return None

    def restore() -> LoopState:
        load_checkpoint(folder, model, method)
        saved = read_torch(folder / "loop.pt")
        try:
            return LoopState(**saved)
        except TypeError as err:
            raise CheckpointError(f"{folder / 'loop.pt'}: not a training loop's state ({err})") from None

    return restore


def drop_earlier_weights(out_dir: Path, index: int) -> None:
    """train.keep=last: the stages before `index` keep their state.json (the matrix so far) and whatever else
    they hold (predictions), not their adapters, projector and method state."""
    for folder in out_dir.glob("task-[0-9][0-9]"):
        if int(folder.name[5:]) < index:
            for name in WEIGHTS:
                (folder / name).unlink(missing_ok=True)


def read_state(folder: Path) -> dict:
    """DIR/state.json, checked for what loading needs: the method, its adapter and options, the task index."""
    path = folder / "state.json"
    state = read_json(path)
    for key, kind in (("method", str), ("task_index", int), ("adapter", dict), ("options", dict)):
        require(state, key, kind, path)
    return state


def require_same_run(out_dir: Path, expected: dict) -> None:
    """Refuse to resume from checkpoints of another run: `expected` is the identity `info["run"]` held
    (settings that change results, the seed and the task order); the message lists every difference."""
    last = latest_checkpoint(out_dir) or (out_dir / IN_TASK if (out_dir / IN_TASK).is_dir() else None)
    if last is None:
        return
    stored = read_json(last / "state.json").get("run")
    if stored is None:
        raise ValueError(f"{last / 'state.json'} records no run settings (an older version wrote it), so --resume "
                         "cannot check it matches; use --overwrite to start over")  # fmt: skip
    old, new = dict(_flat(stored)), dict(_flat(json.loads(json.dumps(expected))))  # tuples as lists, as stored
    keys = sorted(old.keys() | new.keys())
    differs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    if differs:
        raise ValueError(f"--resume: {out_dir} holds a run with other settings ({'; '.join(differs)}); "
                         "use the same settings, --overwrite, or another --out")  # fmt: skip


def _flat(tree: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def load_checkpoint(folder: Path, model: nn.Module, method: Method, result: MethodResult | None = None) -> int:
    """Restore a checkpoint into a model set up by `method`; returns the index of its task.

    A missing or corrupt file, or one saved for another model, raises CheckpointError naming it."""
    state = read_state(folder)
    load_adapters(model, folder)
    proj = projector(model)
    if proj is not None:
        path = folder / "projector.safetensors"
        saved = read_tensors(path)
        check_tensors(path, saved, proj.state_dict())
        device = next(proj.parameters()).device
        proj.load_state_dict({k: v.to(device) for k, v in saved.items()})
    path = folder / "method.pt"
    extra = read_torch(path)
    try:
        method.load_state_dict(extra)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: not the state of method {method.name!r} ({err!r})") from None
    if result is not None:
        for key, value in require(state, "result", dict, folder / "state.json").items():
            setattr(result, key, value)
    return state["task_index"]
