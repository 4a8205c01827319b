"""Caption pre-training of the tiny base: it learns to see and speak about the minicoin world.

Only captions ("a red circle at the top left and the word fox written in blue ..."), asked for with a
few describe-the-image prompts in the LLaVA chat format: the base knows the world and the format but
none of the eight instruction tasks, so there is something left for continual tuning to learn.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from branchlora.data import world
from branchlora.data.collate import Collator
from branchlora.data.minicoin import GENERATORS, MiniCoinOptions
from branchlora.models.tokenizer import train_tokenizer
from branchlora.typed import check_fields

CAPTION_PROMPTS = ("Describe the image.", "What is in the picture?", "Write a short caption.", "Describe what you see.")


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe; defaults take about 3 minutes on 2 CPU cores."""

    steps: int = 900
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 50
    tokenizer_texts: int = 3000  # scenes captioned (and task texts drawn) to train the tokenizer on
    heldout: int = 64  # captions kept aside to measure the reported caption loss

    def __post_init__(self) -> None:
        check_fields(self, minimum=0)
        if self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"pretraining: lr must be > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}")


def sample_scene(rng: random.Random, size: int) -> world.Scene:
    """A scene as any minicoin task might draw it; now and then a degraded photo."""
    scene = rng.choice(world.SAMPLERS)(rng, size)
    scene.degraded = rng.random() < 0.08
    return scene


def tokenizer_corpus(seed: int, count: int, image_size: int) -> list[str]:
    """Captions plus the words of task instructions and answers, so no task text splits into bytes.

    Instructions and answers go in as separate lines: the tokenizer learns spellings, never a Q/A pair.
    """
    rng = random.Random(f"tokenizer/{seed}")
    texts = [world.caption(sample_scene(rng, image_size)) for _ in range(count)]
    texts += [f"USER: {p} ASSISTANT:" for p in CAPTION_PROMPTS] * 50
    opts = MiniCoinOptions(seed=seed, instructions="10type", image_size=image_size)
    for _ in range(count // 20):
        for make in GENERATORS.values():
            item = make(rng, opts)
            texts += [f"USER: {item.instruction} ASSISTANT:", item.answer]
    return texts


def build_tokenizer(seed: int, cfg: PretrainConfig, vocab_size: int, image_size: int) -> PreTrainedTokenizerFast:
    return train_tokenizer(tokenizer_corpus(seed, cfg.tokenizer_texts, image_size), vocab_size)


def caption_batch(collator: Collator, rng: random.Random, n: int, size: int) -> dict[str, torch.Tensor]:
    scenes = [sample_scene(rng, size) for _ in range(n)]
    prompts = [rng.choice(CAPTION_PROMPTS) for _ in scenes]
    return collator.encode_train([world.render(s) for s in scenes], prompts, [world.caption(s) for s in scenes])


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    cfg: PretrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float | list[float]]:
    """Train every parameter on captions; returns {"caption_loss" (held out), "pretrain_seconds", "losses"}."""
    start = time.perf_counter()
    collator = Collator(processor, prompt_format="llava")
    size = processor.image_processor.crop_size["height"]
    heldout = caption_batch(collator, random.Random(f"heldout/{seed}"), cfg.heldout, size)
    rng = random.Random(f"pretrain/{seed}")
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    model.train()
    losses = []
    columns = (TextColumn("pre-training the tiny base"), BarColumn(), TextColumn("{task.fields[loss]}"))
    with Progress(*columns, TimeRemainingColumn(), disable=not progress, transient=True) as bar:
        job = bar.add_task("", total=cfg.steps, loss="")
        for step in range(cfg.steps):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, cfg)
            loss = model(**caption_batch(collator, rng, cfg.batch_size, size)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(job, advance=1, loss=f"loss {loss.item():.3f}")
    model.eval()
    with torch.no_grad():
        caption_loss = model(**heldout).loss.item()
    return {"caption_loss": caption_loss, "pretrain_seconds": time.perf_counter() - start, "losses": losses}
