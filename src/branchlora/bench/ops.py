"""Counting what one call asks of the host: aten ops dispatched, kernels, host syncs, matmul FLOPs by dtype.

At small batches a GPU waits on the host, whose work grows with the number of ops, so the op count per
layer and per step is a speed figure a CPU can measure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a device value on the host (item, tolist, bool) or whose output size depends on data.
SYNCING = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "masked_select"}
MATMULS = {"mm", "bmm", "addmm", "baddbmm", "addbmm"}


# Ops that only make a new view or an uninitialised buffer: host work, no kernel on a GPU.
NO_KERNEL = {"_unsafe_view", "empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "as_strided"}


class OpAudit(TorchDispatchMode):
    """Counts every aten op dispatched (the host's work per op decides a small step's wall time on a GPU),
    those of them that run a kernel, the ops that make the host wait for the device (on a GPU; counted
    alike on a CPU) and the matmul FLOPs by operand dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.names: Counter[str] = Counter()  # ops by name (torch.cat calls: names["cat"])
        self.kernels = 0
        self.syncs: Counter[str] = Counter()
        self.matmul_flops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        self.ops += 1
        self.names[name] += 1
        self.kernels += not (func.is_view or name in NO_KERNEL)
        if name in SYNCING:
            self.syncs[name] += 1
        elif name in MATMULS:
            a = args[1] if name.startswith(("addmm", "baddbmm", "addbmm")) else args[0]  # (..., m, k)
            self.matmul_flops[str(a.dtype).removeprefix("torch.")] += 2 * out.numel() * a.shape[-1]
        return out


def count_ops(fn: Callable[[], object]) -> dict:
    """{"aten_ops", "kernel_ops"} of one call of fn, after a first call (lazy initialisation, caches)."""
    fn()
    with OpAudit() as audit:
        fn()
    return {"aten_ops": audit.ops, "kernel_ops": audit.kernels}
