"""A micro base model and toy task streams for the engine's tests (importable by subprocess scripts too)."""

from __future__ import annotations

import copy
import random
import shutil
from pathlib import Path

from PIL import Image

from branchlora.continual import StreamData, run_method
from branchlora.data.benchmark import TestExample, TrainExample, default_cache_dir
from branchlora.data.collate import Collator
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.methods import get_method
from branchlora.models.loading import load_base, tiny_folder
from branchlora.models.pretrain import QUICK_PRETRAIN, QUICK_TINY
from branchlora.train import TrainConfig

MICRO, MICRO_PRETRAIN = QUICK_TINY, QUICK_PRETRAIN  # `branchlora pretrain --quick`
ADAPTER = {"r": 8, "alpha": 16, "n_branches": 4, "top_k": 2}
LORA = {"r": 8, "alpha": 16}

# Three trivially different tasks: distinct image colours, instructions and answers.
TOY = [
    ("colour", (220, 30, 30), "What colour fills the picture?", "red"),
    ("count", (240, 240, 240), "How many dots are drawn here?", "two"),
    ("shape", (30, 30, 200), "Name the shape in the middle.", "circle"),
]


# A short run on the small toy stream, for the sibling methods' lifecycle tests.
TOY_TRAIN = TrainConfig(max_steps=4, batch_size=4, lr=5e-3)
TOY_EVAL = EvalConfig(batch_size=8, max_new_tokens=4, limit=2)


def run_toy(name: str, adapter: dict, toy: tuple, out: Path) -> tuple:
    """(method, model, result, out) of `name` trained through the toy tasks from a fresh copy of the base."""
    method, model = get_method(name)(adapter), fresh(toy[0])
    return method, model, run_method(method, model, toy[1], TOY_TRAIN, TOY_EVAL, out), out


def micro_base(cache: Path | None = None):
    """(model, processor) of the micro base, pre-trained once per session in $BRANCHLORA_CACHE (conftest's session
    folder) and copied into `cache` when one is given, for a test whose CLI runs look for it there."""
    shared, target = default_cache_dir(), Path(cache or default_cache_dir())
    folder = tiny_folder(MICRO, MICRO_PRETRAIN, 0, target)
    if not folder.exists() and target.resolve() != shared.resolve():
        load_base("tiny", cache_dir=shared, tiny=MICRO, pretraining=MICRO_PRETRAIN, progress=False)  # built once
        staged = folder.with_name(f".tmp-{folder.name}")
        shutil.copytree(tiny_folder(MICRO, MICRO_PRETRAIN, 0, shared), staged, dirs_exist_ok=True)
        staged.rename(folder)
    return load_base("tiny", cache_dir=target, tiny=MICRO, pretraining=MICRO_PRETRAIN, progress=False)


def toy_stream(folder: Path, processor, n_train: int = 16, n_test: int = 4, seed: int = 0) -> StreamData:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for name, colour, instruction, answer in TOY:
        paths = []
        for i in range(n_train + n_test):
            jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in colour)
            path = folder / f"{name}-{i}.png"
            Image.new("RGB", (64, 64), jitter).save(path)
            paths.append(path)
        train.append([TrainExample(p, instruction, answer) for p in paths[:n_train]])
        test.append([TestExample(f"{name}-{i}", p, instruction, answer) for i, p in enumerate(paths[n_train:])])
    return StreamData([t[0] for t in TOY], ["exact_match"] * 3, train, test, Collator(processor))


def fresh(model):
    return copy.deepcopy(model)
