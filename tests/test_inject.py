"""Wiring on a real transformers LLaVA (tiny config, offline): targets, unwrap, merge, save and load."""

import copy
import json

import pytest
import torch
from torch import nn

from branchlora.adapters import (
    AdapterConfig,
    BranchLoRA,
    adapter_layers,
    inject_adapters,
    load_adapters,
    merge,
    routing_context,
    save_adapters,
    unwrap,
)

from conftest import build_tiny_llava, tiny_llava_inputs
from support import randomise

SEVEN = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_llava_preset_wraps_exactly_the_language_model_linears(tiny_llava):
    names = inject_adapters(tiny_llava, AdapterConfig(r=8, n_branches=4))
    assert len(names) == 7 * 2
    assert {n.rsplit(".", 1)[1] for n in names} == SEVEN
    assert all(".language_model.layers." in n for n in names)
    assert not any("vision" in n or "projector" in n or "lm_head" in n for n in names)


def test_forward_generate_and_unwrap(tiny_llava):
    inputs = tiny_llava_inputs()
    reference = copy.deepcopy(tiny_llava)
    with torch.no_grad():
        expected = reference(**inputs).logits
    inject_adapters(tiny_llava, AdapterConfig(r=8, n_branches=4))
    with torch.no_grad():
        same = tiny_llava(**inputs).logits  # B = 0 at init: the wrapped model computes the base function
        torch.testing.assert_close(same, expected)
        randomise(tiny_llava, std=0.1)
        with routing_context(tiny_llava, attention_mask=inputs["attention_mask"], reuse=True):
            out = tiny_llava.generate(**inputs, max_new_tokens=3, do_sample=False)
        assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
        assert not torch.allclose(tiny_llava(**inputs).logits, expected)
    unwrap(tiny_llava)
    assert not list(adapter_layers(tiny_llava))
    assert tiny_llava.state_dict().keys() == reference.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(tiny_llava(**inputs).logits, expected)


def test_merge_lora_into_base(tiny_llava):
    inputs = tiny_llava_inputs()
    inject_adapters(tiny_llava, AdapterConfig(kind="lora", r=4, dropout=0.0))
    randomise(tiny_llava, std=0.1)
    with torch.no_grad():
        expected = tiny_llava(**inputs).logits
        merge(tiny_llava)
        assert not list(adapter_layers(tiny_llava))
        torch.testing.assert_close(tiny_llava(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


def test_merge_refuses_routed_adapters_without_touching_the_model(tiny_llava):
    inject_adapters(tiny_llava, AdapterConfig(kind="moelora", r=8, n_branches=4))
    with pytest.raises(NotImplementedError, match="moelora routes per input"):
        merge(tiny_llava)
    assert len(list(adapter_layers(tiny_llava))) == 14


@pytest.mark.parametrize("kind", ["lora", "moelora", "branchlora", "hydralora"])
def test_save_load_round_trip_is_exact(tmp_path, kind):
    inputs = tiny_llava_inputs()
    model = build_tiny_llava()
    inject_adapters(model, AdapterConfig(kind=kind, r=8, n_branches=4, top_k=2))
    if kind == "branchlora":  # a model two tasks in: grown branches, a second router, frozen branches
        for _, layer in adapter_layers(model):
            layer.add_branches(2)
            layer.add_router()
            layer.freeze_branches([1, 3])
    randomise(model, std=0.1)
    save_adapters(model, tmp_path)
    fresh = build_tiny_llava()  # same seed: same base weights
    load_adapters(fresh, tmp_path)
    for (name, a), (_, b) in zip(adapter_layers(model), adapter_layers(fresh), strict=True):
        assert a.structure() == b.structure(), name
        for key, value in a.state_dict().items():
            assert torch.equal(value, b.state_dict()[key]), (name, key)
        assert [p.requires_grad for p in a.parameters()] == [p.requires_grad for p in b.parameters()]
    with torch.no_grad(), routing_context(model, attention_mask=inputs["attention_mask"]):
        expected = model(**inputs).logits
    with torch.no_grad(), routing_context(fresh, attention_mask=inputs["attention_mask"]):
        assert torch.equal(fresh(**inputs).logits, expected)


def test_load_errors_name_the_problem(tmp_path):
    model = build_tiny_llava()
    inject_adapters(model, AdapterConfig(kind="branchlora", r=8, n_branches=4))
    save_adapters(model, tmp_path / "branch")
    other_kind = build_tiny_llava()
    inject_adapters(other_kind, AdapterConfig(kind="lora", r=8))
    with pytest.raises(ValueError, match="holds 'branchlora' adapters but the model has 'lora'"):
        load_adapters(other_kind, tmp_path / "branch")
    config = json.loads((tmp_path / "branch" / "adapters.json").read_text())
    config["adapter"]["r"] = 16  # a file whose tensors do not fit what its config builds
    (tmp_path / "branch" / "adapters.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"lora_A has shape \(2, 32\) but the model expects \(4, 32\)"):
        load_adapters(build_tiny_llava(), tmp_path / "branch")
    with pytest.raises(FileNotFoundError, match="holds no saved adapters"):
        load_adapters(build_tiny_llava(), tmp_path / "nothing")


def test_targets_by_names_and_regex_and_no_match():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    assert inject_adapters(model, AdapterConfig(kind="lora", r=2, targets=["2"])) == ["2"]
    unwrap(model)
    assert inject_adapters(model, AdapterConfig(kind="lora", r=2, targets=r"\d")) == ["0", "2"]
    unwrap(model)
    with pytest.raises(ValueError, match="targets 'q_proj' match no nn.Linear module"):
        inject_adapters(model, AdapterConfig(kind="lora", r=2, targets="q_proj"))
    with pytest.raises(ValueError, match="already holds adapters"):
        inject_adapters(model, AdapterConfig(kind="lora", r=2, targets=["0"]))
        inject_adapters(model, AdapterConfig(kind="lora", r=2, targets=["0"]))


def test_branchlora_layers_share_one_routing_context(tiny_llava):
    inject_adapters(tiny_llava, AdapterConfig(r=8, n_branches=4))
    contexts = {id(layer.context) for _, layer in adapter_layers(tiny_llava)}
    assert len(contexts) == 1
    assert all(isinstance(layer, BranchLoRA) for _, layer in adapter_layers(tiny_llava))
