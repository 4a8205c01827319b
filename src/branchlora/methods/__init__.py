"""Continual-learning methods as plug-ins of the one training loop."""

from branchlora.methods import (  # noqa: F401  (register the built-ins)
    branchlora,
    clmoe,
    ewc,
    hide,
    lilora,
    lwf,
    multitask,
    olora,
    proglora,
    sefe,
    seqft,
)
from branchlora.methods.base import Method, MethodOptions, StepContext, Task
from branchlora.methods.registry import METHODS, get_method, register_method

__all__ = ["METHODS", "Method", "MethodOptions", "StepContext", "Task", "get_method", "register_method"]
