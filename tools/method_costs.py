"""Method costs before and after issue 27's item 5, in one process (docs/performance.md, "Method costs at scale").

    PYTHONPATH=src OMP_NUM_THREADS=1 python tools/method_costs.py --before 0f4366a [--cap 20] [--json FILE]

The "before" layers and methods are the files of commit --before, loaded from git under other module names;
both variants run on the same parameters, interleaved round by round (bench/interleave.py), on one thread.
Widths are LLaVA-1.5-7B's (d = 4096, FFN 11008) for one wrapped Linear.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import types
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

from branchlora.adapters import AdapterConfig, LiLoRA, TaskLoRA, routing_context
from branchlora.bench.interleave import Schedule, interleave
from branchlora.bench.ops import OpAudit
from branchlora.methods import registry
from branchlora.methods.base import StepContext, Task
from branchlora.methods.ewc import EWC, EWCOptions
from branchlora.methods.sefe import RegLoRA


@contextmanager
def unregistered():
    """Let an old method file register its class again without clashing with today's."""
    saved = registry.register_method
    registry.register_method = lambda name, summary="": lambda cls: cls
    try:
        yield
    finally:
        registry.register_method = saved


def before(rev: str, path: str) -> types.ModuleType:
    """The module at `path` as it was at commit `rev`, importable next to today's."""
    source = subprocess.run(["git", "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
    module = types.ModuleType(f"before_{path.replace('/', '_').removesuffix('.py')}")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    with unregistered():
        exec(compile(source, path, "exec"), module.__dict__)
    return module


def as_class(layer: nn.Module, cls: type) -> nn.Module:
    """The same parameters and state behind another class (the old layer on today's tensors)."""
    twin = cls.__new__(cls)
    twin.__dict__ = layer.__dict__
    return twin


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def sample() -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return sample


def compare(old: Callable[[], object], new: Callable[[], object], cap: float) -> dict:
    """after / before time, interleaved, and the aten ops (torch.cat among them) of one call of each."""
    result = interleave(
        {"before": timed(old), "after": timed(new)}, {"ratio": ("after", "before")}, Schedule(cap_s=cap)
    )
    counts = {}
    for name, fn in (("before", old), ("after", new)):
        with OpAudit() as ops:
            fn()
        counts[name] = {"aten_ops": ops.ops, "cat": ops.names["cat"], "copies": ops.names["_to_copy"]}
    ms = {k: round(v["median_ms"], 3) for k, v in result["times"].items()}
    return {**result["ratios"]["ratio"], "ms": ms, "ops": counts}


def tasklora(old_module: types.ModuleType, tasks: int, cap: float) -> dict:
    """The adapter path of one generated token (batch 4) and a training forward+backward of the wrapped Linear
    (2 x 256 tokens), r = 128."""
    torch.manual_seed(0)
    layer = TaskLoRA(nn.Linear(4096, 4096), AdapterConfig(kind="tasklora", r=128, alpha=256, dropout=0.05))
    for _ in range(tasks - 1):
        layer.add_block()
    old = as_class(layer, old_module.TaskLoRA)
    token, out, seq = torch.randn(4, 1, 4096), torch.zeros(4, 1, 4096), torch.randn(2, 256, 4096, requires_grad=True)

    def decode(m: nn.Module) -> Callable[[], object]:  # the adapter path alone: the base matmul is the same
        return lambda: torch.no_grad()(m.add_delta)(out, token)

    def train(m: nn.Module) -> Callable[[], object]:
        return lambda: m(seq).sum().backward()

    layer.eval()
    out = {"decode": compare(decode(old), decode(layer), cap)}
    layer.train()
    out["train"] = compare(train(old), train(layer), cap)
    return out


def lilora(old_module: types.ModuleType, cap: float) -> dict:
    """One generated token of the FFN's up projection (4096 -> 11008), batch 8 over 4 tasks, r 128, s_r 64."""
    torch.manual_seed(0)
    layer = LiLoRA(nn.Linear(4096, 11008), AdapterConfig(kind="lilora", r=128, alpha=256, sub_rank=64, dropout=0.0))
    for _ in range(3):
        layer.add_task()
    layer.eval()
    new, old = nn.Sequential(layer), nn.Sequential(as_class(layer, old_module.LiLoRA))
    token, ids = torch.randn(8, 1, 4096), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])

    def decode(model: nn.Module) -> Callable[[], object]:
        def step() -> None:
            with torch.no_grad(), routing_context(model, ids, reuse=True):
                model(token)  # the prefill: every variant builds its B_t here
                for _ in range(16):  # 16 generated tokens
                    model(token)

        return step

    return compare(decode(old), decode(new), cap)


def sefe(old_module: types.ModuleType, cap: float) -> dict:
    """The RegLoRA loss and its backward on one 4096 x 4096 Linear at task 5 (4 tasks' masks, 2 % each)."""
    torch.manual_seed(0)
    layer = TaskLoRA(nn.Linear(4096, 4096), AdapterConfig(kind="tasklora", r=128, alpha=256))
    model, new = nn.Sequential(layer), RegLoRA()
    for t in range(4):
        with torch.no_grad():
            layer.lora_B[-1].normal_()
        new.on_task_end(model, Task(t, str(t)), run=None)
        layer.add_block()
    old = old_module.RegLoRA()
    old.load_state_dict(new.state_dict())

    def step(method) -> Callable[[], object]:
        def run() -> None:
            ctx = StepContext(Task(4, "4"), {})
            method.extra_loss(model, ctx)
            ctx.losses["reg"].backward()

        return run

    result = compare(step(old), step(new), cap)
    mask = new.masks["0"]
    result["indices"], result["mask_dtype"] = mask.numel(), str(mask.dtype)
    result["bytes_copied_per_step_before"] = mask.numel() * (mask.element_size() + 8)  # int32 read, int64 written
    return result


def ewc(old_module: types.ModuleType) -> dict:
    """The penalty of a state read on the CPU (as --resume reads it) for a model on another device (meta here,
    a GPU in a real run), and the Fisher's default number of batches."""
    outcome = {}
    for name, method in (("before", old_module.EWC()), ("after", EWC())):
        model = nn.Linear(4096, 4096)
        method.load_state_dict({"terms": [({n: p.detach().clone() for n, p in model.named_parameters()},
                                           {n: torch.rand_like(p) for n, p in model.named_parameters()})]})  # fmt: skip
        model.to("meta")
        try:
            method.extra_loss(model, StepContext(Task(1, "b"), {}))
            outcome[name] = "penalty computed on the model's device"
        except RuntimeError as err:
            outcome[name] = f"{type(err).__name__}: {str(err).splitlines()[0]}"
    outcome["fisher_batches"] = {"before": old_module.EWCOptions().fisher_batches, "after": EWCOptions().fisher_batches}
    return outcome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="commit whose layers and methods are the baseline")
    parser.add_argument("--cap", type=float, default=20.0, help="seconds per comparison (interleaved rounds)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(1)
    paths = {"tasklora": "adapters/tasklora.py", "lilora": "adapters/lilora.py", "sefe": "methods/sefe.py"}
    mods = {
        name: before(args.before, f"src/branchlora/{path}") for name, path in {**paths, "ewc": "methods/ewc.py"}.items()
    }
    results = {f"tasklora_T{t}": tasklora(mods["tasklora"], t, args.cap) for t in (1, 4, 8)}
    results["lilora_decode"] = lilora(mods["lilora"], args.cap)
    results["sefe_reg_step"] = sefe(mods["sefe"], args.cap)
    results["ewc_resumed"] = ewc(mods["ewc"])
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
