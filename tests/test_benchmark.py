"""Benchmark YAML + CoIN-format loading: good files load, each kind of bad file fails with a named error."""

import json

import pytest
from PIL import Image

from branchlora.data.benchmark import BenchmarkError, load_benchmark, open_image

from support import one_task_stream


def test_loads_and_resolves_paths(tmp_path):
    bench = load_benchmark(one_task_stream(tmp_path))
    (train,) = bench.train_examples("t")
    assert train.instruction == "What colour?" and train.answer == "red"
    assert train.image == tmp_path / "img" / "a.png"
    (test,) = bench.test_examples(0)
    assert test.question_id == "7" and test.answer == "red"


def test_grounding_item(tmp_path):
    test = [
        {"question_id": "g", "image": "a.png", "text": "the dog", "answer_bbox": [16, 32, 32, 32], "size": [64, 64]}
    ]
    (ex,) = load_benchmark(one_task_stream(tmp_path, test=test, metric="bbox_iou")).test_examples(0)
    assert ex.box == (0.25, 0.5, 0.75, 1.0) and ex.answer == "[0.25, 0.50, 0.75, 1.00]"


def test_bad_json_names_file_and_line(tmp_path):
    path = one_task_stream(tmp_path)
    (tmp_path / "train.json").write_text('[{"id": 0,\n "image": }]')
    with pytest.raises(BenchmarkError, match=r"train\.json: bad JSON at line 2"):
        load_benchmark(path)


def test_missing_field_names_item_index(tmp_path):
    test = [
        {"question_id": 1, "image": "a.png", "text": "q", "answer": "x"},
        {"question_id": 2, "image": "a.png", "text": "q"},
    ]
    with pytest.raises(BenchmarkError, match=r"test\.json: item 1: missing field 'answer'"):
        load_benchmark(one_task_stream(tmp_path, test=test))


def test_missing_image(tmp_path):
    test = [{"question_id": 1, "image": "nope.png", "text": "q", "answer": "x"}]
    with pytest.raises(BenchmarkError, match=r"test\.json: item 0: field 'image': no such file .*nope\.png"):
        load_benchmark(one_task_stream(tmp_path, test=test))


def test_unreadable_image_fails_lazily_with_its_name(tmp_path):
    (tmp_path / "bad.png").write_text("not a png")
    with pytest.raises(BenchmarkError, match=r"bad\.png: cannot read image"):
        open_image(tmp_path / "bad.png")


def test_empty_task(tmp_path):
    with pytest.raises(BenchmarkError, match=r"train\.json: empty task"):
        load_benchmark(one_task_stream(tmp_path, train=[]))


def test_unknown_metric_lists_known(tmp_path):
    with pytest.raises(BenchmarkError, match=r"task 0 \(t\): field 'metric': unknown metric 'bleu'; known: option_"):
        load_benchmark(one_task_stream(tmp_path, metric="bleu"))


def test_bad_conversation(tmp_path):
    train = [{"image": "a.png", "conversations": [{"from": "gpt", "value": "x"}, {"from": "human", "value": "y"}]}]
    with pytest.raises(BenchmarkError, match=r"train\.json: item 0: field 'conversations'"):
        load_benchmark(one_task_stream(tmp_path, train=train))


def test_unknown_builtin_name_lists_builtins(tmp_path):
    with pytest.raises(BenchmarkError, match=r"unknown benchmark 'minicon'.*minicoin"):
        load_benchmark("minicon", cache_dir=tmp_path)


def test_multi_turn_conversation_keeps_every_turn(tmp_path):
    conversation = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"},
                    {"from": "human", "value": "And its shape?"}, {"from": "gpt", "value": " square "}]  # fmt: skip
    bench = load_benchmark(one_task_stream(tmp_path, train=[{"image": "a.png", "conversations": conversation}]))
    (train,) = bench.train_examples("t")
    assert (train.instruction, train.answer, train.follow_ups) == (
        "What colour?",
        "red",
        (("And its shape?", "square"),),
    )


def test_image_paths_absolute_home_and_relative(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "home" / "b.png")
    elsewhere = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8), "green").save(elsewhere)
    test = [{"question_id": i, "image": image, "text": "q", "answer": "x"}
            for i, image in enumerate(["a.png", "~/b.png", str(elsewhere)])]  # fmt: skip
    bench = load_benchmark(one_task_stream(tmp_path, test=test))
    images = [e.image for e in bench.test_examples(0)]
    assert images == [tmp_path / "img" / "a.png", tmp_path / "home" / "b.png", elsewhere]


def test_jsonl_with_blank_lines_and_a_byte_order_mark(tmp_path):
    path = one_task_stream(tmp_path)
    item = json.loads((tmp_path / "test.json").read_text())[0]
    (tmp_path / "test.jsonl").write_text(f"\ufeff{json.dumps(item)}\n\n{json.dumps({**item, 'question_id': 8})}\n")
    path.write_text(path.read_text().replace("test.json", "test.jsonl"))
    assert [e.question_id for e in load_benchmark(path).test_examples(0)] == ["7", "8"]


def test_grounding_box_may_overhang_by_rounding(tmp_path):
    test = [{"question_id": "g", "image": "a.png", "text": "t", "answer_bbox": [0, 0, 64.4, 8], "size": [64, 64]},
            {"question_id": "h", "image": "a.png", "text": "t", "answer_bbox": [1, 1, 2, 2], "size": [64, 64],
             "answer": "[0.01, 0.01, 0.04, 0.04]"}]  # fmt: skip
    first, second = load_benchmark(one_task_stream(tmp_path, test=test, metric="bbox_iou")).test_examples(0)
    assert first.box == (0.0, 0.0, 64.4 / 64, 8 / 64) and second.answer == "[0.01, 0.01, 0.04, 0.04]"
