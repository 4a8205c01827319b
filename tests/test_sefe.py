"""SEFE's RegLoRA: key elements of each task's update, the masked L1 on later updates, the lifecycle."""

import pytest
import torch

from branchlora.adapters import adapter_layers
from branchlora.methods import Task, get_method
from branchlora.methods.base import StepContext
from branchlora.methods.sefe import key_elements, masked_l1
from branchlora.params import count_parameters

from engine_support import fresh, run_toy
from support import assert_same_state, restored, run_state

ADAPTER = {"r": 4, "alpha": 8}


@pytest.fixture(scope="module")
def trained(small_toy, tmp_path_factory):
    return run_toy("sefe", ADAPTER, small_toy, tmp_path_factory.mktemp("sefe"))


def test_key_elements_are_the_largest_magnitudes():
    delta = torch.tensor([[0.1, -5.0, 0.3], [2.0, 0.0, -0.2], [0.05, 4.0, -3.0], [1.0, 0.5, 0.4]])
    assert sorted(key_elements(delta, 0.25).tolist()) == [1, 7, 8]  # int(0.25 * 12) = 3: |-5|, |4|, |-3|
    assert key_elements(delta, 0.01).tolist() == [1]  # at least one
    rows, cols = torch.tensor([0, 2]), torch.tensor([1, 2])
    assert masked_l1(delta, rows * 3 + cols).item() == pytest.approx((5.0 + 3.0) / 2)


def test_reg_loss_reads_the_new_block_at_earlier_key_elements(small_toy):
    method, model = get_method("sefe")(ADAPTER), fresh(small_toy[0])
    method.setup(model)
    method.on_task_start(model, Task(0, "a"))
    layers = method._named_blocks(model)
    torch.manual_seed(0)
    with torch.no_grad():
        for _, layer in layers:
            layer.lora_B[0].normal_()
    method.on_task_end(model, Task(0, "a"), run=None)
    masks_0 = {name: m.clone() for name, m in method.masks.items()}
    for name, layer in layers:
        delta = (layer.lora_B[0] @ layer.lora_A[0]).detach()
        k = int(0.02 * delta.numel())
        assert len(masks_0[name]) == k
        assert delta.abs().flatten()[masks_0[name]].min() >= delta.abs().flatten().kthvalue(delta.numel() - k).values
    method.on_task_start(model, Task(1, "b"))
    with torch.no_grad():
        for _, layer in layers:
            layer.lora_B[1].normal_()
    ctx = StepContext(Task(1, "b"), {})
    method.extra_loss(model, ctx)
    expected = torch.stack(
        [(layer.lora_B[1] @ layer.lora_A[1]).flatten()[masks_0[name]].abs().mean() for name, layer in layers]
    ).mean()
    torch.testing.assert_close(ctx.losses["reg"], 2500.0 * expected)
    ctx.losses["reg"].backward()
    assert all(layer.lora_B[1].grad is not None and layer.lora_B[0].grad is None for _, layer in layers)
    method.on_task_end(model, Task(1, "b"), run=None)
    for name, mask in method.masks.items():  # a union: task 0's elements stay, task 1's join, each once
        assert set(masks_0[name].tolist()) <= set(mask.tolist()) and len(mask.unique()) == len(mask)


def test_lifecycle_and_checkpoint(trained, small_toy):
    method, model, result, out = trained
    assert len(result.matrix) == 4 and "loss_reg" in result.stats[1] and "loss_reg" not in result.stats[0]
    names = [name for name, _ in adapter_layers(model)]
    assert sorted(method.masks) == sorted(names)
    assert_same_state(run_state(method, model), run_state(*restored("sefe", ADAPTER, small_toy[0], out / "task-02")))


def test_llava_7b_parameter_counts():
    result = count_parameters("llava-1.5-7b", "sefe")
    lora = count_parameters("llava-1.5-7b", "lora", {"init": "kaiming"})
    assert result["tunable"] == lora["tunable"]  # a fresh rank-r LoRA per task, as the official code
