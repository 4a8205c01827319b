"""Scoring a model on a task: batched greedy generation, routing computed once at prefill.

Several processes split a task's batches between them (whole batches, contiguous, so each batch holds the
same items as on one process and a row does not depend on the process count); the answers are gathered
back in item order and every process scores the whole list, so each ends with the same score.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from branchlora.adapters import routing_context
from branchlora.batch import model_inputs
from branchlora.evaluation.scorers import score_task
from branchlora.methods.base import Method, Task, chosen_tasks
from branchlora.models.family import sample_rows
from branchlora.typed import check_fields

LIMIT_SEED = 0  # eval.limit's subset: fixed, so every method, seed, stage and `evaluate --limit` scores the same items


@dataclass
class EvalConfig:
    """How every task is scored after every stage."""

    batch_size: int = field(default=32, metadata={"help": "prompts per generate call", "min": 1})
    max_new_tokens: int = field(default=24, metadata={"help": "generation budget per answer", "min": 1})
    limit: int = field(
        default=0, metadata={"help": "test items per task, a random subset drawn with a fixed seed (0: all)", "min": 0}
    )
    oracle: bool = field(default=False, metadata={"help": "give routed methods the true task id"})
    future: bool = field(
        default=True,
        metadata={"help": "also score tasks not learned yet (the matrix's upper triangle and row 0; FWT needs them)"},
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TaskScore:
    score: float | None  # 0-100 as the task's metric scores it (`score_task`); None: not scorable offline
    predictions: list[str]
    chosen: list[int]  # the task router the method chose per sample (empty when it does not choose)
    scores: list[float | None] = field(default_factory=list)  # per item, 0-1 (None: no per-item score)
    examples: list = field(default_factory=list)  # the items scored (eval.limit's subset), in order
    details: dict[str, float] = field(default_factory=dict)  # the metric's parts (BLEU-1..4, a 2D / 3D split)
    note: str = ""  # where `score` is None: what scores the task instead


def eval_subset(examples: Sequence, limit: int, seed: int = LIMIT_SEED) -> list:
    """`limit` items drawn at random with `seed`, kept in the file's order (all of them when limit is 0)."""
    if not limit or limit >= len(examples):
        return list(examples)
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), limit))]


@torch.no_grad()
def evaluate_task(
    model: nn.Module,
    method: Method | None,
    task: Task,
    examples: Sequence,
    metric: str,
    collator,
    config: EvalConfig,
    accelerator: Accelerator,
) -> TaskScore:
    """Generate an answer for each test example and score the task with its metric (`score_task`).

    `method` None scores the model as it is (the base before any method wraps it: no router to choose).
    `config.max_new_tokens` is this task's budget (continual.evaluate_all applies a task's own)."""
    model.eval()
    examples = eval_subset(examples, config.limit)
    batches = [examples[start : start + config.batch_size] for start in range(0, len(examples), config.batch_size)]
    answered = []  # (answer, chosen router or None) per item of this process's batches
    with accelerator.split_between_processes(batches) as mine:
        for chunk in mine:
            answered += _answer(model, method, task, chunk, collator, config, accelerator)
    answered = gather_object(answered)  # every process's, in process order: the items' order
    predictions = [answer for answer, _ in answered]
    chosen = [c for _, c in answered if c is not None]
    scored = score_task(metric, predictions, examples)
    return TaskScore(scored.score, predictions, chosen, scored.items, examples, scored.details, scored.note)


def _answer(model, method, task, chunk, collator, config, accelerator) -> list[tuple[str, int | None]]:
    batch = {k: v.to(accelerator.device) for k, v in collator.prompt_batch(chunk).items()}
    with accelerator.autocast():  # the selector runs the model as the answer's forward does
        task_ids = method.eval_task_ids(model, batch, task, oracle=config.oracle) if method is not None else None
    with (
        routing_context(model, task_ids, batch["attention_mask"], reuse=True, rows=partial(sample_rows, model, batch)),
        accelerator.autocast(),
    ):
        out = model.generate(
            **model_inputs(batch),
            max_new_tokens=config.max_new_tokens,
            do_sample=False,
            pad_token_id=collator.pad_id,
            eos_token_id=collator.eos_id,
        )
    answers = collator.decode(out[:, batch["input_ids"].shape[1] :])
    return list(zip(answers, chosen_tasks(task_ids) or [None] * len(answers), strict=True))


def prediction_records(result: TaskScore, routers: Sequence[str]) -> list[dict]:
    """One auditable record per scored item, with the keys LLaVA's and CoIN's answer files use (question_id,
    prompt, text), so their official eval scripts re-score it; plus the reference answer, our score (0-1)
    and, when the method chose, the task whose router served the item (`routers[i]` names router i)."""
    routed = iter(result.chosen)
    records = []
    for example, text, item_score in zip(result.examples, result.predictions, result.scores, strict=True):
        record = {"question_id": example.question_id, "prompt": example.instruction, "text": text,
                  "answer": example.answer, "score": item_score}  # fmt: skip
        if result.chosen:
            chosen = next(routed)
            record["router"] = routers[chosen] if chosen < len(routers) else chosen
        records.append(record)
    return records
