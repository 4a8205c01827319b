"""BranchLoRA: one shared trunk A, N branches B_i, sparse top-k routing with one router per task.

    h      = x[first non-padding token]   or   masked mean of x     (routing input, one per sequence)
    logits = W_r^t h                      (router of task t, bias-free, N outputs)
    idx, w = topk(logits, k), softmax over the k kept logits
    y      = W0 x + s * sum_{j<k} w_j B_{idx_j} (A dropout(x)),   s = alpha / r,  A: (r/N, d_in), B_i: (d_out, r/N)

Only the k chosen branches count: each sample's gates g (N,) are the softmax over its top-k logits and
zero elsewhere, its effective B = sum_i g_i B_i (d_out x r/N), and one batched matmul adds its update
into the base output.  The branches are one parameter `lora_B` of shape (N, r/N, d_out), each B_i stored
transposed so that the mixed B comes out in the layout that matmul reads (B_i itself is `lora_B[i].t()`);
eight separate parameters would cost a stack, eight views and eight gradient accumulations per layer.
A frozen branch still runs in the forward pass; its gradient is zeroed in the backward pass, and as
every task starts a fresh AdamW, a zero gradient is a zero update (`hold_frozen` in train.py undoes
weight decay).  Routing input "token" routes every token (the ablation variants and HydraLoRA use it);
with top_k == N that is dense softmax routing.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from branchlora.adapters.base import AdapterLayer, flat_addmm, init_down
from branchlora.adapters.config import AdapterConfig


class BranchLoRA(AdapterLayer):
    kind = "branchlora"
    adapter_param_names = ("lora_A", "lora_B", "routers")

    def __init__(self, base_layer: nn.Linear, config: AdapterConfig, branch_rank: int | None = None) -> None:
        super().__init__(base_layer, config)
        self.top_k = config.top_k
        self.routing = config.routing
        self.branch_rank = branch_rank or config.r // config.n_branches
        self.lora_A = nn.Parameter(torch.empty(self.branch_rank, self.in_features, **self._factory()))
        init_down(self.lora_A, config.init)
        self.lora_B = nn.Parameter(torch.zeros(0, self.branch_rank, self.out_features, **self._factory()))
        self.routers = nn.ParameterList()  # one (N_t, d_in) weight per task
        self.frozen: list[bool] = []  # per branch; saved in the adapter JSON (see structure)
        device = self._factory()["device"]
        self.register_buffer("frozen_mask", torch.zeros(0, dtype=torch.bool, device=device), persistent=False)
        self.register_buffer("activity", torch.zeros(0, device=device), persistent=False)
        self.track_activity = False
        self.router_noise = 0.0  # std of Gaussian noise on router logits while training (noisy top-k)
        self._cached_route: torch.Tensor | None = None  # (B, N) gates kept for KV-cached generation
        self.add_branches(config.n_branches)
        self.add_router()

    # ---- structure: branches, routers, freezing -------------------------------------------------
    @property
    def n_branches(self) -> int:
        return self.lora_B.shape[0]

    def frozen_rows(self) -> torch.Tensor | None:
        """(N,) mask of the frozen branches while others train (their gradient is zeroed); else None."""
        return self.frozen_mask if self.lora_B.requires_grad and any(self.frozen) else None

    def branches(self) -> torch.Tensor:
        """(N, r/N, d_out), the B_i transposed, as the forward pass uses them: frozen ones get no gradient."""
        frozen = self.frozen_rows()
        return self.lora_B if frozen is None else KeepFrozen.apply(self.lora_B, frozen)

    @property
    def n_routers(self) -> int:
        return len(self.routers)

    def add_branches(self, n: int) -> None:
        """Append n fresh (zero) branches; routers made later can pick them, older ones cannot.

        The parameter is replaced by a longer one: call before the task's optimizer is made."""
        old = self.lora_B.detach()
        fresh = old.new_zeros(n, *old.shape[1:])
        self.lora_B = nn.Parameter(torch.cat([old, fresh]), requires_grad=self.lora_B.requires_grad or n > 0)
        self.frozen += [False] * n
        self.frozen_mask = torch.cat([self.frozen_mask, self.frozen_mask.new_zeros(n)])
        self.activity = torch.cat([self.activity, self.activity.new_zeros(n)])

    def add_router(self, copy_previous: bool = False, n_out: int | None = None) -> None:
        """Add the router of a new task (default Linear init, or a copy of the previous one); freeze the old."""
        n_out = n_out or self.n_branches
        weight = torch.empty(n_out, self.in_features, **self._factory())  # (N_t, d_in)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if copy_previous and self.routers:
            previous = self.routers[-1].detach()
            weight[: previous.shape[0]].copy_(previous)
        for old in self.routers:
            old.requires_grad_(False)
        self.routers.append(nn.Parameter(weight))

    def freeze_branches(self, indices: list[int] | torch.Tensor) -> None:
        """Stop updates of these branches for good; they keep taking part in the forward pass."""
        for i in torch.as_tensor(indices, dtype=torch.long).tolist():
            self.frozen[i] = True
        self.frozen_mask = torch.tensor(self.frozen, dtype=torch.bool, device=self.frozen_mask.device)
        if all(self.frozen):
            self.lora_B.requires_grad_(False)

    def mark_trainable(self) -> None:
        """A, every unfrozen branch, and the newest router train; frozen branches and old routers do not."""
        self.lora_A.requires_grad_(True)
        self.lora_B.requires_grad_(not all(self.frozen))
        for i, router in enumerate(self.routers):
            router.requires_grad_(i == self.n_routers - 1)

    def partly_frozen(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        frozen = self.frozen_rows()
        return [] if frozen is None else [(self.lora_B, frozen)]

    def structure(self) -> dict:
        return {
            "n_branches": self.n_branches,
            "router_sizes": [w.shape[0] for w in self.routers],
            "frozen": [i for i, f in enumerate(self.frozen) if f],
        }

    def restructure(self, structure: dict) -> None:
        self.add_branches(structure["n_branches"] - self.n_branches)
        for n_out in structure["router_sizes"][self.n_routers :]:
            self.add_router(n_out=n_out)
        self.mark_trainable()
        self.freeze_branches(structure["frozen"])

    # ---- routing ---------------------------------------------------------------------------------
    def _mask_for(self, x: torch.Tensor) -> torch.Tensor | None:
        mask = self.context.attention_mask
        return mask if mask is not None and mask.shape == x.shape[:2] else None  # else: no padding assumed

    def first_rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_in) -> (B,): flat token index (b * L + position) of each sequence's first non-padding token.

        Every layer of one forward sees the same mask: the first computes the rows, the others reuse them.
        """
        mask, shape, cached = self._mask_for(x), tuple(x.shape[:2]), self.context.first_rows
        if cached is not None and cached[0] is mask and cached[1] == shape and cached[2].device == x.device:
            return cached[2]
        rows = torch.arange(x.shape[0], device=x.device) * x.shape[1]
        rows = rows if mask is None else rows + mask.long().argmax(dim=1).to(x.device)
        self.context.first_rows = (mask, shape, rows)
        return rows

    def routing_input(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, d_in) -> (B, d_in): the first non-padding token, or the mean over non-padding tokens."""
        if self.routing == "first":
            return x.reshape(-1, x.shape[-1])[self.first_rows(x)]
        mask = self._mask_for(x)
        if mask is None:
            return x.mean(dim=1)
        m = mask.to(x.dtype).unsqueeze(-1)  # (B, L, 1)
        return (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)

    def router_logits(self, h: torch.Tensor) -> torch.Tensor:
        """(B, ..., d_in) -> (B, ..., N) with the router of each sample's task; -inf where a router is blind."""
        task_ids = self.context.task_ids
        if task_ids is None:
            task_ids = self.n_routers - 1
        if isinstance(task_ids, int):
            self._check_task(task_ids)
            logits = h @ self.routers[task_ids].t()
            pad = self.n_branches - logits.shape[-1]
            return nn.functional.pad(logits, (0, pad), value=-math.inf) if pad else logits
        logits = h.new_full((*h.shape[:-1], self.n_branches), -math.inf)
        for t in task_ids.unique().tolist():  # a few distinct tasks per batch, never a loop over samples
            self._check_task(t)
            sel = task_ids == t
            part = h[sel] @ self.routers[t].t()  # bf16 under autocast, whatever h's dtype
            logits[sel, ..., : self.routers[t].shape[0]] = part.to(logits.dtype)
        return logits

    def _check_task(self, t: int) -> None:
        if not 0 <= t < self.n_routers:
            raise IndexError(f"task router {t} does not exist: this layer has {self.n_routers} router(s)")

    def route(self, h: torch.Tensor) -> torch.Tensor:
        """(..., N) gates: the softmax over the top-k router logits, zero for every other branch."""
        logits = self.router_logits(h)
        if self.training and self.router_noise > 0:
            logits = logits + self.router_noise * torch.randn_like(logits)
        sparse = self.top_k < self.n_branches
        gates = TopKSoftmax.apply(logits, self.top_k) if sparse else torch.softmax(logits, dim=-1)
        if self.track_activity:
            self.activity += gates.detach().reshape(-1, self.n_branches).sum(0).to(self.activity.dtype)
        return gates

    # ---- the update --------------------------------------------------------------------------------
    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a bare (B, d_in) input: every row is its own one-token sequence
            return self.add_delta(out.unsqueeze(1), x.unsqueeze(1)).squeeze(1)
        if self.routing == "token":
            z, _, keep = self.project(x, self.lora_A)  # (B, L, r/N)
            gates = self.route(x)  # (B, L, N), zero outside the top-k
            z = (gates.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)  # (B, L, N * r/N)
            stacked = self.branches().flatten(0, 1).t()  # (d_out, N * r/N), a view
            return flat_addmm(out, z, stacked, self.scale * keep)
        routed = self.context.reuse and self._cached_route is not None
        rows = self.first_rows(x) if self.routing == "first" and not routed else None
        z, h, keep = self.project(x, self.lora_A, rows)  # h: (B, d_in), each sequence's routing token
        gates = self._sequence_route(x if h is None else h)  # (B, N)
        b_eff_t = self.effective_b(gates, self.scale * keep).to(out.dtype)  # (B, r/N, d_out), scale folded in
        # One batched matmul accumulated into the base output in place: rank r/N, no delta tensor.  With
        # alpha = 1 its backward has no extra multiplications over the (B, L, r/N) and (B, r/N, d_out) tensors.
        return out.baddbmm_(z.to(out.dtype), b_eff_t)  # (B, L, d_out)

    def _sequence_route(self, x: torch.Tensor) -> torch.Tensor:
        """One routing decision per sequence, (B, N) gates from x (B, L, d_in) or its routing rows (B, d_in);
        cached at prefill when the context asks for reuse."""
        if self.context.reuse and self._cached_route is not None:
            return self._cached_route
        gates = self.route(x if x.dim() == 2 else self.routing_input(x))
        if self.context.reuse:
            self._cached_route = gates
        return gates

    def effective_b(self, gates: torch.Tensor, scale: float) -> torch.Tensor:
        """scale * (sum_i gates_i B_i)^T: (B, N) -> (B, r/N, d_out), one small matmul in weight space.

        The gates are zero outside the top-k, so unchosen branches add nothing (and get a zero gradient).
        Mixing in weight space costs B * N * d_out * r/N multiply-adds, about N / tokens of one rank-r/N
        pass over the tokens; a gather of the k chosen branches cost more, because its backward
        (index_put with accumulation) sorts the indices on a GPU.
        """
        return MixBranches.apply(gates, self.lora_B, self.frozen_rows(), scale)

    def routed_delta_weight(self, gates: torch.Tensor) -> torch.Tensor:
        """The dense update for one fixed routing (gates: (N,)): s * B_eff A, (d_out, d_in)."""
        return self.effective_b(gates[None], self.scale)[0].t() @ self.lora_A


# Three steps of the update as autograd Functions: each does what autograd would, in fewer ops per layer
# (at small batches a GPU waits on the host, whose work grows with the op count; see bench/ops.py).


class TopKSoftmax(torch.autograd.Function):
    """(..., N) logits, k -> (..., N) gates: softmax over the k largest logits, zero elsewhere.

    The softmax's backward, g * (dg - sum(g * dg)), is zero wherever g is, so it runs once on the N-wide
    gates: no backward of the top-k selection nor of the scatter into N slots.
    """

    @staticmethod
    def forward(ctx, logits, k):
        top, idx = logits.topk(k, dim=-1)
        weights = torch.softmax(top, dim=-1)  # float32 under autocast, as the softmax of an unfused route
        gates = weights.new_zeros(logits.shape).scatter_(-1, idx, weights)
        ctx.save_for_backward(gates)
        ctx.dtype = logits.dtype
        return gates

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (gates,) = ctx.saved_tensors
        return torch._softmax_backward_data(grad.to(gates.dtype), gates, -1, ctx.dtype), None


class KeepFrozen(torch.autograd.Function):
    """The identity, whose backward zeroes the gradient of the branches marked in `frozen` ((N,) bool)."""

    @staticmethod
    def forward(ctx, branches: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        ctx.frozen = frozen
        return branches.view_as(branches)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.masked_fill(ctx.frozen[:, None, None], 0), None


class MixBranches(torch.autograd.Function):
    """gates (B, N), branches (N, r/N, d_out), frozen (N,) bool or None, scale -> (B, r/N, d_out):
    scale * sum_i gates_i branches_i, one matmul.

    Autograd would run the same matmuls plus a multiplication by the scale each way; here the scale rides
    in the matmuls (addmm's alpha), and frozen branches get no gradient for the price of one op on the small
    gate matrix.  The matmul follows autocast in the forward; the backward computes in the output
    gradient's dtype.
    """

    @staticmethod
    def forward(ctx, gates, branches, frozen, scale):
        flat = branches.view(branches.shape[0], -1)  # (N, r/N * d_out)
        ctx.save_for_backward(gates if frozen is None else gates.masked_fill(frozen, 0), flat)
        ctx.shape, ctx.scale = branches.shape, scale
        return scaled_mm(gates, flat, scale).view(gates.shape[0], *branches.shape[1:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gates, flat = ctx.saved_tensors
        grad = grad.reshape(gates.shape[0], -1)  # (B, r/N * d_out)
        d_gates = d_branches = None
        if ctx.needs_input_grad[0]:
            d_gates = scaled_mm(grad, flat.to(grad.dtype).t(), ctx.scale)
        if ctx.needs_input_grad[1]:
            d_branches = scaled_mm(gates.to(grad.dtype).t(), grad, ctx.scale).view(ctx.shape).to(flat.dtype)
        return d_gates, d_branches, None, None


def scaled_mm(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """scale * a @ b in one kernel: addmm with beta = 0 ignores its (here empty, 0-d) input."""
    return torch.addmm(a.new_empty(()), a, b, beta=0, alpha=scale)
