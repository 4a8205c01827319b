"""The product end to end on a micro base: run -> results.json, report.md, plots; predict; evaluate; errors."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.config import load_config, reference

from engine_support import MICRO, MICRO_PRETRAIN

runner = CliRunner()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny run of two methods over all eight minicoin tasks, shared by the tests below."""
    root = tmp_path_factory.mktemp("run")
    config = {
        "benchmark_options": {"train_size": 8, "test_size": 3},
        "orders": [],  # the benchmark's order, all eight (the quick preset runs four)
        "base_options": {"tiny": vars(MICRO), "pretraining": vars(MICRO_PRETRAIN)},
        "adapter": {"r": 8, "alpha": 16},
        "train": {"max_steps": 2, "batch_size": 4},
        "eval": {"batch_size": 8, "max_new_tokens": 4},
    }
    (root / "micro.yaml").write_text(yaml.safe_dump(config))
    args = ["run", "--preset", "quick", "--config", str(root / "micro.yaml"), "--methods", "lora,branchlora",
            "--out", str(root / "out")]  # fmt: skip
    result = runner.invoke(app, args, env={"BRANCHLORA_CACHE": str(root / "cache")})
    assert result.exit_code == 0, result.output
    return root, result


def test_results_json_follows_the_contract(finished_run):
    root, result = finished_run
    data = json.loads((root / "out" / "results.json").read_text())
    assert set(data) >= {"benchmark", "methods", "base", "config", "versions", "machine"}
    assert data["machine"]["device"] == "cpu" and data["machine"]["processes"] == 1
    assert data["machine"]["threads"] == torch.get_num_threads()  # what the run's timings and sums depend on
    tasks = data["benchmark"]["tasks"]
    assert tasks == ["scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]
    for name in ("lora", "branchlora"):
        r = data["methods"][name]
        assert len(r["matrix"]) == 9 and all(len(row) == 8 for row in r["matrix"])
        assert set(r["metrics"]) == {"acc", "maa", "bwt", "mft", "fwt", "forgetting"}
        assert r["params"]["tunable"] > 0 and r["train_seconds"] > 0 and r["eval_seconds"] > 0
    assert 0 <= data["methods"]["branchlora"]["selector_accuracy"] <= 100
    assert data["base"]["name"] == "tiny" and "pretrain_seconds" in data["base"]
    assert "ACC" in result.output and "branchlora" in result.output


def test_report_and_plots(finished_run):
    root, _ = finished_run
    report = (root / "out" / "report.md").read_text()
    assert "| method | ACC | MAA | BWT |" in report and "papers' numbers" in report
    for png in ("comparison.png", "matrix-lora.png", "tasks-branchlora.png"):
        assert (root / "out" / "plots" / png).stat().st_size > 5000


def test_predict_and_evaluate_a_checkpoint(finished_run):
    root, _ = finished_run
    env = {"BRANCHLORA_CACHE": str(root / "cache")}
    image = next((root / "cache" / "benchmarks").rglob("*.png"))
    out = runner.invoke(app, ["predict", "--checkpoint", str(root / "out" / "branchlora"), "--image", str(image),
                              "--prompt", "What is the object?"], env=env)  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "answer:" in out.output and "chosen by the task selector" in out.output and "similarity" in out.output
    out = runner.invoke(app, ["evaluate", "--checkpoint", str(root / "out" / "lora"), "--benchmark", "minicoin",
                              "--limit", "2", "--json"], env=env)  # fmt: skip
    assert out.exit_code == 0, out.output
    scores = json.loads(out.stdout)["scores"]
    assert len(scores) == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--preset", "huge"], "unknown preset 'huge'; valid presets: quick, default"),
        (["run", "--methods", "lora,dora"], "unknown method 'dora'; valid methods:"),
        (["run", "--set", "train.lrr=1"], "unknown key(s) ['lrr']"),
        (["run", "--benchmark", "nope.yaml"], "unknown benchmark 'nope.yaml'"),
        (["predict", "--checkpoint", ".", "--image", "x.png", "--prompt", "hi"], "is not a checkpoint"),
    ],
)
def test_errors_are_one_clear_line(args, message, tmp_path):
    out = runner.invoke(app, args, env={"BRANCHLORA_CACHE": str(tmp_path)})
    assert out.exit_code == 2, out.output
    assert message in " ".join(out.output.split()) and "Traceback" not in out.output


def test_predict_names_an_image_that_does_not_open(finished_run, tmp_path):
    root, _ = finished_run
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = runner.invoke(app, ["predict", "--checkpoint", str(root / "out" / "lora"), "--image", str(bad),
                              "--prompt", "hi"], env={"BRANCHLORA_CACHE": str(root / "cache")})  # fmt: skip
    assert out.exit_code == 2 and "broken.png" in out.output


def test_presets_load_and_readme_reference_is_generated():
    assert load_config("quick").train.max_steps > 0
    assert load_config("default").methods == ["lora", "moelora", "branchlora"]
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- config-reference -->\n(.*?)\n<!-- /config-reference -->", readme, re.S)
    assert block is not None and block.group(1).strip() == reference().strip()
