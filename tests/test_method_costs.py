"""What methods cost at scale (issue 27, item 5): EWC's state on the model's device and its fp32 Fisher, SEFE's
masks where they are used, the per-task blocks' kept concatenation, LiLoRA's B_t built once per generate."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from branchlora.adapters import AdapterConfig, LiLoRA, TaskLoRA, adapter_layers, inject_adapters, routing_context
from branchlora.adapters.hide import HiDeLoRA
from branchlora.bench.ops import OpAudit
from branchlora.methods import Task, get_method
from branchlora.methods.base import StepContext
from branchlora.methods.ewc import EWCOptions, empirical_fisher

from conftest import build_tiny_llava, tiny_llava_inputs


# ---- EWC ---------------------------------------------------------------------------------------------------
class Scaled(nn.Module):
    """loss = sum(w * x) for a sample's scalar x: the gradient of w is x, exactly."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(2, dtype=dtype))


class FakeRun:
    """A TaskRun over one-sample batches of given scalars; counts the forwards."""

    def __init__(self, values: list[float], dtype: torch.dtype) -> None:
        self.values, self.dtype, self.forwards = values, dtype, 0

    def batches(self):
        for v in self.values:
            yield {"attention_mask": torch.ones(1, 1), "x": torch.tensor([[v]], dtype=self.dtype)}

    def forward(self, model: nn.Module, batch: dict) -> SimpleNamespace:
        self.forwards += 1
        return SimpleNamespace(loss=(model.w * batch["x"][0, 0]).sum())

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ewc_fisher_sums_half_precision_gradients_in_float32(dtype):
    assert torch.tensor(1e-4, dtype=torch.float16).square() == 0  # what the Fisher was in fp16
    model, values = Scaled(dtype), [1e-4, 3e-4]
    fisher = empirical_fisher(model, dict(model.named_parameters()), FakeRun(values, dtype), 0)["w"]
    grads = torch.tensor(values, dtype=dtype).double()  # the gradients as the parameters' dtype holds them
    expected = grads.square().mean().float()
    assert fisher.dtype == torch.float32
    torch.testing.assert_close(fisher, expected.expand(2), rtol=1e-6, atol=0)


def test_ewc_fisher_batches_are_bounded_by_default():
    assert EWCOptions().fisher_batches == 32
    method, model, run = get_method("ewc")(), Scaled(torch.float32), FakeRun([1.0] * 40, torch.float32)
    method.on_task_end(model, Task(0, "a"), run)
    assert run.forwards == 32
    get_method("ewc")(options={"fisher_batches": 0}).on_task_end(
        model, Task(0, "a"), run := FakeRun([1.0] * 40, torch.float32)
    )
    assert run.forwards == 40


def test_ewc_state_follows_the_parameters_device_and_dtype():
    """As after --resume: the state is read on the CPU in float32, the model lives elsewhere."""
    model = nn.Linear(3, 2)
    method = get_method("ewc")(options={"ewc_lambda": 4.0})
    anchors = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    method.load_state_dict({"terms": [(anchors, fisher)]})
    model.double()
    ctx = StepContext(Task(1, "b"), {})
    method.extra_loss(model, ctx)
    expected = sum((fisher[n].double() * (p - anchors[n].double()).square()).sum() for n, p in model.named_parameters())
    assert ctx.losses["ewc"].dtype == torch.float64
    torch.testing.assert_close(ctx.losses["ewc"], 2.0 * expected, rtol=1e-12, atol=0)
    assert all(t.dtype == torch.float64 for term in method.terms for t in (*term[0].values(), *term[1].values()))
    model.to("meta")  # another device than the state's: the penalty's tensors follow
    method.extra_loss(model, ctx := StepContext(Task(1, "b"), {}))
    assert ctx.losses["ewc"].device.type == "meta"
    assert all(t.device.type == "meta" for term in method.terms for t in (*term[0].values(), *term[1].values()))
    model.half()  # half-precision parameters: anchors follow, the Fisher stays float32
    method.extra_loss(model, StepContext(Task(1, "b"), {}))
    assert {t.dtype for t in method.terms[0][0].values()} == {torch.float16}
    assert {t.dtype for t in method.terms[0][1].values()} == {torch.float32}


# ---- SEFE ----------------------------------------------------------------------------------------------------
def test_sefe_masks_live_on_the_layers_device_as_int32():
    method, model = get_method("sefe")({"r": 4, "alpha": 8}), build_tiny_llava()
    method.setup(model)
    method.on_task_start(model, Task(0, "a"))
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in method.blocks(model):
            layer.lora_B[0].normal_()
    method.on_task_end(model, Task(0, "a"), run=None)
    method.on_task_start(model, Task(1, "b"))
    saved = method.state_dict()
    method.load_state_dict(saved)  # as --resume reads them: CPU, int32
    assert {(m.device.type, m.dtype) for m in saved["masks"].values()} == {("cpu", torch.int32)}
    with torch.no_grad():
        for layer in method.blocks(model):
            layer.lora_B[1].normal_()
    method.extra_loss(model, StepContext(Task(1, "b"), {}))
    with OpAudit() as ops:  # a training step's regulariser: no mask is copied or converted any more
        method.extra_loss(model, ctx := StepContext(Task(1, "b"), {}))
    assert "_to_copy" not in ops.names and ops.names["index_select"] == len(method.masks)
    expected = torch.stack(
        [(layer.lora_B[1] @ layer.lora_A[1]).flatten()[saved["masks"][name].long()].abs().mean()
         for name, layer in method._named_blocks(model)]
    ).mean()  # fmt: skip
    torch.testing.assert_close(ctx.losses["reg"], 2500.0 * expected)
    model.to("meta")
    method.extra_loss(model, StepContext(Task(1, "b"), {}))
    assert {(m.device.type, m.dtype) for m in method.masks.values()} == {("meta", torch.int32)}


# ---- the per-task-block layer ---------------------------------------------------------------------------------
def blocks(cls: type[TaskLoRA], tasks: int) -> TaskLoRA:
    torch.manual_seed(0)
    layer = cls(nn.Linear(12, 10), AdapterConfig(kind=cls.kind, r=4, alpha=8, dropout=0.0))
    for _ in range(tasks - 1):
        layer.add_block()
    layer = layer.double()
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.normal_()
    return layer


def summed_delta(layer: TaskLoRA) -> torch.Tensor:
    """s * sum_t B_t A_t, block by block."""
    return layer.scale * sum(b @ a for a, b in zip(layer.lora_A, layer.lora_B, strict=True))


def summed_reference(layer: TaskLoRA, x: torch.Tensor) -> torch.Tensor:
    return layer.base_layer(x) + x @ summed_delta(layer).t()


@pytest.mark.parametrize("tasks", [1, 3, 6])
def test_fixed_blocks_are_concatenated_once(tasks):
    layer, x = blocks(TaskLoRA, tasks), torch.randn(2, 5, 12, dtype=torch.float64)
    with torch.no_grad():  # generation: every block is fixed
        layer(x)
        with OpAudit() as ops:
            for _ in range(4):  # four generated tokens
                out = layer(x)
    assert ops.names.get("cat", 0) == 0
    torch.testing.assert_close(out, summed_reference(layer, x))
    layer(x)  # training: the fixed blocks are kept, the newest is joined once per forward (none when alone)
    with OpAudit() as ops:
        out = layer(x)
    assert ops.names.get("cat", 0) == (2 if tasks > 1 else 0)
    torch.testing.assert_close(out, summed_reference(layer, x))
    out.sum().backward()
    assert layer.lora_B[-1].grad is not None and all(b.grad is None for b in list(layer.lora_B)[:-1])


def test_kept_blocks_follow_every_change():
    layer, x = blocks(TaskLoRA, 3), torch.randn(2, 5, 12, dtype=torch.float64)
    with torch.no_grad():
        layer(x)
        layer.lora_A[0].add_(1.0)  # an in-place edit (an optimizer step, load_state_dict)
        torch.testing.assert_close(layer(x), summed_reference(layer, x))
        layer.add_block()
        layer.lora_B[-1].normal_()
        torch.testing.assert_close(layer(x), summed_reference(layer, x))
        layer.float()  # re-cast: new storage
        torch.testing.assert_close(layer(x.float()), summed_reference(layer, x.float()))
    torch.testing.assert_close(layer.delta_weight(), summed_delta(layer))


def test_hide_fused_factors_are_kept_until_the_blocks_change():
    layer, x = blocks(HiDeLoRA, 4), torch.randn(2, 5, 12, dtype=torch.float64)
    layer.eval()

    def reference() -> torch.Tensor:
        a, b = sum(layer.lora_A), sum(layer.lora_B)
        return layer.base_layer(x) + layer.scale * x @ (b @ a).t()

    with torch.no_grad():
        layer(x)
        with OpAudit() as ops:
            out = layer(x)
        assert "stack" not in ops.names and "sum" not in ops.names
        torch.testing.assert_close(out, reference())
        layer.lora_B[2].mul_(2.0)
        torch.testing.assert_close(layer(x), reference())


# ---- LiLoRA ----------------------------------------------------------------------------------------------------
def test_lilora_builds_per_sample_b_once_per_generate(monkeypatch):
    model = build_tiny_llava()
    inject_adapters(model, AdapterConfig(kind="lilora", r=4, alpha=8, sub_rank=2, targets="ffn+projector"))
    layers = [layer for _, layer in adapter_layers(model)]
    torch.manual_seed(0)
    with torch.no_grad():
        for layer in layers:
            layer.add_task()
            layer.add_task()
            for p in layer.adapter_parameters().values():
                p.normal_(std=0.5)
    built = []
    original = LiLoRA.task_b
    monkeypatch.setattr(LiLoRA, "task_b", lambda self, t: built.append(t) or original(self, t))
    inputs, new_tokens = tiny_llava_inputs(), 5
    outputs = {}
    for reuse in (False, True):  # False: B_t rebuilt at every forward, as before
        built.clear()
        with torch.no_grad(), routing_context(model, torch.tensor([2, 0]), inputs["attention_mask"], reuse=reuse):
            out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=0)  # fmt: skip
        outputs[reuse] = (out.sequences, torch.stack(out.scores))
        lm_layers = len(layers) - 2  # the projector's two Linears run at prefill only
        per_forward = 2 * lm_layers  # two distinct tasks in the batch
        assert len(built) == (per_forward * new_tokens + 4 if not reuse else per_forward + 4)
    assert torch.equal(outputs[False][0], outputs[True][0])
    assert torch.equal(outputs[False][1], outputs[True][1])
    assert all(layer._cached_route is None for layer in layers)  # dropped when the context closed
