"""Evaluation split across processes, auditable predictions, row 0 shared, eval.future and eval.limit."""

import copy
import json
import textwrap
from functools import partial
from pathlib import Path

import pytest
import torch

from branchlora.adapters import routing_context
from branchlora.batch import model_inputs
from branchlora.continual import run_method
from branchlora.data.benchmark import TestExample
from branchlora.evaluation import evaluate as evaluate_module
from branchlora.evaluation.evaluate import EvalConfig, TaskScore, eval_subset, prediction_records
from branchlora.methods import METHODS, Task, get_method
from branchlora.models.family import sample_rows
from branchlora.train import TrainConfig
from test_distributed import launch

from engine_support import ADAPTER, micro_base, toy_stream

TRAIN = TrainConfig(max_steps=2, batch_size=4, lr=5e-3)
EVAL = EvalConfig(batch_size=2, max_new_tokens=4)  # 3 test items per task: batches of 2 and 1


def read_predictions(folder: Path) -> dict[str, str]:
    """{"stage-XX/task.jsonl": the file's text} under folder/predictions."""
    root = folder / "predictions"
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.jsonl"))}


def test_limit_draws_a_fixed_random_subset_in_file_order():
    items = list(range(10))
    assert eval_subset(items, 4) == [0, 2, 6, 9]  # random.Random(0).sample(range(10), 4) is [6, 9, 0, 2]
    assert eval_subset(items, 4) == eval_subset(list(items), 4)  # the same draw for every method and stage
    assert eval_subset(items, 0) == items and eval_subset(items, 12) == items


def test_prediction_records_are_what_coins_scripts_read():
    examples = [TestExample("q1", Path("a.png"), "What colour?", "red"), TestExample("q2", Path("b.png"), "Q?", ["x"])]
    result = TaskScore(50.0, ["red", "blue"], [1, 0], [1.0, 0.0], examples)
    assert prediction_records(result, ["count", "colour"]) == [
        {"question_id": "q1", "prompt": "What colour?", "text": "red", "answer": "red", "score": 1.0,
         "router": "colour"},
        {"question_id": "q2", "prompt": "Q?", "text": "blue", "answer": ["x"], "score": 0.0, "router": "count"},
    ]  # fmt: skip
    plain = TaskScore(100.0, ["red"], [], [1.0], examples[:1])
    assert "router" not in prediction_records(plain, [])[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    base, processor = micro_base()
    stream = toy_stream(tmp_path_factory.mktemp("toy"), processor, n_train=4, n_test=3)
    return base, stream


def test_every_method_serves_the_base_unchanged_before_its_first_task(toy):
    """Row 0 is scored once on the bare base for every method: each method, set up and asked for its routers
    before any task, gives the base's logits bit for bit (its adapters add exact zeros)."""
    base, stream = toy
    batch = stream.collator.prompt_batch([x for test in stream.test for x in test])
    with torch.no_grad():
        expected = base(**model_inputs(batch)).logits
    for name in sorted(METHODS):
        method, model = get_method(name)(ADAPTER), copy.deepcopy(base)
        method.setup(model)
        model.eval()
        for oracle in (False, True):
            ids = method.eval_task_ids(model, batch, Task(1, stream.names[1]), oracle=oracle)
            rows = partial(sample_rows, model, batch)
            with torch.no_grad(), routing_context(model, ids, batch["attention_mask"], reuse=True, rows=rows):
                assert torch.equal(model(**model_inputs(batch)).logits, expected), (name, oracle)


def test_row_zero_is_scored_once_and_shared(toy, tmp_path, monkeypatch):
    base, stream = toy
    calls = []
    real = evaluate_module.evaluate_task
    monkeypatch.setattr("branchlora.continual.evaluate_task", lambda *a: calls.append(a[1]) or real(*a))
    shared, results = {}, {}
    for name in ("lora", "branchlora"):
        results[name] = run_method(get_method(name)(ADAPTER), copy.deepcopy(base), stream, TRAIN, EVAL,
                                   tmp_path / name, base_scores=shared)  # fmt: skip
    assert [m for m in calls if m is None] == [None] * 3  # the base: once per task, for both methods
    assert len(calls) == 3 + 2 * 3 * 3  # and every task after each of the 3 stages, per method
    lora, branch = (read_predictions(tmp_path / n) for n in ("lora", "branchlora"))
    assert results["lora"].matrix[0] == results["branchlora"].matrix[0]
    assert {k: v for k, v in lora.items() if k.startswith("stage-00")} == {
        k: v for k, v in branch.items() if k.startswith("stage-00")
    }
    # each stage's file holds every item, in order, whose scores average to the matrix's entry
    for stage, row in enumerate(results["branchlora"].matrix):
        for name, test, score in zip(stream.names, stream.test, row, strict=True):
            records = [json.loads(line) for line in branch[f"stage-{stage:02d}/{name}.jsonl"].splitlines()]
            assert [r["question_id"] for r in records] == [x.question_id for x in test]
            assert [r["prompt"] for r in records] == [x.instruction for x in test]
            assert 100.0 * sum(r["score"] for r in records) / len(records) == pytest.approx(score, abs=1e-12)
            assert ("router" in records[0]) == (stage > 0)  # branchlora's selector, once it has a task


def test_future_off_scores_only_the_learned_tasks(toy, tmp_path):
    base, stream = toy
    config = EvalConfig(batch_size=2, max_new_tokens=4, future=False)
    result = run_method(get_method("lora")(ADAPTER), copy.deepcopy(base), stream, TRAIN, config, tmp_path)
    full = [[x is not None for x in row] for row in result.matrix]
    assert full == [[False] * 3, [True, False, False], [True, True, False], [True, True, True]]
    metrics = result.to_json(3)["metrics"]
    assert metrics["fwt"] is None and metrics["forgetting"] is None
    assert metrics["acc"] == round(sum(result.matrix[3]) / 3, 4)
    assert sorted(read_predictions(tmp_path)) == [
        "stage-01/colour.jsonl", "stage-02/colour.jsonl", "stage-02/count.jsonl",
        "stage-03/colour.jsonl", "stage-03/count.jsonl", "stage-03/shape.jsonl",
    ]  # fmt: skip


def two_tasks(stream):
    """The toy stream's first two tasks: a shorter run."""
    for key in ("names", "metrics", "train", "test"):
        setattr(stream, key, getattr(stream, key)[:2])
    return stream


SCRIPT = textwrap.dedent(
    """
    import copy, json, sys
    from pathlib import Path
    import torch
    from engine_support import ADAPTER, micro_base, toy_stream
    from test_eval_split import EVAL, TRAIN, read_predictions, two_tasks
    from branchlora.evaluation.evaluate import _answer, evaluate_task
    from branchlora.methods import Task


    class Echo(torch.nn.Module):
        def generate(self, input_ids, **kwargs):
            return torch.cat([input_ids, input_ids], dim=1)
    from branchlora.continual import evaluate_all, load_checkpoint, row_of, run_method, score_base, write_predictions
    from branchlora.methods import get_method
    from branchlora.train import make_accelerator

    torch.set_num_threads(1)
    cache, toy, out = map(Path, sys.argv[1:4])
    accelerator = make_accelerator(TRAIN, cpu=True)
    rank = accelerator.process_index
    base, processor = micro_base(cache)
    stream = toy_stream(toy / f"rank{rank}", processor, n_train=4, n_test=3)
    # the split itself, on answers that differ by item: a stand-in model that answers with its prompt
    items = [x for test in stream.test for x in test]  # 3 x 3 items, batches of 2: ranks take 3 and 2 batches
    stream = two_tasks(stream)
    task = Task(0, "all")
    split = evaluate_task(Echo(), None, task, items, "exact_match", stream.collator, EVAL, accelerator)
    alone = [a for x in items for a, _ in _answer(Echo(), None, task, [x], stream.collator, EVAL, accelerator)]
    assert split.predictions == alone and len(set(alone)) == 3, (split.predictions, alone)
    # the one-process run's stages, evaluated again on two processes
    scores = [score_base(copy.deepcopy(base), stream, EVAL, accelerator, None)]
    for index in range(len(stream.names)):
        method, model = get_method("branchlora")(ADAPTER), copy.deepcopy(base)
        method.setup(model)
        load_checkpoint(out / "one" / f"task-{index:02d}", model, method)
        scores.append(evaluate_all(model, method, stream, EVAL, accelerator))
    if accelerator.is_main_process:
        for stage, stage_scores in enumerate(scores):
            write_predictions(out / "two", stage, stage_scores, stream.names)
    # and a whole run: every rank ends with the same matrix; only the main process writes
    run = run_method(get_method("branchlora")(ADAPTER), copy.deepcopy(base), stream, TRAIN, EVAL,
                     out / f"run-rank{rank}", accelerator=accelerator)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": accelerator.num_processes, "rows": [row_of(s, stream.names) for s in scores],
        "predictions": [{n: s.predictions for n, s in stage.items()} for stage in scores], "run": run.matrix,
        "files": read_predictions(out / f"run-rank{rank}") if rank == 0 else {}}))
    """
)


def test_two_processes_score_exactly_as_one(tmp_path):
    """Two processes (gloo) split each task's batches (2 and 1 items), gather the answers and end with the one-
    process run's matrix and predictions files, on every rank; only rank 0 writes."""
    base, processor = micro_base()  # the ranks' base, built before they start
    stream = two_tasks(toy_stream(tmp_path / "reference", processor, n_train=4, n_test=3))
    one = run_method(get_method("branchlora")(ADAPTER), base, stream, TRAIN, EVAL, tmp_path / "one")
    launch(SCRIPT, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    expected = read_predictions(tmp_path / "one")
    assert read_predictions(tmp_path / "two") == expected  # every stage's file, byte for byte
    for rank in ranks:
        assert rank["world"] == 2
        assert rank["rows"] == one.matrix
        for stage, predictions in enumerate(rank["predictions"]):
            for name, answers in predictions.items():
                texts = [json.loads(line)["text"] for line in expected[f"stage-{stage:02d}/{name}.jsonl"].splitlines()]
                assert answers == texts
    assert ranks[0]["run"] == ranks[1]["run"] and len(ranks[0]["run"]) == 3
    assert ranks[0]["run"][0] == one.matrix[0]  # the base's row, whatever the process count
    assert not (tmp_path / "run-rank1").exists()  # rank 1 wrote no checkpoint, log or predictions
    assert sorted(ranks[0]["files"]) == sorted(expected)


def test_report_and_plots_show_unscored_cells_and_na_metrics(tmp_path):
    from branchlora.continual import MethodResult
    from branchlora.report import build_results, write_outputs

    matrix = [[None, None, None], [80.0, None, None], [60.0, 90.0, None], [40.0, 70.0, 70.0]]
    method = MethodResult(matrix=matrix, tunable=5, total=9).to_json(3)
    runs = [{"seed": seed, "order": ["a", "b", "c"], "methods": {"lora": method}} for seed in (0, 1)]
    base, config = {"name": "tiny", "pretrain_seconds": 0.0}, {"eval": {"future": False}}
    results = write_outputs(tmp_path, build_results("toy", runs, base, config, {}, {}))
    assert results["methods"]["lora"]["matrix"][0] == [None, None, None]
    assert results["methods"]["lora"]["repeats"]["fwt"] == {"mean": None, "std": None, "values": [None, None]}
    report = (tmp_path / "report.md").read_text().splitlines()
    assert "| lora | 60.00 | 71.67 | -30.00 | 80.00 | n/a | n/a | 5 | - | 0 | 0 |" in report
    assert "| base | - | - | - |" in report and "| a | 80.0 | - | - |" in report
    assert "| lora | 60.00 ± 0.00 | 71.67 ± 0.00 | -30.00 ± 0.00 | n/a ± n/a |" in report
    assert json.loads((tmp_path / "results.json").read_text())["methods"]["lora"]["metrics"]["fwt"] is None
    assert all(
        (tmp_path / "plots" / f"{p}.png").stat().st_size > 0 for p in ("matrix-lora", "tasks-lora", "comparison")
    )
