"""Precision: the base in the run's dtype whatever its checkpoint's, every trainable in float32."""

import json

import pytest
import torch
from PIL import Image

from branchlora.adapters import adapter_layers, routing_context
from branchlora.continual import MethodResult, load_checkpoint, save_checkpoint
from branchlora.data.benchmark import TrainExample
from branchlora.data.collate import Collator
from branchlora.inference import load_trained, predict
from branchlora.methods import Task, get_method
from branchlora.models.loading import load_base, run_dtype
from branchlora.models.parts import projector
from branchlora.models.tiny import TinyConfig, build_model, build_processor
from branchlora.models.tokenizer import train_tokenizer
from branchlora.train import TrainConfig, float32_groups, make_optimizer, param_groups

MICRO = TinyConfig(image_size=16, vision_hidden=32, vision_layers=1, hidden=32, layers=1, heads=2, intermediate=64)
ADAPTER = {"r": 4, "alpha": 8, "n_branches": 2, "top_k": 1}


@pytest.fixture(scope="module")
def half_folder(tmp_path_factory):
    """A tiny LLaVA saved in float16, as llava-1.5-7b-hf is published."""
    folder = tmp_path_factory.mktemp("fp16-llava")
    tok = train_tokenizer(["USER: What is it? ASSISTANT: a red square"] * 20, vocab_size=300)
    build_model(MICRO, tok).half().save_pretrained(folder)
    build_processor(MICRO, tok).save_pretrained(folder)
    return folder


def setup(folder, mixed_precision: str, name: str = "lora"):
    model, processor = load_base(str(folder), dtype=run_dtype(mixed_precision))
    method = get_method(name)(ADAPTER)
    method.setup(model)
    method.on_task_start(model, Task(0, "t"))
    config = TrainConfig(lr=1e-3, projector_lr=2e-5)
    return model, processor, method, float32_groups(param_groups(model, method, config))


def test_the_checkpoint_is_float16_and_loads_in_the_asked_dtype(half_folder):
    assert json.loads((half_folder / "config.json").read_text())["dtype"] == "float16"
    for mixed, dtype in (("no", torch.float32), ("bf16", torch.bfloat16)):
        model, _ = load_base(str(half_folder), dtype=run_dtype(mixed))
        assert {p.dtype for p in model.parameters()} == {dtype}


@pytest.mark.parametrize(("mixed", "name"), [("no", "lora"), ("bf16", "lora"), ("bf16", "branchlora")])
def test_trainables_are_float32_and_frozen_weights_in_the_run_dtype(half_folder, mixed, name):
    model, _, method, groups = setup(half_folder, mixed, name)
    trainable = [p for g in groups for p in g["params"]]
    assert trainable and {p.dtype for p in trainable} == {torch.float32}
    assert all(p.requires_grad for p in projector(model).parameters())  # the projector trains, in float32
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad and p.is_floating_point()}
    assert frozen == {run_dtype(mixed)}
    assert all(
        p.dtype == torch.float32 for _, layer in adapter_layers(model) for p in layer.adapter_parameters().values()
    )


def test_a_bf16_autocast_step_updates_float32_adapters_and_keeps_a_2e_5_projector_step(half_folder, tmp_path):
    model, processor, method, groups = setup(half_folder, "bf16")
    weight = projector(model).linear_1.weight
    with torch.no_grad():
        weight.fill_(0.02)
    assert torch.tensor(0.02, dtype=torch.bfloat16) + 2e-5 == torch.tensor(0.02, dtype=torch.bfloat16)  # lost in bf16
    Image.new("RGB", (16, 16), (200, 0, 0)).save(tmp_path / "a.png")
    batch = Collator(processor).train_batch([TrainExample(tmp_path / "a.png", "What is it?", "a red square")] * 2)
    optimizer = make_optimizer(groups, 0.0)
    with routing_context(model, 0, batch["attention_mask"]), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(**batch).loss
    loss.backward()
    before = {id(p): p.detach().clone() for g in groups for p in g["params"]}
    optimizer.step()
    lora_b = [layer.lora_B for _, layer in adapter_layers(model)]
    assert all(b.dtype == torch.float32 and b.abs().max() > 0 for b in lora_b)  # B starts at zero
    assert all(s.dtype == torch.float32 for st in optimizer.state.values() for s in st.values() if s.dim() > 0)
    moved = (weight - before[id(weight)])[weight.grad.abs() > 1e-6]  # Adam's first step: lr * sign(grad)
    assert moved.numel() > 0 and torch.allclose(moved.abs(), torch.full_like(moved, 2e-5), rtol=1e-3)


def test_predict_loads_in_the_runs_precision(half_folder, tmp_path):
    model, _, method, _ = setup(half_folder, "bf16")
    info = {"base": str(half_folder), "tasks": ["t"], "config": {"train": {"mixed_precision": "bf16"}, "model": {}}}
    folder = save_checkpoint(tmp_path / "lora", 0, model, method, MethodResult(), info)
    loaded = load_trained(folder)
    frozen = {p.dtype for p in loaded.model.parameters() if not p.requires_grad}
    adapters = {p.dtype for _, layer in adapter_layers(loaded.model) for p in layer.adapter_parameters().values()}
    assert (loaded.mixed_precision, frozen, adapters) == ("bf16", {torch.bfloat16}, {torch.float32})
    Image.new("RGB", (20, 12), (0, 0, 200)).save(tmp_path / "b.png")
    assert isinstance(predict(loaded, tmp_path / "b.png", "What is it?", None, max_new_tokens=2)["answer"], str)


def test_a_resumed_bf16_run_gets_its_float32_projector_back_unrounded(half_folder, tmp_path):
    model, _, method, _ = setup(half_folder, "bf16")
    with torch.no_grad():
        projector(model).linear_1.weight.fill_(0.02 + 2e-5)  # not a bfloat16 number
    folder = save_checkpoint(tmp_path / "lora", 0, model, method, MethodResult(), {})
    fresh, _, again, _ = setup(half_folder, "bf16")
    fresh_weight = projector(fresh).linear_1.weight
    fresh_weight.data = fresh_weight.data.bfloat16()  # as a base loads before the task's float32 upcast
    load_checkpoint(folder, fresh, again)
    assert fresh_weight.dtype == torch.float32 and torch.equal(fresh_weight, projector(model).linear_1.weight)


def test_a_second_run_in_one_python_process_may_change_the_precision():
    from branchlora.train import make_accelerator

    for mixed in ("no", "bf16", "no"):  # Accelerate refuses to change a process's state: the tool resets it
        assert make_accelerator(TrainConfig(mixed_precision=mixed), cpu=True).mixed_precision == mixed
