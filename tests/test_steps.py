"""Optimizer steps count the processes, and the warm-up + cosine schedule spans exactly those steps."""

import math
import textwrap

import pytest
import torch

from branchlora.train import TrainConfig, check_deepspeed, warmup_cosine
from test_distributed import launch

from engine_support import micro_base, toy_stream


def cosine_lr(lr: float, step: int, warmup: int, total: int) -> float:
    """The lr of optimizer step `step` (0-based), written out from the schedule's definition."""
    if step < warmup:
        return lr * step / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


@pytest.mark.parametrize(
    ("items", "batch", "accum", "processes", "epochs", "expected"),
    [
        (96, 8, 1, 2, 1, 6),  # the quick preset's task on two processes: 6, not 12
        (96, 8, 1, 1, 1, 12),
        (12726, 4, 2, 8, 1, 199),  # CoIN-sized task on 8 GPUs: ceil(12726 / 64)
        (13, 1, 2, 2, 1, 4),  # 7 batches per process: 3 full accumulations and one of a single batch
        (13, 1, 2, 2, 2, 8),  # each epoch ends with its own partial step
        (100, 10, 1, 1, 0.5, 5),
    ],
)
def test_steps_count_processes(items, batch, accum, processes, epochs, expected):
    config = TrainConfig(batch_size=batch, grad_accum=accum, epochs=epochs)
    assert config.steps(items, processes) == expected
    assert TrainConfig(max_steps=7, batch_size=batch).steps(items, processes) == 7  # max_steps: per task, as given


def test_schedule_warms_up_then_never_rises():
    total, lr = 40, 2e-4
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = warmup_cosine(optimizer, 0.1, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([cosine_lr(lr, k, 4, total) for k in range(total)], rel=1e-12, abs=1e-15)
    peak = lrs.index(max(lrs))
    assert peak == 4 and lrs[peak] == pytest.approx(lr)
    assert all(b <= a for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))  # never climbs back
    assert lrs[-1] > 0 and optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # zero after the last


def test_deepspeed_accumulation_must_match():
    check_deepspeed({"gradient_accumulation_steps": 2}, TrainConfig(grad_accum=2))
    with pytest.raises(ValueError, match="gradient_accumulation_steps is 1 but train.grad_accum is 2"):
        check_deepspeed({"gradient_accumulation_steps": 1}, TrainConfig(grad_accum=2))
    with pytest.raises(ValueError, match="train.save_every"):
        check_deepspeed({"gradient_accumulation_steps": 1}, TrainConfig(save_every=5))


# (grad_accum, epochs): a partial accumulation at each epoch's end, and two epochs.
CASES = [(2, 1.0), (1, 2.0)]
RECORD = textwrap.dedent(
    """
    import branchlora.train as train

    def record(config, accelerator, stream):
        \"\"\"(steps, the lr of every optimizer step actually taken) of BranchLoRA-free LoRA on task 0.\"\"\"
        from engine_support import LORA
        from branchlora.methods import Task, get_method
        lrs, made = [], train.make_optimizer

        def recording(groups, weight_decay):
            optimizer = made(groups, weight_decay)
            optimizer.register_step_pre_hook(lambda opt, *_: lrs.append(opt.param_groups[0]["lr"]))
            return optimizer

        train.make_optimizer = recording
        method = get_method("lora")(LORA)
        model = micro_base(cache)[0]
        method.setup(model)
        stats = train.train_task(model, method, Task(0, "colour"), stream.train[0], stream.collator.train_batch,
                                 config, accelerator)
        train.make_optimizer = made
        return stats["steps"], lrs
    """
)
SCRIPT = (
    textwrap.dedent(
        """
    import sys
    from pathlib import Path
    import torch
    from engine_support import micro_base, toy_stream
    from branchlora.train import TrainConfig, make_accelerator
    torch.set_num_threads(1)
    cache, toy, out = map(Path, sys.argv[1:4])
    """
    )
    + RECORD
    + textwrap.dedent(
        """
    accelerator = make_accelerator(TrainConfig(), cpu=True)
    stream = toy_stream(toy / str(accelerator.process_index), micro_base(cache)[1], n_train=13, n_test=1)
    runs = [record(TrainConfig(batch_size=1, grad_accum=accum, epochs=epochs, warmup_ratio=0.3, lr=1e-3),
                   accelerator, stream) for accum, epochs in CASES]
    torch.save({"world": accelerator.num_processes, "runs": runs}, out / f"steps{accelerator.process_index}.pt")
    """
    )
)


def test_two_processes_step_as_one_with_twice_the_batch(tmp_path):
    """Two gloo processes at batch 1 and one process at batch 2 take the same optimizer steps at the same lrs."""
    launch(f"CASES = {CASES!r}\n" + SCRIPT, tmp_path)
    ranks = [torch.load(tmp_path / f"steps{i}.pt") for i in (0, 1)]
    assert ranks[0]["world"] == 2 and ranks[0]["runs"] == ranks[1]["runs"]
    from branchlora.train import make_accelerator

    scope = {"micro_base": micro_base, "cache": None}  # the session's cache
    exec(RECORD, scope)  # the same recorder, here on one process
    stream = toy_stream(tmp_path / "single", micro_base()[1], n_train=13, n_test=1)
    for (accum, epochs), (steps, lrs) in zip(CASES, ranks[0]["runs"], strict=True):
        config = TrainConfig(batch_size=2, grad_accum=accum, epochs=epochs, warmup_ratio=0.3, lr=1e-3)
        accelerator = make_accelerator(config, cpu=True)
        one_steps, one_lrs = scope["record"](config, accelerator, stream)
        expected = math.ceil(epochs * math.ceil(13 / 2 / accum))  # 7 batches of 2 per epoch
        assert steps == one_steps == len(lrs) == len(one_lrs) == expected
        assert lrs == one_lrs
        warmup = int(0.3 * expected)
        assert lrs == pytest.approx([cosine_lr(1e-3, k, warmup, expected) for k in range(expected)], rel=1e-9)
