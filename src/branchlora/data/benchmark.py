"""Benchmarks: a YAML file naming an ordered task stream, whose files use CoIN's formats.

Everything is validated on load so that a bad file fails before hours of training, with a message that
names the file, the item index and the field. Images are checked to exist on load and opened lazily.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image, UnidentifiedImageError

from branchlora.evaluation.scorers import SCORERS

BUILTIN = ("minicoin",)
IMAGE_MARKER = "<image>"


class BenchmarkError(ValueError):
    """A benchmark file is missing or malformed; the message names file, item index and field."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    train: Path
    test: Path
    metric: str


@dataclass
class TrainExample:
    image: Path
    instruction: str  # without the "<image>\n" marker
    answer: str


@dataclass
class TestExample:
    __test__ = False  # not a pytest test class, despite the name

    question_id: str
    image: Path
    instruction: str
    answer: str | list[str]  # a list for VQA-style human answers
    bbox: list[float] | None = None  # grounding: COCO-style pixel box [x, y, w, h]
    size: tuple[int, int] | None = None  # grounding: image (width, height)


@dataclass
class Benchmark:
    name: str
    image_root: Path
    tasks: list[TaskSpec]
    path: Path
    _train: dict[str, list[TrainExample]] = field(default_factory=dict, repr=False)
    _test: dict[str, list[TestExample]] = field(default_factory=dict, repr=False)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, task: str | int) -> TaskSpec:
        """A task by name or by position in the stream."""
        if isinstance(task, int):
            return self.tasks[task]
        for spec in self.tasks:
            if spec.name == task:
                return spec
        raise KeyError(f"benchmark {self.name!r} has no task {task!r}; tasks: {', '.join(self.task_names)}")

    def train_examples(self, task: str | int, limit: int | None = None) -> list[TrainExample]:
        spec = self.task(task)
        return list(self._train[spec.name][:limit])

    def test_examples(self, task: str | int, limit: int | None = None) -> list[TestExample]:
        spec = self.task(task)
        return list(self._test[spec.name][:limit])


def default_cache_dir() -> Path:
    """~/.cache/branchlora, or $BRANCHLORA_CACHE."""
    return Path(os.environ.get("BRANCHLORA_CACHE") or Path.home() / ".cache" / "branchlora")


def load_benchmark(
    name_or_path: str | Path, *, cache_dir: Path | None = None, check_images: bool = True, **minicoin_options: object
) -> Benchmark:
    """Load a built-in benchmark by name ("minicoin", generated into the cache) or a YAML file by path."""
    if str(name_or_path) in BUILTIN:
        from branchlora.data.minicoin import ensure_minicoin  # the generator is only needed here

        path = ensure_minicoin(Path(cache_dir or default_cache_dir()), **minicoin_options)
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise BenchmarkError(
                f"unknown benchmark {str(name_or_path)!r}: not a built-in name ({', '.join(BUILTIN)}) "
                "and no such YAML file"
            )
        if minicoin_options:
            raise BenchmarkError(f"{path}: options {sorted(minicoin_options)} only apply to built-in benchmarks")
    return parse_benchmark(path, check_images=check_images)


def parse_benchmark(path: Path, *, check_images: bool = True) -> Benchmark:
    """Read and validate a benchmark YAML and every train/test file it names."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BenchmarkError(f"{path}: cannot read YAML: {err}") from None
    if not isinstance(spec, dict):
        raise BenchmarkError(f"{path}: expected a mapping with name, image_root and tasks")
    name = require(spec, "name", str, path)
    image_root = path.parent / Path(require(spec, "image_root", str, path)).expanduser()
    task_list = require(spec, "tasks", list, path)
    if not task_list:
        raise BenchmarkError(f"{path}: field 'tasks' is empty")
    bench = Benchmark(name, image_root, [], path)
    for i, raw in enumerate(task_list):
        task = parse_task(raw, f"{path}: task {i}", path.parent)
        if task.name in bench.task_names:
            raise BenchmarkError(f"{path}: task {i}: field 'name': task {task.name!r} appears twice")
        bench.tasks.append(task)
        bench._train[task.name] = [
            parse_train(x, task.train, j, image_root) for j, x in enumerate(read_items(task.train))
        ]
        bench._test[task.name] = [
            parse_test(x, task.test, j, image_root, task.metric) for j, x in enumerate(read_items(task.test))
        ]
        if check_images:
            require_images(bench._train[task.name], task.train)
            require_images(bench._test[task.name], task.test)
    return bench


def parse_task(raw: object, where: str, folder: Path) -> TaskSpec:
    """One entry of `tasks:`; relative train/test paths resolve against the YAML's folder."""
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{where}: expected a mapping with name, train, test and metric")
    task = TaskSpec(
        name=require(raw, "name", str, where),
        train=folder / require(raw, "train", str, where),
        test=folder / require(raw, "test", str, where),
        metric=require(raw, "metric", str, where),
    )
    if task.metric not in SCORERS:
        raise BenchmarkError(f"{where}: field 'metric': unknown metric {task.metric!r}; known: {', '.join(SCORERS)}")
    return task


def require_images(examples: list[TrainExample] | list[TestExample], file: Path) -> None:
    for index, example in enumerate(examples):
        if not example.image.is_file():
            raise BenchmarkError(f"{file}: item {index}: field 'image': no such file {example.image}")


def require(mapping: dict, key: str, kind: type | tuple[type, ...], where: object) -> Any:
    """mapping[key], checked to be present and of the right type."""
    if key not in mapping:
        raise BenchmarkError(f"{where}: missing field {key!r}")
    if not isinstance(mapping[key], kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise BenchmarkError(f"{where}: field {key!r}: expected {names}, got {mapping[key]!r}")
    return mapping[key]


def read_items(path: Path) -> list:
    """The JSON list in a train/test file (JSON Lines accepted too); an empty task is an error."""
    try:
        text = path.read_text()
    except OSError as err:
        raise BenchmarkError(f"{path}: cannot read: {err.strerror}") from None
    try:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            items = json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchmarkError(f"{path}: bad JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    if not isinstance(items, list):
        raise BenchmarkError(f"{path}: expected a JSON list of items")
    if not items:
        raise BenchmarkError(f"{path}: empty task: the file has no items")
    return items


def strip_marker(text: str) -> str:
    """Remove LLaVA's "<image>" marker and the newline that goes with it."""
    return text.replace(IMAGE_MARKER + "\n", "").replace("\n" + IMAGE_MARKER, "").replace(IMAGE_MARKER, "").strip()


def parse_train(item: object, file: Path, index: int, image_root: Path) -> TrainExample:
    """A LLaVA conversation item; its first human/gpt turn pair is the example."""
    where = f"{file}: item {index}"
    if not isinstance(item, dict):
        raise BenchmarkError(f"{where}: expected an object")
    image = require(item, "image", str, where)
    turns = require(item, "conversations", list, where)
    if len(turns) < 2 or not all(isinstance(t, dict) for t in turns[:2]):
        raise BenchmarkError(f"{where}: field 'conversations': expected a human turn and a gpt turn")
    human, gpt = turns[0], turns[1]
    if human.get("from") != "human" or gpt.get("from") != "gpt":
        raise BenchmarkError(f"{where}: field 'conversations': the first two turns must be from human, then gpt")
    question = require(human, "value", str, f"{where}: conversations[0]")
    answer = require(gpt, "value", str, f"{where}: conversations[1]")
    return TrainExample(image_root / image, strip_marker(question), answer.strip())


def parse_test(item: object, file: Path, index: int, image_root: Path, metric: str) -> TestExample:
    """A CoIN test item: {question_id, image, text, answer} or, for grounding, answer_bbox and size."""
    where = f"{file}: item {index}"
    if not isinstance(item, dict):
        raise BenchmarkError(f"{where}: expected an object")
    qid = require(item, "question_id", (str, int), where)
    image = require(item, "image", str, where)
    text = strip_marker(require(item, "text", str, where))
    if metric == "bbox_iou":
        bbox = require(item, "answer_bbox", list, where)
        size = require(item, "size", list, where)
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
            raise BenchmarkError(f"{where}: field 'answer_bbox': expected [x, y, w, h], got {bbox!r}")
        if len(size) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in size):
            raise BenchmarkError(f"{where}: field 'size': expected [width, height], got {size!r}")
        x, y, w, h = bbox
        answer = str(
            item.get("answer")
            or f"[{x / size[0]:.2f}, {y / size[1]:.2f}, {(x + w) / size[0]:.2f}, {(y + h) / size[1]:.2f}]"
        )
        return TestExample(str(qid), image_root / image, text, answer, [float(v) for v in bbox], (size[0], size[1]))
    answer = require(item, "answer", (str, list), where)
    if isinstance(answer, list) and not (answer and all(isinstance(a, str) for a in answer)):
        raise BenchmarkError(f"{where}: field 'answer': expected a string or a non-empty list of strings")
    return TestExample(str(qid), image_root / image, text, answer)


def open_image(path: Path) -> Image.Image:
    """Open an image as RGB, with an error that names the file rather than a PIL stack trace."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError) as err:
        raise BenchmarkError(f"{path}: cannot read image: {err}") from None
