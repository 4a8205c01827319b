"""minicoin: deterministic from its seed, in CoIN's formats, eight distinct tasks."""

import hashlib
from pathlib import Path

from branchlora.data.benchmark import load_benchmark, open_image
from branchlora.data.minicoin import TASKS, MiniCoinOptions, write_minicoin
from branchlora.evaluation.scorers import score

SMALL = {"train_size": 12, "test_size": 6}


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    write_minicoin(tmp_path / "a", MiniCoinOptions(seed=3, **SMALL))
    write_minicoin(tmp_path / "b", MiniCoinOptions(seed=3, **SMALL))
    write_minicoin(tmp_path / "c", MiniCoinOptions(seed=4, **SMALL))
    a, b, c = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_default_loads_through_load_benchmark(tmp_path):
    bench = load_benchmark("minicoin", cache_dir=tmp_path)
    assert bench.task_names == list(TASKS)
    assert [t.metric for t in bench.tasks] == ["option_letter", "vqa_soft", "contains", "exact_match", "exact_match",
                                               "bbox_iou", "exact_match", "exact_match"]  # fmt: skip
    assert all(len(bench.train_examples(t)) == 300 and len(bench.test_examples(t)) == 50 for t in TASKS)
    assert open_image(bench.test_examples("ocrvqa")[0].image).size == (64, 64)
    again = load_benchmark("minicoin", cache_dir=tmp_path)  # from the cache, no regeneration
    assert again.path == bench.path


def test_reference_answers_score_perfectly(tmp_path):
    bench = load_benchmark("minicoin", cache_dir=tmp_path, seed=1, **SMALL)
    for task in bench.tasks:
        for ex in bench.test_examples(task.name):
            reference = ex.answer if isinstance(ex.answer, str) else max(set(ex.answer), key=ex.answer.count)
            assert score(task.metric, reference, ex) == 1.0, (task.name, ex)


def test_tasks_differ_and_vizwiz_has_unanswerable(tmp_path):
    bench = load_benchmark("minicoin", cache_dir=tmp_path, train_size=60, test_size=2)
    answers = {t: {e.answer for e in bench.train_examples(t)} for t in TASKS}
    assert answers["scienceqa"] <= set("ABCDEF")
    assert "unanswerable" in answers["vizwiz"] and len(answers["vizwiz"]) > 3
    assert all(a.startswith("[") and a.endswith("]") for a in answers["grounding"])
    assert {"yes", "no"} <= answers["vqav2"] and answers["vqav2"] & set("1234")
    questions = [{e.instruction for e in bench.train_examples(t)} for t in TASKS]
    assert all(not (a & b) for i, a in enumerate(questions) for b in questions[i + 1 :])  # no shared instruction


def test_10type_uses_many_templates(tmp_path):
    bench = load_benchmark("minicoin", cache_dir=tmp_path, instructions="10type", train_size=80, test_size=2)
    assert len({e.instruction for e in bench.train_examples("imagenet")}) == 10
