"""Bad-input catalogue, data side: each bad benchmark file fails on load with one line naming file and item/field.

Each case starts from a good one-task stream and breaks one thing; `load_benchmark` is what the CLI calls.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.data.benchmark import BenchmarkError, load_benchmark

from cli_support import refused
from support import GOOD_TEST, GOOD_TRAIN, one_task_stream

GOOD_BOX = {"question_id": "g", "image": "a.png", "text": "the dog", "answer_bbox": [16, 32, 32, 32], "size": [64, 64]}


def turns(*pairs: tuple[str, str]) -> dict:
    return {**GOOD_TRAIN, "conversations": [{"from": who, "value": text} for who, text in pairs]}


def box(**fields) -> list[dict]:
    return [{**GOOD_BOX, **fields}]


# (case, stream arguments, file the message names, what else it says)
CASES = [
    ("turns not alternating", {"train": [turns(("human", "q"), ("human", "q2"), ("gpt", "a"), ("gpt", "b"))]},
     "train.json", r"item 0: field 'conversations': turn 1: expected a 'gpt' turn"),
    ("a question without its answer", {"train": [turns(("human", "q"), ("gpt", "a"), ("human", "q2"))]},
     "train.json", r"item 0: field 'conversations': expected human, gpt turn pairs, got 3 turn\(s\)"),
    ("a turn that is not an object", {"train": [{**GOOD_TRAIN, "conversations": ["q", "a"]}]},
     "train.json", r"item 0: field 'conversations': turn 0: expected a 'human' turn"),
    ("empty answer in a later turn", {"train": [turns(("human", "q"), ("gpt", "a"), ("human", "q2"), ("gpt", " "))]},
     "train.json", r"item 0: turn 3: field 'value': empty string"),
    ("instruction that is only the image marker", {"train": [turns(("human", "<image>\n"), ("gpt", "a"))]},
     "train.json", r"item 0: turn 0: field 'value': no instruction besides the <image> marker"),
    ("empty test instruction", {"test": [{**GOOD_TEST, "text": ""}]},
     "test.json", r"item 0: field 'text': empty string"),
    ("empty answer", {"test": [{**GOOD_TEST, "answer": ""}]}, "test.json", r"item 0: field 'answer': empty string"),
    ("answer list with an empty string", {"test": [{**GOOD_TEST, "answer": ["red", ""]}]},
     "test.json", r"item 0: field 'answer': expected a string or a list of non-empty strings"),
    ("empty answer list", {"test": [{**GOOD_TEST, "answer": []}]}, "test.json", r"item 0: field 'answer'"),
    ("empty image path", {"test": [{**GOOD_TEST, "image": ""}]}, "test.json", r"item 0: field 'image': empty string"),
    ("empty question_id", {"test": [{**GOOD_TEST, "question_id": ""}]},
     "test.json", r"item 0: field 'question_id': empty string"),
    ("question_id that is a bool", {"test": [{**GOOD_TEST, "question_id": True}]},
     "test.json", r"item 0: field 'question_id': expected str or int, got True"),
    ("duplicate question_id", {"test": [GOOD_TEST, {**GOOD_TEST, "question_id": "7"}]},
     "test.json", r"item 1: field 'question_id': '7' is also the id of .*test\.json: item 0"),
    ("item that is not an object", {"test": [["q", "a"]]}, "test.json", r"item 0: expected an object, got list"),
    ("box of negative width", {"test": box(answer_bbox=[16, 32, -4, 32]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': width and height must be positive"),
    ("box of size 0", {"test": box(answer_bbox=[16, 32, 0, 0]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': width and height must be positive"),
    ("box with NaN", {"test": box(answer_bbox=[16, float("nan"), 4, 4]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected \[x, y, w, h\] as finite numbers, got \[16, nan"),
    ("box with infinity", {"test": box(answer_bbox=[16, 32, float("inf"), 4]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected \[x, y, w, h\] as finite numbers"),
    ("box of strings", {"test": box(answer_bbox=["16", "32", "4", "4"]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected \[x, y, w, h\] as finite numbers, got \['16'"),
    ("box of three numbers", {"test": box(answer_bbox=[16, 32, 4]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected \[x, y, w, h\]"),
    ("box outside the image", {"test": box(answer_bbox=[40, 32, 32, 32]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': \[40, 32, 32, 32\] lies outside the 64x64 image"),
    ("image size 0", {"test": box(size=[0, 64]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'size': width and height must be positive, got \[0, 64\]"),
    ("image size of booleans", {"test": box(size=[True, True]), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'size': expected \[width, height\] as finite numbers"),
    ("grounding item without a box", {"test": [GOOD_TEST], "metric": "bbox_iou"},
     "test.json", r"item 0: missing field 'answer_bbox'"),
    ("pixel box without the image size", {"test": [{k: v for k, v in GOOD_BOX.items() if k != "size"}],
     "metric": "bbox_iou"}, "test.json", r"item 0: missing field 'size'"),
    ("box that is a number", {"test": box(answer_bbox=5), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected str or list, got 5"),
    ("string box of three numbers", {"test": box(answer_bbox="[0.1, 0.2, 0.3]"), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected a string \"\[x1, y1, x2, y2\]\" of four finite numbers, "
     r"got '\[0.1, 0.2, 0.3\]'"),
    ("string box without brackets", {"test": box(answer_bbox="0.1, 0.2, 0.3, 0.4"), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected a string"),
    ("string box with a word", {"test": box(answer_bbox="[0.1, 0.2, 0.3, high]"), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected a string"),
    ("string box with NaN", {"test": box(answer_bbox="[0.1, nan, 0.3, 0.4]"), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': expected a string"),
    ("string box upside down", {"test": box(answer_bbox="[0.1, 0.5, 0.3, 0.4]"), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': x2 and y2 must exceed x1 and y1, got '\[0.1, 0.5, 0.3, 0.4\]'"),
    ("string box in pixels", {"test": box(answer_bbox="[16, 32, 48, 64]"), "metric": "bbox_iou"},
     "test.json", r"item 0: field 'answer_bbox': '\[16, 32, 48, 64\]' lies outside the unit square"),
    ("string box with a bad size", {"test": box(answer_bbox="[0.1, 0.2, 0.3, 0.4]", size=[640]),
     "metric": "bbox_iou"}, "test.json", r"item 0: field 'size': expected \[width, height\]"),
    ("misspelt task field", {"task": {"metirc": "exact_match"}},
     "b.yaml", r"task 0: unknown field\(s\) \['metirc'\]; valid fields: name, train, test, metric"),
    ("train file missing", {"task": {"train": "nope.json"}},
     "b.yaml", r"task 0 \(t\): field 'train': no such file .*nope"),
    ("test file missing", {"task": {"test": "sub/nope.jsonl"}},
     "b.yaml", r"task 0 \(t\): field 'test': no such file"),
    ("metric that does not exist", {"metric": "bleu"},
     "b.yaml", r"task 0 \(t\): field 'metric': unknown metric 'bleu'"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "kwargs", "file", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_item_is_one_line_naming_file_and_field(tmp_path, case, kwargs, file, message):
    with pytest.raises(BenchmarkError, match=message) as err:
        load_benchmark(one_task_stream(tmp_path, **kwargs))
    text = str(err.value)
    assert "\n" not in text and str(tmp_path / file) in text, text


def one_line_error(path: Path, file: str, message: str) -> None:
    with pytest.raises(BenchmarkError, match=message) as err:
        load_benchmark(path)
    assert "\n" not in str(err.value) and str(path.parent / file) in str(err.value), str(err.value)


def test_jsonl_errors_give_the_real_line(tmp_path):
    path = one_task_stream(tmp_path, suffix=".jsonl")
    (tmp_path / "train.jsonl").write_text(f"\n{json.dumps(GOOD_TRAIN)}\n\n{{'image': 1}}\n")
    one_line_error(path, "train.jsonl", r"bad JSON at line 4, column 2")
    (tmp_path / "train.jsonl").write_text(f"{json.dumps(GOOD_TRAIN)}\n\n{json.dumps({'image': 'a.png'})}\n")
    one_line_error(path, "train.jsonl", r"item 1 \(line 3\): missing field 'conversations'")


def test_non_utf8_files_are_one_line(tmp_path):
    path = one_task_stream(tmp_path)
    (tmp_path / "test.json").write_bytes(json.dumps([GOOD_TEST], indent=1).replace("red", "r\xe9d").encode("latin-1"))
    one_line_error(path, "test.json", r"not UTF-8 text at line 6 \(byte 0xe9\)")
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    one_line_error(path, "b.yaml", r"not UTF-8 text at line \d+ \(byte 0xe9\)")


def test_bad_yaml_and_bad_shapes(tmp_path):
    path = one_task_stream(tmp_path)
    (tmp_path / "test.json").write_text(json.dumps({"items": [GOOD_TEST]}))
    one_line_error(path, "test.json", r"expected a JSON list of items")
    path.write_text("name: s\ntasks: [\n  - oops: 1\n")
    one_line_error(path, "b.yaml", r"bad YAML at line \d+, column \d+")


def test_image_that_is_a_folder(tmp_path):
    (tmp_path / "img" / "dir.png").mkdir(parents=True)
    path = one_task_stream(tmp_path, test=[{**GOOD_TEST, "image": "dir.png"}])
    one_line_error(path, "test.json", r"item 0: field 'image': .*dir\.png is a folder, not an image")


runner = CliRunner()


@pytest.mark.parametrize(
    ("command", "kwargs", "message"),
    [("run", {"test": box(answer_bbox=[16, 32, "4", 4]), "metric": "bbox_iou"},
      "test.json: item 0: field 'answer_bbox': expected [x, y, w, h] as finite numbers"),
     ("run", {"train": [turns(("human", "q"), ("human", "q2"))]}, "train.json: item 0: field 'conversations': turn 1"),
     ("run", {"task": {"metirc": "x"}}, "task 0: unknown field(s) ['metirc']; valid fields: name, train, test, metric"),
     ("evaluate", {"test": [GOOD_TEST, GOOD_TEST]}, "test.json: item 1: field 'question_id': '7' is also the id of")],
)  # fmt: skip
def test_cli_refuses_a_bad_benchmark_with_one_line(tmp_path, command, kwargs, message):
    path = one_task_stream(tmp_path, **kwargs)
    where = ["--out", str(tmp_path / "out")] if command == "run" else ["--checkpoint", str(tmp_path)]
    out = runner.invoke(app, [command, "--benchmark", str(path), *where],
                        env={"BRANCHLORA_CACHE": str(tmp_path / "cache"), "COLUMNS": "400"})  # fmt: skip
    refused(out, message)
    assert not (tmp_path / "cache").exists()  # refused before any base was built
