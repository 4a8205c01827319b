"""`branchlora export`: the exported folder answers as `predict --task` does, loaded by plain transformers (in a
process without branchlora) or by PEFT; refusals name what is wrong; the Hub upload carries the model card."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

from branchlora.adapters import AdapterConfig, BranchLoRA, LiLoRA, LoRA, TaskLoRA, routing_context
from branchlora.batch import model_inputs
from branchlora.cli import app
from branchlora.continual import WEIGHTS, MethodResult, StreamData, run_method, save_checkpoint
from branchlora.export import export_checkpoint, layer_factors
from branchlora.inference import load_trained, predict
from branchlora.methods import Task, get_method
from branchlora.models.loading import load_base_from

from engine_support import ADAPTER, LORA, MICRO, MICRO_PRETRAIN, TOY_EVAL, TOY_TRAIN, fresh, micro_base, toy_stream
from real_geometry import build_family_folder
from support import randomise

runner = CliRunner()
TINY = {"base": "tiny", "base_options": {"tiny": vars(MICRO), "pretraining": vars(MICRO_PRETRAIN)}}
CONFIG = {"methods": ["branchlora"], "train": {"mixed_precision": "no", "max_steps": 4}}
# Loads an exported folder with transformers alone: importing branchlora fails in this process.
PLAIN = """
import json, sys
sys.modules["branchlora"] = None
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer
results = []
for folder, inputs in zip(sys.argv[1::2], sys.argv[2::2]):
    inputs, model = load_file(inputs), AutoModelForImageTextToText.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(**inputs).logits[:, -1]
        out = model.generate(**inputs)  # its generation config: greedy, predict's budget, eos and pad
    new = out[:, inputs["input_ids"].shape[1]:]
    text = AutoTokenizer.from_pretrained(folder).batch_decode(new, skip_special_tokens=True)
    results.append({"answers": [t.strip() for t in text], "logits": logits.tolist(), "dtype": str(model.dtype)})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """BranchLoRA trained a few steps on two toy tasks (colour, count), from an experiment-like config."""
    root = tmp_path_factory.mktemp("export")
    model, processor = micro_base(root / "cache")
    full = toy_stream(root / "toy", processor, n_train=8, n_test=2)
    stream = StreamData(full.names[:2], full.metrics[:2], full.train[:2], full.test[:2], full.collator)
    info = {**TINY, "tasks": stream.names, "config": CONFIG}
    run_method(get_method("branchlora")(ADAPTER), fresh(model), stream, TOY_TRAIN, TOY_EVAL, root / "out",
               checkpoint_info=info)  # fmt: skip
    os.environ["BRANCHLORA_CACHE"] = str(root / "cache")  # where load_trained finds the micro base
    return root, model, stream


def reference(loaded, task: str, examples) -> tuple[dict, torch.Tensor, list[str]]:
    """(inputs, last-position logits as predict's model routes them, predict's answers one by one)."""
    batch = loaded.collator.prompt_batch(examples)
    inputs = {k: v.contiguous() for k, v in model_inputs(batch).items()}
    index = loaded.tasks.index(task) if task else len(loaded.tasks) - 1
    ids = loaded.method.eval_task_ids(loaded.model, batch, Task(index, task or ""), oracle=True)
    bf16 = torch.autocast("cpu", dtype=torch.bfloat16, enabled=loaded.mixed_precision == "bf16")  # as predict
    with torch.no_grad(), bf16, routing_context(loaded.model, ids, batch["attention_mask"], reuse=True):
        logits = loaded.model(**inputs).logits[:, -1].float()
    answers = [predict(loaded, x.image, x.instruction, task)["answer"] for x in examples]
    return inputs, logits, answers


def randomised_checkpoint(out, model, name: str, adapter: dict, tasks: list[str], info: dict) -> None:
    """A checkpoint of `name` after len(tasks) tasks without training: random adapter weights (every update
    non-zero), saved as run_method saves one."""
    method = get_method(name)(adapter)
    method.setup(model)
    for i, task in enumerate(tasks):
        method.on_task_start(model, Task(i, task))
    randomise(model, std=0.05, seed=0)
    save_checkpoint(
        out, len(tasks) - 1, model, method, MethodResult(matrix=[[0.0] * len(tasks)]), {**info, "tasks": tasks}
    )


def test_hf_export_of_each_task_answers_as_predict_in_a_process_without_branchlora(toy, tmp_path):
    root, _, stream = toy
    loaded = load_trained(root / "out")
    args, expected = [], []
    for task in ("colour", "count"):
        folder = export_checkpoint(root / "out", tmp_path / task, task=task)
        inputs, logits, answers = reference(loaded, task, stream.test[0])
        save_file(inputs, str(tmp_path / f"{task}.safetensors"))
        args += [str(folder), str(tmp_path / f"{task}.safetensors")]
        expected.append((logits, answers))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", PLAIN, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout.splitlines()[-1])
    for (logits, answers), got in zip(expected, results, strict=True):
        assert got["answers"] == answers and got["dtype"] == "torch.float32"
        torch.testing.assert_close(torch.tensor(got["logits"]), logits, atol=1e-4, rtol=1e-4)
    assert (expected[0][0] - expected[1][0]).abs().max() > 1e-3  # the two tasks' models do differ
    assert sorted(os.listdir(tmp_path / "count")) == ["README.md", "config.json", "generation_config.json",
        "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
        "training_config.yaml"]  # fmt: skip


def test_model_card_holds_base_method_stream_row_and_command(toy, tmp_path):
    root, _, _ = toy
    export_checkpoint(root / "out", tmp_path / "card", task="count")
    card = (tmp_path / "card" / "README.md").read_text()
    row = json.loads((root / "out" / "task-01" / "state.json").read_text())["result"]["matrix"][-1]
    assert f"| {row[0]} | **{row[1]}** |" in card and "| colour | count |" in card
    assert "Base: `tiny`. Method: `branchlora`. Task stream: colour -> count." in card
    assert "`branchlora run --config training_config.yaml`" in card and "library_name: transformers" in card
    assert "max_steps: 4" in (tmp_path / "card" / "training_config.yaml").read_text()


def test_peft_export_of_a_task_loads_in_peft_with_predicts_outputs(toy, tmp_path):
    from peft import PeftModel

    root, _, stream = toy
    export_checkpoint(root / "out", tmp_path / "peft", task="count", fmt="peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == ADAPTER["r"] // ADAPTER["n_branches"]
    assert config["modules_to_save"] == ["model.multi_modal_projector"]
    base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"])
    model = PeftModel.from_pretrained(base, tmp_path / "peft").eval()
    inputs, logits, answers = reference(load_trained(root / "out"), "count", stream.test[1])
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits[:, -1], logits, atol=1e-4, rtol=1e-4)
        out = model.generate(**inputs, max_new_tokens=32, do_sample=False)
    tokenizer = load_trained(root / "out").collator
    assert tokenizer.decode(out[:, inputs["input_ids"].shape[1] :]) == answers


@pytest.mark.parametrize("fmt", ["hf", "peft"])
def test_lilora_updates_inside_the_projector_are_folded(toy, tmp_path, fmt):
    """LiLoRA wraps the projector's Linears too: hf folds them with the rest, peft into its projector copy."""
    root, model, stream = toy
    randomised_checkpoint(tmp_path / "ckpt", fresh(model), "lilora", LORA, ["colour", "count"], TINY)
    export_checkpoint(tmp_path / "ckpt", tmp_path / fmt, fmt=fmt)  # no task ids without keys: one model
    inputs, logits, _ = reference(load_trained(tmp_path / "ckpt"), None, stream.test[0])
    if fmt == "hf":
        exported = AutoModelForImageTextToText.from_pretrained(tmp_path / fmt)
    else:
        from peft import PeftModel

        config = json.loads((tmp_path / fmt / "adapter_config.json").read_text())
        assert not any("projector" in name for name in config["target_modules"])
        base = AutoModelForImageTextToText.from_pretrained(config["base_model_name_or_path"])
        exported = PeftModel.from_pretrained(base, tmp_path / fmt)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(**inputs).logits[:, -1], logits, atol=1e-4, rtol=1e-4)


def test_other_family_qwen2_vl_in_bf16_exports_in_bf16_with_predicts_answers(toy, tmp_path):
    _, _, stream = toy
    folder = build_family_folder("qwen2_vl", tmp_path / "qwen2-vl")
    model, _ = load_base_from(str(folder))
    info = {"base": str(folder), "config": {"train": {"mixed_precision": "bf16"}}}
    randomised_checkpoint(tmp_path / "ckpt", model, "lora", LORA, ["colour", "count"], info)
    export_checkpoint(tmp_path / "ckpt", tmp_path / "out")  # LoRA: one model serves both tasks, no --task
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118 (not a dict)
    loaded = load_trained(tmp_path / "ckpt")
    inputs, _, answers = reference(loaded, None, stream.test[0][:1])
    exported = AutoModelForImageTextToText.from_pretrained(tmp_path / "out").eval()
    assert exported.dtype == torch.bfloat16
    with torch.no_grad():
        out = exported.generate(**inputs)
    assert loaded.collator.decode(out[:, inputs["input_ids"].shape[1] :]) == answers


def test_bad_inputs_are_refused_in_one_line(toy, tmp_path):
    root, model, _ = toy
    with pytest.raises(ValueError, match=r"serves each task with its own router .* --task NAME \(this checkpoint "
                                         r"learned: colour, count\)"):  # fmt: skip
        export_checkpoint(root / "out", tmp_path / "a")
    with pytest.raises(ValueError, match="task 'shape' is not one this checkpoint has learned; it learned: colour"):
        export_checkpoint(root / "out", tmp_path / "b", task="shape")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match=re.escape(f"--out {str(tmp_path / 'full')!r} is not empty")):
        export_checkpoint(root / "out", tmp_path / "full", task="count")
    with pytest.raises(ValueError, match="--format 'onnx' is not one of hf, peft"):
        export_checkpoint(root / "out", tmp_path / "c", task="count", fmt="onnx")
    kept = tmp_path / "kept"
    shutil.copytree(root / "out", kept)
    for name in WEIGHTS:
        (kept / "task-00" / name).unlink(missing_ok=True)
    missing = r"\(adapters.safetensors, projector.safetensors, method.pt missing: .*train.keep=last\)"
    with pytest.raises(ValueError, match=rf"{kept / 'task-00'} holds no weights {missing}; {kept / 'task-01'}"):
        export_checkpoint(kept / "task-00", tmp_path / "d", task="colour")
    randomised_checkpoint(tmp_path / "moe", fresh(model), "moelora", {}, ["colour"], TINY)
    why = r"its router mixes the experts per token, so no single weight serves a task; `branchlora predict`"
    with pytest.raises(ValueError, match=rf"method 'moelora' cannot be exported \(.*\): {why}"):
        export_checkpoint(tmp_path / "moe", tmp_path / "e")
    assert not any((tmp_path / n).exists() for n in "abcde")


def test_cli_pushes_the_folder_with_its_card_to_the_hub(toy, tmp_path, monkeypatch):
    import huggingface_hub

    root, _, _ = toy
    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo, exist_ok: calls.append(repo))

    def upload_folder(self, folder_path, repo_id, commit_message):
        shutil.copytree(folder_path, tmp_path / "hub" / repo_id)
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    args = ["export", "--checkpoint", str(root / "out"), "--task", "colour", "--out", str(tmp_path / "x"),
            "--push-to-hub", "me/toy-colour"]  # fmt: skip
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert calls == ["me/toy-colour"] and "uploaded to me/toy-colour" in done.output
    pushed = tmp_path / "hub" / "me" / "toy-colour"
    assert (pushed / "README.md").read_text() == (tmp_path / "x" / "README.md").read_text()
    assert "serves task `colour`" in (pushed / "README.md").read_text() and (pushed / "model.safetensors").is_file()
    done = runner.invoke(app, args)  # the folder now exists: one line, status 2
    assert done.exit_code == 2 and "is not empty: nothing is replaced there" in " ".join(done.output.split())


def make_layer(kind: str, **config) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = {"lora": LoRA, "tasklora": TaskLoRA, "lilora": LiLoRA, "branchlora": BranchLoRA}[kind](
        torch.nn.Linear(6, 5), AdapterConfig.from_dict({"kind": kind, "r": 4, "alpha": 8, **config})
    )
    return randomise(layer)


@pytest.mark.parametrize("kind", ["lora", "tasklora", "lilora"])
def test_layer_factors_give_the_layers_own_merge_weight(kind):
    layer = make_layer(kind)
    if kind == "tasklora":
        layer.add_block()
        layer.lora_B[1].data.normal_()
    a, b = layer_factors(layer, None, None)
    torch.testing.assert_close(b @ a, layer.delta_weight())


def test_branchlora_factors_give_the_routed_update():
    layer = make_layer("branchlora", n_branches=2, top_k=1)
    gates = torch.tensor([0.0, 1.0])
    a, b = layer_factors(layer, 0, gates)
    assert a.shape == (2, 6) and b.shape == (5, 2)  # rank r / N
    torch.testing.assert_close(b @ a, 2.0 * layer.lora_B[1].t() @ layer.lora_A)  # s = alpha / r = 2
