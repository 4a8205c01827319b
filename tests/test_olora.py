"""O-LoRA and the per-task block layer it shares: summed blocks, the orthogonality loss, the lifecycle."""

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from branchlora.adapters import AdapterConfig, TaskLoRA, adapter_layers, inject_adapters, merge
from branchlora.methods import Task, get_method
from branchlora.methods.base import StepContext
from branchlora.methods.olora import orthogonality_loss
from branchlora.params import count_parameters

from engine_support import fresh, run_toy
from support import assert_same_state, randomise, restored, run_state

ADAPTER = {"r": 4, "alpha": 8}


@pytest.fixture(scope="module")
def trained(small_toy, tmp_path_factory):
    return run_toy("olora", ADAPTER, small_toy, tmp_path_factory.mktemp("olora"))


class Weighted(TaskLoRA):
    """TaskLoRA with per-sample block weights set from outside, as ProgLoRA's and HiDe's layers supply them."""

    given: torch.Tensor | None = None

    def weights(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.given


def random_blocks(tasks: int = 3) -> Weighted:
    torch.manual_seed(0)
    layer = Weighted(nn.Linear(12, 10), AdapterConfig(kind="tasklora", r=4, alpha=8, dropout=0.0))
    for _ in range(tasks - 1):
        layer.add_block()
    return randomise(layer.double())


def test_summed_and_weighted_blocks_match_float64_reference():
    layer = random_blocks()
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    W0, b0 = layer.base_layer.weight, layer.base_layer.bias

    def reference(b: int, weights: list[float]) -> torch.Tensor:
        rows = []
        for i in range(5):
            y = W0 @ x[b, i] + b0
            for t, w in enumerate(weights):
                y = y + w * 2.0 * layer.lora_B[t] @ (layer.lora_A[t] @ x[b, i])
            rows.append(y)
        return torch.stack(rows)

    torch.testing.assert_close(layer(x), torch.stack([reference(b, [1, 1, 1]) for b in range(3)]))
    per_sample = torch.tensor([[1.0, 0, 0], [0, 0.5, 0.5], [0.2, 0.3, 0.5]], dtype=torch.float64)
    layer.given = per_sample
    torch.testing.assert_close(layer(x), torch.stack([reference(b, per_sample[b].tolist()) for b in range(3)]))
    layer.given = per_sample[:2]
    with pytest.raises(ValueError, match="do not fit"):
        layer(x)
    assert [p.requires_grad for p in layer.lora_A] == [False, False, True]


def test_summed_blocks_merge_into_w0():
    model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 10)).double()
    inject_adapters(model, AdapterConfig(kind="tasklora", r=4, alpha=8, dropout=0.0, targets=".*"))
    for _, layer in adapter_layers(model):
        layer.add_block()
    randomise(model)
    x = torch.randn(4, 12, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(merge(copy.deepcopy(model))(x), model(x))


def test_orthogonality_loss_matches_entrywise_sum():
    old = [torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)]
    new = torch.randn(3, 7, dtype=torch.float64)
    expected = sum(abs(float(a[i] @ new[j])) for a in old for i in range(3) for j in range(3))
    assert orthogonality_loss(old, new).item() == pytest.approx(expected)
    q, _ = torch.linalg.qr(torch.randn(7, 6, dtype=torch.float64))  # orthonormal columns
    assert orthogonality_loss([q[:, :3].t()], q[:, 3:].t()).item() == pytest.approx(0.0, abs=1e-12)


def test_orthogonality_loss_only_from_the_second_task(small_toy):
    method, model = get_method("olora")(ADAPTER), fresh(small_toy[0])
    method.setup(model)
    batch = {}
    method.on_task_start(model, Task(0, "a"))
    ctx = StepContext(Task(0, "a"), batch)
    method.extra_loss(model, ctx)
    assert "orthogonal" not in ctx.losses
    method.on_task_start(model, Task(1, "b"))
    ctx = StepContext(Task(1, "b"), batch)
    method.extra_loss(model, ctx)
    expected = sum(orthogonality_loss([m.lora_A[0]], m.lora_A[1]) for m in method.blocks(model))
    torch.testing.assert_close(ctx.losses["orthogonal"], 0.5 * expected)
    ctx.losses["orthogonal"].backward()
    assert all(m.lora_A[1].grad is not None and m.lora_A[0].grad is None for m in method.blocks(model))


def test_earlier_blocks_stay_bit_identical_and_checkpoint_restores(trained, small_toy):
    method, model, result, out = trained
    assert len(result.matrix) == 4 and "loss_orthogonal" in result.stats[1]
    after = [load_file(str(out / f"task-0{t}" / "adapters.safetensors")) for t in range(3)]
    for name, layer in adapter_layers(model):
        assert layer.n_blocks == 3
        for t in range(2):
            for part in ("lora_A", "lora_B"):
                assert torch.equal(after[t][f"{name}.{part}.{t}"], getattr(layer, part)[t].detach()), (name, t)
    assert_same_state(run_state(method, model), run_state(*restored("olora", ADAPTER, small_toy[0], out / "task-02")))


def test_llava_7b_parameter_counts():
    result = count_parameters("llava-1.5-7b", "olora")
    lora = count_parameters("llava-1.5-7b", "lora")
    assert result["tunable"] == lora["tunable"]  # a task's block is a rank-r LoRA
    blocks = lora["by_part"]["adapter.lora_A"] + lora["by_part"]["adapter.lora_B"]
    assert result["by_part"]["trained_over_8_tasks"] == lora["tunable"] + 7 * blocks
