"""ProgLoRA's continual lifecycle: a new LoRA block and key per task, one allocator, task recall.

Per task t: every wrapped Linear gains block t and the allocator key t (a copy of key t-1); block t,
key t, the query MLP and the projector train, older blocks and keys are frozen.  Training uses the
allocation over all t+1 keys.  The math is in adapters/proglora.py.

Interpretations (the paper's text was not available; see research/baselines.md):
- Task recall ("realigning the model with learned tasks") is a test-time rule: a sample of task j is
  served by the model as it was when task j was trained, i.e. blocks 0..j mixed by one softmax over
  keys 0..j.  That is exactly the function trained for task j (up to drift of the shared query MLP
  and projector), whereas blocks j+1.. never saw task j.  `recall=False` mixes all blocks instead.
- Static ProgLoRA: j is the true task id (option task_identity="oracle", registered as
  `proglora-static`, or the evaluation's oracle flag).  Dynamic ProgLoRA (the default): j is the task
  whose key best matches the sample's query, argmax_i k_i . q.
- For the keys to recognise their tasks, an identity loss (cross-entropy of the allocation scores,
  weight `identity_weight`) pulls the current task's queries to key t, and, so that the shared query
  MLP does not forget older tasks, the stored mean pooled embedding of each earlier task (one d-vector
  per task, no data) to its own key.  At task 1 a softmax over one key is constant: its gradient is
  zero by the math, not because routing is cut from the graph.  The identity loss is ours: the paper's
  keys learn through the task loss alone, which `proglora-published` (identity_weight 0) reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from branchlora.adapters import TaskAllocator, inject_adapters
from branchlora.methods.base import MethodOptions, StepContext, Task, TaskRun
from branchlora.methods.blocks import PerTaskLoRA
from branchlora.methods.registry import register_method
from branchlora.models.parts import language_model


def identity_loss(logits: torch.Tensor, tasks: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the allocation scores (n, T) against each row's own task (n,)."""
    return F.cross_entropy(logits.float(), tasks)


@dataclass
class ProgLoRAOptions(MethodOptions):
    task_identity: str = field(
        default="infer", metadata={"help": "test-time task j: infer (dynamic, from the keys) or oracle (static)"}
    )
    recall: bool = field(default=True, metadata={"help": "at test time use blocks 0..j only (task recall)"})
    query_hidden: int = field(default=100, metadata={"help": "width of the query MLP W2 W1"})
    identity_weight: float = field(default=1.0, metadata={"help": "weight of the key identity loss"})

    def __post_init__(self) -> None:
        super().__post_init__()  # types and ranges of every field
        if self.task_identity not in ("infer", "oracle"):
            raise ValueError(f"task_identity must be infer or oracle, got {self.task_identity!r}")


@register_method("proglora", "ProgLoRA (dynamic): a LoRA block per task, task-aware allocation, task recall")
class ProgLoRAMethod(PerTaskLoRA):
    adapter_defaults = {"kind": "proglora", "init": "kaiming"}  # PEFT-style blocks
    Options = ProgLoRAOptions
    options: ProgLoRAOptions

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        self.allocator: TaskAllocator | None = None
        self.prototypes: list[torch.Tensor] = []  # (d,) mean pooled embedding of each learned task
        self._pooled: torch.Tensor | None = None  # (d + 1,) the current task's sum of e, and its count

    # ---- set-up: blocks in every target, one allocator on the language model ----------------------------
    def setup(self, model: nn.Module) -> None:
        inject_adapters(model, self.adapter)
        emb = model.get_input_embeddings()
        # float32 on a bf16 base, as the adapters: it trains, and its keys stay as their tasks left them
        self.allocator = TaskAllocator(emb.embedding_dim, self.options.query_hidden, device=emb.weight.device)
        self.allocator.recall = self.options.recall
        model.add_module("proglora_allocator", self.allocator)  # moves, trains and counts with the model
        self.allocator.attach(language_model(model), self.blocks(model)[0].context)
        self.set_trainable(model)

    def set_trainable(self, model: nn.Module) -> None:
        super().set_trainable(model)
        self.allocator.mark_trainable()

    def on_task_start(self, model: nn.Module, task: Task) -> None:
        while self.allocator.n_keys <= task.index:
            self.allocator.add_key()
        super().on_task_start(model, task)  # a block per layer, and what trains
        self._pooled = None

    def train_task_ids(self, task: Task) -> int:
        return task.index  # every key so far is visible: one softmax over t + 1

    # ---- each step: the identity loss on this batch's queries and the earlier tasks' prototypes -----------
    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        e = self.allocator.last_pooled  # (B, d), from this step's forward
        step = torch.cat([e.float().sum(0), e.new_tensor([e.shape[0]], dtype=torch.float)])  # (d + 1,)
        self._pooled = step if self._pooled is None else self._pooled + step
        t = ctx.task.index
        if self.options.identity_weight == 0 or t == 0:
            return  # one key: the allocation is constant
        old = torch.stack(self.prototypes[:t]).to(e) if self.prototypes else e[:0]  # (t, d): tasks 0..t-1
        inputs = torch.cat([e, old])  # (B + t, d)
        tasks = torch.cat([torch.full((e.shape[0],), t), torch.arange(old.shape[0])]).to(e.device)
        ctx.add_loss("identity", self.options.identity_weight * identity_loss(self.allocator.logits(inputs), tasks))

    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        if self._pooled is None:
            return
        total = run.mean(self._pooled)  # processes saw different shards: agree on one prototype
        self.prototypes.append((total[:-1] / total[-1]).cpu())
        self._pooled = None

    # ---- test time: j given (static) or inferred by the allocator from the keys (dynamic) -----------------
    def eval_task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task: Task, oracle: bool = False
    ) -> int | None:
        if oracle or self.options.task_identity == "oracle":
            return min(task.index, self.allocator.n_keys - 1)
        return None

    def state_dict(self) -> dict:
        """Keys, query MLP, prototypes and, inside a task (train.save_every), its pooled embeddings so far."""
        allocator = {k: v.detach().cpu() for k, v in self.allocator.state_dict().items()}
        state = {"n_keys": self.allocator.n_keys, "allocator": allocator, "prototypes": list(self.prototypes)}
        if self._pooled is not None:
            state["pooled"] = self._pooled.cpu()
        return state

    def load_state_dict(self, state: dict) -> None:
        while self.allocator.n_keys < state["n_keys"]:
            self.allocator.add_key()
        self.allocator.load_state_dict(state["allocator"])
        self.prototypes = list(state["prototypes"])
        if "pooled" in state:  # resumed inside a task
            self._pooled = state["pooled"].to(self.allocator.w1.weight.device)


@register_method("proglora-static", "ProgLoRA (static): the true task id picks the recalled blocks")
class StaticProgLoRA(ProgLoRAMethod):
    option_defaults = {"task_identity": "oracle"}


@register_method("proglora-published", "ProgLoRA (dynamic) as published: no identity loss on the keys")
class PublishedProgLoRA(ProgLoRAMethod):
    option_defaults = {"identity_weight": 0.0}
