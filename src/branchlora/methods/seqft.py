"""Sequential fine-tuning baselines: one adapter trained task after task, nothing else."""

from branchlora.methods.base import Method
from branchlora.methods.registry import register_method


@register_method("lora", "plain LoRA (r 128), trained task after task: the lower bound")
class SequentialLoRA(Method):
    adapter_defaults = {"kind": "lora"}


@register_method("moelora", "CoIN's MoELoRA: 8 rank-16 experts, per-token dense router shared by all tasks")
class MoELoRAMethod(Method):
    adapter_defaults = {"kind": "moelora"}


@register_method("hydralora", "HydraLoRA: shared A, 8 heads of rank 16, per-token dense router, no freezing")
class HydraLoRAMethod(Method):
    # Per-head rank 16 gives it BranchLoRA's parameter budget; set adapter.r to change.
    adapter_defaults = {"kind": "hydralora", "r": 16, "alpha": 32}
