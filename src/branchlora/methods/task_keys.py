"""Per-task image and text keys and the selector over them, shared by every method that picks a task itself.

A method that routes by task (BranchLoRA's routers, LiLoRA's B_t) connects four calls: `start` at task
start, `add_align_loss` each step, `end_task` after training (fixes the task's keys), and `select` at
test time.  The math (embed, L_align, prototype, select_task) is in branchlora.selector.
"""

from __future__ import annotations

from itertools import islice

import torch
from torch import nn

from branchlora.methods.base import Method, StepContext, TaskRun
from branchlora.models.family import require_family
from branchlora.selector import align_loss, embed, prototype, select_task, similarity
from branchlora.sharding import process_sum

KEY_MODES = ("loss", "prototype")
IDENTITIES = ("select", "oracle")  # test-time task: chosen by the keys, or the true one


class TaskKeys:
    """Keys learned with L_align during the task ("loss", the paper) or fixed as prototypes after it."""

    def __init__(self, mode: str = "loss", align_weight: float = 1.0, lr: float = 1e-2) -> None:
        if mode not in KEY_MODES:
            raise ValueError(f"keys must be one of {KEY_MODES}, got {mode!r}")
        self.mode, self.align_weight, self.lr = mode, align_weight, lr
        self.key_img: list[torch.Tensor] = []  # one (d_vision,) key per learned task
        self.key_txt: list[torch.Tensor] = []  # one (d_text,) key per learned task
        self._new: tuple[nn.Parameter, nn.Parameter] | None = None
        self._unset = False

    def __len__(self) -> int:
        return len(self.key_img)

    def start(self, model: nn.Module) -> None:
        """Fresh trainable keys for the task about to train (mode "loss")."""
        if self.mode != "loss":
            return
        device = model.get_input_embeddings().weight.device
        d_img, d_txt = require_family(model).vision_width(model), model.get_input_embeddings().embedding_dim
        # Filled from the task's first batch before the first step (see add_align_loss).
        self._new = (nn.Parameter(torch.zeros(d_img, device=device)), nn.Parameter(torch.zeros(d_txt, device=device)))
        self._unset = True

    def param_groups(self) -> list[dict]:
        return [{"params": list(self._new), "lr": self.lr}] if self._new else []

    def add_align_loss(self, model: nn.Module, ctx: StepContext) -> None:
        """lambda * L_align of this batch towards the task's keys (mode "loss")."""
        if self._new is None:
            return
        e_img, e_txt = embed(model, ctx.batch)
        k_img, k_txt = self._new
        if self._unset:  # start at the first batch's prototype: a random start of the scale Adam steps at drifts
            with torch.no_grad():  # towards sign(e) and does not reach the optimum in a task's few steps
                k_img.copy_(prototype(e_img, process_sum))  # every process starts from the same keys
                k_txt.copy_(prototype(e_txt, process_sum))
            self._unset = False
        ctx.add_loss("align", self.align_weight * (align_loss(e_img, k_img) + align_loss(e_txt, k_txt)))

    @torch.no_grad()
    def end_task(self, model: nn.Module, run: TaskRun, max_batches: int = 0) -> None:
        """Fix the task's keys: the trained ones, or prototypes from one pass over its data."""
        if self._new is not None:
            k_img, k_txt = (k.detach().clone() for k in self._new)
        else:
            batches = islice(run.batches(), max_batches) if max_batches else run.batches()
            seen = [run.embed(model, batch) for batch in batches]
            k_img = prototype(torch.cat([e[0] for e in seen]), process_sum)
            k_txt = prototype(torch.cat([e[1] for e in seen]), process_sum)
        self.key_img.append(run.mean(k_img))  # processes saw different shards: agree on one key
        self.key_txt.append(run.mean(k_txt))
        self._new = None

    def task_ids(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task_index: int, oracle: bool
    ) -> int | torch.Tensor | None:
        """Which learned task serves each test sample: None before any, the true one with the oracle
        (the newest learned when the true one is not learned yet), else the selector's choice."""
        if not self.key_img:
            return None
        if oracle:
            return min(task_index, len(self.key_img) - 1)
        return self.select(model, batch)

    def select(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B,) the learned task whose keys are closest to each sample."""
        e_img, e_txt = embed(model, batch)
        return select_task(e_img, e_txt, *self._stacked(e_img.device))

    def similarity(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """(B, T) selector scores against every learned task (None before the first)."""
        if not self.key_img:
            return None
        e_img, e_txt = embed(model, batch)
        return similarity(e_img, e_txt, *self._stacked(e_img.device))

    def _stacked(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack(self.key_img).to(device), torch.stack(self.key_txt).to(device)  # (T, d) each

    def state_dict(self) -> dict:
        """The learned tasks' keys and, inside a task (train.save_every), the keys being trained."""
        state = {"key_img": [k.cpu() for k in self.key_img], "key_txt": [k.cpu() for k in self.key_txt]}
        if self._new is not None and not self._unset:
            state["training"] = [k.detach().cpu() for k in self._new]
        return state

    def load_state_dict(self, state: dict) -> None:
        self.key_img, self.key_txt = list(state["key_img"]), list(state["key_txt"])
        if "training" in state and self._new is not None:  # resumed inside the task `start` began
            with torch.no_grad():
                for key, value in zip(self._new, state["training"], strict=True):
                    key.copy_(value)
            self._unset = False


class KeyedMethod(Method):
    """A method whose state is its TaskKeys (`self.keys`): similarity and checkpoint state come from them."""

    keys: TaskKeys

    def task_similarity(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return self.keys.similarity(model, batch)

    def state_dict(self) -> dict:
        return self.keys.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.keys.load_state_dict(state)
