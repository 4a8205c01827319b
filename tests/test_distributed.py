"""Two processes under torchrun (gloo on CPU): every rank ends a task with the same parameters, frozen
branches and task keys."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import branchlora
from branchlora.data.benchmark import default_cache_dir
from branchlora.methods.task_keys import TaskKeys

from engine_support import micro_base

KEY_LR = TaskKeys().lr  # the keys' learning rate, as BranchLoRA trains them
# The scenario as a function, run on two ranks at batch 2 and on one process at batch 4 (the same items per step).
TRAIN_COLOUR = textwrap.dedent(
    """
    def train_colour(cache, toy, batch_size):
        \"\"\"What BranchLoRA holds after 3 steps of task 0 from the micro base, as plain tensors and lists.\"\"\"
        import torch
        from engine_support import ADAPTER, micro_base, toy_stream
        from branchlora.adapters import adapter_layers
        from branchlora.methods import Task, get_method
        from branchlora.train import TrainConfig, make_accelerator, train_task

        config = TrainConfig(max_steps=3, batch_size=batch_size, lr=5e-3)
        accelerator = make_accelerator(config, cpu=True)
        model, processor = micro_base(cache)
        stream = toy_stream(toy / str(accelerator.process_index), processor)
        method = get_method("branchlora")({**ADAPTER, "dropout": 0.0})  # masks would be drawn per process
        torch.manual_seed(0)  # the adapters' initial values, whatever ran before in this process
        method.setup(model)
        seen, align = [], method.keys.add_align_loss

        def record(model, ctx):  # the keys each step starts from (the first: as initialised from the data)
            align(model, ctx)
            seen.append([k.detach().clone() for k in method.keys._new])

        method.keys.add_align_loss = record
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        train_task(model, method, Task(0, "colour"), stream.train[0], stream.collator.train_batch, config,
                   accelerator)
        trained = [p.detach() for p in model.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(before, trained))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        frozen = [layer.frozen for _, layer in adapter_layers(model)]
        return {"world": accelerator.num_processes, "rank": accelerator.process_index, "params": trained,
                "names": names, "frozen": frozen, "keys": method.key_img + method.key_txt, "steps": seen}
    """
)
SCRIPT = TRAIN_COLOUR + textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch

    torch.set_num_threads(1)
    cache, toy, out = map(Path, sys.argv[1:4])
    result = train_colour(cache, toy / "colour", batch_size=2)
    torch.save(result, out / f"rank{result['rank']}.pt")
    """
)


def launch(source: str, tmp_path: Path, cache: Path | None = None) -> None:
    """Run `source` on two processes under torchrun (gloo, a free port of its choosing), with argv: the micro base's
    cache (default: the session's), the toy data's folder and the output folder (both tmp_path)."""
    cache = cache or default_cache_dir()
    micro_base(cache)  # build once, before the ranks read it
    script = tmp_path / "script.py"
    script.write_text(source)
    torchrun = Path(sys.executable).parent / "torchrun"
    source_root = Path(branchlora.__file__).parents[1]  # the ranks import the branchlora this test imported
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{source_root}", "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node=2", str(script), cache, tmp_path, tmp_path]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    """One torchrun launch for the module's two scenarios (3 DDP steps of task 0, then two-task runs under DDP and
    with the sharded base); the folder holding what each rank saved."""
    out = tmp_path_factory.mktemp("ranks")
    launch(SCRIPT + SHARDED, out)
    return out


def test_two_process_ddp_keeps_ranks_equal_and_steps_as_one_process(ranks, tmp_path):
    """Both ranks end task 0 with the same parameters, frozen branches and keys, and with the parameters and frozen
    branches of one process trained at twice the per-process batch (the same items per optimizer
    step). The task keys start from the prototype of every process's first batch (as one process's) and their
    gradients are averaged over the processes at each step, as DDP averages the model's; they start at the
    optimum of their loss, where the gradient is rounding noise and Adam still steps by its lr, so they are held
    to within the steps Adam can take (2 x lr x steps apart), not to the last digit."""
    rank0, rank1 = (torch.load(ranks / f"rank{i}.pt") for i in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    for name, a, b in zip(rank0["names"], rank0["params"], rank1["params"], strict=True):
        assert torch.equal(a, b), name
    assert rank0["frozen"] == rank1["frozen"] and sum(map(sum, rank0["frozen"])) > 0  # the same branches frozen
    for a, b in zip(rank0["keys"], rank1["keys"], strict=True):
        assert torch.equal(a, b)
    scope: dict = {}
    exec(TRAIN_COLOUR, scope)  # the same scenario, here on one process
    one = scope["train_colour"](None, tmp_path, batch_size=4)
    assert one["world"] == 1 and one["names"] == rank0["names"] and one["frozen"] == rank0["frozen"]
    for name, a, b in zip(one["names"], one["params"], rank0["params"], strict=True):
        # Adam divides by the gradient's own scale, so where a gradient is small the two batchings' rounding moves
        # a weight by a small share of a step: held to 1/50 of one step (lr 5e-3), far below a wrong average's
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=name)
    for a, b in zip(one["keys"], rank0["keys"], strict=True):
        assert (a - b).abs().max() <= 2 * KEY_LR * 3 + 1e-6  # 3 steps at the keys' lr
    for k0, k1 in zip(rank0["steps"], rank1["steps"], strict=True):  # averaged gradients: equal at every step
        assert all(torch.equal(a, b) for a, b in zip(k0, k1, strict=True))
    for a, b in zip(one["steps"][0], rank0["steps"][0], strict=True):  # the prototype of all first batches
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


SHARDED = textwrap.dedent(
    """
    import copy
    from engine_support import ADAPTER, micro_base, toy_stream
    from branchlora.adapters import adapter_layers
    from branchlora.continual import run_method
    from branchlora.evaluation.evaluate import EvalConfig
    from branchlora.methods import get_method
    from branchlora.sharding import is_sharded
    from branchlora.train import TrainConfig, make_accelerator

    accelerator = make_accelerator(TrainConfig(), cpu=True)
    base, processor = micro_base(cache)
    stream = toy_stream(toy / "sharded" / str(accelerator.process_index), processor, n_train=8, n_test=2)
    stream.train, stream.test, stream.names, stream.metrics = (x[:2] for x in (stream.train, stream.test,
                                                               stream.names, stream.metrics))
    for mode in ("ddp", "sharded"):
        config = TrainConfig(max_steps=3, batch_size=2, lr=5e-3, shard_frozen=mode == "sharded")
        method, model = get_method("branchlora")(ADAPTER), copy.deepcopy(base)
        result = run_method(method, model, stream, config, EvalConfig(batch_size=4, max_new_tokens=4),
                            out / mode, accelerator=accelerator)
        layers = adapter_layers(model)
        torch.save({"sharded": is_sharded(model), "matrix": result.matrix,
                    "frozen": [layer.frozen for _, layer in adapter_layers(model)],
                    "adapters": {f"{n}.{k}": v.detach().clone() for n, layer in layers
                                 for k, v in layer.adapter_parameters().items()},
                    "keys": method.key_img + method.key_txt}, out / f"{mode}-rank{accelerator.process_index}.pt")
    """
)


def test_sharded_frozen_base_matches_ddp(ranks):
    """train.shard_frozen (FSDP2 on the frozen base, adapters whole): a two-task BranchLoRA run ends with the same
    adapters, frozen branches, routers and keys on both ranks, and the same matrix and adapters as under DDP."""
    runs = {(mode, i): torch.load(ranks / f"{mode}-rank{i}.pt") for mode in ("ddp", "sharded") for i in (0, 1)}
    assert runs["sharded", 0]["sharded"] and not runs["ddp", 0]["sharded"]
    for mode in ("ddp", "sharded"):
        zero, one = runs[mode, 0], runs[mode, 1]
        assert zero["frozen"] == one["frozen"] and sum(map(sum, zero["frozen"])) > 0
        for name, value in zero["adapters"].items():  # branches, trunk, every task's router
            assert torch.equal(value, one["adapters"][name]), (mode, name)
        for a, b in zip(zero["keys"], one["keys"], strict=True):
            assert torch.equal(a, b)
    ddp, sharded = runs["ddp", 0], runs["sharded", 0]
    assert sharded["matrix"] == ddp["matrix"] and sharded["frozen"] == ddp["frozen"]
    for name, value in ddp["adapters"].items():
        torch.testing.assert_close(sharded["adapters"][name], value, rtol=1e-4, atol=1e-6)
    for a, b in zip(ddp["keys"], sharded["keys"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
