"""Gradient checkpointing replays each decoder layer's forward in backward, with the batch's routing still set:
the gradients are those of the plain forward, for a plain, a mixture and a task-routed adapter (BranchLoRA routing
by the mean over non-padding tokens fails this test when the routing context closes before backward)."""

import pytest
import torch

import branchlora.train as train
from branchlora.adapters import adapter_layers
from branchlora.methods import Task, get_method
from branchlora.train import TrainConfig, make_accelerator, train_task

from engine_support import ADAPTER, LORA, fresh

MAKE = train.make_optimizer


def first_gradients(base, stream, name: str, adapter: dict, checkpointing: bool, monkeypatch) -> tuple[list, int]:
    """(the gradients the first optimizer step sees, the calls of an adapter in the first decoder layer) of one step on
    the second task (BranchLoRA routes by its second task router there)."""
    grads = []

    def recording(groups, weight_decay):
        optimizer = MAKE(groups, weight_decay)
        params = [p for g in groups for p in g["params"]]
        optimizer.register_step_pre_hook(lambda *_: grads.extend(p.grad.clone() for p in params))
        return optimizer

    monkeypatch.setattr(train, "make_optimizer", recording)
    model, method = fresh(base), get_method(name)(adapter)
    torch.manual_seed(0)  # the adapters' initialisation
    method.setup(model)
    calls = []
    first = next(layer for n, layer in adapter_layers(model) if "language_model.layers.0." in n)
    first.register_forward_pre_hook(lambda *_: calls.append(1))
    config = TrainConfig(max_steps=1, batch_size=4, lr=1e-3, gradient_checkpointing=checkpointing, seed=3)
    accelerator = make_accelerator(config, cpu=True)
    for index in (0, 1):
        grads.clear()
        calls.clear()
        mixed = stream.train[index][:2] + stream.train[2][:2]  # two instructions' lengths: padding to route around
        train_task(model, method, Task(index, stream.names[index]), mixed, stream.collator.train_batch, config,
                   accelerator)  # fmt: skip
    return grads, len(calls)


CASES = [("lora", LORA), ("moelora", ADAPTER), ("branchlora", ADAPTER), ("branchlora", {**ADAPTER, "routing": "mean"})]


@pytest.mark.parametrize(("name", "adapter"), CASES)
def test_checkpointing_keeps_gradients(small_toy, name, adapter, monkeypatch):
    base, stream = small_toy
    plain, plain_calls = first_gradients(base, stream, name, adapter, False, monkeypatch)
    replayed, replayed_calls = first_gradients(base, stream, name, adapter, True, monkeypatch)
    assert replayed_calls == plain_calls + 1  # the layer ran again in backward
    assert len(plain) == len(replayed) > 0 and plain[0].dtype == torch.float32
    assert any(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, replayed, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
