"""UCIT, MLLM-DCL and MLLM-ACL: their scorers against cases worked by hand from the authors' scripts, the
per-task fields of a benchmark file, and each config run end to end on a miniature of its release."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.data.benchmark import BenchmarkError, TestExample, load_benchmark
from branchlora.evaluation import captions, metrics, scorers
from branchlora.evaluation.scorers import infer_option, score, score_task

from engine_support import MICRO, MICRO_PRETRAIN
from field_releases import write_field_release

runner = CliRunner()


def item(answer, text: str = "q", image: str | None = "x.png", **fields) -> TestExample:
    return TestExample("1", Path(image) if image else None, text, answer, fields=fields)


@pytest.mark.parametrize(("metric", "prediction", "answer", "expected"), [
    ("upper_match", "Dog", "dog", 1.0),  # UCIT: upper-cased equality, nothing stripped but whitespace
    ("upper_match", "dog.", "dog", 0.0),
    ("ai2d_match", "The answer is Airport.", "airport", 1.0),  # several words: "airport." is in it
    ("ai2d_match", "airports", "airport", 1.0),  # one word: plain substring
    ("ai2d_match", "airporting now", "airport", 0.0),  # several words: none of " airport", "airport ", "airport."...
    ("ai2d_match", "the airports", "airport", 1.0),  # ... but " airport" is in it
    ("ai2d_match", "an airport", "airport", 1.0),  # " airport"
    ("ai2d_match", "big city park", "city park", 1.0),  # an answer with a space: substring
    ("ai2d_match", "Unanswerable airport", "airport", 0.0),
    ("ai2d_match", "unanswerable airport", "airport", 1.0),  # only that spelling zeroes it, as in eval_ai2d.py
    ("ai2d_match", "B.", "b.", 1.0),  # the answer's period dropped, "b." in "b."
    ("pvqa_contains", "Yes, it is", "yes", 1.0),
    ("pvqa_contains", "no", "yes", 0.0),
    ("pvqa_contains", "Unanswerable: yes", "yes", 0.0),
    ("finvis_match", "A.", "A", 1.0),  # lower-cased, "." and spaces gone: "a" == "a"
    ("finvis_match", " Ye s", "Yes", 1.0),
    ("finvis_match", "A) ", "A", 0.0),
    ("cvbench", "(A) 1.", "(A) 1", 1.0),  # "(a)1" in "(a)1"
    ("cvbench", "(B) 2", "(A) 1", 0.0),
    ("mmtbench_server", "A", "A", None),
])  # fmt: skip
def test_per_item_rules_match_the_authors_scripts(metric, prediction, answer, expected):
    assert score(metric, prediction, item(answer)) == expected


def test_sci_dispatches_by_image_source_with_mapqa_partial_credit():
    ai2d, mapqa = "images/AI2D_3.png", "images/MapQA_7.png"
    assert score("sci_match", "Leaf", item("leaf", image=ai2d)) == 1.0
    assert score("sci_match", "a leaf", item("leaf", image=ai2d)) == 0.0  # exact for AI2D / TQA / VQA / SciVerse
    assert score("sci_match", "a leaf", item("leaf", image=mapqa)) == 1.0  # MapQA: substring
    states = item("ohio,utah,iowa", text="Which states have the highest value?", image=mapqa)
    assert score("sci_match", "Ohio,Iowa", states) == pytest.approx(2 / 3)  # items compared unstripped
    assert score("sci_match", "ohio, iowa", states) == pytest.approx(1 / 3)  # " iowa" is not "iowa"
    assert score("sci_match", "Unanswerable", states) == 0.0


def test_ocrbench_by_answer_type():
    regular = item(["Hello World", "hi"], answer_type="Regular Text Recognition")
    assert score("ocrbench", "it says HELLO WORLD\n", regular) == 1.0
    assert score("ocrbench", "helloworld", regular) == 0.0
    formula = item("x^{2} + 1", answer_type="Handwritten Mathematical Expression Recognition")
    assert score("ocrbench", "x ^ { 2 } +1", formula) == 1.0  # spaces dropped, case kept
    assert score("ocrbench", "X^{2}+1", formula) == 0.0


def test_cvbench_task_score_with_its_2d_3d_and_count_breakdown():
    examples = [item("(A)", type="2D", task="Count"), item("(B)", type="2D", task="Relation"),
                item("(C)", type="3D", task="Depth"), item("(D)", type="3D", task="Depth")]  # fmt: skip
    result = score_task("cvbench", ["(A)", "(C)", "(C)", "(D)"], examples)
    assert result.items == [1.0, 0.0, 1.0, 1.0] and result.score == 75.0
    assert result.details == {"task=Count": 100.0, "task=Depth": 100.0, "task=Relation": 0.0, "type=2D": 50.0,
                              "type=3D": 100.0}  # fmt: skip


def test_mathvista_prefetch_is_scored_and_the_rest_left_to_the_judge():
    options = ["3/11", "8/11", "6/11"]
    choice = {"question_type": "multi_choice", "choices": options, "answer_option": "B"}
    assert infer_option("The answer is (B) 8/11.", options) == "B"
    assert infer_option("8/11", options) == "B"  # no letter stands: the one option whose text it contains
    assert infer_option("A or B", options) is None
    assert infer_option("Cannot determine the answer", options) == "Z"
    examples = [item("8/11", **choice), item("14", answer_type="integer", question_type="free_form"),
                item("14", answer_type="integer", question_type="free_form"), item("1.5", answer_type="float"),
                item("a cat", answer_type="text")]  # fmt: skip
    result = score_task("mathvista_rule", ["(B)", "14", "The answer is 14", "1.50", "a cat"], examples)
    assert result.items == [1.0, 1.0, None, 1.0, None]
    assert result.score is None and result.details == {"prefetch_correct": 60.0} and "judge" in result.note


def test_caption_metrics_by_hand():
    """BLEU-1 and ROUGE-L worked by hand on PTB tokens; Average is the mean of the seven."""
    out = captions.caption_scores(["A dog runs on grass.", ""], [["a dog runs in the grass"], ["two cats sleep"]])
    # BLEU-1: 4 of 5 candidate words match; candidate length 5, closest reference lengths 6 + 3 = 9.
    assert out["Bleu_1"] == pytest.approx(100 * 0.8 * 2.718281828 ** (1 - 9 / 5), rel=1e-6)
    # ROUGE-L per item, averaged: item 1 LCS 4, P = 4/5, R = 4/6, beta 1.2; item 2 scores 0.
    p, r, b2 = 4 / 5, 4 / 6, 1.2**2
    assert out["ROUGE_L"] == pytest.approx(100 * ((1 + b2) * p * r / (r + b2 * p)) / 2, rel=1e-6)
    assert out["Average"] == pytest.approx(sum(out[k] for k in captions.CAPTION_METRICS) / 7)


def test_missing_caption_tools_fail_at_load_in_one_line(tmp_path, monkeypatch):
    bench = write_field_release("ucit", tmp_path, items=1)
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    with pytest.raises(BenchmarkError, match=r"vizwiz-caption\): caption metrics need Java") as err:
        load_benchmark(bench)
    assert "\n" not in str(err.value)


def test_per_task_roots_budgets_suffixes_references_and_fields(tmp_path):
    acl = load_benchmark(write_field_release("mllm-acl", tmp_path / "acl"))
    ocr = acl.task("ocr")
    assert ocr.image_root.name == "OCR" and ocr.test_image_root.name == "OCR_test" and ocr.max_new_tokens == 128
    assert acl.train_examples("ocr")[0].image.parent.parent.parent.name == "OCR"
    assert acl.test_examples("ocr")[0].image.parent.parent.parent.name == "OCR_test"
    assert acl.test_examples("vp")[1].fields == {"type": "3D", "task": "Count"}
    dcl = load_benchmark(write_field_release("mllm-dcl", tmp_path / "dcl"))
    fin = dcl.test_examples("fin")  # item 0 a letter question, item 1 a Yes question
    assert fin[0].instruction.endswith("B. blue Answer with the given letter directly, e.g., A, B, C, D.")
    assert fin[1].instruction.endswith("? Only answer with yes or no directly.")
    assert dcl.test_examples("med")[0].instruction.endswith(" Answer the question with a single word (or phrase).")
    assert dcl.train_examples("fin")[0].instruction == "Which colour?\nA. red\nB. blue"  # training is untouched
    ucit = load_benchmark(write_field_release("ucit", tmp_path / "ucit"))
    flickr = ucit.test_examples("flickr30k")
    assert [len(e.answer) for e in flickr] == [2, 2] and flickr[1].answer[1].endswith("rectangle")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("prompt_suffix", {"yes": "x"}, "field 'prompt_suffix': expected a string or {yes_no: str, other: str}"),
    ("max_new_tokens", 0, "field 'max_new_tokens': expected a positive number of tokens, got 0"),
    ("references", None, "field 'references': metric 'coco_caption' needs the COCO-style reference captions file"),
    ("metric", "bleu", "field 'metric': unknown metric 'bleu'; known: option_letter"),
])  # fmt: skip
def test_bad_task_fields_name_the_task_and_field(tmp_path, field, value, message):
    path = write_field_release("ucit", tmp_path, items=1)
    spec = yaml.safe_load(path.read_text())
    task = spec["tasks"][2]
    if value is None:
        del task[field]
    else:
        task[field] = value
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(BenchmarkError, match="task 2 \\(vizwiz-caption\\)") as err:
        load_benchmark(path)
    assert message in str(err.value)


def test_lower_triangle_metrics_by_mcitlib_names():
    """eval.future off: row 0 and the upper triangle empty; MFN (ACC), MFT, MAA, BWT computed, FWT n/a."""
    R = [[None, None, None], [60.0, None, None], [50.0, 80.0, None], [40.0, 70.0, 90.0]]
    assert metrics.acc(R) == pytest.approx((40 + 70 + 90) / 3)  # MFN / Last
    assert metrics.mft(R) == pytest.approx((60 + 80 + 90) / 3)
    assert metrics.maa(R) == pytest.approx((60 + (50 + 80) / 2 + (40 + 70 + 90) / 3) / 3)
    assert metrics.bwt(R) == pytest.approx(((40 - 60) + (70 - 80)) / 2)
    assert metrics.fwt(R) is None and metrics.forgetting(R) is None


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    """A micro run config and a cache shared by the module's runs (the tiny base is pre-trained once)."""
    root = tmp_path_factory.mktemp("micro")
    config = {"base_options": {"tiny": vars(MICRO), "pretraining": vars(MICRO_PRETRAIN)},
              "adapter": {"r": 4, "alpha": 8}, "train": {"max_steps": 1, "batch_size": 2},
              "eval": {"batch_size": 4, "max_new_tokens": 4, "future": False}}  # fmt: skip
    (root / "micro.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.mark.parametrize(("benchmark", "tasks", "unscored"), [
    ("ucit", ["imagenet-r", "arxivqa", "vizwiz-caption", "iconqa", "clevr-math", "flickr30k"], []),
    ("mllm-dcl", ["rs", "med", "ad", "sci", "fin"], []),
    ("mllm-acl", ["ocr", "math", "vp", "app"], ["math", "app"]),
])  # fmt: skip
def test_each_config_runs_end_to_end_on_its_release_layout(micro, tmp_path, monkeypatch, benchmark, tasks, unscored):
    """--dry-run, then one step per task on the micro base. UCIT's caption scores come from a stand-in that
    records what it was given (pycocoevalcap's Java start-ups would cost ~12 s per scoring; it is run for real
    in test_caption_metrics_by_hand)."""
    seen = []
    monkeypatch.setattr(scorers, "caption_scores", lambda p, r: seen.append((list(p), r)) or {"Average": 12.5})
    bench = write_field_release(benchmark, tmp_path / "release")
    args = ["run", "--preset", "quick", "--config", str(micro / "micro.yaml"), "--benchmark", str(bench),
            "--methods", "lora", "--out", str(tmp_path / "out")]  # fmt: skip
    env = {"BRANCHLORA_CACHE": str(micro / "cache")}
    plan = runner.invoke(app, [*args, "--dry-run"], env=env)
    assert plan.exit_code == 0, plan.output
    result = runner.invoke(app, args, env=env)
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["benchmark"]["tasks"] == tasks and list(data["benchmark"].get("unscored", {})) == unscored
    matrix = data["methods"]["lora"]["matrix"]
    for t in range(1, len(tasks) + 1):  # the lower triangle: scored unless the task is not scorable offline
        assert [x is None for x in matrix[t][:t]] == [name in unscored for name in tasks[:t]], matrix
    report = (tmp_path / "out" / "report.md").read_text()
    assert "MFN" in report and all(f"{name} is not scored offline" in report for name in unscored)
    last = tmp_path / "out" / "lora" / "predictions" / f"stage-{len(tasks):02d}"
    for name in tasks:
        records = [json.loads(line) for line in (last / f"{name}.jsonl").read_text().splitlines()]
        assert [r["question_id"] for r in records] == [f"{name}_0", f"{name}_1"] and all("text" in r for r in records)
    if benchmark == "ucit":
        assert matrix[6][2] == matrix[6][5] == 12.5
        assert len(seen) == 5  # vizwiz-caption after stages 3 to 6, flickr30k after stage 6 (eval.future off)
        assert all(len(preds) == 2 and [len(r) for r in refs] == [2, 2] for preds, refs in seen)  # both captions
    if benchmark == "mllm-acl":
        vp = json.loads((last / "vp.score.json").read_text())
        assert set(vp["details"]) == {"type=2D", "type=3D", "task=Count"}
