"""Benchmark YAML + CoIN-format loading: good files load, each kind of bad file fails with a named error."""

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from branchlora.data.benchmark import BenchmarkError, load_benchmark, open_image


def write_stream(root: Path, train=None, test=None, metric="exact_match") -> Path:
    """A one-task benchmark under root: YAML, JSON files and one image."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(root / "img" / "a.png")
    train = train if train is not None else [
        {"id": 0, "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]}
    ]  # fmt: skip
    test = test if test is not None else [{"question_id": 7, "image": "a.png", "text": "What colour?", "answer": "red"}]
    (root / "train.json").write_text(json.dumps(train))
    (root / "test.json").write_text(json.dumps(test))
    spec = {
        "name": "s",
        "image_root": "img",
        "tasks": [{"name": "t", "train": "train.json", "test": "test.json", "metric": metric}],
    }
    (root / "b.yaml").write_text(yaml.safe_dump(spec))
    return root / "b.yaml"


def test_loads_and_resolves_paths(tmp_path):
    bench = load_benchmark(write_stream(tmp_path))
    (train,) = bench.train_examples("t")
    assert train.instruction == "What colour?" and train.answer == "red"
    assert train.image == tmp_path / "img" / "a.png"
    (test,) = bench.test_examples(0)
    assert test.question_id == "7" and test.answer == "red"


def test_grounding_item(tmp_path):
    test = [
        {"question_id": "g", "image": "a.png", "text": "the dog", "answer_bbox": [16, 32, 32, 32], "size": [64, 64]}
    ]
    (ex,) = load_benchmark(write_stream(tmp_path, test=test, metric="bbox_iou")).test_examples(0)
    assert ex.bbox == [16, 32, 32, 32] and ex.size == (64, 64) and ex.answer == "[0.25, 0.50, 0.75, 1.00]"


def test_bad_json_names_file_and_line(tmp_path):
    path = write_stream(tmp_path)
    (tmp_path / "train.json").write_text('[{"id": 0,\n "image": }]')
    with pytest.raises(BenchmarkError, match=r"train\.json: bad JSON at line 2"):
        load_benchmark(path)


def test_missing_field_names_item_index(tmp_path):
    test = [
        {"question_id": 1, "image": "a.png", "text": "q", "answer": "x"},
        {"question_id": 2, "image": "a.png", "text": "q"},
    ]
    with pytest.raises(BenchmarkError, match=r"test\.json: item 1: missing field 'answer'"):
        load_benchmark(write_stream(tmp_path, test=test))


def test_missing_image(tmp_path):
    test = [{"question_id": 1, "image": "nope.png", "text": "q", "answer": "x"}]
    with pytest.raises(BenchmarkError, match=r"test\.json: item 0: field 'image': no such file .*nope\.png"):
        load_benchmark(write_stream(tmp_path, test=test))


def test_unreadable_image_fails_lazily_with_its_name(tmp_path):
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(BenchmarkError, match=r"bad\.png: cannot read image"):
        open_image(tmp_path / "bad.png")


def test_empty_task(tmp_path):
    with pytest.raises(BenchmarkError, match=r"train\.json: empty task"):
        load_benchmark(write_stream(tmp_path, train=[]))


def test_unknown_metric_lists_known(tmp_path):
    with pytest.raises(BenchmarkError, match=r"task 0 \(t\): field 'metric': unknown metric 'bleu'; known: option_letter"):
        load_benchmark(write_stream(tmp_path, metric="bleu"))


def test_bad_conversation(tmp_path):
    train = [{"image": "a.png", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]
    with pytest.raises(BenchmarkError, match=r"train\.json: item 0: field 'conversations'"):
        load_benchmark(write_stream(tmp_path, train=train))


def test_unknown_builtin_name_lists_builtins(tmp_path):
    with pytest.raises(BenchmarkError, match=r"unknown benchmark 'minicon'.*minicoin"):
        load_benchmark("minicon", cache_dir=tmp_path)
