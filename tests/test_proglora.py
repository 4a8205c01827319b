"""ProgLoRA: block math, one-softmax allocation, lifecycle on the toy stream, checkpoints, cached generation."""

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from branchlora.adapters import AdapterConfig, ProgLoRA, TaskAllocator, adapter_layers, routing_context
from branchlora.adapters.proglora import allocation, max_pool
from branchlora.batch import model_inputs
from branchlora.methods import Task, get_method
from branchlora.methods.proglora import identity_loss
from branchlora.params import count_parameters

from engine_support import fresh, run_toy
from support import assert_same_state, randomise, restored, run_state

ADAPTER = {"r": 8, "alpha": 16}


@pytest.fixture(scope="module")
def base(small_toy):
    return small_toy


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    """ProgLoRA run through the three toy tasks, with its per-task checkpoints."""
    return run_toy("proglora", ADAPTER, base, tmp_path_factory.mktemp("proglora"))


def test_block_mixture_matches_float64_reference():
    torch.manual_seed(0)
    layer = ProgLoRA(nn.Linear(12, 10), AdapterConfig(kind="proglora", r=4, alpha=8, dropout=0.0)).double()
    layer.add_block()
    layer.add_block()
    randomise(layer)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    alpha = torch.softmax(torch.randn(3, 3, dtype=torch.float64), dim=-1)
    layer.context.allocation = alpha
    got = layer(x)
    W0, b0 = layer.base_layer.weight, layer.base_layer.bias
    expected = torch.empty_like(got)
    for b in range(3):
        update = sum(alpha[b, i] * layer.lora_B[i] @ layer.lora_A[i] for i in range(3))
        for t in range(5):
            expected[b, t] = W0 @ x[b, t] + b0 + 2.0 * update @ x[b, t]
    torch.testing.assert_close(got, expected)
    assert [p.requires_grad for p in layer.lora_A] == [False, False, True]  # only the newest block trains


def test_allocation_is_one_softmax_over_the_visible_keys():
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, -1.0]])
    for task_ids, recall in ((None, False), (1, False), (None, True), (torch.tensor([2, 0]), True)):
        torch.testing.assert_close(allocation(logits, task_ids, recall).sum(-1), torch.ones(2))
    torch.testing.assert_close(allocation(logits, None, recall=False), torch.softmax(logits, -1))
    torch.testing.assert_close(allocation(logits, 2, recall=False), torch.softmax(logits, -1))  # training, task 3
    static = allocation(logits, 1, recall=True)  # the true task 1: keys 0..1 only
    torch.testing.assert_close(static[:, :2], torch.softmax(logits[:, :2], -1))
    assert static[:, 2].eq(0).all()
    dynamic = allocation(logits, None, recall=True)  # argmax picks task 0 for row 0, task 1 for row 1
    torch.testing.assert_close(dynamic[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(dynamic[1, :2], torch.softmax(logits[1, :2], -1))
    # batch of one: a newest key far below the old one gets almost nothing (no tie from two shifted groups)
    assert allocation(torch.tensor([[4.0, -4.0]]), None, recall=False)[0, 1] < 1e-3
    assert identity_loss(torch.tensor([[10.0, -10.0], [-10.0, 10.0]]), torch.tensor([0, 1])) < 1e-6


def test_max_pool_skips_padding_and_allocator_math():
    embeds = torch.tensor([[[9.0, 9.0], [1.0, -2.0], [0.0, 3.0]]])
    torch.testing.assert_close(max_pool(embeds, torch.tensor([[0, 1, 1]])), torch.tensor([[1.0, 3.0]]))
    torch.manual_seed(0)
    allocator = TaskAllocator(8, hidden=5).double()
    allocator.add_key()
    assert torch.equal(allocator.keys[1], allocator.keys[0]) and not allocator.keys[0].requires_grad
    with torch.no_grad():
        allocator.keys[1].normal_()
    e = torch.randn(4, 8, dtype=torch.float64)
    h = e @ allocator.w1.weight.t() @ allocator.w2.weight.t()
    h = h * torch.sigmoid(h)  # SiLU
    q = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    q = q * allocator.norm.weight + allocator.norm.bias
    expected = torch.stack([q @ allocator.keys[0], q @ allocator.keys[1]], dim=-1) / 8**0.5
    torch.testing.assert_close(allocator.logits(e), expected)


def test_old_blocks_and_keys_stay_bit_identical(trained):
    method, model, result, out = trained
    assert len(result.matrix) == 4 and all(len(row) == 3 and min(row) >= 0 for row in result.matrix)
    after = [load_file(str(out / f"task-0{t}" / "adapters.safetensors")) for t in range(3)]
    states = [torch.load(out / f"task-0{t}" / "method.pt") for t in range(3)]
    for name, layer in adapter_layers(model):
        assert layer.n_blocks == 3
        for t in range(2):  # block t, as task t left it, untouched by every later task
            assert torch.equal(after[t][f"{name}.lora_A.{t}"], layer.lora_A[t].detach())
            assert torch.equal(after[t][f"{name}.lora_B.{t}"], layer.lora_B[t].detach())
    final = method.allocator.state_dict()
    for t in range(2):
        assert torch.equal(states[t]["allocator"][f"keys.{t}"], final[f"keys.{t}"])
    assert not torch.equal(states[0]["allocator"]["w1.weight"], final["w1.weight"])  # the query MLP trains on
    assert len(method.prototypes) == 3 and states[2]["n_keys"] == 3


def test_static_and_dynamic_task_identity(trained, base):
    method = trained[0]
    assert method.eval_task_ids(None, {}, Task(1, "count")) is None  # dynamic: the keys decide
    assert method.eval_task_ids(None, {}, Task(1, "count"), oracle=True) == 1
    static = get_method("proglora-static")(ADAPTER)
    static.setup(fresh(base[0]))
    assert static.eval_task_ids(None, {}, Task(2, "shape")) == 0  # one key so far: recall task 0


def test_published_variant_trains_the_keys_without_the_identity_loss(trained, base, tmp_path):
    """`proglora-published` is the paper's method: the keys learn only through the task loss."""
    assert "loss_identity" in trained[2].stats[1] and "loss_identity" not in trained[2].stats[0]
    method, _, result, _ = run_toy("proglora-published", ADAPTER, base, tmp_path)
    assert method.options.identity_weight == 0.0
    assert all(set(stats) & {"loss_task", "loss_identity"} == {"loss_task"} for stats in result.stats)
    assert len(method.prototypes) == 3 and method.allocator.n_keys == 3


def test_checkpoint_restores_every_key_block_and_output(trained, base):
    """(Resuming from it, every method: test_save_every.py.)"""
    method, model, _, out = trained
    restored_method, restored_model = restored("proglora", ADAPTER, base[0], out / "task-02")
    assert_same_state(run_state(method, model), run_state(restored_method, restored_model))
    batch = base[1].collator.prompt_batch(base[1].test[1])
    outputs = []
    for m in (model, restored_model):
        with torch.no_grad(), routing_context(m, None, batch["attention_mask"]):
            outputs.append(m(**model_inputs(batch)).logits)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)


@pytest.mark.parametrize("reuse", [True, False])
def test_cached_generation_reuses_the_prefill_allocation(trained, base, reuse):
    _, model, _, _ = trained
    collator = base[1].collator
    batch = collator.prompt_batch(base[1].test[0][:2] + base[1].test[2][:2])
    with torch.no_grad(), routing_context(model, None, batch["attention_mask"]) as ctx:
        model(**model_inputs(batch))
        full = ctx.allocation.clone()  # (B, T) from the whole prompt
    layer = next(layer for _, layer in adapter_layers(model))
    seen = []
    handle = layer.register_forward_hook(lambda mod, args, output: seen.append(mod.context.allocation.clone()))
    try:
        with torch.no_grad(), routing_context(model, None, batch["attention_mask"], reuse=reuse):
            model.generate(**model_inputs(batch), max_new_tokens=3, min_new_tokens=3, do_sample=False,
                           pad_token_id=collator.pad_id, eos_token_id=collator.eos_id)  # fmt: skip
    finally:
        handle.remove()
    assert len(seen) == 3  # prefill + two decoding steps
    assert all(torch.equal(alpha, full) for alpha in seen)
    torch.testing.assert_close(full.sum(-1), torch.ones(4))


def test_llava_7b_parameter_counts():
    result = count_parameters("llava-1.5-7b", "proglora")
    block = 32 * 128 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))  # A_i + B_i, 7 Linears
    allocator = 2 * 4096 * 100 + 2 * 4096  # W1, W2 and the LayerNorm
    projector = 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert result["tunable"] == block + allocator + 4096 + projector  # + one key
    assert result["by_part"]["tunable_at_task_8"] == result["tunable"]
    assert result["by_part"]["trained_over_8_tasks"] == 8 * block + allocator + 8 * 4096 + projector
