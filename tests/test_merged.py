"""Per-task merged inference equals the routed model on the tiny LLaVA, and restores it exactly."""

import pytest
import torch

from branchlora.adapters import AdapterConfig, adapter_layers, inject_adapters, routing_context
from branchlora.adapters.merged import merge_task, unmerge_task

from conftest import tiny_llava_inputs
from support import randomise


def branchlora_model(model, routing="first"):
    inject_adapters(model, AdapterConfig(r=8, n_branches=4, top_k=2, routing=routing))
    for _, layer in adapter_layers(model):
        layer.add_router()  # two tasks: merging task 0 must not use the newest router
    return randomise(model, std=0.1, seed=2)


def bos_first_inputs():
    """Both samples left-padded to start at BOS, as a tokenizer pads a batch for generation."""
    inputs = tiny_llava_inputs()
    inputs["attention_mask"][1:, :2] = 0
    return inputs


def test_merged_task_equals_routed_model_and_unmerges_exactly(tiny_llava):
    model, inputs = branchlora_model(tiny_llava), bos_first_inputs()
    mask = inputs["attention_mask"]
    with torch.no_grad(), routing_context(model, task_ids=0, attention_mask=mask):
        expected = model(**inputs).logits
    with torch.no_grad(), routing_context(model, task_ids=0, attention_mask=mask, reuse=True):
        expected_tokens = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    handle = merge_task(model, 0, inputs)
    assert not list(adapter_layers(model))  # plain Linears: generation runs at base speed
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=1e-4, atol=1e-5)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), expected_tokens)
    unmerge_task(model, handle)
    assert len(list(adapter_layers(model))) == 14
    with torch.no_grad(), routing_context(model, task_ids=0, attention_mask=mask):
        assert torch.equal(model(**inputs).logits, expected)


def test_inputs_that_route_differently_are_refused(tiny_llava):
    model = branchlora_model(tiny_llava)
    with pytest.raises(ValueError, match="route differently"):
        merge_task(model, 0, tiny_llava_inputs())  # the second sample starts with token 5, not BOS
    assert len(list(adapter_layers(model))) == 14


@pytest.mark.parametrize("routing", ["mean", "token"])
def test_input_dependent_routing_is_refused(tiny_llava, routing):
    model = branchlora_model(tiny_llava, routing)
    with pytest.raises(ValueError, match=f"routes on '{routing}'.*only routing 'first'"):
        merge_task(model, 0, tiny_llava_inputs())
    assert len(list(adapter_layers(model))) == 14  # nothing was swapped


def test_other_adapters_are_refused(tiny_llava):
    inject_adapters(tiny_llava, AdapterConfig(kind="moelora", r=8, n_branches=4))
    with pytest.raises(TypeError, match="merge_task folds BranchLoRA layers"):
        merge_task(tiny_llava, 0, tiny_llava_inputs())
