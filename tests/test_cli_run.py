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
from branchlora.data.benchmark import load_benchmark
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.evaluation.metrics import all_metrics
from branchlora.inference import evaluate_checkpoint, load_trained

from cli_support import refused
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
        assert r["metrics"] == all_metrics(r["matrix"]) == hand_metrics(r["matrix"])
        assert r["params"]["tunable"] > 0 and r["train_seconds"] > 0 and r["eval_seconds"] > 0
    assert 0 <= data["methods"]["branchlora"]["selector_accuracy"] <= 100
    assert data["base"]["name"] == "tiny" and "pretrain_seconds" in data["base"]
    assert "ACC" in result.output and "branchlora" in result.output


def hand_metrics(R: list[list[float | None]]) -> dict[str, float | None]:
    """ACC, MAA, BWT, MFT, FWT and forgetting written out from their definitions over R (row 0: the base),
    independently of branchlora.evaluation.metrics; None where a needed score was not measured."""
    T = len(R) - 1

    def mean(xs: list) -> float | None:
        return None if any(x is None for x in xs) else round(sum(xs) / len(xs), 4)

    def diffs(pairs: list) -> list:
        return [None if a is None or b is None else a - b for a, b in pairs]

    best = [
        None if any(R[l][i] is None for l in range(1, T)) else max(R[l][i] for l in range(1, T)) for i in range(T - 1)
    ]
    return {
        "acc": mean(R[T]),
        "maa": mean([sum(R[t][:t]) / t for t in range(1, T + 1)]),
        "bwt": mean(diffs([(R[T][i], R[i + 1][i]) for i in range(T - 1)])),
        "mft": mean([R[t][t - 1] for t in range(1, T + 1)]),
        "fwt": mean(diffs([(R[i][i], R[0][i]) for i in range(1, T)])),
        "forgetting": mean(diffs([(best[i], R[T][i]) for i in range(T - 1)])),
    }


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
    assert len(json.loads(out.stdout)["scores"]) == 8


def test_evaluating_the_last_checkpoint_reproduces_the_runs_last_row(finished_run, monkeypatch):
    root, _ = finished_run
    monkeypatch.setenv("BRANCHLORA_CACHE", str(root / "cache"))
    bench = load_benchmark("minicoin", cache_dir=root / "cache", train_size=8, test_size=3)  # the run's items
    scores = evaluate_checkpoint(load_trained(root / "out" / "lora"), bench, EvalConfig(batch_size=8, max_new_tokens=4))
    data = json.loads((root / "out" / "results.json").read_text())
    row = data["methods"]["lora"]["matrix"][-1]  # results.json keeps 4 decimals, evaluate prints 2
    assert list(scores["scores"].values()) == [round(x, 2) for x in row]


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
    refused(runner.invoke(app, args, env={"BRANCHLORA_CACHE": str(tmp_path)}), message)


def test_predict_names_an_image_that_does_not_open(finished_run, tmp_path):
    root, _ = finished_run
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = runner.invoke(app, ["predict", "--checkpoint", str(root / "out" / "lora"), "--image", str(bad),
                              "--prompt", "hi"], env={"BRANCHLORA_CACHE": str(root / "cache")})  # fmt: skip
    assert out.exit_code == 2 and "broken.png" in out.output


def test_presets_load_and_the_configuration_reference_is_generated():
    assert load_config("quick").train.max_steps > 0
    assert load_config("default").methods == ["lora", "moelora", "branchlora"]
    page = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    block = re.search(r"<!-- config-reference -->\n(.*?)\n<!-- /config-reference -->", page, re.S)
    assert block is not None, "docs/configuration.md lost its <!-- config-reference --> markers"
    assert block.group(1).strip() == reference().strip(), "docs/configuration.md: paste branchlora.config.reference()"
