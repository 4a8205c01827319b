"""HiDe-LLaVA: block-alone training, anchor-weighted top layer, fused lower layers, lifecycle and counts."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from branchlora.adapters import AdapterConfig, adapter_layers, routing_context
from branchlora.adapters.hide import HiDeLoRA
from branchlora.methods import Task, get_method
from branchlora.methods.hide import top_layer
from branchlora.params import count_parameters

from engine_support import run_toy
from support import assert_same_state, randomise, restored, run_state

ADAPTER = {"r": 4, "alpha": 8}


@pytest.fixture(scope="module")
def trained(small_toy, tmp_path_factory):
    return run_toy("hide", ADAPTER, small_toy, tmp_path_factory.mktemp("hide"))


def random_layer(top: bool) -> HiDeLoRA:
    torch.manual_seed(0)
    layer = HiDeLoRA(nn.Linear(12, 10), AdapterConfig(kind="hide", r=4, alpha=8, dropout=0.0))
    layer.add_block()
    layer.add_block()
    layer = layer.double()
    layer.top = top
    return randomise(layer)


def test_training_top_and_fused_forwards_match_float64_reference():
    x = torch.randn(3, 5, 12, dtype=torch.float64)

    def update(layer, b, a):
        return torch.einsum("oi,bli->blo", 2.0 * b @ a, x) + layer.base_layer(x)

    for top in (True, False):
        layer = random_layer(top)
        A, B = list(layer.lora_A), list(layer.lora_B)
        model = nn.Sequential(layer).train()
        with routing_context(model, task_ids=1):  # training: task 1's block alone, in every layer
            torch.testing.assert_close(model(x), update(layer, B[1], A[1]))
        model.eval()
        if not top:  # lower layers fuse at test time, whatever the task: (sum B)(sum A), or sum B_i A_i
            with routing_context(model, task_ids=1):
                torch.testing.assert_close(model(x), update(layer, sum(B), sum(A)))
                layer.fusion = "updates"
                summed = sum(2.0 * B[t] @ A[t] for t in range(3))
                torch.testing.assert_close(model(x), torch.einsum("oi,bli->blo", summed, x) + layer.base_layer(x))
            continue
        w = torch.softmax(torch.randn(3, 3, dtype=torch.float64), dim=-1)
        with routing_context(model, task_ids=w):
            expected = torch.stack(
                [sum(w[b, t] * (2.0 * B[t] @ A[t]) @ x[b].t() for t in range(3)).t() for b in range(3)]
            ) + layer.base_layer(x)
            torch.testing.assert_close(model(x), expected)
        with routing_context(model, task_ids=torch.tensor([2, 0, 1])):  # hard choice per sample
            expected = torch.stack([((2.0 * B[t] @ A[t]) @ x[b].t()).t() for b, t in enumerate([2, 0, 1])])
            torch.testing.assert_close(model(x), expected + layer.base_layer(x))


def test_top_layer_is_the_last_decoder_layer():
    names = [f"model.language_model.layers.{i}.self_attn.q_proj" for i in (0, 1, 11)] + [
        "model.language_model.layers.11.mlp.up_proj"
    ]
    assert top_layer(names) == names[2:]
    with pytest.raises(ValueError, match="layers"):
        top_layer(["fc1", "fc2"])


def test_lifecycle_selection_and_checkpoint(trained, small_toy):
    method, model, result, out = trained
    assert len(result.matrix) == 4 and len(method.keys) == 3
    tops = [name for name, layer in adapter_layers(model) if layer.top]
    assert tops and all(".layers.1." in name for name in tops)  # the toy LM has two layers
    after = [load_file(str(out / f"task-0{t}" / "adapters.safetensors")) for t in range(3)]
    for name, layer in adapter_layers(model):
        for t in range(2):
            assert torch.equal(after[t][f"{name}.lora_B.{t}"], layer.lora_B[t].detach()), (name, t)
    batch = small_toy[1].collator.prompt_batch(small_toy[1].test[0] + small_toy[1].test[2])
    weights = method.eval_task_ids(model, batch, Task(0, "colour"))
    assert weights.shape == (4, 3) and torch.allclose(weights.sum(-1), torch.ones(4))
    assert weights.argmax(-1).tolist() == [0, 0, 2, 2]  # each sample weighs its own task's expert most
    assert method.eval_task_ids(model, batch, Task(1, "count"), oracle=True) == 1
    restored_method, restored_model = restored("hide", ADAPTER, small_toy[0], out / "task-02")
    assert [n for n, layer in adapter_layers(restored_model) if layer.top] == tops
    assert_same_state(run_state(method, model), run_state(restored_method, restored_model))


def test_adapter_kind_must_be_hide():
    with pytest.raises(ValueError, match="adapter.kind 'hide'"):
        get_method("hide")({"kind": "lora"})


def test_llava_7b_parameter_counts():
    result = count_parameters("llava-1.5-7b", "hide")
    lora = count_parameters("llava-1.5-7b", "lora", {"init": "gaussian"})
    assert result["tunable"] == lora["tunable"]
    blocks = lora["by_part"]["adapter.lora_A"] + lora["by_part"]["adapter.lora_B"]
    assert result["by_part"]["trained_over_8_tasks"] == lora["tunable"] + 7 * blocks
