"""Bad input to `branchlora run`: each case runs the real command and gets exit 2 and one error line that
names the key, value or file, with no traceback; a good but unusual input is accepted or explained."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from branchlora.adapters.inject import rank_note
from branchlora.cli import app
from branchlora.config import load_config, parse_override, to_dict
from branchlora.data.benchmark import load_benchmark
from branchlora.experiment import content_hashes, run_identity
from branchlora.rundir import LOCK

from cli_support import refused as refused_output
from support import one_task_stream

runner = CliRunner()
# A small minicoin, so that the cases which get as far as the benchmark stay fast.
SMALL = ["--preset", "quick", "--set", "benchmark_options.train_size=4", "--set", "benchmark_options.test_size=2"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def invoke(args: list[str], cache: Path):
    return runner.invoke(app, ["run", *args], env={"BRANCHLORA_CACHE": str(cache)})


def refused(args: list[str], cache: Path, *needles: str) -> str:
    return refused_output(invoke(args, cache), *needles)


def accepted(args: list[str], cache: Path) -> str:
    out = invoke(args, cache)
    assert out.exit_code == 0, out.output
    return " ".join(out.output.split())


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--set", "train.max_steps=abc"], ["train.max_steps", "'abc'"]),
        (["--set", "train.max_steps=-5"], ["train.max_steps", "-5"]),
        (["--set", "eval.limit=-1"], ["eval.limit", "-1"]),
        (["--set", "replay.size=-2"], ["replay.size", "-2"]),
        (["--set", "train.lr=0"], ["train.lr", "must be > 0"]),
        (["--set", "train.lr=nan"], ["train.lr", "finite"]),
        (["--set", "seeds=abc"], ["seeds[0]", "'abc'"]),
        (["--seeds", "0,x"], ["--seeds", "'0,x'"]),
        (["--device", "tpu"], ["device", "'tpu'", "auto, cpu, cuda"]),
        (["--set", "train.mixed_precision=fp16"], ["train.mixed_precision", "'fp16'", "no, bf16"]),
        (["--orders", "scienceqa,scienceqa"], ["orders[0]", "scienceqa given more than once"]),
        (["--methods", "lora,dora"], ["unknown method 'dora'", "valid methods:"]),
        (["--set", "train.lrr=1"], ["train: unknown key(s) ['lrr']", "did you mean 'lr'"]),
        (["--set", "trian.lr=1"], ["unknown key(s) ['trian']", "did you mean 'train'"]),
        (["--set", "adapter.r=abc"], ["adapter (method lora).r", "'abc'"]),
        (["--set", "benchmark_options.train_size=0"], ["benchmark_options.train_size", "got 0"]),
        (["--set", "train.lr"], ["--set 'train.lr'", "section.key=value"]),
        (["--resume", "--overwrite", "--dry-run"], ["give one of them"]),
        (["--set", "adapter.targets=(q_proj"], ["adapter (method lora): targets '(q_proj'", "not a valid regular"]),
        (["--set", "adapter.n_branches=0", "--methods", "branchlora"], ["n_branches: must be >= 1, got 0"]),
        (["--seed", "4294967"], ["seeds[0]: must be <= 4294966, got 4294967"]),  # numpy: seed * 1000 + task < 2**32
        (["--set", "base_options.seed=18446744073709551616"], ["base_options.seed: must be <= 18446744073709551615"]),
    ],
)
def test_bad_values(args, needles, cache, tmp_path):
    refused([*args, "--out", str(tmp_path / "out")], cache, *needles)


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--out", ""], "--out is empty"), (["--methods", " , "], "--methods ' , ' names nothing"),
     (["--benchmark", " "], "--benchmark is empty")],
)  # fmt: skip
def test_an_empty_flag_is_refused_not_replaced_by_the_default(args, needle, cache):
    refused([*args, "--dry-run"], cache, needle)


def test_exponent_floats_are_accepted_and_null_resets_without_a_traceback(cache, tmp_path):
    args = [*SMALL, "--dry-run", "--set", "train.lr=1e-3", "--set", "benchmark_options=null"]
    args += ["--set", "benchmark_options={train_size: 4, test_size: 2}", "--out", str(tmp_path / "o")]
    text = accepted(args, cache)
    assert "dry run" in text and not (tmp_path / "o").exists()


def test_unknown_task_in_an_order(cache, tmp_path):
    refused([*SMALL, "--dry-run", "--orders", "scienceqa,nope", "--out", str(tmp_path / "o")], cache,
            "has no task 'nope'", "scienceqa")  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_refused(cache, tmp_path):
    refused(["--device", "cuda", "--dry-run", "--out", str(tmp_path / "o")], cache, "device=cuda", "no CUDA GPU")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_bf16_on_the_cpu_says_what_it_does(cache, tmp_path):
    text = accepted([*SMALL, "--dry-run", "--set", "train.mixed_precision=bf16", "--out", str(tmp_path / "o")], cache)
    assert "bf16 on the CPU runs torch's CPU autocast in bfloat16" in text


def test_config_file_that_is_not_yaml(cache, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {lr: 1e-3\nmethods: [lora\n")
    refused(["--config", str(bad)], cache, str(bad), "is not valid YAML")
    binary = tmp_path / "model.bin"
    binary.write_bytes(bytes(range(256)))
    refused(["--config", str(binary)], cache, str(binary))


def test_config_that_is_a_list(cache, tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("- lora\n- branchlora\n")
    refused(["--config", str(listed)], cache, str(listed), "a config is a mapping of keys, got list")


def test_out_that_is_a_file(cache, tmp_path):
    (tmp_path / "results").write_text("x")
    refused(["--out", str(tmp_path / "results")], cache, str(tmp_path / "results"), "is a file")


def test_out_under_a_file(cache, tmp_path):
    (tmp_path / "f").write_text("x")
    refused(["--out", str(tmp_path / "f" / "run")], cache, str(tmp_path / "f"), "is a file")


def test_out_in_an_unwritable_folder(cache, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root ignores the mode: nothing can be refused here
            pytest.skip("running as root: a folder's mode does not stop writes")
        refused(["--out", str(locked / "run")], cache, str(locked), "is not writable")
    finally:
        locked.chmod(0o700)


def test_a_previous_run_in_out_needs_resume_or_overwrite(cache, tmp_path):
    out = tmp_path / "out"
    (out / "lora" / "task-00").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    refused(["--out", str(out)], cache, f"--out {str(out)!r} is not empty", "--resume", "--overwrite")
    assert (out / "results.json").exists()


def test_overwrite_refuses_a_folder_that_holds_no_run(cache, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refused(["--overwrite", "--out", str(tmp_path)], cache, "holds no branchlora run")
    assert (tmp_path / "notes.txt").exists()


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(cache, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename}))
    refused(["--out", str(out)], cache, str(out / LOCK), f"pid {os.getpid()}")
    (out / LOCK).write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))  # no such process
    assert "dry run" in accepted([*SMALL, "--dry-run", "--out", str(out)], cache)


def test_resume_with_another_lr_is_refused_listing_what_differs(cache, tmp_path):
    out = tmp_path / "out"
    args = [*SMALL, "--methods", "lora", "--out", str(out)]
    earlier = load_config("quick", None, [parse_override(a) for a in SMALL[3::2]] + [(("methods",), ["lora"])])
    bench = load_benchmark(earlier.benchmark, cache_dir=cache, **earlier.benchmark_options)
    identity = run_identity(to_dict(earlier), "lora", 0, earlier_order(), content_hashes(bench))
    (out / "lora" / "task-00").mkdir(parents=True)
    (out / "lora" / "task-00" / "state.json").write_text(json.dumps({"run": identity}))
    text = refused([*args, "--resume", "--set", "train.lr=1e-2"], cache, "--resume", "train.lr: 0.003 -> 0.01")
    assert "train.seed" not in text and "benchmark_files" not in text  # only what differs is listed
    refused([*args, "--resume", "--orders", "textvqa,scienceqa"], cache, "tasks")


def test_resume_with_a_benchmark_file_edited_in_place_is_refused_naming_it(cache, tmp_path):
    bench = one_task_stream(tmp_path / "data", image=BROKEN)
    args = ["--benchmark", str(bench), "--methods", "lora", "--out", str(tmp_path / "out")]
    config = load_config("quick", None, [(("benchmark",), str(bench)), (("methods",), ["lora"])])
    files = content_hashes(load_benchmark(bench, check_images=False))
    identity = run_identity(to_dict(config), "lora", 0, ["t"], files)
    (tmp_path / "out" / "lora" / "task-00").mkdir(parents=True)
    (tmp_path / "out" / "lora" / "task-00" / "state.json").write_text(json.dumps({"run": identity}))
    train = tmp_path / "data" / "train.json"
    train.write_text(train.read_text().replace('"red"', '"blue"'))  # the same path, other content
    refused([*args, "--resume", "--dry-run"], cache, "--resume", f"benchmark_files.{train.resolve()}")


def test_an_out_holding_the_benchmark_is_refused_and_nothing_is_deleted(cache, tmp_path):
    bench = one_task_stream(tmp_path, image=BROKEN)
    before = sorted(p.name for p in tmp_path.iterdir())
    for flag in ([], ["--resume"], ["--overwrite"]):
        refused(["--benchmark", str(bench), "--out", str(tmp_path), *flag], cache, "holds no branchlora run"
                if flag else "is not empty")  # fmt: skip
    up = str(tmp_path / "runs" / "..")
    refused(["--benchmark", str(bench), "--out", up, "--dry-run"], cache, "holds the benchmark")
    (tmp_path / "results.json").write_text("{}")  # an older version's run written among the data files
    for flag in ("--resume", "--overwrite"):
        refused(["--benchmark", str(bench), "--out", str(tmp_path), flag], cache, "holds the benchmark file")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "results.json"])


BROKEN = b"not an image"  # the image a one-task stream holds here: the dry run must open it


def earlier_order() -> list[str]:
    return ["scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]


def test_dry_run_opens_every_image(cache, tmp_path):
    bench = one_task_stream(tmp_path, image=BROKEN)
    refused(["--benchmark", str(bench), "--dry-run", "--out", str(tmp_path / "o")], cache,
            str(tmp_path / "img" / "a.png"), "cannot read image")  # fmt: skip


def test_an_adapter_rank_above_a_target_width_is_noted_in_the_dry_run(cache, tmp_path):
    """The tiny base's LM is 192 wide: r=256 can only cost memory.  A note, not a refusal: the README's shape
    stand-ins run a 7B config's r=128 on a 64-wide LLaVA on purpose."""
    text = accepted([*SMALL, "--dry-run", "--set", "adapter.r=256", "--out", str(tmp_path / "o")], cache)
    assert ("note: method lora: adapter.r=256 is more than target 'model.language_model.layers.0.self_attn.q_proj' "
            "(192 -> 192) can use: its update has rank at most 192") in text  # fmt: skip
    assert "note:" not in accepted([*SMALL, "--dry-run", "--set", "adapter.r=192", "--out", str(tmp_path / "o")], cache)


def test_rank_note_names_the_narrowest_target():
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 6))
    assert rank_note(model, ["0", "2"], 6) is None  # 6 fits both
    assert rank_note(model, ["0", "2"], 7).startswith("adapter.r=7 is more than target '2' (10 -> 6) can use")


@pytest.mark.parametrize("setting", ["file", "under a file"])
def test_a_cache_that_cannot_be_a_folder_is_one_line(tmp_path, setting):
    (tmp_path / "f").write_text("x")
    cache = tmp_path / "f" if setting == "file" else tmp_path / "f" / "cache"
    out = runner.invoke(app, ["run", *SMALL, "--dry-run", "--out", str(tmp_path / "o")],
                        env={"BRANCHLORA_CACHE": str(cache)})  # fmt: skip
    refused_output(out, f"BRANCHLORA_CACHE {str(cache)!r}", "is a file")


def test_paths_in_errors_are_quoted_so_a_trailing_space_shows(cache, tmp_path):
    (tmp_path / "results ").write_text("x")
    refused(["--out", str(tmp_path / "results ")], cache, f"--out {str(tmp_path / 'results ')!r} is a file")


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b'"linears"', "expected a JSON object, got str"), (b'{"linears": 5}', "'linears' must map names to [d_in"),
     (b'{"model_type": "lava"}', "model_type 'lava' is not one transformers"),
     (b'{"model_type": "llava", "text_config": {"hidden_size": "abc"}}', "not a llava config transformers can read"),
     (bytes(range(128, 256)), "is not valid JSON")],
)  # fmt: skip
def test_params_on_an_invalid_config_json(tmp_path, content, needle):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    out = runner.invoke(app, ["params", "--model", str(path), "--method", "lora"])
    assert repr(str(path)) in refused_output(out, needle)


def test_bench_with_negative_threads_is_a_usage_error():
    refused_output(runner.invoke(app, ["bench", "--threads", "-1"]), "Invalid value for '--threads'")


def test_pretrain_into_a_non_empty_folder_is_refused_before_the_build(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = runner.invoke(app, ["pretrain", "--quick", "--out", str(tmp_path)], env={"BRANCHLORA_CACHE": str(tmp_path)})
    refused_output(out, f"folder {str(tmp_path)!r} is not empty")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
