"""Miniatures of UCIT's, MLLM-DCL's and MLLM-ACL's releases in their real layouts, for runs of their configs.

configs/ucit.yaml, configs/mllm-dcl.yaml and configs/mllm-acl.yaml name files under /data/UCIT and /data/MLLM-CL;
`write_field_release` moves them under `root` and writes a few items per task there: LLaVA conversation train
files, test files as each release shapes them ({question_id, image, text, answer} plus the fields its scorer
reads: OCRBench's answer_type, CV-Bench's type and task, MathVista's question_type, answer_type, choices and
answer_option), small images at the paths the scripts join (Sci's named by source, AI2D_ or MapQA_), UCIT's
COCO-style caption references (image_id = position + 1). Each image shows one coloured rectangle with a word,
and every answer follows from it (coin_release's world): a fixture, not a benchmark.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from branchlora.data.world import COLOURS, WORDS

from coin_release import draw

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROOTS = {"ucit": "/data/UCIT", "mllm-dcl": "/data/MLLM-CL", "mllm-acl": "/data/MLLM-CL"}  # the configs' prefixes
SIZE = (64, 48)
SHORT = "\nAnswer the question using a single word or phrase."


def image_name(task: str, split: str, i: int) -> str:
    """Where the image goes under the task's image root; Sci's name starts with its source, as eval_sci.py reads."""
    if task == "sci":
        return f"images/{('AI2D', 'MapQA')[i % 2]}_{split}_{i}.png"
    return f"images/{task}/{split}_{i}.png"


def question(task: str, metric: str, colour: str, word: str, i: int) -> tuple[str, str, dict]:
    """(instruction, answer, extra test fields) about a `colour` rectangle with `word` on it."""
    if metric == "coco_caption":
        return "What is happening in the image?\nGenerate a brief caption for the image.", f"a {colour} sign", {}
    if task == "sci" and i % 2:
        return "Which states are shown in colour?", f"{colour},{word}", {}  # MapQA's list answer
    if task == "fin":
        return (f"Is the rectangle {colour}?", "Yes", {}) if i % 2 else ("Which colour?\nA. red\nB. blue", "A", {})
    if metric == "ocrbench":
        return "What is written in the image?", word, {"answer_type": "Regular Text Recognition"}
    if metric == "cvbench":
        return "How many rectangles are there?", "(A) 1", {"type": ("2D", "3D")[i % 2], "task": "Count"}
    if metric == "mathvista_rule":
        choices = ["1", "2"]
        return "How many rectangles are there?", "1", {"question_type": "multi_choice", "answer_type": "integer",
                                                       "choices": choices, "answer_option": "A"}  # fmt: skip
    return "What colour is the rectangle?" + SHORT, colour, {}


def task_files(task: dict, release: Path, items: int, rng: random.Random) -> None:
    """A task's train and test files, its images under its roots, and its caption references if it has some."""
    roots = {"train": Path(task.get("image_root", release)), "test": Path(task.get("test_image_root",
             task.get("image_root", release)))}  # fmt: skip
    captions = []
    for split in ("train", "test"):
        records = []
        for i in range(items):
            colour, word = rng.choice(list(COLOURS)), rng.choice(WORDS)
            name = image_name(task["name"], split, i)
            draw(roots[split] / name, SIZE, colour, word, (8, 8, 40, 28))
            text, answer, extra = question(task["name"], task["metric"], colour, word, i)
            if split == "train":
                turns = [{"from": "human", "value": "<image>\n" + text}, {"from": "gpt", "value": answer}]
                records.append({"id": f"{task['name']}-{i}", "image": name, "conversations": turns})
            else:
                records.append({"question_id": f"{task['name']}_{i}", "image": name, "text": text, "answer": answer,
                                **extra})  # fmt: skip
                captions += [{"image_id": i + 1, "id": 2 * i + k, "caption": f"a {colour} {w}"} for k, w in
                             enumerate(("sign", "rectangle"))]  # fmt: skip
        path = Path(task[split])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records, indent=1))
    if "references" in task:
        images = [{"id": i + 1} for i in range(items)]
        Path(task["references"]).write_text(json.dumps({"images": images, "annotations": captions}))


def write_field_release(benchmark: str, root: Path, items: int = 2, seed: int = 0) -> Path:
    """Write the miniature release of `benchmark` (ucit, mllm-dcl, mllm-acl) under `root` and a benchmark YAML
    shaped as configs/<benchmark>.yaml with only its path prefix changed; return the YAML's path."""
    text = (CONFIGS / f"{benchmark}.yaml").read_text().replace(ROOTS[benchmark], str(root))
    spec = yaml.safe_load(text)
    rng = random.Random(seed)
    for task in spec["tasks"]:
        task_files(task, Path(spec["image_root"]), items, rng)
    (root / f"{benchmark}.yaml").write_text(text)
    return root / f"{benchmark}.yaml"
