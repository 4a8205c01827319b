"""ProgLoRA (Findings of ACL 2025): a progressive pool of LoRA blocks, one per task, mixed by a task allocator.

    e     = max over the non-padding positions of the multimodal input embeddings     (B, d)
    q     = LayerNorm(SiLU(W2 W1 e)),   W1: d -> 100, W2: 100 -> d, no bias             (B, d)
    alpha = softmax_i(k_i . q / sqrt(d)) over the keys i = 0..j                         (B, T)
    y     = W0 x + s * sum_i alpha_i B_i A_i dropout(x),   A_i: (r, d_in), B_i: (d_out, r), s = alpha / r

One allocation per sequence, computed once per model forward by `TaskAllocator` (a forward pre-hook on
the language model) and shared with every wrapped Linear through the RoutingContext; during cached
generation the prefill's allocation serves every decoding step.  `j` is the newest task while training
and the recalled task at test time (see methods/proglora.py).  A single softmax spans every visible
key (no separately shifted groups), so at batch 1 the newest block does not tie for the top weight.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from branchlora.adapters.base import RoutingContext
from branchlora.adapters.tasklora import TaskLoRA


def max_pool(embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """(B, L, d), (B, L) -> (B, d): the maximum over the non-padding positions of each sequence."""
    if mask is None:
        return embeds.amax(dim=1)
    return embeds.masked_fill(~mask.bool().unsqueeze(-1), -math.inf).amax(dim=1)


def allocation(logits: torch.Tensor, task_ids: int | torch.Tensor | None, recall: bool) -> torch.Tensor:
    """(B, T) scores -> (B, T) weights that sum to one: one softmax over the keys 0..j of each sample.

    j is `task_ids` when given (training: the newest task; static test: the true task), else, with
    recall, the best-matching key (dynamic test), else the newest key (plain soft allocation).
    """
    n_keys = logits.shape[-1]
    if task_ids is None:
        if not recall:
            return torch.softmax(logits, dim=-1)
        task_ids = logits.argmax(dim=-1)  # (B,) the task the keys recognise
    j = torch.as_tensor(task_ids, device=logits.device).clamp(max=n_keys - 1).reshape(-1, 1)  # (B or 1, 1)
    visible = torch.arange(n_keys, device=logits.device) <= j  # (B or 1, T)
    return torch.softmax(logits.masked_fill(~visible, -math.inf), dim=-1)


class TaskAllocator(nn.Module):
    """The query MLP and the per-task keys; writes each forward's allocation into the shared context."""

    def __init__(self, d: int, hidden: int = 100, device=None, dtype=None) -> None:
        super().__init__()
        f = {"device": device, "dtype": dtype}
        self.w1 = nn.Linear(d, hidden, bias=False, **f)
        self.w2 = nn.Linear(hidden, d, bias=False, **f)
        self.norm = nn.LayerNorm(d, **f)
        self.keys = nn.ParameterList()  # one (d,) key per task
        self.recall = True
        self.context = RoutingContext()  # the adapters' shared context, set by `attach`
        self.last_pooled: torch.Tensor | None = None  # (B, d) e of the latest forward, detached
        self.add_key()

    @property
    def n_keys(self) -> int:
        return len(self.keys)

    def add_key(self) -> None:
        """A key for a new task: a copy of the previous one (N(0, 1) for the first); old keys freeze."""
        w = self.w1.weight
        new = self.keys[-1].detach().clone() if self.keys else torch.randn(w.shape[1], dtype=w.dtype).to(w.device)
        for old in self.keys:
            old.requires_grad_(False)
        self.keys.append(nn.Parameter(new))

    def mark_trainable(self) -> None:
        """The query MLP and the newest key train; older keys stay as their tasks left them."""
        self.requires_grad_(True)
        for key in self.keys[:-1]:
            key.requires_grad_(False)

    def logits(self, e: torch.Tensor) -> torch.Tensor:
        """(B, d) pooled embeddings -> (B, T) scaled scores k_i . q / sqrt(d)."""
        q = self.norm(F.silu(self.w2(self.w1(e.to(self.w1.weight.dtype)))))  # (B, d)
        return q @ torch.stack(tuple(self.keys)).t() / math.sqrt(q.shape[-1])

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L, d) input embeddings -> (B, T) allocation for the context's task ids."""
        e = max_pool(embeds, mask)  # (B, d)
        self.last_pooled = e.detach()
        return allocation(self.logits(e).float(), self.context.task_ids, self.recall)

    def attach(self, language_model: nn.Module, context: RoutingContext) -> torch.utils.hooks.RemovableHandle:
        """Compute the allocation before each language-model forward from its input embeddings."""
        self.context = context
        return language_model.register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ctx = self.context
        if ctx.allocation is not None and (ctx.reuse or _decoding(kwargs)):
            return  # a decoding step: keep the prefill's allocation, never the newest token's
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            embeds = module.get_input_embeddings()(ids)
        mask = next((m for m in (ctx.attention_mask, kwargs.get("attention_mask"))
                     if m is not None and m.dim() == 2 and m.shape == embeds.shape[:2]), None)  # fmt: skip
        ctx.allocation = self(embeds, mask)


def _decoding(kwargs: dict) -> bool:
    """Whether this forward extends a KV cache that already holds the prompt (transformers 5.24 renamed the
    language model's `past_key_values` argument to `cache`)."""
    cache = next((kwargs[k] for k in ("cache", "past_key_values") if kwargs.get(k) is not None), None)
    return cache is not None and hasattr(cache, "get_seq_length") and cache.get_seq_length() > 0


class ProgLoRA(TaskLoRA):
    """TaskLoRA's blocks, weighted per sample by the allocation the TaskAllocator wrote into the context."""

    kind = "proglora"

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.context.allocation  # (B, T)
        if alpha is None:
            raise RuntimeError("ProgLoRA layers read the allocation of a TaskAllocator attached to the model")
        return alpha

    def delta_weight(self) -> torch.Tensor:
        raise NotImplementedError("proglora weighs its blocks per input and has no single mergeable weight")
