"""Scoring a model on a task: batched greedy generation, routing computed once at prefill."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from statistics import mean

import torch
from accelerate import Accelerator
from torch import nn

from branchlora.adapters import routing_context
from branchlora.batch import model_inputs
from branchlora.evaluation.scorers import score
from branchlora.methods.base import Method, Task, chosen_tasks
from branchlora.models.family import sample_rows
from branchlora.typed import check_fields


@dataclass
class EvalConfig:
    """How every task is scored after every stage."""

    batch_size: int = field(default=32, metadata={"help": "prompts per generate call", "min": 1})
    max_new_tokens: int = field(default=24, metadata={"help": "generation budget per answer", "min": 1})
    limit: int = field(default=0, metadata={"help": "test items per task (0: all)", "min": 0})
    oracle: bool = field(default=False, metadata={"help": "give routed methods the true task id"})

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TaskScore:
    score: float  # 0-100
    predictions: list[str]
    chosen: list[int]  # the task router the method chose per sample (empty when it does not choose)


@torch.no_grad()
def evaluate_task(
    model: nn.Module,
    method: Method,
    task: Task,
    examples: Sequence,
    metric: str,
    collator,
    config: EvalConfig,
    accelerator: Accelerator,
) -> TaskScore:
    """Generate an answer for each test example and score it with the task's metric."""
    model.eval()
    examples = examples[: config.limit] if config.limit else examples
    scores, predictions, chosen = [], [], []
    for start in range(0, len(examples), config.batch_size):
        chunk = examples[start : start + config.batch_size]
        batch = {k: v.to(accelerator.device) for k, v in collator.prompt_batch(chunk).items()}
        task_ids = method.eval_task_ids(model, batch, task, oracle=config.oracle)
        chosen += chosen_tasks(task_ids)
        with (
            routing_context(
                model, task_ids, batch["attention_mask"], reuse=True, rows=partial(sample_rows, model, batch)
            ),
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
        predictions += answers
        scores += [score(metric, answer, example) for answer, example in zip(answers, chunk, strict=True)]
    return TaskScore(100.0 * mean(scores), predictions, chosen)
