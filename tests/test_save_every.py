"""train.save_every: a run killed inside a task resumes there and ends bit for bit as an unbroken run, for every
registered method; train.keep=last drops the earlier stages' weights; DataLoader workers collate as the main
process does."""

import pickle

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from branchlora.continual import IN_TASK, StreamData, run_method
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.methods import METHODS, get_method
from branchlora.train import TrainConfig

from engine_support import ADAPTER, fresh
from support import adapter_for, assert_same_state, run_state

EVAL = EvalConfig(batch_size=4, max_new_tokens=2, limit=1)


class Killed(Exception):
    pass


def two_tasks(stream: StreamData) -> StreamData:
    return StreamData(stream.names[:2], stream.metrics[:2], stream.train[:2], stream.test[:2], stream.collator)


def saved(folder) -> dict[str, torch.Tensor]:
    """A stage's adapters, projector and method state, as written."""
    tensors = {**load_file(folder / "adapters.safetensors"), **load_file(folder / "projector.safetensors")}
    keys = torch.load(folder / "method.pt")
    return {**tensors, **{f"key{i}": k for i, k in enumerate(keys["key_img"] + keys["key_txt"])}}


def test_killed_run_resumes_inside_the_task(small_toy, tmp_path):
    base, stream = small_toy
    stream = two_tasks(stream)
    # 8 items at batch 2: 4 batches an epoch; task 1 saves at step 5 (inside the second epoch), is killed at 7,
    # and resumes across the second epoch's end.
    config = TrainConfig(max_steps=9, batch_size=2, lr=5e-3, save_every=5, keep="last")
    run = lambda out, **kw: run_method(get_method("branchlora")(ADAPTER), fresh(base), stream, config, EVAL, out, **kw)  # noqa: E731
    whole = run(tmp_path / "whole")

    def kill(phase: str, step: int, total: int, losses: dict) -> None:
        if phase == stream.names[1] and step == 7:
            raise Killed

    with pytest.raises(Killed):
        run(tmp_path / "killed", on_step=kill)
    inner = tmp_path / "killed" / IN_TASK
    assert torch.load(inner / "loop.pt")["step"] == 5 and (tmp_path / "killed" / "task-00").is_dir()
    resumed = run(tmp_path / "killed", resume=True)
    assert not inner.exists()  # the task finished: its inner checkpoint went
    assert resumed.matrix == whole.matrix
    expected, got = saved(tmp_path / "whole" / "task-01"), saved(tmp_path / "killed" / "task-01")
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    # keep=last: the first stage keeps its state (matrix so far), not its weights
    first = tmp_path / "whole" / "task-00"
    assert (first / "state.json").is_file() and not (first / "adapters.safetensors").exists()
    assert not (first / "method.pt").exists() and (tmp_path / "whole" / "task-01" / "adapters.safetensors").is_file()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_killed_in_its_last_task_resumes_bit_for_bit(small_toy, tmp_path, name):
    """Killed at step 3 of the last task (its in-task checkpoint at step 2, task-00 before it), the resumed run
    ends with the unbroken run's adapters, frozen sets, projector and method state (keys, Fisher, masks,
    routers), bit for bit, and its matrix."""
    base, stream = small_toy
    stream = two_tasks(stream)
    config = TrainConfig(max_steps=3, batch_size=4, lr=5e-3, save_every=2)
    last = "+".join(stream.names) if get_method(name).joint else stream.names[-1]

    def run(out, **kw) -> tuple:
        method, model = get_method(name)(adapter_for(name)), fresh(base)
        return method, model, run_method(method, model, stream, config, EVAL, out, **kw)

    def kill(phase: str, step: int, total: int, losses: dict) -> None:
        if phase == last and step == 3:
            raise Killed

    whole = run(tmp_path / "whole")
    with pytest.raises(Killed):
        run(tmp_path / "killed", on_step=kill)
    assert torch.load(tmp_path / "killed" / IN_TASK / "loop.pt")["step"] == 2
    method, model, result = run(tmp_path / "killed", resume=True)
    assert result.matrix == whole[2].matrix
    assert_same_state(run_state(*whole[:2]), run_state(method, model))


def test_workers_collate_as_the_main_process(small_toy):
    _, stream = small_toy
    collate = stream.collator.train_batch
    assert pickle.loads(pickle.dumps(collate)) is not None  # a spawned worker receives it pickled
    items = stream.train[0]
    inline = list(DataLoader(items, batch_size=4, collate_fn=collate))
    workers = list(DataLoader(items, batch_size=4, collate_fn=collate, num_workers=2))
    assert len(inline) == len(workers) == 2
    for a, b in zip(inline, workers, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
