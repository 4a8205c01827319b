"""A miniature of CoIN's release in its real layout, for rehearsal runs of configs/coin.yaml.

CoIN's scripts read ./playground/Instructions_Original/<Task>/{train,test,val}.json and images under
./cl_dataset; configs/coin.yaml names those files under /data/CoIN, which `write_coin_release` moves under
`root`. Every task gets `items` train and `items` test items with photo-sized JPEGs (landscape and portrait)
at CoIN-like relative paths, ScienceQA PNGs and text-only questions (every third item), TextVQA's ten human
answers, Grounding's string boxes in the padded square with `size` and no `answer`. Each image shows one
coloured rectangle (with a word on it), and every answer follows from it: a fixture that a model can learn
from, not a benchmark.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml
from PIL import Image, ImageDraw

from branchlora.data.benchmark import format_box, padded_square_box
from branchlora.data.world import BACKGROUND, COLOURS, WORDS, font

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "coin.yaml"
CONFIG_ROOT = "/data/CoIN"  # the prefix configs/coin.yaml's paths start with
SIZES = ((640, 480), (500, 375), (375, 500), (480, 640))  # COCO-like photos, two of them portrait
CLASSES = dict(zip(COLOURS, ("goldfish", "tree frog", "bluebird", "lemon", "plum", "orange"), strict=True))
SHORT = "\nAnswer the question using a single word or phrase."
REFER = "Please provide the bounding box coordinate of the region this sentence describes: "  # LLaVA-1.5's RefCOCO
TEXT_ONLY = [("Which of these animals is a mammal?", ("whale", "shark", "trout")),
             ("Which of these is a liquid at room temperature?", ("water", "iron", "salt"))]  # fmt: skip
TASKS = ("ScienceQA", "TextVQA", "ImageNet", "GQA", "VizWiz", "Grounding", "VQAv2", "OCRVQA")  # CoIN's folders


def image_path(task: str, split: str, i: int) -> str:
    """Where CoIN's files put an image, relative to cl_dataset; `split` is the file's stem: train, test or val."""
    n = 1000 * (1 + TASKS.index(task)) + 100 * (split != "train") + i
    coco = "train" if split == "train" else "val"
    return {
        "ScienceQA": f"ScienceQA/{split}/{n}/image.png",
        "TextVQA": f"TextVQA/train_images/{n:016x}.jpg",
        "ImageNet": f"ImageNet/train/n0{n:07d}/n0{n:07d}_{i}.JPEG",
        "GQA": f"GQA/images/n{n}.jpg",
        "VizWiz": f"VizWiz/{split}/VizWiz_{split}_{n:08d}.jpg",
        "Grounding": f"COCO2014/train2014/COCO_train2014_{n:012d}.jpg",
        "VQAv2": f"COCO2014/{coco}2014/COCO_{coco}2014_{n:012d}.jpg",
        "OCRVQA": f"OCR-VQA/images/{n:010d}.jpg",
    }[task]


def letters(question: str, options: list[str]) -> str:
    """ScienceQA's instruction as LLaVA writes it: question, lettered options, the answer format."""
    lines = [f"{'ABCDE'[k]}. {option}" for k, option in enumerate(options)]
    return "\n".join([question, *lines, "Answer with the option's letter from the given choices directly."])


def question(task: str, colour: str, word: str, rng: random.Random) -> tuple[str, str | list[str]]:
    """(instruction, answer) about an image showing a `colour` rectangle with `word` on it."""
    if task == "ScienceQA":
        options = rng.sample(list(COLOURS), 3)
        if colour not in options:
            options[rng.randrange(3)] = colour
        return letters("Which colour is the rectangle?", options), "ABC"[options.index(colour)]
    if task == "TextVQA":
        return "What is written on the rectangle?" + SHORT, [word] * 8 + [word.upper(), f"the {word}"]
    if task == "ImageNet":
        return "What is the object in the image?" + SHORT, CLASSES[colour]
    if task == "VizWiz":
        return "What colour is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'." \
            + SHORT, colour  # fmt: skip
    if task == "VQAv2":
        asked = rng.choice(list(COLOURS))
        return f"Is the rectangle {asked}?" + SHORT, "yes" if asked == colour else "no"
    if task == "OCRVQA":
        return "What is the title of this book?" + SHORT, word.title()
    return "What colour is the rectangle?" + SHORT, colour  # GQA


def draw(path: Path, size: tuple[int, int], colour: str, word: str, box: tuple[int, int, int, int]) -> None:
    """A photo-sized image: one `colour` rectangle at pixel `box` (x, y, w, h) with `word` written on it."""
    image = Image.new("RGB", size, BACKGROUND)
    x, y, w, h = box
    pen = ImageDraw.Draw(image)
    pen.rectangle((x, y, x + w - 1, y + h - 1), fill=COLOURS[colour])
    pen.text((x + w // 2, y + h // 2), word, fill=(255, 255, 255), font=font(max(12, h // 4)), anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **({} if path.suffix == ".png" else {"quality": 85}))


def item(task: str, split: str, i: int, rng: random.Random, images: Path) -> dict:
    """One train (LLaVA conversation) or test (CoIN's test format) item; its image is written under `images`."""
    record: dict = {}
    if task == "ScienceQA" and i % 3 == 2:  # text-only: no image, no marker
        text, options = TEXT_ONLY[i // 3 % len(TEXT_ONLY)]
        instruction, answer = letters(text, list(options)), "A"
    else:
        width, height = size = SIZES[(i + (split != "train")) % len(SIZES)]
        w, h = rng.randint(width // 4, width // 2), rng.randint(height // 4, height // 2)
        box = (rng.randint(0, width - w), rng.randint(0, height - h), w, h)
        colour, word = rng.choice(list(COLOURS)), rng.choice(WORDS)
        record["image"] = image_path(task, split, i)
        draw(images / record["image"], size, colour, word, box)
        instruction, answer = question(task, colour, word, rng)
        if task == "Grounding":
            instruction = f"{REFER}the {colour} rectangle."
            answer = format_box(padded_square_box(box, size))
    if split == "train":
        marker = "<image>\n" if record else ""
        said = answer[0] if isinstance(answer, list) else answer  # TextVQA trains on the most common answer
        turns = [{"from": "human", "value": marker + instruction}, {"from": "gpt", "value": said}]
        return {"id": f"{task}-{i}", **record, "conversations": turns}
    record |= {"question_id": 100 * i + 7 if task in ("TextVQA", "VQAv2") else f"{task}-{i}", "text": instruction}
    if task == "Grounding":  # as CoIN ships it: the box as a string, the image's size, no answer
        return record | {"answer_bbox": answer, "size": list(size)}
    return record | {"answer": answer}


def write_coin_release(root: Path, items: int = 3, seed: int = 0) -> Path:
    """Write the miniature release under `root` and a benchmark YAML shaped as configs/coin.yaml; return its path."""
    text = CONFIG.read_text().replace(CONFIG_ROOT, str(root))
    rng = random.Random(seed)
    for task in yaml.safe_load(text)["tasks"]:
        for split in ("train", "test"):
            path = Path(task[split])
            records = [item(path.parent.name, path.stem, i, rng, root / "cl_dataset") for i in range(items)]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(records, indent=1))
    (root / "coin.yaml").write_text(text)
    return root / "coin.yaml"
