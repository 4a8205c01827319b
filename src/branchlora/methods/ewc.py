"""EWC on top of LoRA: a diagonal-Fisher penalty keeps the parameters that mattered for old tasks near
where those tasks left them.  "separate" keeps one term per task; "online" keeps one decayed sum.

The Fisher is estimated at task end from per-sample gradients over the first `fisher_batches` batches of the
task (32 by default: one forward and backward per sample over a whole CoIN task would cost as much as its
training), and accumulated in float32 whatever the parameters' dtype (a gradient of 1e-4 squares to 0 in
fp16).  The state (anchors, Fisher) follows the parameters' device on first use, so a run resumed from a
checkpoint (read on the CPU) penalises GPU parameters without a device error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from branchlora.batch import samples
from branchlora.methods.base import Method, MethodOptions, StepContext, Task, TaskRun
from branchlora.methods.registry import register_method

Tensors = dict[str, torch.Tensor]


def ewc_penalty(params: Tensors, anchors: Tensors, fisher: Tensors) -> torch.Tensor:
    """sum_i F_i (theta_i - theta*_i)^2 over the named parameters (the caller applies lambda / 2)."""
    terms = [(fisher[n] * (params[n] - anchors[n]).square()).sum() for n in fisher]
    return torch.stack(terms).sum()


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the parameters' dtype when it is wider: squared half-precision gradients underflow."""
    return torch.promote_types(dtype, torch.float32)


def placed(anchors: Tensors, fisher: Tensors, params: Tensors) -> tuple[Tensors, Tensors]:
    """(anchors, fisher) on each parameter's device: anchors in its dtype, the Fisher in float32 or wider.

    `Tensor.to` returns the tensor itself when it is already there, so calling this every step copies nothing
    after the first."""
    anchors = {n: a.to(params[n].device, params[n].dtype) for n, a in anchors.items()}
    fisher = {n: f.to(params[n].device, accumulation_dtype(params[n].dtype)) for n, f in fisher.items()}
    return anchors, fisher


def empirical_fisher(model: nn.Module, params: dict[str, nn.Parameter], run: TaskRun, max_batches: int) -> Tensors:
    """The diagonal empirical Fisher: the mean over samples of each sample's squared loss gradient.

    Per sample, not per batch: the square of a batch-mean gradient is smaller by about the batch size (and
    would make lambda depend on it).  One forward and backward per sample, at task end only, over the first
    `max_batches` batches (0: all); the sum is kept in float32 or wider.
    """
    fisher = {n: torch.zeros_like(p, dtype=accumulation_dtype(p.dtype)) for n, p in params.items()}
    n = 0
    for i, batch in enumerate(run.batches()):
        if max_batches and i >= max_batches:
            break
        for sample in samples(batch):
            model.zero_grad(set_to_none=True)
            run.forward(model, sample).loss.backward()
            for name, p in params.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().to(fisher[name].dtype).square()
            n += 1
    model.zero_grad(set_to_none=True)
    return {name: f / max(n, 1) for name, f in fisher.items()}


@dataclass
class EWCOptions(MethodOptions):
    ewc_lambda: float = field(default=1000.0, metadata={"help": "weight lambda of (lambda/2) sum F (d theta)^2"})
    mode: str = field(default="separate", metadata={"help": "separate (a term per task) or online"})
    gamma: float = field(default=1.0, metadata={"help": "online mode: decay of the old Fisher"})
    fisher_batches: int = field(
        default=32, metadata={"help": "first batches of a task for its Fisher (0: all); per-sample gradients", "min": 0}
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # types and ranges of every field
        if self.mode not in ("separate", "online"):
            raise ValueError(f"EWC mode must be 'separate' or 'online', got {self.mode!r}")


@register_method("ewc", "EWC on LoRA: diagonal-Fisher penalty towards earlier tasks' parameters")
class EWC(Method):
    Options = EWCOptions
    options: EWCOptions

    def __init__(self, adapter: dict | None = None, options: dict | None = None) -> None:
        super().__init__(adapter, options)
        self.terms: list[tuple[Tensors, Tensors]] = []  # (anchors, fisher) per task, or one when online

    def extra_loss(self, model: nn.Module, ctx: StepContext) -> None:
        if not self.terms:
            return
        params = dict(model.named_parameters())
        self.terms = [placed(anchors, fisher, params) for anchors, fisher in self.terms]  # after --resume: CPU
        penalty = sum(ewc_penalty(params, anchors, fisher) for anchors, fisher in self.terms)
        ctx.add_loss("ewc", 0.5 * self.options.ewc_lambda * penalty)

    def on_task_end(self, model: nn.Module, task: Task, run: TaskRun) -> None:
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fisher = empirical_fisher(model, params, run, self.options.fisher_batches)
        fisher = {n: run.mean(f) for n, f in fisher.items()}  # one Fisher for every process
        anchors = {n: p.detach().clone() for n, p in params.items()}
        if self.options.mode == "online" and self.terms:
            old = self.terms[0][1]
            fisher = {n: self.options.gamma * old[n].to(f) + f for n, f in fisher.items()}
            self.terms = []
        self.terms.append((anchors, fisher))

    def state_dict(self) -> dict:
        return {"terms": self.terms}

    def load_state_dict(self, state: dict) -> None:
        self.terms = state["terms"]
