"""Checkpoints know their tasks by name (evaluate, predict, selector accuracy); runs log; NaN stops a run."""

import json
import math

import pytest
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.continual import run_method
from branchlora.data.benchmark import load_benchmark
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.inference import evaluate_checkpoint, load_trained, predict
from branchlora.methods import get_method
from branchlora.methods.seqft import SequentialLoRA
from branchlora.report import training_table
from branchlora.train import DivergedError, TrainConfig

import support
from engine_support import ADAPTER, LORA, MICRO, MICRO_PRETRAIN, TOY, fresh, micro_base, toy_stream

runner = CliRunner()
NAMES = [t[0] for t in TOY]  # colour, count, shape
INFO = {"base": "tiny", "base_options": {"tiny": vars(MICRO), "pretraining": vars(MICRO_PRETRAIN)}, "tasks": NAMES}
EVAL = EvalConfig(batch_size=8, max_new_tokens=4)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """BranchLoRA trained through the three toy tasks; its task-01 checkpoint has learned colour and count."""
    root = tmp_path_factory.mktemp("named")
    model, processor = micro_base(root / "cache")
    stream = toy_stream(root / "toy", processor)
    train = TrainConfig(max_steps=12, batch_size=4, lr=5e-3)
    result = run_method(get_method("branchlora")(ADAPTER), fresh(model), stream, train, EVAL, root / "out",
                        checkpoint_info=INFO)  # fmt: skip
    return root, stream, result


def write_benchmark(root, stream, names: list[str]):
    """A benchmark YAML over the toy test items of `names` only, in that order."""
    return support.write_benchmark(root / "-".join(names), {n: stream.test[NAMES.index(n)] for n in names})


def record_routing(loaded):
    """Wrap the method's eval_task_ids to record (task index, task name, what it returned) per batch."""
    calls, inner = [], loaded.method.eval_task_ids

    def spy(model, batch, task, oracle=False):
        ids = inner(model, batch, task, oracle)
        calls.append((task.index, task.name, ids))
        return ids

    loaded.method.eval_task_ids = spy
    return calls


def test_checkpoint_learned_the_first_tasks_of_its_stream(trained, monkeypatch):
    root, _, _ = trained
    monkeypatch.setenv("BRANCHLORA_CACHE", str(root / "cache"))
    assert load_trained(root / "out" / "task-01").tasks == ["colour", "count"]
    assert load_trained(root / "out").tasks == NAMES  # a method folder: its last checkpoint


def test_oracle_and_selector_match_tasks_by_name_on_a_reordered_subset(trained, monkeypatch):
    root, stream, _ = trained
    monkeypatch.setenv("BRANCHLORA_CACHE", str(root / "cache"))
    bench = load_benchmark(write_benchmark(root, stream, ["shape", "count"]))
    loaded = load_trained(root / "out" / "task-01")
    calls = record_routing(loaded)
    result = evaluate_checkpoint(loaded, bench, EvalConfig(batch_size=8, max_new_tokens=4, oracle=True))
    assert {(index, name, ids) for index, name, ids in calls} == {(2, "shape", 1), (1, "count", 1)}  # newest, own
    assert result["not_learned"] == ["shape"] and list(result["scores"]) == ["shape", "count"]
    calls.clear()
    result = evaluate_checkpoint(loaded, bench, EVAL)
    count = [ids for _, name, ids in calls if name == "count"][0]
    expected = 100.0 * (count == 1).float().mean().item()  # right: count's samples on count's router (index 1)
    assert result["selector_accuracy"] == expected == 100.0  # shape's samples, never learned, are not counted


def test_evaluate_cli_says_which_tasks_were_not_learned(trained):
    root, stream, _ = trained
    path = write_benchmark(root, stream, ["shape", "count"])
    args = ["evaluate", "--checkpoint", str(root / "out" / "task-01"), "--benchmark", str(path)]
    out = runner.invoke(app, args, env={"BRANCHLORA_CACHE": str(root / "cache")})
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "not learned by this checkpoint" in text and "shape" in text and "100.0% of the learned tasks'" in text


def test_predict_refuses_a_task_the_checkpoint_has_not_learned(trained, monkeypatch):
    root, stream, _ = trained
    monkeypatch.setenv("BRANCHLORA_CACHE", str(root / "cache"))
    loaded = load_trained(root / "out" / "task-01")
    image = stream.test[1][0].image
    with pytest.raises(
        ValueError, match="task 'shape' is not one this checkpoint has learned; it learned: colour, count"
    ):
        predict(loaded, image, "Name the shape in the middle.", task="shape")
    assert predict(loaded, image, "How many dots are drawn here?", task="count")["task"] == "count"
    chosen = predict(loaded, image, "How many dots are drawn here?")
    assert chosen["task"] == "count" and set(chosen["similarity"]) == {"colour", "count"}


def test_run_folder_logs_every_read_step_and_each_task(trained):
    root, _, result = trained
    lines = [json.loads(line) for line in (root / "out" / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if x["event"] == "step"]
    assert [(x["task"], x["step"]) for x in steps] == [(t, s) for t in NAMES for s in (10, 12)]
    assert all(x["method"] == "branchlora" and x["seed"] == 0 and "loss_task" in x for x in steps)
    assert all(0 < x["lr"] <= 5e-3 for x in steps)  # the lr the step used (cosine: never 0 before the end)
    tasks = [x for x in lines if x["event"] == "task"]
    assert [x["task"] for x in tasks] == NAMES and all(x["steps"] == 12 and x["eval_seconds"] > 0 for x in tasks)
    summary = result.to_json(3)["tasks"]
    assert [t["task"] for t in summary] == NAMES and summary[0]["train_seconds"] > 0
    table = training_table(summary, "branchlora")
    assert (
        table[3].startswith("| task | steps | loss align | loss task | train s | eval s | steps/s |")
        and len(table) == 8
    )


class NaNOnSecondTask(SequentialLoRA):
    """LoRA whose second task's loss is NaN from the first step."""

    name = "nan-on-second"

    def extra_loss(self, model, ctx):
        if ctx.task.index == 1:
            ctx.add_loss("broken", ctx.outputs.loss * math.nan)


def test_non_finite_loss_stops_the_run_and_keeps_earlier_checkpoints(trained, tmp_path):
    root, stream, _ = trained
    model, _ = micro_base(root / "cache")
    train = TrainConfig(max_steps=12, batch_size=4, lr=5e-3)
    with pytest.raises(DivergedError) as err:
        run_method(NaNOnSecondTask(LORA), model, stream, train, EVAL, tmp_path)
    assert "nan-on-second: the loss became non-finite (" in str(err.value) and "broken nan" in str(err.value)
    assert "on task 'count' by step 10" in str(err.value)  # the first step whose losses are read
    assert (tmp_path / "task-00").is_dir() and not (tmp_path / "task-01").exists()
