"""Each adapter layer against an independent float64 re-computation written here, loop by loop."""

from dataclasses import replace

import pytest
import torch
from torch import nn

from branchlora.adapters import AdapterConfig, BranchLoRA, HydraLoRA, LoRA, MoELoRA, routing_context

from support import randomise


def wrap(cls, d_in=12, d_out=10, **cfg):
    torch.manual_seed(0)
    return randomise(cls(nn.Linear(d_in, d_out), AdapterConfig(kind=cls.kind, dropout=0.0, **cfg)).double())


def reference_branchlora(layer, x, mask, routing, task_ids, xd=None):
    """y_b = W0 x_b + s * sum over the top-k branches of softmax-renormalised gate * B_i A xd_b.

    xd: the dropped input the update reads (default x); routing always reads x itself.
    """
    xd = x if xd is None else xd
    W0, b0, A = layer.base_layer.weight, layer.base_layer.bias, layer.lora_A
    out = torch.empty(x.shape[0], x.shape[1], layer.out_features, dtype=torch.float64)
    for b in range(x.shape[0]):
        valid = [t for t in range(x.shape[1]) if mask is None or mask[b, t]]
        h = x[b, valid[0]] if routing == "first" else x[b, valid].mean(0)
        router = layer.routers[task_ids if isinstance(task_ids, int) else int(task_ids[b])]
        logits = router @ h
        order = sorted(range(len(logits)), key=lambda i: -float(logits[i].detach()))[: layer.top_k]
        gates = torch.softmax(logits[order], 0)
        update = sum(g * layer.lora_B[i].t() @ A for g, i in zip(gates, order, strict=True))
        for t in range(x.shape[1]):
            out[b, t] = W0 @ x[b, t] + b0 + layer.scale * update @ xd[b, t]
    return out


def assert_same_grads(got, expected, inputs):
    """d(sum g * out)/d(inputs) of our layer equals that of the reference, for one random output gradient g."""
    inputs = [t for t in inputs if t.requires_grad]
    g = torch.randn_like(got)
    ours = torch.autograd.grad(got, inputs, g, retain_graph=True, materialize_grads=True)
    theirs = torch.autograd.grad(expected, inputs, g, retain_graph=True, materialize_grads=True)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_branchlora_dropout_matches_reference_in_value_and_gradient():
    """Dropout hits the update's input only (routing reads x itself); the rescale 1/(1-p) is in the scale."""
    from branchlora.adapters.projection import dropout_mask

    layer = wrap(BranchLoRA, r=8, n_branches=4, top_k=2)
    layer.config = replace(layer.config, dropout=0.3)
    layer.train()
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(1)
    got = layer(x)
    torch.manual_seed(1)  # the same draw again: nothing else in the forward takes random numbers
    dropped, keep = dropout_mask(x.detach().reshape(-1, 12), 0.3)
    xd = torch.where(dropped.view(x.shape), 0.0, x) * keep
    assert 0 < dropped.sum() < dropped.numel()
    expected = reference_branchlora(layer, x, None, "first", layer.n_routers - 1, xd=xd)
    torch.testing.assert_close(got, expected)
    assert_same_grads(got, expected, [x, *layer.adapter_parameters().values()])


@pytest.mark.parametrize("routing", ["first", "mean"])
@pytest.mark.parametrize(("n", "k", "shape"), [(8, 2, (3, 5)), (4, 1, (1, 7)), (4, 4, (2, 3)), (2, 2, (4, 1))])
def test_branchlora_matches_dense_reference(routing, n, k, shape):
    layer = wrap(BranchLoRA, r=4 * n, n_branches=n, top_k=k, routing=routing)
    layer.add_router()  # two task routers; samples alternate between them
    x = torch.randn(*shape, 12, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(shape, dtype=torch.long)
    if shape[1] > 2:
        mask[0, :2] = 0  # left padding on the first sample
    task_ids = torch.arange(shape[0]) % 2
    with routing_context(layer_model := nn.Sequential(layer), task_ids=task_ids, attention_mask=mask):
        got = layer_model(x)
    expected = reference_branchlora(layer, x, mask, routing, task_ids)
    torch.testing.assert_close(got, expected)
    assert_same_grads(got, expected, [x, *layer.adapter_parameters().values()])
    with routing_context(layer_model, task_ids=1):  # one router for the batch, no mask: position 0
        got = layer_model(x)
    torch.testing.assert_close(got, reference_branchlora(layer, x, None, routing, 1))


def test_token_routing_and_hydralora_match_reference():
    for layer in (wrap(BranchLoRA, r=8, n_branches=4, top_k=2, routing="token"), wrap(HydraLoRA, r=3)):
        x = torch.randn(2, 5, 12, dtype=torch.float64)
        got = layer(x)
        expected = torch.empty_like(got)
        for b in range(2):
            for t in range(5):
                logits = layer.routers[0] @ x[b, t]
                order = logits.argsort(descending=True)[: layer.top_k].tolist()
                gates = torch.softmax(logits[order], 0)
                update = sum(g * layer.lora_B[i].t() @ layer.lora_A for g, i in zip(gates, order, strict=True))
                expected[b, t] = layer.base_layer(x[b, t]) + layer.scale * update @ x[b, t]
        torch.testing.assert_close(got, expected)
    assert layer.branch_rank == 3 and layer.n_branches == 8  # HydraLoRA: rank-r heads, dense over N


def test_moelora_matches_reference():
    layer = wrap(MoELoRA, r=8, n_branches=4)
    x = torch.randn(2, 3, 12, dtype=torch.float64)
    got = layer(x)
    gates = torch.softmax(x @ layer.router.weight.t(), -1)  # (B, L, E)
    expected = layer.base_layer(x)
    for i in range(4):
        a_i, b_i = layer.lora_A[2 * i : 2 * i + 2], layer.lora_B[:, 2 * i : 2 * i + 2]
        expected = expected + layer.scale * gates[..., i : i + 1] * (x @ a_i.t() @ b_i.t())
    torch.testing.assert_close(got, expected)


def test_branchlora_with_one_branch_equals_lora():
    lora = wrap(LoRA, r=6)
    branch = BranchLoRA(lora.base_layer, AdapterConfig(r=6, n_branches=1, top_k=1, dropout=0.0)).double()
    with torch.no_grad():
        branch.lora_A.copy_(lora.lora_A)
        branch.lora_B[0].copy_(lora.lora_B.t())  # B_i stored transposed
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    torch.testing.assert_close(branch(x), lora(x))


def test_lora_equals_peft_lora():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(12, 10))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_dropout=0.0))
    peft_layer = peft_model.base_model.model[0]
    with torch.no_grad():
        peft_layer.lora_B["default"].weight.normal_()
    ours = LoRA(peft_layer.base_layer, AdapterConfig(kind="lora", r=4, alpha=8, dropout=0.0, init="kaiming"))
    with torch.no_grad():
        ours.lora_A.copy_(peft_layer.lora_A["default"].weight)
        ours.lora_B.copy_(peft_layer.lora_B["default"].weight)
    x = torch.randn(5, 7, 12)
    torch.testing.assert_close(ours(x), peft_model(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.delta_weight(), peft_layer.get_delta_weight("default"))


@pytest.mark.parametrize("routing", ["first", "token"])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_frozen_branches_and_old_routers_do_not_move(routing, weight_decay):
    """The training loop's optimizer (fused AdamW, frozen rows held under weight decay) on one layer."""
    from branchlora.train import hold_frozen, make_optimizer

    layer = wrap(BranchLoRA, r=16, n_branches=4, top_k=2, routing=routing).float()
    layer.add_router()
    layer.freeze_branches([0, 2])
    layer.mark_trainable()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    opt = make_optimizer([{"params": [p for p in layer.parameters() if p.requires_grad], "lr": 0.1}], weight_decay)
    hold_frozen(layer, opt)
    for _ in range(3):
        x = torch.randn(8, 4, 12)  # random inputs: several branches get chosen
        layer(x).square().mean().backward()
        assert not layer.lora_B.grad[[0, 2]].any()
        opt.step()
        opt.zero_grad()
    after = layer.state_dict()
    for key in ("routers.0", "base_layer.weight", "base_layer.bias"):
        assert torch.equal(before[key], after[key]), key
    assert torch.equal(before["lora_B"][[0, 2]], after["lora_B"][[0, 2]])
    for key in ("lora_A", "routers.1"):
        assert not torch.equal(before[key], after[key]), key
    assert any(not torch.equal(before["lora_B"][i], after["lora_B"][i]) for i in (1, 3))


def test_format_1_checkpoints_load(tmp_path):
    """Adapters saved with one tensor per branch (format 1, (d_out, r/N) each) load into today's layout."""
    import json

    from safetensors.torch import load_file, save_file

    from branchlora.adapters import inject_adapters, load_adapters, save_adapters

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 6))

    saved = model()
    inject_adapters(saved, AdapterConfig(kind="branchlora", r=8, n_branches=4, top_k=2, targets=".*"))
    randomise(saved)
    save_adapters(saved, tmp_path)
    tensors = load_file(str(tmp_path / "adapters.safetensors"))
    for key in [k for k in tensors if k.endswith(".lora_B")]:
        tensors |= {f"{key}.{i}": b.t().contiguous() for i, b in enumerate(tensors.pop(key))}
    save_file(tensors, str(tmp_path / "adapters.safetensors"))
    meta = json.loads((tmp_path / "adapters.json").read_text()) | {"format": "branchlora-adapters/1"}
    (tmp_path / "adapters.json").write_text(json.dumps(meta))
    loaded = model()
    load_adapters(loaded, tmp_path)
    x = torch.randn(3, 2, 12)
    torch.testing.assert_close(loaded.eval()(x), saved.eval()(x))


def test_activity_is_the_summed_top_k_gate_weight():
    layer = wrap(BranchLoRA, r=8, n_branches=4, top_k=2)
    layer.track_activity = True
    x = torch.randn(5, 3, 12, dtype=torch.float64)
    layer(x)
    top, idx = (x[:, 0] @ layer.routers[0].t()).topk(2)  # first-token routing
    expected = torch.zeros(4, dtype=torch.float64).index_add_(0, idx.flatten(), torch.softmax(top, -1).flatten())
    torch.testing.assert_close(layer.activity.double(), expected)
    assert layer.activity.sum().item() == pytest.approx(5.0)  # each sample contributes weights summing to 1


def test_routing_is_computed_once_when_reused():
    layer = wrap(BranchLoRA, r=8, n_branches=4, top_k=2)
    model = nn.Sequential(layer)
    prefill, step = torch.randn(2, 5, 12, dtype=torch.float64), torch.randn(2, 1, 12, dtype=torch.float64)
    with routing_context(model, reuse=True):
        model(prefill)
        cached = model(step)
    full = model(torch.cat([prefill, step], dim=1))[:, -1:]  # routed on the prefill's first token
    torch.testing.assert_close(cached, full)
    assert layer._cached_route is None  # cleared when the context ends


def test_grown_branches_are_invisible_to_old_routers():
    layer = wrap(BranchLoRA, r=8, n_branches=4, top_k=2)
    layer.add_branches(2)
    layer.add_router()
    assert [w.shape[0] for w in layer.routers] == [4, 6] and layer.n_branches == 6
    x = torch.randn(6, 2, 12, dtype=torch.float64)
    model = nn.Sequential(layer)
    with routing_context(model, task_ids=0):
        gates = layer.route(layer.routing_input(x))
    assert not gates[:, 4:].any() and (gates[:, :4] > 0).sum(1).eq(2).all()
    with routing_context(model, task_ids=torch.tensor([0, 1, 0, 1, 0, 1])):
        model(x)  # mixed routers of different sizes in one batch


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"kind": "dora"}, "unknown adapter kind 'dora'"),
        ({"r": 100, "n_branches": 8}, "r=100 is not divisible by N=8"),
        ({"top_k": 9, "n_branches": 8}, "top_k=9 must be between 1 and N=8"),
        ({"top_k": 0}, "top_k=0"),
        ({"routing": "last"}, "unknown routing 'last'"),
    ],
)
def test_bad_configs_name_the_value(cfg, message):
    with pytest.raises(ValueError, match=message):
        AdapterConfig(**cfg)


def test_unknown_task_router_is_a_clear_error():
    layer = wrap(BranchLoRA, r=8, n_branches=4)
    with routing_context(nn.Sequential(layer), task_ids=3), pytest.raises(IndexError, match="router 3"):
        layer(torch.randn(1, 2, 12, dtype=torch.float64))
