"""One method through a task stream: train task after task, score every task after each, checkpoint.

    row 0 <- evaluate(all tasks)                       (the base before any task: once per run, see run_method)
    for t in tasks:  train_task(t); row t <- evaluate(all tasks); checkpoint(t)

With eval.future off only the tasks learned so far are scored (CoIN's and MCITlib's protocol): row 0 and the
upper triangle hold None.  Every stage's answers are kept, one JSON Lines file per task:
<method folder>/predictions/stage-XX/<task>.jsonl (stage 00 = the base, stage t = after task t), records
{question_id, prompt, text, answer, score[, router]} that LLaVA's and CoIN's eval scripts read.

Checkpoints (adapters, projector, method state, the matrix so far) are written to a temporary folder
and renamed into place, so a killed run leaves only complete ones; `resume` continues after the last.
Each task reseeds from the run's seed, so a resumed run ends with the same matrix as an unbroken one.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save_file
from torch import nn

from branchlora.adapters import load_adapters, save_adapters
from branchlora.atomic import WriteError, atomic_path, write_json
from branchlora.evaluation.evaluate import EvalConfig, TaskScore, evaluate_task, prediction_records
from branchlora.evaluation.metrics import all_metrics, upper_masked
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
    budgets: list[int | None] = field(default_factory=list)  # per task max_new_tokens (None or empty: eval's)


@dataclass
class MethodResult:
    matrix: list[list[float | None]] = field(default_factory=list)  # None: not scored (eval.future off)
    chosen: list[list[int]] = field(default_factory=list)  # the last row's router choice per test sample
    tunable: int = 0
    total: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    stats: list[dict] = field(default_factory=list)

    def to_json(self, n_tasks: int) -> dict:
        out = {
            "matrix": [[None if x is None else round(x, 4) for x in row] for row in self.matrix],
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
    model,
    method: Method | None,
    data: StreamData,
    config: EvalConfig,
    accelerator,
    learned: list[str] | None = None,
    only: Collection[str] | None = None,
) -> dict[str, TaskScore]:
    """Score the stream's tasks (those in `only`, default all, trained or not): a row of the accuracy matrix.

    Tasks reach the method by name: `learned` lists the tasks behind its routers in order (default: the
    stream's own order), so a task is given the index of the learned task of the same name, and one not
    learned the index after the last (the methods serve it with the newest router).  `method` None: the
    model as it is, before any method wraps it."""
    learned = data.names if learned is None else learned
    budgets = data.budgets or [None] * len(data.names)
    scores = {}
    for name, metric, test, budget in zip(data.names, data.metrics, data.test, budgets, strict=True):
        if only is None or name in only:
            task = Task(learned.index(name) if name in learned else len(learned), name)
            own = replace(config, max_new_tokens=budget) if budget else config
            scores[name] = evaluate_task(model, method, task, test, metric, data.collator, own, accelerator)
    return scores


def row_of(scores: dict[str, TaskScore], names: list[str]) -> list[float | None]:
    return [scores[name].score if name in scores else None for name in names]


def score_base(
    model: nn.Module, data: StreamData, config: EvalConfig, accelerator, cache: dict[str, TaskScore] | None
) -> dict[str, TaskScore]:
    """Row 0: the base before a method wraps it, so the same for every method and seed (a method's untrained
    adapters add exact zeros, which tests/test_eval_split.py checks for every registered method).  `cache`
    holds the base's scores by task name across the calls of a run: each task is scored once."""
    cache = {} if cache is None else cache
    wanted = data.names if config.future else []
    missing = [name for name in wanted if name not in cache]
    if missing:
        model.to(accelerator.device)
        cache.update(evaluate_all(model, None, data, config, accelerator, only=missing))
    return {name: cache[name] for name in wanted}


def write_predictions(out_dir: Path, stage: int, scores: dict[str, TaskScore], routers: list[str]) -> None:
    """<out_dir>/predictions/stage-XX/<task>.jsonl, each written whole (atomically); main process only.

    A task whose metric has parts or no offline score also gets <task>.score.json: {score, details, note}."""
    for name, result in scores.items():
        folder = out_dir / "predictions" / f"stage-{stage:02d}"
        with atomic_path(folder / f"{name}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in prediction_records(result, routers)))
        if result.details or result.note:
            write_json(folder / f"{name}.score.json", {"score": result.score, "details": result.details,
                                                       "note": result.note})  # fmt: skip


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
    base_scores: dict[str, TaskScore] | None = None,
) -> MethodResult:
    """Train `method` on the stream from `model` (a fresh copy of the base) and fill its accuracy matrix.

    `base_scores`: row 0's scores by task, shared by the calls of a run (see score_base)."""
    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    last = latest_checkpoint(out_dir) if resume else None
    t0 = time.perf_counter()
    base = None if last is not None else score_base(model, data, eval_config, accelerator, base_scores)
    base_seconds = time.perf_counter() - t0
    set_seed(train_config.seed)
    method.setup(model)
    model.to(accelerator.device)
    result, start = MethodResult(), 0
    if last is not None:
        start = load_checkpoint(last, model, method, result) + 1
    track = RunLog(accelerator, method.name, train_config.seed)
    if base is not None:
        row = row_of(base, data.names)
        result.matrix, result.eval_seconds = [row], base_seconds
        if main:
            write_predictions(out_dir, 0, base, data.names)
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
        rows = len(data.names) if method.joint else 1  # the joint bound: one model for every row
        scored = data.names if eval_config.future or method.joint else data.names[: index + 1]
        with gathered(model):  # a sharded base is gathered for generation
            scores = evaluate_all(model, method, data, eval_config, accelerator, only=scored)
        row, result.chosen = row_of(scores, data.names), [s.chosen for s in scores.values()]
        if main:
            write_predictions(out_dir, index + rows, scores, data.names)
        stats = {"task": name, **stats, "eval_seconds": time.perf_counter() - t0}
        result.eval_seconds += stats["eval_seconds"]
        stages = range(index + 1, index + 1 + rows)
        result.matrix += [row if eval_config.future else upper_masked(row, stage) for stage in stages]
        result.stats.append(stats)
        log("task", **task_summary(stats))
        track.stage(index + 1, name, stats["steps"], data.names, row, result.selector_accuracy())
        if main:
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
    try:
        _write_checkpoint(tmp, index, model, method, result, info, loop)
    except (OSError, WriteError) as err:  # a full disk: the half-written folder goes, the earlier ones stay
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(out_dir)
        why = err.strerror if isinstance(err, OSError) else err.reason
        then = (f"the last complete one, {str(kept)!r}, is kept: free space, then continue with --resume" if kept
                else "there is no earlier one: free space, then run again")  # fmt: skip
        raise WriteError(f"cannot write the checkpoint {str(final)!r}: {why}; {then}", why) from None
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def _write_checkpoint(
    tmp: Path, index: int, model: nn.Module, method: Method, result: MethodResult, info: dict, loop: LoopState | None
) -> None:
    tmp.mkdir(parents=True)
    save_adapters(model, tmp)
    proj = projector(model)
    if proj is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in proj.state_dict().items()}
        save_file(tensors, str(tmp / "projector.safetensors"))
    _save_torch(method.state_dict(), tmp / "method.pt")
    state = {"method": method.name, "task_index": index, "adapter": method.adapter.to_dict(),
             "options": vars(method.options), "result": vars(result), **info}  # fmt: skip
    write_json(tmp / "state.json", state)
    if loop is not None:
        _save_torch(vars(loop), tmp / "loop.pt")


def _save_torch(obj: object, path: Path) -> None:
    """torch.save straight to the file (a copy in memory would double a 7B method state's host memory); its
    zip writer reports a failed write, such as a full disk, as a RuntimeError ("unexpected pos"), which becomes
    the OSError the checkpoint's one-line error is made from."""
    try:
        torch.save(obj, path)
    except RuntimeError as err:
        raise OSError(errno.EIO, f"torch.save could not write the file ({err}); is the disk full?") from None


def in_task_restore(out_dir: Path, index: int, model: nn.Module, method: Method) -> Callable[[], LoopState] | None:
    """What restores DIR/in-task/ into the model and method when it holds a step inside task `index` (None:
    the task starts from its beginning)."""
    folder = out_dir / IN_TASK
    if not (folder / "state.json").is_file() or read_state(folder)["task_index"] != index:
        return None

    def restore() -> LoopState:
        # What trains is what the method chose at task start (BranchLoRA's frozen trunk): loading the adapters'
        # structure marks their own parts trainable again, and the optimizer's groups would not be the saved ones.
        trains = {name: p.requires_grad for name, p in model.named_parameters()}
        load_checkpoint(folder, model, method)
        for name, p in model.named_parameters():
            p.requires_grad_(trains.get(name, p.requires_grad))
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
        for name, param in proj.named_parameters():  # a trained projector is float32 beside a bf16 base (see
            if saved[name].dtype == torch.float32 and param.dtype != torch.float32:  # train.float32_groups):
                param.data = param.data.float()  # loading it into bf16 would round the resumed run away
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
