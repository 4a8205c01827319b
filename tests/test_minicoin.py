"""minicoin: deterministic from its seed, in CoIN's formats, eight distinct tasks."""

import hashlib
from pathlib import Path

from branchlora.data.benchmark import load_benchmark, open_image
from branchlora.data.minicoin import SIZE, TABLE, TASKS, MiniCoinOptions, items, write_minicoin
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
    sizes = {t: len(bench.train_examples(t)) for t in TASKS}  # CoIN's tasks differ in size; so do minicoin's
    assert sizes == {t: round(300 * SIZE[t]) for t in TASKS} and set(sizes.values()) == {200, 300, 450}
    assert all(len(bench.test_examples(t)) == 50 for t in TASKS)
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
    assert answers["scienceqa"] == set("ABCD") and answers["gqa"] == {"left", "right", "top", "bottom"}
    assert "unanswerable" in answers["vizwiz"] and len(answers["vizwiz"]) > 3
    assert all(a.startswith("[") and a.endswith("]") for a in answers["grounding"])
    assert answers["vqav2"] == {"1", "2", "3"}
    questions = [{e.instruction for e in bench.train_examples(t)} for t in TASKS]
    assert all(not (a & b) for i, a in enumerate(questions) for b in questions[i + 1 :])  # no shared instruction


def test_10type_uses_many_templates(tmp_path):
    bench = load_benchmark("minicoin", cache_dir=tmp_path, instructions="10type", train_size=80, test_size=2)
    assert len({e.instruction for e in bench.train_examples("imagenet")}) == 10


def test_recut_answers_follow_from_the_drawn_scene():
    """The four re-cut tasks ask what the scene shows, never an object by its name: the answer is read off the
    scene's one shape (or its copies), whatever the question names."""
    opts = MiniCoinOptions()
    for item in items("scienceqa", "train", 40, opts):
        assert "ABCD"[["red", "green", "blue", "yellow"].index(item.scene.shapes[0].colour)] == item.answer
    for item in items("gqa", "train", 40, opts):
        (shape,) = item.scene.shapes
        x, y = (shape.box[0] + shape.box[2]) / 2, (shape.box[1] + shape.box[3]) / 2
        side = ("left" if x < 32 else "right") if "left" in item.instruction else ("top" if y < 32 else "bottom")
        assert item.answer == side
    for item in items("grounding", "train", 40, opts):
        (shape,) = item.scene.shapes
        assert item.box in {(0, 0, 0.5, 0.5), (0.5, 0, 1, 0.5), (0, 0.5, 0.5, 1), (0.5, 0.5, 1, 1)}
        assert all(abs(v * 64 - p) <= 3 for v, p in zip(item.box, shape.box, strict=True))  # the drawn shape's box
    for item in items("vqav2", "train", 40, opts):
        assert item.answer == str(len(item.scene.shapes)) and len({s.shape for s in item.scene.shapes}) == 1
    assert all(item.scene.surface == TABLE for item in items("vizwiz", "train", 20, opts))  # its own pictures
