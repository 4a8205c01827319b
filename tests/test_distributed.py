"""Two processes under torchrun (gloo on CPU): every rank ends a task with the same parameters, frozen
branches and task keys."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import branchlora

from engine_support import micro_base

SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    from accelerate import Accelerator
    from engine_support import ADAPTER, micro_base, toy_stream
    from branchlora.adapters import adapter_layers
    from branchlora.methods import Task, get_method
    from branchlora.train import TrainConfig, make_accelerator, train_task

    torch.set_num_threads(1)
    cache, toy, out = map(Path, sys.argv[1:4])
    config = TrainConfig(max_steps=3, batch_size=2, lr=5e-3)
    accelerator = make_accelerator(config, cpu=True)
    model, processor = micro_base(cache)
    stream = toy_stream(toy / str(accelerator.process_index), processor)
    method = get_method("branchlora")(ADAPTER)
    method.setup(model)
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    train_task(model, method, Task(0, "colour"), stream.train[0], stream.collator.train_batch, config, accelerator)
    trained = [p.detach() for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, trained))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [layer.frozen for _, layer in adapter_layers(model)]
    result = {"world": accelerator.num_processes, "params": trained, "names": names, "frozen": frozen,
              "keys": method.key_img + method.key_txt}
    torch.save(result, out / f"rank{accelerator.process_index}.pt")
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(source: str, tmp_path: Path, port: int | None = None, cache: Path | None = None) -> None:
    """Run `source` on two processes under torchrun (gloo), with argv: the micro base's cache (default: built
    under tmp_path), the toy data's folder and the output folder (tmp_path); a free port unless given."""
    cache = cache or tmp_path / "cache"
    micro_base(cache)  # build once, before the ranks read it
    port = port or free_port()
    script = tmp_path / "script.py"
    script.write_text(source)
    torchrun = Path(sys.executable).parent / "torchrun"
    source_root = Path(branchlora.__file__).parents[1]  # the ranks import the branchlora this test imported
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{source_root}", "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node=2", f"--master_port={port}", str(script), cache, tmp_path, tmp_path]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_process_ddp_keeps_ranks_equal(tmp_path):
    launch(SCRIPT, tmp_path, 29531)
    rank0, rank1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    for name, a, b in zip(rank0["names"], rank0["params"], rank1["params"], strict=True):
        assert torch.equal(a, b), name
    assert rank0["frozen"] == rank1["frozen"] and sum(map(sum, rank0["frozen"])) > 0  # the same branches frozen
    for a, b in zip(rank0["keys"], rank1["keys"], strict=True):
        assert torch.equal(a, b)


SHARDED = textwrap.dedent(
    """
    import copy, sys
    from pathlib import Path
    import torch
    from engine_support import ADAPTER, micro_base, toy_stream
    from branchlora.adapters import adapter_layers
    from branchlora.continual import run_method
    from branchlora.evaluation.evaluate import EvalConfig
    from branchlora.methods import get_method
    from branchlora.sharding import is_sharded
    from branchlora.train import TrainConfig, make_accelerator

    torch.set_num_threads(1)
    cache, toy, out = map(Path, sys.argv[1:4])
    accelerator = make_accelerator(TrainConfig(), cpu=True)
    base, processor = micro_base(cache)
    stream = toy_stream(toy / str(accelerator.process_index), processor, n_train=8, n_test=2)
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


def test_sharded_frozen_base_matches_ddp(tmp_path):
    """train.shard_frozen (FSDP2 on the frozen base, adapters whole): a two-task BranchLoRA run ends with the same
    adapters, frozen branches, routers and keys on both ranks, and the same matrix and adapters as under DDP."""
    launch(SHARDED, tmp_path, 29532)
    runs = {(mode, i): torch.load(tmp_path / f"{mode}-rank{i}.pt") for mode in ("ddp", "sharded") for i in (0, 1)}
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
