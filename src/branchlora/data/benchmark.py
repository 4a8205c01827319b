"""Benchmarks: a YAML file naming an ordered task stream, whose files use CoIN's formats.

Everything is validated on load so that a bad file fails before hours of training, with one line that
names the file, the item index (and line, in JSON Lines) and the field. The rules: no field may be an empty
string; question ids are unique within a task; a multi-turn conversation alternates human and gpt turns and
every answer is trained on; a grounding box has a positive size and lies inside its image (see `require_box`
for its two forms and the frame it is kept in); image paths may
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

from branchlora.atomic import check_writable
from branchlora.evaluation.scorers import CORPUS_METRICS, check_metric

BUILTIN = ("minicoin",)
IMAGE_MARKER = "<image>"
TASK_FIELDS = ("name", "train", "test", "metric", "image_root", "test_image_root", "max_new_tokens", "prompt_suffix",
               "references")  # fmt: skip
PATH_FIELDS = ("image_root", "test_image_root", "references")  # resolved against the YAML's folder, like train
TEST_KEYS = ("question_id", "image", "text", "answer", "answer_bbox", "size")  # the rest is kept in `fields`
YES_NO = ("Yes", "No")  # MLLM-CL's model_fin.py: a gold answer in this list (that case) gets the yes/no suffix
BOX_SLACK = 1.0  # pixels
NORMALISED_SLACK = 0.01  # a normalised box's overhang: two-decimal rounding, and COCO's own by a pixel
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 degrees: a viewer swaps width and height
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # PIL opens 16-bit greyscale PNG/TIFF as these


Box = tuple[float, float, float, float]


class BenchmarkError(ValueError):
    """A benchmark file is missing or malformed; the message names file, item index and field."""


@dataclass(frozen=True)
class TaskSpec:
    """One task of a benchmark file. The optional fields carry what the field's benchmarks set per task."""

    name: str
    train: Path
    test: Path
    metric: str
    image_root: Path | None = None  # train and test images of this task (default: the file's image_root)
    test_image_root: Path | None = None  # test images only (MLLM-ACL keeps them apart: OCR vs OCR_test)
    max_new_tokens: int | None = None  # this task's generation budget (default: eval.max_new_tokens)
    prompt_suffix: str | dict[str, str] | None = None  # appended to test instructions: a string, or {yes_no, other}
    references: Path | None = None  # a COCO-style caption file: item i's references are image_id i + 1's captions


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
    box: Box | None = None  # grounding: [x1, y1, x2, y2] normalised to the padded square (`padded_square_box`)
    where: str = ""  # "<file>: item <i>" (and its line in JSON Lines), to name the item in an error
    fields: dict[str, Any] = field(default_factory=dict)  # the item's other keys (answer_type, type, task, ...)


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
    """~/.cache/branchlora, or $BRANCHLORA_CACHE; one that cannot be created or written is refused now, not when the
    first file is written into it (an existing readable one is used as it is: a shared cache may be read-only)."""
    folder = Path(os.environ.get("BRANCHLORA_CACHE") or Path.home() / ".cache" / "branchlora").expanduser()
    if not (folder.is_dir() and os.access(folder, os.R_OK | os.X_OK)):
        check_writable(folder, "BRANCHLORA_CACHE" if os.environ.get("BRANCHLORA_CACHE") else "the cache folder")
    return folder


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
        train_root = task.image_root or image_root
        bench._train[task.name] = [parse_train(x, at, train_root, check_images) for at, x in read_items(task.train)]
        bench._test[task.name] = parse_tests(task, task.test_image_root or train_root, check_images)
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
    paths = {key: resolve(folder, require(raw, key, str, where)) for key in PATH_FIELDS if key in raw}
    task = TaskSpec(
        name=name,
        train=resolve(folder, require(raw, "train", str, where)),
        test=resolve(folder, require(raw, "test", str, where)),
        metric=require(raw, "metric", str, where),
        image_root=paths.get("image_root"),
        test_image_root=paths.get("test_image_root"),
        max_new_tokens=require_budget(raw, where) if "max_new_tokens" in raw else None,
        prompt_suffix=require_suffix(raw, where) if "prompt_suffix" in raw else None,
        references=paths.get("references"),
    )
    try:
        check_metric(task.metric, where)
    except ValueError as err:  # an unknown metric, or a caption metric without pycocoevalcap or Java
        raise BenchmarkError(str(err)) from None
    check(task.metric not in CORPUS_METRICS or task.references is not None, where, "references",
          f"metric {task.metric!r} needs the COCO-style reference captions file")  # fmt: skip
    for key in ("train", "test", "references"):
        check(getattr(task, key) is None or getattr(task, key).is_file(), where, key,
              f"no such file {getattr(task, key)}")  # fmt: skip
    return task


def require_budget(raw: dict, where: str) -> int:
    """A task's generation budget: a positive integer."""
    value = require(raw, "max_new_tokens", int, where)
    check(value > 0, where, "max_new_tokens", f"expected a positive number of tokens, got {value}")
    return value


def require_suffix(raw: dict, where: str) -> str | dict[str, str]:
    """A prompt suffix: a string, or {yes_no: ..., other: ...} chosen by the gold answer (`suffix_for`)."""
    value = require(raw, "prompt_suffix", (str, dict), where)
    rule = (
        isinstance(value, dict)
        and set(value) == {"yes_no", "other"}
        and all(isinstance(v, str) for v in value.values())
    )
    check(isinstance(value, str) or rule, where, "prompt_suffix",
          f"expected a string or {{yes_no: str, other: str}}, got {value!r}")  # fmt: skip
    return value


def suffix_for(suffix: str | dict[str, str] | None, answer: str | list[str]) -> str:
    """What is appended to a test instruction at inference, as the authors' answer scripts append it (no space
    is added: MLLM-CL's suffixes start with one). A {yes_no, other} suffix follows MLLM-CL's model_fin.py:
    `yes_no` when the gold answer is "Yes" or "No" (that case), else `other`."""
    if suffix is None or isinstance(suffix, str):
        return suffix or ""
    return suffix["yes_no"] if answer in YES_NO else suffix["other"]


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
    """A task's test items; question ids must be unique: CoIN's scripts match predictions to items by them.

    With a prompt suffix, each instruction ends with it; with a reference file, item i's answer is the list of
    its reference captions."""
    examples, seen = [], {}
    items = read_items(task.test)
    captions = read_references(task.references, len(items)) if task.references is not None else None
    for i, (where, item) in enumerate(items):
        example = parse_test(item, where, image_root, task.metric, check_images)
        first = seen.setdefault(example.question_id, where)
        check(first == where, where, "question_id", f"{example.question_id!r} is also the id of {first}")
        example.instruction += suffix_for(task.prompt_suffix, example.answer)
        if captions is not None:
            example.answer = captions[i]
        examples.append(example)
    return examples


def read_references(path: Path, count: int) -> list[list[str]]:
    """The reference captions of items 0..count-1 from a COCO-style file ({"annotations": [{image_id, caption}]}):
    UCIT's eval_caption.py gives the i-th prediction image_id i + 1, so item i is scored against those."""
    data = decode_json(read_text(path), path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    check(isinstance(annotations, list), path, "annotations", "expected a COCO caption file with an annotations list")
    captions: dict[int, list[str]] = {}
    for k, note in enumerate(annotations):
        where = f"{path}: annotation {k}"
        note = require_item(note, where)
        image_id, caption = require(note, "image_id", int, where), require(note, "caption", str, where)
        captions.setdefault(image_id, []).append(caption)
    missing = [i for i in range(1, count + 1) if i not in captions]
    if missing:
        raise BenchmarkError(f"{path}: field 'annotations': no captions for image_id {missing[0]} (the test file has "
                             f"{count} items; {len(missing)} image_id(s) in 1..{count} have none)")  # fmt: skip
    return [captions[i] for i in range(1, count + 1)]


def parse_test(item: object, where: str, image_root: Path, metric: str, check_images: bool = True) -> TestExample:
    """A CoIN test item: {question_id, image, text, answer} or, for grounding, answer_bbox (and size)."""
    item = require_item(item, where)
    qid = str(require(item, "question_id", (str, int), where))
    image = require_image(item, where, image_root, check_images)
    text = require_instruction(item, "text", where)
    if metric == "bbox_iou":
        box = require_box(item, where)
        answer = require(item, "answer", str, where) if "answer" in item else format_box(box)
        return TestExample(qid, image, text, answer, box=box, where=where)
    answer = require(item, "answer", (str, list), where)
    check(isinstance(answer, str) or (bool(answer) and all(isinstance(a, str) and a.strip() for a in answer)),
          where, "answer", f"expected a string or a list of non-empty strings, got {answer!r}")  # fmt: skip
    fields = {key: value for key, value in item.items() if key not in TEST_KEYS}
    return TestExample(qid, image, text, answer, where=where, fields=fields)


def require_numbers(item: dict, key: str, names: str, where: str) -> list[float]:
    """A list of finite numbers, one per name in `names` ("x, y, w, h")."""
    values = require(item, key, list, where)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    check(len(numbers) == len(values) == len(names.split(", ")), where, key,
          f"expected [{names}] as finite numbers, got {values!r}")  # fmt: skip
    return [float(v) for v in values]


def require_box(item: dict, where: str) -> Box:
    """A grounding truth, in one of two forms, as [x1, y1, x2, y2] normalised to the padded square.

    CoIN's release: answer_bbox a string "[x1, y1, x2, y2]" already in that frame (size [w, h] beside it, and
    no answer), taken as it is, inside the unit square give or take NORMALISED_SLACK. Or a COCO pixel box
    [x, y, w, h] with the image's size (minicoin and hand-made files), of positive size and inside the image
    give or take BOX_SLACK pixels (COCO's float boxes overhang by rounding), converted by `padded_square_box`.
    """
    value = require(item, "answer_bbox", (str, list), where)
    size = require_size(item, where) if isinstance(value, list) or "size" in item else None
    if isinstance(value, str):
        numbers = bracketed_numbers(value)
        check(numbers is not None, where, "answer_bbox",
              f"expected a string \"[x1, y1, x2, y2]\" of four finite numbers, got {value!r}")  # fmt: skip
        x1, y1, x2, y2 = numbers
        check(x2 > x1 and y2 > y1, where, "answer_bbox", f"x2 and y2 must exceed x1 and y1, got {value!r}")
        inside = min(x1, y1) >= -NORMALISED_SLACK and max(x2, y2) <= 1 + NORMALISED_SLACK
        check(inside, where, "answer_bbox", f"{value!r} lies outside the unit square of normalised coordinates")
        return (x1, y1, x2, y2)
    width, height = size
    x, y, w, h = require_numbers(item, "answer_bbox", "x, y, w, h", where)
    check(w > 0 and h > 0, where, "answer_bbox", f"width and height must be positive, got {value!r}")
    inside = min(x, y) >= -BOX_SLACK and x + w <= width + BOX_SLACK and y + h <= height + BOX_SLACK
    check(inside, where, "answer_bbox", f"{value!r} lies outside the {width:g}x{height:g} image")
    return padded_square_box((x, y, w, h), (width, height))


def require_size(item: dict, where: str) -> tuple[float, float]:
    """A grounding item's image (width, height), both positive."""
    width, height = require_numbers(item, "size", "width, height", where)
    check(width > 0 and height > 0, where, "size", f"width and height must be positive, got {item['size']!r}")
    return width, height


def bracketed_numbers(text: str) -> list[float] | None:
    """The four finite numbers of "[a, b, c, d]", or None when the text is not exactly that."""
    inner = text.strip()
    if not (inner.startswith("[") and inner.endswith("]")):
        return None
    try:
        numbers = [float(part) for part in inner[1:-1].split(",")]
    except ValueError:
        return None
    return numbers if len(numbers) == 4 and all(math.isfinite(v) for v in numbers) else None


def padded_square_box(box: tuple[float, float, float, float], size: tuple[float, float]) -> Box:
    """A pixel box [x, y, w, h] as [x1, y1, x2, y2] in the frame of the image padded to a max(w, h) square.

    LLaVA-1.5 pads every image to a square before resizing it (expand2square: the image centred, the bands
    filled with the image mean), and CoIN's Grounding boxes refer to that square. What was checked in CoIN's
    code (zackschen/CoIN): eval_grounding.py reads answer_bbox as it is and scales truth and prediction by
    max(w, h) (IoU unchanged), and its `change_bbox`, the one function there that maps a COCO box into the
    frame, adds the centring offset (max - w) / 2 or (max - h) / 2 before dividing by max(w, h); this does
    the same. expand2square pastes at the integer (max - w) // 2: at most half a pixel apart. Not checked:
    CoIN's data-preparation script is not in its repository and its released files could not be read here,
    so whether every released box includes the offset rests on `change_bbox` (LLaVA's issue 606 reports the
    padded, centred frame for LLaVA-1.5's VG boxes; issue 822 doubts it for RefCOCO). A string box from
    CoIN's files is taken as it is, whatever frame it was made in, exactly as CoIN's scorer takes it.
    """
    x, y, w, h = box
    width, height = size
    side = max(width, height)
    left, top = x + (side - width) / 2, y + (side - height) / 2
    return (left / side, top / side, (left + w) / side, (top + h) / side)


def format_box(box: Box) -> str:
    """A normalised box as LLaVA-1.5's grounding answers write it: "[0.25, 0.50, 0.75, 1.00]"."""
    return "[" + ", ".join(f"{v:.2f}" for v in box) + "]"


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
