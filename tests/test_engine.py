"""The continual engine on a micro model and toy tasks: lifecycle, selector, resume, regularisers."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from branchlora.adapters import BranchLoRA, adapter_layers
from branchlora.continual import run_method
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.methods import Task, get_method
from branchlora.methods.branchlora import freeze_most_active
from branchlora.methods.ewc import ewc_penalty
from branchlora.methods.lwf import distillation_loss
from branchlora.models.parts import projector
from branchlora.train import TrainConfig

from engine_support import ADAPTER, LORA, fresh, micro_base, toy_stream
from support import adapter_for, assert_same_state, restored, run_state

TRAIN = TrainConfig(max_steps=4, batch_size=4, lr=5e-3)
EVAL = EvalConfig(batch_size=8, max_new_tokens=4)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, processor = micro_base(cache)
    stream = toy_stream(tmp_path_factory.mktemp("toy"), processor)
    return cache, model, stream


def run(base, name, out, train=TRAIN, options=None, **kw):
    method = get_method(name)(adapter_for(name), options)
    model = fresh(base[1])
    return method, model, run_method(method, model, base[2], train, EVAL, out, **kw)


def test_freeze_most_active_rule():
    activity = torch.tensor([0.5, 3.0, 0.0, 2.0, 1.0])
    assert freeze_most_active(activity, [False] * 5, k=2, max_frozen=5) == [1, 3]
    assert freeze_most_active(activity, [False, True, False, False, False], k=2, max_frozen=5) == [3]
    assert freeze_most_active(activity, [False, False, False, False, True], k=2, max_frozen=2) == [1]
    assert freeze_most_active(torch.tensor([0.0, 2.0, 0.0]), [False] * 3, k=2, max_frozen=3) == [1]  # unused: kept


def test_branchlora_lifecycle_keeps_old_state_bit_identical(base, tmp_path):
    method, model, result = run(base, "branchlora", tmp_path)
    first = load_file(str(tmp_path / "task-00" / "adapters.safetensors"))  # the adapters after task 1
    frozen_first = json.loads((tmp_path / "task-00" / "adapters.json").read_text())["layers"]
    keys_first = torch.load(tmp_path / "task-00" / "method.pt")
    for name, layer in adapter_layers(model):
        assert isinstance(layer, BranchLoRA) and layer.n_routers == 3
        final = {k: v.cpu() for k, v in layer.state_dict().items()}
        assert torch.equal(first[f"{name}.routers.0"], final["routers.0"])  # task 1's router
        assert len(frozen_first[name]["frozen"]) == 2  # k = 2 most active branches frozen after task 1
        for i in frozen_first[name]["frozen"]:  # ... and untouched by tasks 2 and 3
            assert torch.equal(first[f"{name}.lora_B"][i], final["lora_B"][i]), (name, i)
        assert not torch.equal(first[f"{name}.lora_A"], final["lora_A"])  # the trunk trains on
    assert torch.equal(keys_first["key_img"][0], method.key_img[0].cpu())
    assert torch.equal(keys_first["key_txt"][0], method.key_txt[0].cpu())
    assert len(result.matrix) == 4 and all(len(row) == 3 for row in result.matrix)
    # tunable as the papers count it, at task 1 before any freezing: A, all N branches, one router, projector
    layers = [layer for _, layer in adapter_layers(model)]
    expected = sum(layer.lora_A.numel() + 4 * layer.lora_B[0].numel() + layer.routers[0].numel() for layer in layers)
    assert result.tunable == expected + sum(p.numel() for p in projector(model).parameters())


@pytest.mark.parametrize("keys", ["prototype", "loss"])
def test_selector_is_right_on_trivially_different_tasks(base, tmp_path, keys):
    train = TrainConfig(max_steps=12, batch_size=4, lr=5e-3)
    _, _, result = run(base, "branchlora", tmp_path, train=train, options={"keys": keys})
    assert result.to_json(3)["selector_accuracy"] == 100.0
    assert result.to_json(3)["selector_confusion"] == [[4, 0, 0], [0, 4, 0], [0, 0, 4]]


@pytest.mark.parametrize(("policy", "branches", "tunable"), [("stop", 4, 1), ("grow", 6, 3)])
def test_exhaustion_policy_when_fewer_than_k_branches_are_tunable(base, policy, branches, tunable):
    method = get_method("branchlora")(ADAPTER, {"exhaustion": policy})
    model = fresh(base[1])
    method.setup(model)
    for _, layer in adapter_layers(model):
        layer.freeze_branches([0, 1, 2])  # one of N = 4 left, fewer than k = 2
    method.on_task_start(model, Task(1, "next"))
    for _, layer in adapter_layers(model):
        assert layer.n_branches == branches and layer.routers[1].shape[0] == branches
        assert layer.frozen.count(False) == tunable and layer.lora_B.requires_grad
        assert layer.routers[1].requires_grad and not layer.routers[0].requires_grad


def test_frozen_share_is_capped(base, tmp_path):
    _, model, _ = run(base, "branchlora", tmp_path, options={"max_frozen_fraction": 0.5})
    assert all(sum(layer.frozen) == 2 for _, layer in adapter_layers(model))


def test_training_learns_a_toy_task_and_sequential_lora_forgets_it(base, tmp_path):
    """The run is deterministic (a fixed seed, one thread): its whole matrix, the same run after run on this
    machine. Every method's run through two tasks: test_save_every.py (resumed = unbroken, bit for bit)."""
    train = TrainConfig(max_steps=30, batch_size=8, lr=1e-2)
    _, _, result = run(base, "lora", tmp_path, train=train)
    assert result.matrix == [[0.0] * 3, [100.0, 0.0, 0.0], [0.0] * 3, [0.0] * 3]
    assert result.tunable > 0 and result.train_seconds > 0


RESUME_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from engine_support import ADAPTER, micro_base, toy_stream
    from branchlora.continual import run_method
    from branchlora.evaluation.evaluate import EvalConfig
    from branchlora.methods import Task, get_method
    from branchlora.train import TrainConfig
    import torch
    torch.set_num_threads(1)
    cache, toy, out = map(Path, sys.argv[1:4])
    model, processor = micro_base(cache)
    def kill(task, step, total, losses):
        if task == "count" and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    run_method(get_method("branchlora")(ADAPTER), model, toy_stream(toy, processor), TrainConfig(max_steps=4,
               batch_size=4, lr=5e-3), EvalConfig(batch_size=8, max_new_tokens=4), out, on_step=kill)
    """
)


def test_sigkill_and_resume_reproduce_the_uninterrupted_matrix(base, tmp_path):
    cache = base[0]
    script = tmp_path / "killed.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([sys.executable, str(script), cache, tmp_path / "toy", tmp_path / "run"], env=env)
    assert done.returncode == -signal.SIGKILL
    assert (tmp_path / "run" / "task-00").is_dir() and not (tmp_path / "run" / "task-01").exists()
    model, processor = micro_base(cache)
    stream = toy_stream(tmp_path / "toy", processor)
    resumed = run_method(get_method("branchlora")(ADAPTER), model, stream, TRAIN, EVAL, tmp_path / "run", resume=True)
    model, _ = micro_base(cache)
    method = get_method("branchlora")(ADAPTER)
    straight = run_method(method, model, stream, TRAIN, EVAL, tmp_path / "straight")
    assert resumed.matrix == straight.matrix
    assert_same_state(
        run_state(method, model), run_state(*restored("branchlora", ADAPTER, base[1], tmp_path / "run" / "task-02"))
    )


def test_ewc_penalty_is_zero_at_the_anchor_and_grows():
    anchors = {"w": torch.tensor([1.0, -2.0])}
    fisher = {"w": torch.tensor([0.5, 2.0])}
    assert ewc_penalty({"w": anchors["w"].clone()}, anchors, fisher) == 0
    near = ewc_penalty({"w": torch.tensor([1.1, -2.0])}, anchors, fisher)
    far = ewc_penalty({"w": torch.tensor([2.0, -2.0])}, anchors, fisher)
    assert 0 < near < far and far == pytest.approx(0.5)


def test_ewc_fisher_is_the_mean_of_per_sample_squared_gradients(base):
    """The Fisher does not depend on the batch size: with padded batches of 6 (two tasks' prompts of
    different lengths) it equals the mean of squared gradients of each example collated alone."""
    from accelerate import Accelerator

    from branchlora.methods.ewc import empirical_fisher
    from branchlora.train import TaskRunner

    _, model, stream = base
    model = fresh(model)
    get_method("ewc")(LORA).setup(model)
    model.eval()  # no dropout: the gradients are deterministic
    examples = stream.train[0][:3] + stream.train[1][:3]
    collate, accelerator = stream.collator.train_batch, Accelerator(cpu=True)
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    batched = empirical_fisher(model, params, TaskRunner(examples, collate, None, accelerator, 6), 0)
    assert len({len(collate([x])["input_ids"][0]) for x in examples}) > 1  # the batch really was padded
    reference = {n: torch.zeros_like(p) for n, p in params.items()}
    for example in examples:
        model.zero_grad(set_to_none=True)
        model(**{k: v for k, v in collate([example]).items() if k in ("input_ids", "attention_mask", "pixel_values",
                                                                        "labels")}).loss.backward()  # fmt: skip
        for n, p in params.items():
            reference[n] += p.grad.square() / len(examples)
    for n in params:
        torch.testing.assert_close(batched[n], reference[n], rtol=1e-4, atol=1e-10)


def test_replay_items_are_fixed_per_task():
    from branchlora.replay import replay_items

    train = [list(range(10)), list(range(100, 103)), list(range(200, 210))]
    kept = replay_items(train, 2, 4, seed=0)
    assert len(kept) == 4 + 3 and len(set(kept[:4])) == 4 and set(kept[:4]) <= set(train[0])
    assert set(kept[4:]) == set(train[1])  # a task with fewer items than `size` gives them all
    assert replay_items(train, 2, 4, seed=0) == kept  # a resumed run draws the same items
    assert replay_items(train, 3, 4, seed=0)[:7] == kept and replay_items(train, 0, 4, seed=0) == []
    assert replay_items(train, 2, 4, seed=1) != kept


def test_replay_joins_training_but_not_the_task_end(base, monkeypatch):
    """Replayed items are in the training batches; the task-end hook sees the task's own examples only."""
    from accelerate import Accelerator

    from branchlora.methods.seqft import SequentialLoRA
    from branchlora.train import train_task

    _, model, stream = base
    model = fresh(model)
    method = get_method("lora")(LORA)
    method.setup(model)
    seen, ended = [], []
    monkeypatch.setattr(
        SequentialLoRA, "on_task_end", lambda self, model, task, run: ended.extend(run.examples), raising=False
    )

    def collate(items):
        seen.extend(items)
        return stream.collator.train_batch(items)

    own, replay = stream.train[1][:8], stream.train[0][:4]
    config = TrainConfig(max_steps=3, batch_size=4)
    train_task(model, method, Task(1, "b"), own, collate, config, Accelerator(cpu=True), replay=replay)
    assert {id(x) for x in seen} == {id(x) for x in own + replay}  # 12 items, 3 batches of 4: each seen once
    assert ended == own


def test_lwf_term_is_zero_when_student_equals_teacher():
    logits = torch.randn(2, 5, 11)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    assert distillation_loss(logits, logits.clone(), mask, 2.0).abs() < 1e-6
    assert distillation_loss(logits, torch.randn(2, 5, 11), mask, 2.0) > 0


@pytest.fixture
def bf16_accelerator():
    """An Accelerator with bf16 autocast; Accelerate's process-wide state is reset before and after."""
    from accelerate.state import AcceleratorState

    from branchlora.train import make_accelerator

    AcceleratorState._reset_state(True)
    yield make_accelerator(TrainConfig(mixed_precision="bf16"), cpu=True)
    AcceleratorState._reset_state(True)


@pytest.mark.parametrize(
    "name",
    ["lora", "moelora", "hydralora", "branchlora", "lilora", "proglora", "ewc", "lwf", "olora", "hide", "sefe",
     "clmoe"],
)  # fmt: skip
def test_every_method_trains_and_evaluates_under_bf16_autocast(base, tmp_path, name, bf16_accelerator):
    """`train.mixed_precision=bf16` (autocast; on a GPU in practice) on a base loaded in bf16: every Linear runs
    under autocast, in training, the methods' task-end passes and the selector's routing at test time; what
    trains (adapters, projector) stays float32, every frozen weight bf16; nothing raises a dtype mismatch."""
    method, model = get_method(name)(adapter_for(name)), fresh(base[1]).to(torch.bfloat16)  # as load_base loads it
    autocast = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda mod, args: autocast.append(torch.is_autocast_enabled("cpu")))
    result = run_method(method, model, base[2], TRAIN, EVAL, tmp_path, accelerator=bf16_accelerator)
    assert len(result.matrix) == 4 and autocast and all(autocast)
    adapters = {id(p) for _, layer in adapter_layers(model) for p in layer.adapter_parameters().values()}
    allocator = getattr(model, "proglora_allocator", None)  # ProgLoRA's keys: trained, then frozen as old blocks
    adapters |= {id(p) for p in allocator.parameters()} if allocator is not None else set()
    trained = {p.dtype for p in model.parameters() if id(p) in adapters or p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if id(p) not in adapters and not p.requires_grad}
    assert (trained, frozen) == ({torch.float32}, {torch.bfloat16})
