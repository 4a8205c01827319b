"""Adapter layers (the math) and their wiring into any torch model."""

from branchlora.adapters.base import AdapterLayer, RoutingContext
from branchlora.adapters.branchlora import BranchLoRA
from branchlora.adapters.config import AdapterConfig
from branchlora.adapters.hydralora import HydraLoRA
from branchlora.adapters.inject import (
    ADAPTERS,
    adapter_layers,
    find_targets,
    inject_adapters,
    merge,
    routing_context,
    tunable_count,
    unwrap,
)
from branchlora.adapters.io import load_adapters, save_adapters
from branchlora.adapters.lilora import LiLoRA
from branchlora.adapters.lora import LoRA
from branchlora.adapters.moelora import MoELoRA
from branchlora.adapters.proglora import ProgLoRA, TaskAllocator
from branchlora.adapters.tasklora import TaskLoRA

__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "BranchLoRA",
    "HydraLoRA",
    "LiLoRA",
    "LoRA",
    "MoELoRA",
    "ProgLoRA",
    "RoutingContext",
    "TaskAllocator",
    "TaskLoRA",
    "adapter_layers",
    "find_targets",
    "inject_adapters",
    "load_adapters",
    "merge",
    "routing_context",
    "save_adapters",
    "tunable_count",
    "unwrap",
]
