"""Two processes under torchrun (gloo on CPU): every rank ends a task with the same parameters, frozen
branches and task keys."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

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


def test_two_process_ddp_keeps_ranks_equal(tmp_path):
    cache = tmp_path / "cache"
    micro_base(cache)  # build once, before the ranks read it
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_port=29531", str(script), cache, tmp_path, tmp_path]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    for name, a, b in zip(rank0["names"], rank0["params"], rank1["params"], strict=True):
        assert torch.equal(a, b), name
    assert rank0["frozen"] == rank1["frozen"] and sum(map(sum, rank0["frozen"])) > 0  # the same branches frozen
    for a, b in zip(rank0["keys"], rank1["keys"], strict=True):
        assert torch.equal(a, b)
