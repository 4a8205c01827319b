"""Bad inputs around checkpoints, `predict`, `evaluate` and training: each is one line naming the file, field
or value, exit status 2, and never a traceback (the checkpoint / inference / NaN part of the catalogue)."""

import errno
import json
import os
import shutil
from dataclasses import replace

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from branchlora.atomic import WriteError, write_json
from branchlora.cli import app
from branchlora.continual import MethodResult, run_method, save_checkpoint
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.inference import load_trained, predict
from branchlora.methods import get_method
from branchlora.train import TrainConfig

from cli_support import refused
from engine_support import ADAPTER, MICRO, MICRO_PRETRAIN, TOY, micro_base, toy_stream

runner = CliRunner()
NAMES = [t[0] for t in TOY]
MICRO_OPTIONS = {"tiny": vars(MICRO), "pretraining": vars(MICRO_PRETRAIN)}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(root, a BranchLoRA checkpoint after its second toy task, a test image) on the cached micro base."""
    root = tmp_path_factory.mktemp("bad")
    model, processor = micro_base(root / "cache")
    stream = toy_stream(root / "toy", processor, n_train=4, n_test=2)
    info = {"base": "tiny", "base_options": MICRO_OPTIONS, "tasks": NAMES}
    run_method(get_method("branchlora")(ADAPTER), model, stream, TrainConfig(max_steps=2, batch_size=4),
               EvalConfig(batch_size=8, max_new_tokens=2, limit=1), root / "out", checkpoint_info=info)  # fmt: skip
    return root, root / "out" / "task-01", stream.test[0][0].image


def cli(root, *args):
    return runner.invoke(app, [str(a) for a in args], env={"BRANCHLORA_CACHE": str(root / "cache")})


def predict_with(root, checkpoint, image, *extra):
    return cli(root, "predict", "--checkpoint", checkpoint, "--image", image, "--prompt", "What colour?", *extra)


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def edit_tensors(path, change):
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def garbage(path):
    path.write_bytes(b"\x00garbage, not what the loader expects\n" * 3)


def first_key_reshaped(tensors):
    key = sorted(tensors)[0]
    tensors[key] = torch.zeros(3, 5)


CORRUPTIONS = {
    "adapters.safetensors truncated": ("adapters.safetensors", truncate, "is not a readable safetensors file"),
    "adapters.safetensors garbage": ("adapters.safetensors", garbage, "is not a readable safetensors file"),
    "adapters.safetensors wrong shape": (
        "adapters.safetensors", lambda p: edit_tensors(p, first_key_reshaped), "has shape (3, 5) but the model expects"
    ),
    "adapters.safetensors missing tensor": (
        "adapters.safetensors", lambda p: edit_tensors(p, lambda t: t.pop(sorted(t)[0])), "is missing"
    ),
    "adapters.json not JSON": ("adapters.json", truncate, "is not valid JSON"),
    "adapters.json wrong kind": (
        "adapters.json", lambda p: edit_json(p, lambda d: d["adapter"].update(kind="lora")),
        "holds 'lora' adapters but the model has 'branchlora' ones",
    ),
    "adapters.json bad r": (
        "adapters.json", lambda p: edit_json(p, lambda d: d["adapter"].update(r=0)), "field 'adapter': r must be >= 1"
    ),
    "adapters.json missing": ("adapters.json", lambda p: p.unlink(), "adapters.json does not exist"),
    "method.pt garbage": ("method.pt", garbage, "is not a readable torch file"),
    "method.pt truncated": ("method.pt", truncate, "is not a readable torch file"),
    "method.pt other state": ("method.pt", lambda p: torch.save({"x": 1}, p), "not the state of method 'branchlora'"),
    "method.pt missing": ("method.pt", lambda p: p.unlink(), "method.pt' is missing"),
    "projector.safetensors wrong shape": (
        "projector.safetensors", lambda p: edit_tensors(p, first_key_reshaped), "but the model expects"
    ),
    "projector.safetensors missing": ("projector.safetensors", lambda p: p.unlink(), "safetensors' is missing"),
    "state.json not JSON": ("state.json", truncate, "is not valid JSON"),
    "state.json a list": ("state.json", lambda p: p.write_text("[1, 2]"), "expected a JSON object, got list"),
    "state.json without method": (
        "state.json", lambda p: edit_json(p, lambda d: d.pop("method")), "field 'method' is missing"
    ),
    "state.json unknown method": (
        "state.json", lambda p: edit_json(p, lambda d: d.update(method="dora")), "unknown method 'dora'; valid methods:"
    ),
    "state.json task_index not int": (
        "state.json", lambda p: edit_json(p, lambda d: d.update(task_index="1")), "'task_index' must be int, got '1'"
    ),
    "state.json bad option": (
        "state.json", lambda p: edit_json(p, lambda d: d["options"].update(nope=1)), "unknown option(s) ['nope']"
    ),
    "state.json tasks too short": (
        "state.json", lambda p: edit_json(p, lambda d: d.update(tasks=["colour"])), "names up to task 1"
    ),
    "state.json bad base_options": (
        "state.json", lambda p: edit_json(p, lambda d: d["base_options"].update(size=3)), "unknown key(s) ['size']"
    ),
    "state.json without tasks": ("state.json", lambda p: edit_json(p, lambda d: d.pop("tasks")), "'tasks' is missing"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_file_is_one_line_naming_it(saved, tmp_path, case):
    root, checkpoint, image = saved
    name, corrupt, message = CORRUPTIONS[case]
    copy = tmp_path / "task-01"
    shutil.copytree(checkpoint, copy)
    corrupt(copy / name)
    refused(predict_with(root, copy, image), str(copy / name), message)


def test_checkpoint_path_that_does_not_exist(saved, tmp_path):
    root, _, image = saved
    refused(predict_with(root, tmp_path / "nowhere", image), "nowhere' is not a checkpoint")


def test_folder_without_task_checkpoints(saved, tmp_path):
    root, _, image = saved
    (tmp_path / "empty").mkdir()
    out = cli(root, "evaluate", "--checkpoint", tmp_path / "empty", "--benchmark", "minicoin")
    refused(out, "empty' is not a checkpoint", "task-XX")


def test_predict_with_a_missing_image(saved, tmp_path):
    root, checkpoint, _ = saved
    refused(predict_with(root, checkpoint, tmp_path / "gone.png"), "gone.png", "cannot read image")


def test_predict_with_an_unreadable_image(saved, tmp_path):
    root, checkpoint, _ = saved
    (tmp_path / "text.png").write_text("not a picture")
    refused(predict_with(root, checkpoint, tmp_path / "text.png"), "text.png", "cannot read image")


def test_predict_with_a_task_the_checkpoint_has_not_learned(saved):
    root, checkpoint, image = saved
    out = predict_with(root, checkpoint, image, "--task", "shape")
    refused(out, "'shape' is not one this checkpoint has learned; it learned: colour, count")


def test_predict_with_an_empty_prompt(saved):
    root, checkpoint, image = saved
    out = cli(root, "predict", "--checkpoint", checkpoint, "--image", image, "--prompt", "  ")
    refused(out, "--prompt is empty")


def test_predict_strips_the_image_marker_a_copied_coin_prompt_carries(saved):
    """CoIN's files hold "<image>\\n" before the question; the collator places the image itself, so the marker goes
    (as the benchmark reader drops it) and the answer is the one to the bare question."""
    root, checkpoint, image = saved
    plain, marked = predict_with(root, checkpoint, image), cli(root, "predict", "--checkpoint", checkpoint, "--image",
                                                                image, "--prompt", "<image>\nWhat colour?")  # fmt: skip
    assert plain.exit_code == marked.exit_code == 0, marked.output
    answer = marked.output[marked.output.index("answer:") :]  # after the weight-loading progress bar
    assert answer == plain.output[plain.output.index("answer:") :] and "task: colour" in answer
    out = cli(root, "predict", "--checkpoint", checkpoint, "--image", image, "--prompt", "<image>")
    refused(out, "--prompt '<image>' holds nothing besides the <image> marker")


def test_predict_task_on_a_method_without_task_routers_is_refused(saved):
    """LoRA serves every task with one adapter: --task would change nothing, so it is refused, not ignored."""
    _, checkpoint, image = saved
    loaded = replace(load_trained(checkpoint), method=get_method("lora")(ADAPTER))
    with pytest.raises(ValueError, match="--task 'colour': method lora has no task routers"):
        predict(loaded, image, "What colour?", task="colour")


def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_last_complete_one(saved, tmp_path, monkeypatch):
    root, checkpoint, _ = saved
    out = tmp_path / "out"
    shutil.copytree(root / "out", out)
    done = sorted(p.name for p in out.glob("task-*"))  # the toy stream's three tasks: task-00 .. task-02
    before = (out / done[-1] / "state.json").read_bytes()
    loaded = load_trained(checkpoint)
    monkeypatch.setattr("branchlora.continual.write_json", full_disk)
    with pytest.raises(WriteError) as caught:
        save_checkpoint(out, len(done), loaded.model, loaded.method, MethodResult(), {})
    assert str(caught.value) == (f"cannot write the checkpoint {str(out / f'task-{len(done):02d}')!r}: No space left "
                                 f"on device; the last complete one, {str(out / done[-1])!r}, is kept: free space, "
                                 "then continue with --resume")  # fmt: skip
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp", "task"))) == done
    assert (out / done[-1] / "state.json").read_bytes() == before


def test_a_full_disk_while_writing_results_keeps_the_earlier_file(tmp_path, monkeypatch):
    write_json(tmp_path / "results.json", {"acc": 1})
    monkeypatch.setattr("pathlib.Path.write_text", full_disk)
    with pytest.raises(WriteError, match=r"results.json': No space left on device; the earlier file is kept$"):
        write_json(tmp_path / "results.json", {"acc": 2})
    monkeypatch.undo()
    assert json.loads((tmp_path / "results.json").read_text()) == {"acc": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left beside it


def test_evaluate_with_a_negative_limit(saved):
    root, checkpoint, _ = saved
    out = cli(root, "evaluate", "--checkpoint", checkpoint, "--benchmark", "minicoin", "--limit", "-1")
    refused(out, "Invalid value for '--limit'")


def test_evaluate_with_an_unknown_benchmark(saved):
    root, checkpoint, _ = saved
    out = cli(root, "evaluate", "--checkpoint", checkpoint, "--benchmark", "coin-full.yaml")
    refused(out, "unknown benchmark 'coin-full.yaml'")


def test_checkpoint_whose_base_is_an_offline_hub_id(saved, tmp_path):
    root, checkpoint, image = saved
    copy = tmp_path / "task-01"
    shutil.copytree(checkpoint, copy)
    edit_json(copy / "state.json", lambda d: d.update(base="llava-hf/llava-1.5-7b-hf"))
    out = predict_with(root, copy, image)
    refused(out, f"{str(copy / 'state.json')!r}: base 'llava-hf/llava-1.5-7b-hf'", "is not a local folder",
                          "offline mode")  # fmt: skip


def test_error_text_keeps_its_brackets(saved, tmp_path):
    """Rich would read "[x, y, w, h]" as markup and drop it: the message is escaped."""
    root, checkpoint, _ = saved
    (tmp_path / "img.png").write_bytes(b"")
    item = {"question_id": 1, "image": "img.png", "text": "Where?", "answer_bbox": [1, 2], "size": [8, 8]}
    (tmp_path / "test.json").write_text(json.dumps([item]))
    turns = [{"from": "human", "value": "Where?"}, {"from": "gpt", "value": "[0.1, 0.2, 0.3, 0.4]"}]
    (tmp_path / "train.json").write_text(json.dumps([{"image": "img.png", "conversations": turns}]))
    task = {"name": "grounding", "train": "train.json", "test": "test.json", "metric": "bbox_iou"}
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"name": "b", "image_root": ".", "tasks": [task]}))
    out = cli(root, "evaluate", "--checkpoint", checkpoint, "--benchmark", tmp_path / "b.yaml")
    refused(out, "expected [x, y, w, h] as finite numbers, got [1, 2]")


def micro_run(root, tmp_path, *overrides, lr=2e-4):
    """`branchlora run` of LoRA on a small minicoin and the micro base, with `--set` overrides."""
    config = {
        "benchmark_options": {"train_size": 4, "test_size": 1},
        "base_options": MICRO_OPTIONS,
        "adapter": {"r": 8, "alpha": 16},
        "train": {"max_steps": 3, "batch_size": 4, "lr": lr},  # a float in the file, whatever --set parses
        "eval": {"batch_size": 8, "max_new_tokens": 2},
    }
    (tmp_path / "micro.yaml").write_text(yaml.safe_dump(config))
    sets = [arg for o in overrides for arg in ("--set", o)]
    return cli(root, "run", "--preset", "quick", "--config", tmp_path / "micro.yaml", "--methods", "lora",
               "--out", tmp_path / "out", *sets)  # fmt: skip


def test_run_with_an_offline_hub_base(saved, tmp_path):
    root, _, _ = saved
    out = micro_run(root, tmp_path, "base=llava-hf/llava-1.5-7b-hf", "base_options={}")
    refused(out, "base 'llava-hf/llava-1.5-7b-hf': its config is not available", "HF_HUB_OFFLINE is set")


def test_a_diverging_run_stops_with_one_line_and_exit_2(saved, tmp_path):
    """lr 1e12: NaN within a few steps; the run stops naming method, task and step (no table of 0.00)."""
    root, _, _ = saved
    out = micro_run(root, tmp_path, lr=1e12)
    refused(out, "lora: ", "non-finite", "on task 'scienceqa'", "step 3")  # the quick preset's first
    assert "ACC" not in out.output
