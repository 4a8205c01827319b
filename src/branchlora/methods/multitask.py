"""The multi-task upper bound: LoRA trained once on the shuffled union of every task."""

from branchlora.methods.base import Method
from branchlora.methods.registry import register_method


@register_method("multitask", "upper bound: LoRA trained jointly on all tasks at once")
class MultiTask(Method):
    joint = True
