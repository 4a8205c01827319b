"""Using a saved checkpoint: rebuild the model, answer one question, or score a benchmark."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from branchlora.adapters import routing_context
from branchlora.batch import model_inputs
from branchlora.continual import StreamData, evaluate_all, latest_checkpoint, load_checkpoint, read_state
from branchlora.data.benchmark import TestExample, strip_marker
from branchlora.data.collate import Collator
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.files import CheckpointError, require
from branchlora.methods import Method, Task, get_method
from branchlora.methods.base import chosen_tasks
from branchlora.models.family import sample_rows
from branchlora.models.loading import ModelConfig, load_base_from, make_collator, run_dtype
from branchlora.typed import build


@dataclass
class Loaded:
    model: torch.nn.Module
    method: Method
    collator: Collator
    tasks: list[str]  # the tasks it has learned, in order: router t serves tasks[t]
    folder: Path
    mixed_precision: str = "no"  # the run's train.mixed_precision: the base's dtype and autocast at inference


def resolve_checkpoint(path: str | Path) -> Path:
    """A task checkpoint folder, or a method folder (its last complete task); a clear error otherwise."""
    path = Path(path)
    if (path / "state.json").is_file():
        return path
    if path.is_dir() and (last := latest_checkpoint(path)) is not None:
        return last
    raise FileNotFoundError(
        f"{str(path)!r} is not a checkpoint: expected a folder with state.json (e.g. runs/default/branchlora/task-07) "
        "or a method folder holding task-XX checkpoints"
    )


def load_trained(path: str | Path) -> Loaded:
    """The model of a checkpoint, its method, and the tasks it has learned; errors name the file at fault."""
    folder = resolve_checkpoint(path)
    state = read_state(folder)
    settings = state.get("config") or {}  # the run's config, when an experiment wrote the checkpoint
    mixed = settings.get("train", {}).get("mixed_precision", "no")
    try:  # what state.json names: its method and options, then its base (an HF id may be out of reach)
        method = get_method(state["method"])(state["adapter"], state["options"])
        options = build(ModelConfig, settings.get("model", {}), "model")
        model, processor = load_base_from(state.get("base", "tiny"), state.get("base_options"), model=options,
                                          dtype=run_dtype(mixed))  # fmt: skip
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{str(folder / 'state.json')!r}: {err}") from None
    learned = learned_tasks(state, method, folder / "state.json")
    method.setup(model)
    load_checkpoint(folder, model, method)
    model.eval()
    return Loaded(model, method, make_collator(processor, model.config, options), learned, folder, mixed)


def learned_tasks(state: dict, method: Method, path: Path) -> list[str]:
    """The tasks behind the method's routers, in order: state.json's "tasks" is the whole stream, of
    which a checkpoint after task i has learned the first i + 1 (a joint method: all of them at once)."""
    tasks, index = require(state, "tasks", list, path), state["task_index"]
    if len(tasks) <= index or not all(isinstance(t, str) for t in tasks):
        raise CheckpointError(f"{str(path)!r}: field 'tasks' {tasks!r} is not a list of task names up to task {index}")
    return tasks if method.joint else tasks[: index + 1]


@torch.no_grad()
def predict(loaded: Loaded, image: Path, prompt: str, task: str | None = None, max_new_tokens: int = 32) -> dict:
    """The answer to one question; which task router served it, chosen by the selector unless `task` is given."""
    example = TestExample(
        "predict", Path(image), prompt_text(prompt), "", where=f"--image {str(image)!r} with --prompt"
    )
    batch = loaded.collator.prompt_batch([example])
    index = _task_index(loaded, task) if task else len(loaded.tasks) - 1
    device = loaded.model.device.type
    # As the run evaluated: float32 trainables beside a bf16 base, the selector's passes as the answer's forward.
    autocast = partial(torch.autocast, device, dtype=run_dtype(loaded.mixed_precision),
                       enabled=loaded.mixed_precision == "bf16")  # fmt: skip
    with autocast():
        task_ids = loaded.method.eval_task_ids(loaded.model, batch, Task(index, task or ""), oracle=task is not None)
        scores = None if task else loaded.method.task_similarity(loaded.model, batch)
    if task and task_ids is None:  # the method serves every task with one adapter: say so, do not pretend
        raise ValueError(f"--task {task!r}: method {loaded.method.name} has no task routers (one adapter serves "
                         "every task), so choosing a task changes nothing; leave --task out")  # fmt: skip
    rows = partial(sample_rows, loaded.model, batch)
    with routing_context(loaded.model, task_ids, batch["attention_mask"], reuse=True, rows=rows), autocast():
        out = loaded.model.generate(
            **model_inputs(batch), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=loaded.collator.pad_id, eos_token_id=loaded.collator.eos_id,
        )  # fmt: skip
    answer = loaded.collator.decode(out[:, batch["input_ids"].shape[1] :])[0]
    chosen = (chosen_tasks(task_ids) or [task_ids])[0]
    names = loaded.tasks
    result = {"answer": answer, "task": names[chosen] if chosen is not None and chosen < len(names) else None}
    if scores is not None:
        result["similarity"] = {names[t]: round(float(s), 4) for t, s in enumerate(scores[0]) if t < len(names)}
    return result


def prompt_text(prompt: str) -> str:
    """The instruction as a benchmark item holds it: LLaVA's "<image>" marker removed (a prompt copied from a CoIN
    file carries it, and the collator places the image itself: a second marker would ask for a second image)."""
    text = strip_marker(prompt)
    if not text:
        what = "is empty" if not prompt.strip() else f"{prompt!r} holds nothing besides the <image> marker"
        raise ValueError(f"--prompt {what}: give the instruction to answer")
    return text


def _task_index(loaded: Loaded, task: str) -> int:
    if task not in loaded.tasks:
        raise ValueError(f"task {task!r} is not one this checkpoint has learned; it learned: {', '.join(loaded.tasks)}")
    return loaded.tasks.index(task)


def evaluate_checkpoint(loaded: Loaded, bench, config: EvalConfig) -> dict:
    """Score every task of `bench`, matched by name to the tasks the checkpoint learned: the oracle serves a
    task with its own router, and the selector is right when it picks the router of the sample's task.
    Tasks the checkpoint never learned are scored (the oracle serves them with the newest router) but
    cannot count for the selector: they are listed under "not_learned"."""
    names = bench.task_names
    data = StreamData(names, [bench.task(n).metric for n in names], [[] for _ in names],
                      [bench.test_examples(n) for n in names], loaded.collator,
                      [bench.task(n).max_new_tokens for n in names])  # fmt: skip
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=loaded.mixed_precision)
    loaded.model.to(accelerator.device)
    scored = evaluate_all(loaded.model, loaded.method, data, config, accelerator, learned=loaded.tasks)
    row, chosen = [s.score for s in scored.values()], [s.chosen for s in scored.values()]
    scores = dict(zip(names, (None if x is None else round(x, 2) for x in row), strict=True))
    mean = None if None in row else round(sum(row) / len(row), 2)  # None: a task not scorable offline
    out = {"checkpoint": str(loaded.folder), "scores": scores, "mean": mean}
    if not_learned := [name for name in names if name not in loaded.tasks]:
        out["not_learned"] = not_learned
    routed = [(name, loaded.tasks[j]) for name, c in zip(names, chosen, strict=True) if name in loaded.tasks for j in c]
    if routed:
        out["selector_accuracy"] = round(100.0 * sum(true == picked for true, picked in routed) / len(routed), 2)
    return out
