"""LiLoRA: the gated B_t math, per-task merge, the stability loss, lifecycle on the toy stream, checkpoints."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from branchlora.adapters import AdapterConfig, LiLoRA, adapter_layers, inject_adapters, routing_context
from branchlora.methods import Task, get_method
from branchlora.methods.lilora import merge_lilora_task, stability_loss
from branchlora.models.parts import projector
from branchlora.params import count_parameters
from branchlora.train import param_groups

from engine_support import TOY_TRAIN, fresh, run_toy
from support import assert_same_state, randomise, restored, run_state

ADAPTER = {"r": 8, "alpha": 16, "sub_rank": 4}


@pytest.fixture(scope="module")
def base(small_toy):
    return small_toy


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """LiLoRA run through the three toy tasks, with its per-task checkpoints."""
    return run_toy("lilora", ADAPTER, base, tmp_path_factory.mktemp("lilora"))


def random_layer(tasks: int = 3) -> LiLoRA:
    torch.manual_seed(0)
    layer = LiLoRA(nn.Linear(12, 10), AdapterConfig(kind="lilora", r=4, alpha=8, sub_rank=2, dropout=0.0))
    assert not layer.lora_B0.any() and not layer.lora_P[0].any() and layer.lora_Q[0].abs().max() <= 4**-0.5
    for _ in range(tasks - 1):
        layer.add_task()
    return randomise(layer.double())


def test_gated_b_matches_float64_reference():
    layer = random_layer()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    W0, b0, A = layer.base_layer.weight, layer.base_layer.bias, layer.lora_A

    def reference(b: int, t: int) -> torch.Tensor:
        g = 1 / (1 + torch.exp(-layer.gates[t][0]))
        b_t = g * layer.lora_B0 + (1 - g) * layer.lora_P[t] @ layer.lora_Q[t]
        return torch.stack([W0 @ x[b, i] + b0 + 2.0 * b_t @ (A @ x[b, i]) for i in range(5)])

    model = nn.Sequential(layer)
    for task_ids in (torch.tensor([2, 0, 2]), 1, None):  # per sample, one for the batch, the newest
        with routing_context(model, task_ids=task_ids):
            got = model(x)
        tasks = task_ids.tolist() if isinstance(task_ids, torch.Tensor) else [2 if task_ids is None else task_ids] * 3
        torch.testing.assert_close(got, torch.stack([reference(b, t) for b, t in enumerate(tasks)]))
    assert [p.requires_grad for p in layer.gates] == [False, False, True] and not layer.lora_B0.requires_grad


def test_merged_task_equals_unmerged_forward():
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    inject_adapters(model, AdapterConfig(kind="lilora", r=4, alpha=8, sub_rank=2, dropout=0.0, targets=".*"))
    for _, layer in adapter_layers(model):
        layer.add_task()
    randomise(model, seed=1)
    x = torch.randn(4, 12, dtype=torch.float64)
    for task in (0, 1):
        with torch.no_grad(), routing_context(model, task_ids=task):
            unmerged = model(x)
        merged = merge_lilora_task(copy.deepcopy(model), task)
        assert not list(adapter_layers(merged)) and isinstance(merged[0], nn.Linear)
        torch.testing.assert_close(merged(x), unmerged)
    assert not torch.allclose(merge_lilora_task(copy.deepcopy(model), 0)(x), unmerged)  # the tasks differ


def test_stability_loss_is_zero_until_a_turns():
    anchors = [torch.randn(4, 6), torch.randn(4, 3)]
    assert stability_loss([a.clone() for a in anchors], anchors).abs() < 1e-6
    assert stability_loss([3 * a for a in anchors], anchors).abs() < 1e-6  # a rescaled A has not turned
    moved = [anchors[0] + torch.randn(4, 6), anchors[1]]
    expected = 1 - torch.nn.functional.cosine_similarity(moved[0].flatten(), anchors[0].flatten(), dim=0)
    torch.testing.assert_close(stability_loss(moved, anchors), expected)


def test_projector_is_wrapped_frozen_and_its_adapters_train(base):
    method, model = get_method("lilora")(ADAPTER), fresh(base[0])
    method.setup(model)
    proj = projector(model)
    wrapped = [layer for _, layer in adapter_layers(proj)]
    assert len(wrapped) == 2 and not any(layer.base_layer.weight.requires_grad for layer in wrapped)
    assert all(layer.lora_A.requires_grad and layer.lora_B0.requires_grad for layer in wrapped)
    names = [name for name, _ in adapter_layers(model)]
    assert sum(n.endswith(("gate_proj", "up_proj", "down_proj")) for n in names) == 3 * 2 and len(names) == 8
    (group,) = param_groups(model, method, TOY_TRAIN)  # no projector group: its adapters train at the adapter lr
    assert group["lr"] == TOY_TRAIN.lr and len(group["params"]) == sum(p.requires_grad for p in model.parameters())


def test_old_task_parts_stay_bit_identical(trained, base):
    method, model, result, out = trained
    assert len(result.matrix) == 4 and "loss_stability" in result.stats[1] and "loss_stability" not in result.stats[0]
    after = [load_file(str(out / f"task-0{t}" / "adapters.safetensors")) for t in range(3)]
    for name, layer in adapter_layers(model):
        assert layer.n_tasks == 3
        assert torch.equal(after[0][f"{name}.lora_B0"], layer.lora_B0.detach())  # B0: the first task's
        for t in range(2):
            for part in ("lora_P", "lora_Q", "gates"):
                assert torch.equal(after[t][f"{name}.{part}.{t}"], getattr(layer, part)[t].detach()), (name, part, t)
        assert not torch.equal(after[0][f"{name}.lora_A"], layer.lora_A.detach())  # the shared A trains on
    start = projector(base[0]).state_dict()
    for key, value in projector(model).state_dict().items():
        if "base_layer." in key:
            assert torch.equal(value, start[key.replace("base_layer.", "")]), key  # its own weights never move
    assert len(method.keys) == 3


def test_task_identity_selector_and_oracle(trained, base):
    method, model, _, _ = trained
    batch = base[1].collator.prompt_batch(base[1].test[0] + base[1].test[2])
    assert method.eval_task_ids(model, batch, Task(0, "colour")).tolist() == [0, 0, 2, 2]  # each sample's own task
    assert method.eval_task_ids(model, batch, Task(1, "count"), oracle=True) == 1
    oracle = get_method("lilora-oracle")(ADAPTER)
    oracle.keys.load_state_dict(method.keys.state_dict())
    assert oracle.eval_task_ids(model, batch, Task(2, "shape")) == 2


def test_checkpoint_restores_every_part(trained, base):
    """(Resuming from it, every method: test_save_every.py.)"""
    method, model, _, out = trained
    assert_same_state(run_state(method, model), run_state(*restored("lilora", ADAPTER, base[0], out / "task-02")))


def test_llava_7b_parameter_counts():
    result = count_parameters("llava-1.5-7b", "lilora")
    ffn = [(4096, 11008), (4096, 11008), (11008, 4096)] * 32  # (d_in, d_out) of gate, up, down
    targets = ffn + [(1024, 4096), (4096, 4096)]  # + the projector's two Linears
    shared_a = sum(128 * d_in for d_in, _ in targets)
    b0 = sum(d_out * 128 for _, d_out in targets)
    per_task = sum(d_out * 64 + 64 * 128 + 1 for _, d_out in targets)  # P_t, Q_t, f_t
    assert result["tunable"] == shared_a + b0 + per_task and result["by_part"]["projector"] == 0
    assert result["by_part"]["tunable_at_task_8"] == shared_a + per_task  # B0 frozen after task 1
    assert result["by_part"]["trained_over_8_tasks"] == shared_a + b0 + 8 * per_task
