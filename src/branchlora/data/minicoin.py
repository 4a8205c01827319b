"""minicoin: eight procedurally generated tasks, one per CoIN task type, written in CoIN's file formats.

Every task draws from the same small world (data/world.py) and reuses its vocabulary in a different
role (a colour is an answer here, an option there, a distractor elsewhere), so learning one task in
sequence disturbs the others: the interference continual learning is about. Deterministic from a seed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from branchlora.atomic import atomic_dir
from branchlora.data import world
from branchlora.data.templates import instruction
from branchlora.data.world import COLOURS, WORDS, Scene
from branchlora.typed import check_fields

TABLE = (214, 222, 234)  # vizwiz's surface: a pale blue-grey
GENERATOR_VERSION = 7  # bump when generated files change, so old caches are not reused
TASKS = ("scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa")
METRICS = {
    "scienceqa": "option_letter",
    "textvqa": "vqa_soft",
    "imagenet": "contains",
    "gqa": "exact_match",
    "vizwiz": "exact_match",
    "grounding": "bbox_iou",
    "vqav2": "exact_match",
    "ocrvqa": "exact_match",
}

# Training items per task, relative to `train_size`: CoIN's tasks differ in size (ScienceQA 12.7k, VQAv2 82.8k
# items) and are trained for the same epochs; here the four tasks learned in fewest steps are smaller and
# counting, the slowest to learn, is larger (docs/results.md, "How minicoin was cut").
SIZE = {"scienceqa": 1, "textvqa": 2 / 3, "imagenet": 2 / 3, "gqa": 1, "vizwiz": 2 / 3, "grounding": 1,
        "vqav2": 1.5, "ocrvqa": 2 / 3}  # fmt: skip


@dataclass(frozen=True)
class MiniCoinOptions:
    """Everything that determines the generated files; defaults fit the CPU run's time budget."""

    seed: int = field(default=0, metadata={"min": 0, "help": "seed of the generated scenes and questions"})
    train_size: int = field(default=300, metadata={"help": "training items of a task of size 1 (minicoin.SIZE)"})
    test_size: int = field(default=50, metadata={"help": "test items per task"})
    instructions: str = field(default="original", metadata={"help": "original (one template per task) or 10type"})
    image_size: int = field(default=64, metadata={"help": "image side in pixels (the tiny base's resolution)"})

    def __post_init__(self) -> None:
        check_fields(self, minimum=1)
        if self.instructions not in ("original", "10type"):
            raise ValueError(f"instructions: expected original or 10type, got {self.instructions!r}")

    def fingerprint(self) -> str:
        """The cache folder's name: changes with any option and with the generator's version."""
        return f"minicoin-v{GENERATOR_VERSION}-" + "-".join(f"{v}" for v in asdict(self).values())


@dataclass
class Item:
    """One generated question about a scene; `human_answers` only for textvqa, `box` only for grounding."""

    scene: Scene
    instruction: str
    answer: str
    human_answers: list[str] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None  # normalised (x1, y1, x2, y2)


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def scienceqa(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """Multiple choice about the one object's colour among four, answered by a letter.

    The options are always the same four colours in the same order, so the letter follows from what is seen.
    Shuffled options, or a second kind of question, would ask the tiny language model to find an option, or
    the thing asked about, by its name in the prompt: the look-up it does not learn at this budget
    (docs/results.md, "How minicoin was cut")."""
    colours = tuple(COLOURS)[:4]
    scene = world.single_object(rng, opts.image_size, colours)
    text = "\n".join(f"{letter}. {o}" for letter, o in zip("ABCD", colours, strict=True))
    prompt = instruction("scienceqa", opts.instructions, rng, question="Which colour is the shape?", options=text)
    return Item(scene, prompt, "ABCD"[colours.index(scene.shapes[0].colour)])


def textvqa(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """Read the word; ten 'human' answers, a few of them noisy, as TextVQA has."""
    scene = world.word_scene(rng, opts.image_size)
    word = scene.texts[0].text
    question = rng.choice(("What word is written in the image?", "What does the text say?"))
    humans = [word] * 10
    for i in rng.sample(range(10), rng.randint(0, 3)):
        humans[i] = rng.choice((word.upper(), f"the word {word}", rng.choice(WORDS)))
    return Item(scene, instruction("textvqa", opts.instructions, rng, question=question), word, humans)


def imagenet(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """Name the object class (its shape), whatever its colour."""
    scene = world.single_object(rng, opts.image_size)
    return Item(scene, instruction("imagenet", opts.instructions, rng), scene.shapes[0].shape)


def gqa(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """Where the shape lies in the picture: left or right, top or bottom (a relation to the frame).

    A shape of one cell of a 4x4 grid was learned to 78-90 at this budget; a quadrant's, as here, to 100."""
    scene = world.quadrant_scene(rng, opts.image_size)
    col, row = world.quadrant_of(scene.shapes[0], opts.image_size)
    if rng.random() < 0.5:
        question, answer = "Is the shape on the left or on the right?", ("left", "right")[col]
    else:
        question, answer = "Is the shape at the top or at the bottom?", ("top", "bottom")[row]
    return Item(scene, instruction("gqa", opts.instructions, rng, question=question), answer)


def vizwiz(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """A colour or a word to tell, unless the photo is too blurred and dark: then 'unanswerable'.

    The photos are taken on a pale table-top, as VizWiz's are taken where their users are, not staged: the
    same objects and words as imagenet's and textvqa's, in pictures of their own."""
    if rng.random() < 0.5:
        scene, question = world.single_object(rng, opts.image_size), "What colour is this?"
        answer = scene.shapes[0].colour
    else:
        scene, question = world.word_scene(rng, opts.image_size), "What does this say?"
        answer = scene.texts[0].text
    scene.surface = TABLE
    if rng.random() < 0.35:
        scene.degraded, answer = True, "unanswerable"
    return Item(scene, instruction("vizwiz", opts.instructions, rng, question=question), answer)


def grounding(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """The box of the only shape, which fills a quadrant: the answer is a box of halves, scored by IoU."""
    scene = world.quadrant_scene(rng, opts.image_size)
    target = scene.shapes[0]
    col, row = world.quadrant_of(target, opts.image_size)
    box = (col / 2, row / 2, col / 2 + 0.5, row / 2 + 0.5)
    answer = "[" + ", ".join(f"{v:.2f}" for v in box) + "]"
    prompt = instruction("grounding", opts.instructions, rng, question=f"the {target.colour} {target.shape}")
    return Item(scene, prompt, answer, box=box)


def vqav2(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """Count one to three copies of a filled shape, one per quadrant (the hardest of the eight: more items)."""
    scene = world.quadrant_scene(rng, opts.image_size, rng.randint(1, 3), ("circle", "square", "triangle", "diamond"))
    question = f"How many {plural(scene.shapes[0].shape)} are there?"
    return Item(scene, instruction("vqav2", opts.instructions, rng, question=question), str(len(scene.shapes)))


def ocrvqa(rng: random.Random, opts: MiniCoinOptions) -> Item:
    """Read the title or the author line of a book cover."""
    scene = world.book_scene(rng, opts.image_size)
    title, author = scene.texts[0].text, scene.texts[1].text.removeprefix("by ")
    if rng.random() < 0.5:
        question, answer = "Who wrote this book?", author
    else:
        question, answer = "What is the title of this book?", title
    return Item(scene, instruction("ocrvqa", opts.instructions, rng, question=question), answer)


GENERATORS: dict[str, Callable[[random.Random, MiniCoinOptions], Item]] = {
    "scienceqa": scienceqa,
    "textvqa": textvqa,
    "imagenet": imagenet,
    "gqa": gqa,
    "vizwiz": vizwiz,
    "grounding": grounding,
    "vqav2": vqav2,
    "ocrvqa": ocrvqa,
}


def items(task: str, split: str, count: int, opts: MiniCoinOptions) -> list[Item]:
    """`count` items of one task and split; the random stream depends only on (seed, task, split)."""
    rng = random.Random(f"minicoin/{opts.seed}/{task}/{split}")
    return [GENERATORS[task](rng, opts) for _ in range(count)]


def train_record(task: str, i: int, item: Item, image: str) -> dict:
    """LLaVA conversation format, as CoIN's train files."""
    return {
        "id": f"{task}-train-{i:05d}",
        "image": image,
        "conversations": [
            {"from": "human", "value": "<image>\n" + item.instruction},
            {"from": "gpt", "value": item.answer},
        ],
    }


def test_record(task: str, i: int, item: Item, image: str, size: int) -> dict:
    """CoIN's test format; grounding carries a COCO-style pixel box [x, y, w, h] and the image size."""
    record: dict = {"question_id": f"{task}-test-{i:05d}", "image": image, "text": item.instruction}
    if item.box is not None:
        x1, y1, x2, y2 = (v * size for v in item.box)
        record |= {"answer_bbox": [x1, y1, x2 - x1, y2 - y1], "size": [size, size]}
    else:
        record["answer"] = item.human_answers or item.answer
    return record


def write_minicoin(root: Path, opts: MiniCoinOptions) -> Path:
    """Write images, train/test JSON and benchmark.yaml under `root`; returns the YAML's path."""
    tasks = []
    for task in TASKS:
        (root / "images" / task).mkdir(parents=True, exist_ok=True)
        train_size = max(1, round(opts.train_size * SIZE[task]))
        for split, count in (("train", train_size), ("test", opts.test_size)):
            records = []
            for i, item in enumerate(items(task, split, count, opts)):
                image = f"{task}/{split}{i:05d}.png"
                world.render(item.scene).save(root / "images" / image)
                record = (
                    train_record(task, i, item, image)
                    if split == "train"
                    else test_record(task, i, item, image, opts.image_size)
                )
                records.append(record)
            (root / task / f"{split}.json").parent.mkdir(exist_ok=True)
            (root / task / f"{split}.json").write_text(json.dumps(records, indent=1) + "\n")
        tasks.append(
            {
                "name": task,
                "train": f"{task}/train.json",
                "test": f"{task}/test.json",
                "metric": METRICS[task],
            }
        )
    spec = {"name": "minicoin", "image_root": "images", "tasks": tasks, "options": asdict(opts)}
    (root / "benchmark.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return root / "benchmark.yaml"


def ensure_minicoin(cache_dir: Path, **options: object) -> Path:
    """The YAML of minicoin for `options`, generated into the cache on first use (atomically)."""
    try:
        opts = MiniCoinOptions(**options)  # type: ignore[arg-type]
    except TypeError as err:
        known = ", ".join(MiniCoinOptions.__dataclass_fields__)
        raise TypeError(f"minicoin: {err}; known options: {known}") from None
    final = cache_dir / "benchmarks" / opts.fingerprint()
    if (final / "benchmark.yaml").exists():
        return final / "benchmark.yaml"
    with atomic_dir(final, "benchmark.yaml") as tmp:
        write_minicoin(tmp, opts)
    return final / "benchmark.yaml"
