"""CL-MoE: the dual-router mixture against a float64 re-computation, the momentum merge, the lifecycle."""

import pytest
import torch
from torch import nn

from branchlora.adapters import AdapterConfig, adapter_layers, routing_context
from branchlora.adapters.clmoe import CLMoE
from branchlora.methods import Task, get_method
from branchlora.methods.clmoe import merge_experts, momentum_weights
from branchlora.params import count_parameters

from engine_support import run_toy
from support import assert_same_state, randomise, restored, run_state

ADAPTER = {"r": 8, "alpha": 16, "n_branches": 4}


@pytest.fixture(scope="module")
def trained(small_toy, tmp_path_factory):
    return run_toy("clmoe", ADAPTER, small_toy, tmp_path_factory.mktemp("clmoe"))


def random_layer() -> CLMoE:
    torch.manual_seed(0)
    layer = CLMoE(nn.Linear(12, 10), AdapterConfig(kind="clmoe", r=8, alpha=16, n_branches=4, dropout=0.0))
    layer.add_task()
    layer = layer.double()
    layer.beta = 0.3
    return randomise(layer)


def test_dual_router_matches_float64_reference():
    layer = random_layer()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    W0, b0, A, B, Wr = layer.base_layer.weight, layer.base_layer.bias, layer.lora_A, layer.lora_B, layer.router.weight

    def reference(b: int, t: int) -> torch.Tensor:
        rows = []
        for i in range(5):
            g_inst = torch.softmax(Wr @ x[b, i], dim=0)
            g_task = torch.softmax(layer.task_logits[t], dim=0)
            y = W0 @ x[b, i] + b0
            for e in range(4):
                g = 0.3 * g_inst[e] + 0.7 * g_task[e]
                y = y + g * 2.0 * B[:, 2 * e : 2 * e + 2] @ (A[2 * e : 2 * e + 2] @ x[b, i])
            rows.append(y)
        return torch.stack(rows)

    model = nn.Sequential(layer)
    for task_ids in (torch.tensor([1, 0, 1]), 0, None):
        with torch.no_grad(), routing_context(model, task_ids=task_ids):
            got = model(x)
        tasks = task_ids.tolist() if isinstance(task_ids, torch.Tensor) else [1 if task_ids is None else task_ids] * 3
        torch.testing.assert_close(got, torch.stack([reference(b, t) for b, t in enumerate(tasks)]))
    assert [p.requires_grad for p in layer.task_logits] == [False, True]


def test_momentum_merge_by_hand():
    keep = momentum_weights({1, 3}, {0, 1}, 4, 0.7)  # expert 3 is the new task's own; 0, 1, 2 keep mostly old
    torch.testing.assert_close(keep, torch.tensor([0.7, 0.7, 0.7, 0.3]))
    layer = random_layer()
    old_a, old_b = torch.randn_like(layer.lora_A), torch.randn_like(layer.lora_B)
    new_a, new_b = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    merge_experts(layer, (old_a, old_b), keep)
    for e, lam in enumerate(keep.tolist()):
        rows = slice(2 * e, 2 * e + 2)
        torch.testing.assert_close(layer.lora_A[rows].detach(), lam * old_a[rows] + (1 - lam) * new_a[rows])
        torch.testing.assert_close(layer.lora_B[:, rows].detach(), lam * old_b[:, rows] + (1 - lam) * new_b[:, rows])


def test_lifecycle_and_checkpoint(trained, small_toy):
    method, model, result, out = trained
    assert len(result.matrix) == 4 and len(method.top) == 3 and len(method.keys) == 3
    layers = [layer for _, layer in adapter_layers(model)]
    assert all(layer.n_tasks == 3 and len(set(top)) == 2 for layer, top in zip(layers, method.top[-1], strict=True))
    batch = small_toy[1].collator.prompt_batch(small_toy[1].test[0] + small_toy[1].test[2])
    assert method.eval_task_ids(model, batch, Task(0, "colour")).tolist() == [0, 0, 2, 2]  # each sample's own task
    assert_same_state(run_state(method, model), run_state(*restored("clmoe", ADAPTER, small_toy[0], out / "task-02")))


def test_options_and_kind_are_checked():
    with pytest.raises(ValueError, match="adapter.kind 'clmoe'"):
        get_method("clmoe")({"kind": "moelora"})
    with pytest.raises(ValueError, match="top_experts"):
        get_method("clmoe")(ADAPTER, {"top_experts": 5})


def test_llava_7b_parameter_counts():
    result = count_parameters("llava-1.5-7b", "clmoe")
    moelora = count_parameters("llava-1.5-7b", "moelora")
    wrapped = 32 * 7
    assert result["tunable"] == moelora["tunable"] + wrapped * 8  # + one task router: 8 logits per Linear
    assert result["by_part"]["trained_over_8_tasks"] == moelora["tunable"] + 8 * wrapped * 8
