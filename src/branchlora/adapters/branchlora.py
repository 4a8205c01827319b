"""BranchLoRA: one shared trunk A, N branches B_i, sparse top-k routing with one router per task.

    h      = x[first non-padding token]   or   masked mean of x     (routing input, one per sequence)
    logits = W_r^t h                      (router of task t, bias-free, N outputs)
    idx, w = topk(logits, k), softmax over the k kept logits
    y      = W0 x + s * sum_{j<k} w_j B_{idx_j} (A dropout(x)),   s = alpha / r,  A: (r/N, d_in), B_i: (d_out, r/N)

Only the k chosen branches are touched: each sample gets its effective B = sum_j w_j B_{idx_j}
(d_out x r/N), and one batched matmul adds its update into the base output.  Branches are separate
parameters so that freezing one (requires_grad=False) really stops its updates; frozen branches still
run in the forward pass.  Routing input "token" routes every token (the ablation variants and
HydraLoRA use it); with top_k == N that is dense softmax routing.
"""

from __future__ import annotations

import math

import torch
from torch import nn

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
        self.lora_B = nn.ParameterList()  # N x (d_out, r/N)
        self.routers = nn.ParameterList()  # one (N_t, d_in) weight per task
        self.frozen: list[bool] = []  # per branch; saved in the adapter JSON (see structure)
        self.register_buffer("activity", torch.zeros(0, device=self._factory()["device"]), persistent=False)
        self.track_activity = False
        self.router_noise = 0.0  # std of Gaussian noise on router logits while training (noisy top-k)
        self._cached_route: tuple[torch.Tensor, torch.Tensor] | None = None
        self.add_branches(config.n_branches)
        self.add_router()

    # ---- structure: branches, routers, freezing -------------------------------------------------
    @property
    def n_branches(self) -> int:
        return len(self.lora_B)

    def branches(self) -> tuple[nn.Parameter, ...]:
        """The N branch matrices, read from the ParameterList's own dict: its __iter__ makes a string
        getattr per item, about a tenth of this layer's host time when the GPU waits on the host."""
        return tuple(self.lora_B._parameters.values())

    @property
    def n_routers(self) -> int:
        return len(self.routers)

    def add_branches(self, n: int) -> None:
        """Append n fresh (zero) branches; routers made later can pick them, older ones cannot."""
        f = self._factory()
        for _ in range(n):
            self.lora_B.append(nn.Parameter(torch.zeros(self.out_features, self.branch_rank, **f)))
        self.frozen += [False] * n
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
            self.lora_B[i].requires_grad_(False)

    def mark_trainable(self) -> None:
        """A, every unfrozen branch, and the newest router train; frozen branches and old routers do not."""
        self.lora_A.requires_grad_(True)
        for b, frozen in zip(self.lora_B, self.frozen, strict=True):
            b.requires_grad_(not frozen)
        for i, router in enumerate(self.routers):
            router.requires_grad_(i == self.n_routers - 1)

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

    def route(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k over the router logits, softmax over the k kept: (idx, w), each (..., k)."""
        logits = self.router_logits(h)
        if self.training and self.router_noise > 0:
            logits = logits + self.router_noise * torch.randn_like(logits)
        top, idx = logits.topk(self.top_k, dim=-1)
        w = torch.softmax(top, dim=-1)
        if self.track_activity:
            self.activity.index_add_(0, idx.reshape(-1), w.detach().reshape(-1).to(self.activity.dtype))
        return idx, w

    # ---- the update --------------------------------------------------------------------------------
    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # a bare (B, d_in) input: every row is its own one-token sequence
            return self.add_delta(out.unsqueeze(1), x.unsqueeze(1)).squeeze(1)
        if self.routing == "token":
            z, _, keep = self.project(x, self.lora_A)  # (B, L, r/N)
            idx, w = self.route(x)  # (B, L, k) each
            gates = torch.zeros(*idx.shape[:-1], self.n_branches, dtype=w.dtype, device=w.device)
            gates = gates.scatter(-1, idx, w)  # (B, L, N), zero outside the top-k
            z = (gates.unsqueeze(-1) * z.unsqueeze(-2)).flatten(-2)  # (B, L, N * r/N)
            return flat_addmm(out, z, torch.cat(self.branches(), dim=1), self.scale * keep)
        routed = self.context.reuse and self._cached_route is not None
        rows = self.first_rows(x) if self.routing == "first" and not routed else None
        z, h, keep = self.project(x, self.lora_A, rows)  # h: (B, d_in), each sequence's routing token
        idx, w = self._sequence_route(x if h is None else h)  # (B, k) each
        b_eff = self.effective_b(idx, w * (self.scale * keep)).to(out.dtype)  # (B, d_out, r/N), scale folded in
        # One batched matmul accumulated into the base output in place: rank r/N, no delta tensor.  With
        # alpha = 1 its backward has no extra multiplications over the (B, L, r/N) and (B, r/N, d_out) tensors.
        return out.baddbmm_(z.to(out.dtype), b_eff.transpose(1, 2))  # (B, L, d_out)

    def _sequence_route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One routing decision per sequence, from x (B, L, d_in) or its routing rows (B, d_in); cached at
        prefill when the context asks for reuse."""
        if self.context.reuse and self._cached_route is not None:
            return self._cached_route
        route = self.route(x if x.dim() == 2 else self.routing_input(x))
        if self.context.reuse:
            self._cached_route = route
        return route

    def effective_b(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """sum_j w_j B_{idx_j}: (B, k), (B, k) -> (B, d_out, r/N), one small matmul in weight space.

        The gate vector is zero outside the top-k, so unchosen branches add nothing (and get a zero
        gradient).  Mixing in weight space costs B * N * d_out * r/N multiply-adds, about N / tokens of one
        rank-r/N pass over the tokens; a gather of the k chosen branches cost more, because its backward
        (index_put with accumulation) sorts the indices on a GPU.
        """
        branches = torch.stack(self.branches())  # (N, d_out, r/N)
        gates = torch.zeros(idx.shape[0], self.n_branches, dtype=branches.dtype, device=branches.device)
        gates = gates.scatter(1, idx, w.to(branches.dtype))  # (B, N)
        return (gates @ branches.flatten(1)).view(idx.shape[0], *branches.shape[1:])

    def routed_delta_weight(self, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The dense update for one fixed routing (idx, w: (k,)): s * B_eff A, (d_out, d_in)."""
        return self.scale * self.effective_b(idx[None], w[None])[0] @ self.lora_A
