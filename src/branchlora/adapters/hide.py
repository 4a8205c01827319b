"""HiDe-LLaVA (Guo et al., ACL 2025): per-task LoRA blocks, expanded in the top layer and fused below it.

    training, every layer:  y = W0 x + s * B_t A_t dropout(x)                      (task t's block alone)
    test, top layer:        y = W0 x + s * sum_i w_i B_i A_i x,   w: per-sample weights over tasks
    test, other layers:     y = W0 x + s * (sum_i B_i)(sum_i A_i) x                (task-general fusion)

The top layer's weights come from the method (the task selector's softmax over the task anchors, or a
task id); `top` is set by the method on the Linears of the model's last decoder layer.  The fusion sums
the A's and the B's separately, cross terms included, as the official code does (merge weight 1:
fusion "factors"); fusion "updates" sums the blocks' updates instead, s * sum_i B_i A_i x.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from branchlora.adapters.base import flat_addmm
from branchlora.adapters.tasklora import TaskLoRA

FUSIONS = ("factors", "updates")


class HiDeLoRA(TaskLoRA):
    kind = "hide"
    top: bool = False  # set by the method: this Linear sits in the top decoder layer
    fusion: str = "factors"  # set by the method: how the lower layers fuse the blocks at test time

    def _one(self, out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z, _, keep = self.project(x, a)
        return flat_addmm(out, z, b, self.scale * keep)

    def add_delta(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        task = self.context.task_ids
        if not self.training and not self.top:
            return self._one(out, x, *self.fused())
        if task is None or isinstance(task, int):  # one block for the batch: only it runs
            t = self.n_blocks - 1 if task is None else task
            return self._one(out, x, self.lora_A[t], self.lora_B[t])
        return super().add_delta(out, x)  # per-sample weights (see `weights`)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The context's (B, T) weights, or the one-hot of its (B,) task ids."""
        task = self.context.task_ids
        return task if task.is_floating_point() else F.one_hot(task, self.n_blocks).to(x.dtype)

    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) of the lower layers' test-time update s * B A: the summed factors (built once while the blocks
        stay as they are), or all blocks side by side."""
        if self.fusion != "factors":
            return self.stacked()
        if self.fixed_blocks() < self.n_blocks:  # a block trains: its gradient must flow through the sum
            return _summed(list(self.lora_A), list(self.lora_B))
        return self.kept("summed", self.n_blocks, _summed)

    def delta_weight(self) -> torch.Tensor:
        """The fused update of a lower layer; the top layer has none."""
        if self.top:
            raise NotImplementedError("HiDe's top layer weighs its experts per input: no single mergeable weight")
        a, b = self.fused()
        return self.scale * b @ a


def _summed(a: list[torch.Tensor], b: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i A_i, sum_i B_i): HiDe's task-general fusion of the factors."""
    return torch.stack(a).sum(0), torch.stack(b).sum(0)
