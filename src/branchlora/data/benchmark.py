"""Benchmarks: a YAML file naming an ordered task stream, whose files use CoIN's formats.

Everything is validated on load so that a bad file fails before hours of training, with one line that
names the file, the item index (and line, in JSON Lines) and the field. The rules: no field may be an empty
string; question ids are unique within a task; a multi-turn conversation alternates human and gpt turns and
every answer is trained on; a grounding box has a positive size and lies inside its image; image paths may
be relative to image_root, absolute, or start with "~". Images are checked to exist on load, opened lazily.
An item without an "image" key is text-only (CoIN's ScienceQA has such items); a text-only training item may
not carry LLaVA's "<image>" marker, which would say its image key was lost or misspelt.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageOps, UnidentifiedImageError

from branchlora.evaluation.scorers import SCORERS

BUILTIN = ("minicoin",)
IMAGE_MARKER = "<image>"
TASK_FIELDS = ("name", "train", "test", "metric")
BOX_SLACK = 1.0  # pixels
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees: a viewer swaps width and height
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL opens 16-bit greyscale PNG/TIFF as these


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
    image: Path | None  # None: a text-only item
    instruction: str  # the first human turn, without the "<image>\n" marker
    answer: str
    follow_ups: tuple[tuple[str, str], ...] = ()  # later (instruction, answer) turns, trained on like the first
    where: str = ""  # "<file>: item <i>" (and its line in JSON Lines), to name the item in an error


@dataclass
class TestExample:
    __test__ = False  # not a pytest test class, despite the name

    question_id: str
    image: Path | None  # None: a text-only item
    instruction: str
    answer: str | list[str]  # a list for VQA-style human answers
    bbox: list[float] | None = None  # grounding: COCO-style pixel box [x, y, w, h]
    size: tuple[float, float] | None = None  # grounding: image (width, height)
    where: str = ""  # "<file>: item <i>" (and its line in JSON Lines), to name the item in an error


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
        return parse_benchmark(path, check_images=check_images)
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise BenchmarkError(
            f"unknown benchmark {str(name_or_path)!r}: not a built-in name ({', '.join(BUILTIN)}) and no such YAML file"
        )
    bench = parse_benchmark(path, check_images=check_images)  # the file's own errors first: they are the user's
    if minicoin_options:
        raise BenchmarkError(f"{path}: options {sorted(minicoin_options)} only apply to built-in benchmarks")
    return bench


def parse_benchmark(path: Path, *, check_images: bool = True) -> Benchmark:
    """Read and validate a benchmark YAML and every train/test file it names."""
    try:
        spec = yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BenchmarkError(f"{path}: bad YAML{at}: {getattr(err, 'problem', None) or 'cannot parse'}") from None
    if not isinstance(spec, dict):
        raise BenchmarkError(f"{path}: expected a mapping with name, image_root and tasks")
    name = require(spec, "name", str, path)
    image_root = resolve(path.parent, require(spec, "image_root", str, path))
    task_list = require(spec, "tasks", list, path)
    check(bool(task_list), path, "tasks", "no tasks")
    bench = Benchmark(name, image_root, [], path)
    for i, raw in enumerate(task_list):
        where = f"{path}: task {i}"
        task = parse_task(raw, where, path.parent)
        check(task.name not in bench.task_names, where, "name", f"task {task.name!r} appears twice")
        bench.tasks.append(task)
        bench._train[task.name] = [parse_train(x, at, image_root, check_images) for at, x in read_items(task.train)]
        bench._test[task.name] = parse_tests(task, image_root, check_images)
    return bench


def parse_task(raw: object, where: str, folder: Path) -> TaskSpec:
    """One entry of `tasks:`; relative train/test paths resolve against the YAML's folder, and must exist."""
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{where}: expected a mapping with {', '.join(TASK_FIELDS)}")
    unknown = sorted(set(raw) - set(TASK_FIELDS))
    if unknown:
        raise BenchmarkError(f"{where}: unknown field(s) {unknown}; valid fields: {', '.join(TASK_FIELDS)}")
    name = require(raw, "name", str, where)
    where = f"{where} ({name})"
    task = TaskSpec(
        name=name,
        train=resolve(folder, require(raw, "train", str, where)),
        test=resolve(folder, require(raw, "test", str, where)),
        metric=require(raw, "metric", str, where),
    )
    check(task.metric in SCORERS, where, "metric", f"unknown metric {task.metric!r}; known: {', '.join(SCORERS)}")
    for key in ("train", "test"):
        check(getattr(task, key).is_file(), where, key, f"no such file {getattr(task, key)}")
    return task


def resolve(folder: Path, path: str) -> Path:
    """A path from a file: "~" expanded, relative paths against `folder`, absolute paths as they are."""
    return folder / Path(path).expanduser()


def check(condition: bool, where: object, key: str, problem: str) -> None:
    """The one way a field is refused: "<file>: <item>: field '<key>': <problem>", on one line."""
    if not condition:
        raise BenchmarkError(f"{where}: field {key!r}: {problem}")


def require(mapping: dict, key: str, kind: type | tuple[type, ...], where: object) -> Any:
    """mapping[key], checked to be present, of the right type (a bool is no number), and not a blank string."""
    if key not in mapping:
        raise BenchmarkError(f"{where}: missing field {key!r}")
    value = mapping[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = " or ".join(k.__name__ for k in kinds)
    check(isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)), where, key,
          f"expected {names}, got {value!r}")  # fmt: skip
    check(not isinstance(value, str) or bool(value.strip()), where, key, "empty string")
    return value


def read_text(path: Path) -> str:
    """A file's text, with a one-line error for a missing, unreadable or non-UTF-8 file."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        line = err.object[: err.start].count(b"\n") + 1
        raise BenchmarkError(f"{path}: not UTF-8 text at line {line} (byte {err.object[err.start]:#04x})") from None
    except OSError as err:
        raise BenchmarkError(f"{path}: cannot read: {err.strerror}") from None


def read_items(path: Path) -> list[tuple[str, object]]:
    """The items of a train/test file, each with where it is: a JSON list, or JSON Lines (with line numbers)."""
    text = read_text(path)
    if path.suffix == ".jsonl":
        lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
        items = [(f"{path}: item {i} (line {n})", decode_json(line, path, n)) for i, (n, line) in enumerate(lines)]
    else:
        items = decode_json(text, path)
        if not isinstance(items, list):
            raise BenchmarkError(f"{path}: expected a JSON list of items")
        items = [(f"{path}: item {i}", item) for i, item in enumerate(items)]
    if not items:
        raise BenchmarkError(f"{path}: empty task: the file has no items")
    return items


def decode_json(text: str, path: Path, line: int = 1) -> Any:
    """Parsed JSON; `line` is where `text` starts in the file, so that errors point at the real line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        at = f"line {line + err.lineno - 1}, column {err.colno}"
        raise BenchmarkError(f"{path}: bad JSON at {at}: {err.msg}") from None


def strip_marker(text: str) -> str:
    """Remove LLaVA's "<image>" marker and the newline that goes with it."""
    return text.replace(IMAGE_MARKER + "\n", "").replace("\n" + IMAGE_MARKER, "").replace(IMAGE_MARKER, "").strip()


def require_item(item: object, where: str) -> dict:
    if not isinstance(item, dict):
        raise BenchmarkError(f"{where}: expected an object, got {type(item).__name__}")
    return item


def require_image(item: dict, where: str, image_root: Path, check_images: bool) -> Path | None:
    """The item's image path (see `resolve`), checked to be a file when `check_images`; None without "image"."""
    if "image" not in item:
        return None
    path = resolve(image_root, require(item, "image", str, where))
    if check_images:
        check(not path.is_dir(), where, "image", f"{path} is a folder, not an image")
        check(path.is_file(), where, "image", f"no such file {path}")
    return path


def require_instruction(turn: dict, key: str, where: str) -> str:
    """An instruction without LLaVA's "<image>" marker, which must leave some text."""
    text = strip_marker(require(turn, key, str, where))
    check(bool(text), where, key, f"no instruction besides the {IMAGE_MARKER} marker")
    return text


def parse_train(item: object, where: str, image_root: Path, check_images: bool = True) -> TrainExample:
    """A LLaVA conversation item: human and gpt turns alternating, every gpt answer trained on."""
    item = require_item(item, where)
    image = require_image(item, where, image_root, check_images)
    turns = require(item, "conversations", list, where)
    check(image is not None or not any(isinstance(t, dict) and IMAGE_MARKER in str(t.get("value")) for t in turns),
          where, "image", f"missing, but the conversation has the {IMAGE_MARKER} marker")  # fmt: skip
    check(len(turns) >= 2 and len(turns) % 2 == 0, where, "conversations",
          f"expected human, gpt turn pairs, got {len(turns)} turn(s)")  # fmt: skip
    pairs = []
    for k in range(0, len(turns), 2):
        human = require_turn(turns, k, "human", where)
        gpt = require_turn(turns, k + 1, "gpt", where)
        pairs.append((require_instruction(human, "value", f"{where}: turn {k}"),
                      require(gpt, "value", str, f"{where}: turn {k + 1}").strip()))  # fmt: skip
    (instruction, answer), *follow_ups = pairs
    return TrainExample(image, instruction, answer, tuple(follow_ups), where)


def require_turn(turns: list, k: int, speaker: str, where: str) -> dict:
    """conversations[k], which must come from `speaker`: LLaVA's turns alternate human, gpt."""
    turn = turns[k]
    check(isinstance(turn, dict) and turn.get("from") == speaker, where, "conversations",
          f"turn {k}: expected a {speaker!r} turn (turns alternate human, gpt), got {turn!r}")  # fmt: skip
    return turn


def parse_tests(task: TaskSpec, image_root: Path, check_images: bool = True) -> list[TestExample]:
    """A task's test items; question ids must be unique: CoIN's scripts match predictions to items by them."""
    examples, seen = [], {}
    for where, item in read_items(task.test):
        example = parse_test(item, where, image_root, task.metric, check_images)
        first = seen.setdefault(example.question_id, where)
        check(first == where, where, "question_id", f"{example.question_id!r} is also the id of {first}")
        examples.append(example)
    return examples


def parse_test(item: object, where: str, image_root: Path, metric: str, check_images: bool = True) -> TestExample:
    """A CoIN test item: {question_id, image, text, answer} or, for grounding, answer_bbox and size."""
    item = require_item(item, where)
    qid = str(require(item, "question_id", (str, int), where))
    image = require_image(item, where, image_root, check_images)
    text = require_instruction(item, "text", where)
    if metric == "bbox_iou":
        bbox, size = require_box(item, where)
        x, y, w, h = bbox
        box = f"[{x / size[0]:.2f}, {y / size[1]:.2f}, {(x + w) / size[0]:.2f}, {(y + h) / size[1]:.2f}]"
        answer = require(item, "answer", str, where) if "answer" in item else box
        return TestExample(qid, image, text, answer, bbox, size, where)
    answer = require(item, "answer", (str, list), where)
    check(isinstance(answer, str) or (bool(answer) and all(isinstance(a, str) and a.strip() for a in answer)),
          where, "answer", f"expected a string or a list of non-empty strings, got {answer!r}")  # fmt: skip
    return TestExample(qid, image, text, answer, where=where)


def require_numbers(item: dict, key: str, names: str, where: str) -> list[float]:
    """A list of finite numbers, one per name in `names` ("x, y, w, h")."""
    values = require(item, key, list, where)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    check(len(numbers) == len(values) == len(names.split(", ")), where, key,
          f"expected [{names}] as finite numbers, got {values!r}")  # fmt: skip
    return [float(v) for v in values]


def require_box(item: dict, where: str) -> tuple[list[float], tuple[float, float]]:
    """A grounding truth: a pixel box [x, y, w, h] of positive size inside an image of positive (width, height).

    A box may overhang the image by up to BOX_SLACK pixels: COCO's float boxes sometimes do, by rounding.
    """
    width, height = require_numbers(item, "size", "width, height", where)
    check(width > 0 and height > 0, where, "size", f"width and height must be positive, got {item['size']!r}")
    x, y, w, h = require_numbers(item, "answer_bbox", "x, y, w, h", where)
    check(w > 0 and h > 0, where, "answer_bbox", f"width and height must be positive, got {item['answer_bbox']!r}")
    inside = min(x, y) >= -BOX_SLACK and x + w <= width + BOX_SLACK and y + h <= height + BOX_SLACK
    check(inside, where, "answer_bbox", f"{item['answer_bbox']!r} lies outside the {width:g}x{height:g} image")
    return [x, y, w, h], (width, height)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) as a viewer shows the image, from its header: PIL's open does not decode the pixels."""
    with read_image(path) as image:
        width, height = image.size
        swapped = image.getexif().get(EXIF_ORIENTATION) in SWAPPED_ORIENTATIONS
    return (height, width) if swapped else (width, height)


def open_image(path: Path) -> Image.Image:
    """An image as RGB, the way a viewer shows it: EXIF orientation applied, 16-bit greyscale scaled to 8 bits
    (PIL's convert would clip it to white), transparency over white; errors name the file."""
    with read_image(path) as image:
        try:
            return to_rgb(ImageOps.exif_transpose(image))
        except OSError as err:  # a header that opened, pixels that do not decode
            raise BenchmarkError(f"{path}: cannot read image: {err}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode: 16-bit greyscale rescaled by 65535 -> 255; alpha (LA, RGBA, palette) over white."""
    if image.mode in SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float64).clip(0, 65535) * (255 / 65535)
        return Image.fromarray(grey.round().astype(np.uint8)).convert("RGB")
    if image.mode in ("LA", "RGBA", "PA") or (image.mode == "P" and image.has_transparency_data):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, "white")
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: Path) -> Image.Image:
    """PIL's lazy open, refusing an image too large to decode (PIL's decompression-bomb limit) by its file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BenchmarkError(f"{path}: image too large to read safely ({err})") from None
    except (OSError, UnidentifiedImageError) as err:
        raise BenchmarkError(f"{path}: cannot read image: {err}") from None
