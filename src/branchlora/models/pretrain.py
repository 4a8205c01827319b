"""Pre-training of the tiny base, LLaVA's recipe in miniature: it learns to see, then to speak about what it sees.

Stage 1 (models/perception.py): the vision tower learns to perceive the minicoin world from dense targets.
Stage 2: with the tower frozen, the projector and the language model learn to caption ("a red circle at the
top left and the word fox written in blue ..."), asked with a few describe-the-image prompts in the LLaVA
chat format.  The base knows the world and the format but none of the eight instruction tasks, so there is
something left for continual tuning to learn.  How well it sees is measured by reading its own captions of
held-out scenes back into facts (perception.readback).

Three options of the recipe are off in the committed base (docs/sweep.md, round 5, measures them): stage 1's
patch row and column targets (`tower_position`), general questions about the image among stage 2's samples
(`qa_share`, LLaVA-1.5's instruction tuning in miniature, data/questions.py) and questions about a scene told
in words among its text-alone lines (`reading_share`).  Off, they draw nothing and the recipe is unchanged.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast

from branchlora.data import questions, world
from branchlora.data.collate import IGNORE_INDEX, Collator, pad
from branchlora.data.minicoin import GENERATORS, MiniCoinOptions
from branchlora.models.perception import on, readback, schedule, train_tower
from branchlora.models.tiny import TinyConfig
from branchlora.models.tokenizer import train_tokenizer
from branchlora.progress import step_progress
from branchlora.typed import check_fields

CAPTION_PROMPTS = ("Describe the image.", "What is in the picture?", "Write a short caption.", "Describe what you see.")


@dataclass(frozen=True)
class PretrainConfig:
    """The pre-training recipe (both stages); `branchlora pretrain` runs it, the committed base was built by it."""

    tower_steps: int = field(default=1200, metadata={"help": "stage 1: perception steps of the vision tower"})
    tower_batch_size: int = field(default=64, metadata={"help": "stage 1: images per step"})
    tower_lr: float = field(default=2e-3, metadata={"help": "stage 1: peak learning rate"})
    tower_position: float = field(
        default=0.0, metadata={"help": "stage 1: weight of each patch's row and column targets"}
    )
    steps: int = field(default=2000, metadata={"help": "stage 2: caption steps of projector + language model"})
    batch_size: int = field(default=16, metadata={"help": "stage 2: captions per step"})
    lr: float = field(default=2e-3, metadata={"help": "stage 2: peak learning rate"})
    text_every: int = field(default=4, metadata={"help": "stage 2: every n-th step is text alone (task words)"})
    reading_share: float = field(default=0.0, metadata={"max": 1, "help": "stage 2: share of text-alone lines that "
                                                        "answer a question about a scene told in words"})  # fmt: skip
    qa_share: float = field(default=0.0, metadata={"help": "stage 2: share of samples that are general questions",
                                                   "max": 1})  # fmt: skip
    warmup: int = field(default=50, metadata={"help": "linear warm-up steps of each stage (then cosine)"})
    tokenizer_texts: int = field(default=3000, metadata={"help": "captions (and task texts) the tokenizer learns"})
    heldout: int = field(default=64, metadata={"help": "held-out captions of the reported caption loss"})
    readback: int = field(default=240, metadata={"help": "held-out scenes captioned and read back (perception)"})

    def __post_init__(self) -> None:
        check_fields(self, minimum=0)
        for lr, batch, stage in ((self.lr, self.batch_size, ""), (self.tower_lr, self.tower_batch_size, "tower_")):
            if lr <= 0 or batch < 1:
                raise ValueError(f"pretraining: {stage}lr must be > 0 and {stage}batch_size >= 1, got {lr}, {batch}")


# The short schedule `branchlora pretrain --quick` and the tests run: micro sizes, a few steps of each stage.
QUICK_TINY = TinyConfig(vision_hidden=32, vision_layers=1, hidden=64, layers=2, heads=2, intermediate=128,
                        vocab_size=400)  # fmt: skip
QUICK_PRETRAIN = PretrainConfig(tower_steps=10, tower_batch_size=8, steps=20, text_every=0, batch_size=4, lr=3e-3,
                                warmup=4, tokenizer_texts=200, heldout=4, readback=8)  # fmt: skip


def task_words(rng: random.Random, opts: MiniCoinOptions) -> list[str]:
    """An instruction and an answer of a random minicoin item, as two separate lines: the words and formats
    of the tasks (letters, digits, boxes, "unanswerable") without any question paired with its answer.

    The answer follows the assistant's cue, as in training, so the tokenizer learns " E" (not " " + "E")."""
    item = rng.choice(list(GENERATORS.values()))(rng, opts)
    return [f"USER: {item.instruction} ASSISTANT:", f"ASSISTANT: {item.answer}"]


def tokenizer_corpus(seed: int, count: int, image_size: int, questions_too: bool = False) -> list[str]:
    """Captions plus the words of task instructions and answers, so no task text splits into bytes."""
    rng = random.Random(f"tokenizer/{seed}")
    texts = [world.caption(world.random_scene(rng, image_size)) for _ in range(count)]
    if questions_too:
        texts += [" ".join(questions.ask(rng, world.random_scene(rng, image_size))) for _ in range(count // 2)]
    texts += [f"USER: {p} ASSISTANT:" for p in CAPTION_PROMPTS] * 50
    opts = MiniCoinOptions(seed=seed, instructions="10type", image_size=image_size)
    for _ in range(count // 20 * len(GENERATORS)):
        texts += task_words(rng, opts)
    return texts


def reading_line(rng: random.Random, image_size: int) -> str:
    """A question about a scene told in words, and its answer: the reading an LLM learns before it sees, so
    that "the colour of the diamond" looks for the diamond (a LM trained on captions alone ignores the question)."""
    scene = world.random_scene(rng, image_size)
    question, answer = questions.ask(rng, scene)
    return f"USER: {world.caption(scene)} {question} ASSISTANT: {answer}"


def text_batch(
    collator: Collator, rng: random.Random, n: int, image_size: int, reading_share: float = 0.0
) -> dict[str, torch.Tensor]:
    """Language modelling on task words alone (no image), as an LLM knows its language before LLaVA tunes
    it: without it the embeddings and output rows of every word outside the captions stay random.  With
    `reading_share`, that share of the lines are questions about scenes told in words (reading_line)."""
    opts = MiniCoinOptions(instructions="10type", image_size=image_size)
    lines = [reading_line(rng, image_size) if reading_share and rng.random() < reading_share
             else rng.choice(task_words(rng, opts)) for _ in range(n)]  # fmt: skip
    rows = [collator.with_bos(collator.tokens(t)) + [collator.eos_id] for t in lines]
    batch = pad(rows, collator.pad_id, left=False)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE_INDEX)
    return batch


def build_tokenizer(seed: int, cfg: PretrainConfig, vocab_size: int, image_size: int) -> PreTrainedTokenizerFast:
    return train_tokenizer(
        tokenizer_corpus(seed, cfg.tokenizer_texts, image_size, cfg.qa_share + cfg.reading_share > 0), vocab_size
    )


def describe(rng: random.Random, scene: world.Scene, qa_share: float) -> tuple[str, str]:
    """A caption request, or with probability `qa_share` a general question (data/questions.py), and its answer."""
    if qa_share and rng.random() < qa_share:  # no draw when off, so the recipe without questions is unchanged
        return questions.ask(rng, scene)
    return rng.choice(CAPTION_PROMPTS), world.caption(scene)


def caption_batch(
    collator: Collator, rng: random.Random, n: int, size: int, qa_share: float = 0.0
) -> dict[str, torch.Tensor]:
    """Stage 2's image batches: random scenes, each with a caption request or a general question."""
    scenes = [world.random_scene(rng, size) for _ in range(n)]
    prompts, answers = zip(*(describe(rng, s, qa_share) for s in scenes), strict=True)
    return collator.encode_train([world.render(s) for s in scenes], list(prompts), list(answers))


def learning_rate(step: int, cfg: PretrainConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    return cfg.lr * schedule(step, cfg.steps, cfg.warmup)


def pretrain(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    cfg: PretrainConfig,
    *,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
) -> dict:
    """Both stages on `device`; returns the tower's held-out perception, the caption loss, the read-back
    perception, the caption loss curve and the seconds taken. The model is left on the CPU."""
    start = time.perf_counter()
    model.to(device)
    inner = model.model
    patch = inner.vision_tower.config.patch_size
    with step_progress("tiny base, stage 1: perception", cfg.tower_steps, enabled=progress) as update:
        tower = train_tower(inner.vision_tower, processor.image_processor, patch, cfg, seed=seed, log=update,
                            device=device)  # fmt: skip
    inner.vision_tower.requires_grad_(False)
    with step_progress("tiny base, stage 2: captioning", cfg.steps, enabled=progress) as update:
        losses = train_captions(model, processor, cfg, seed=seed, log=update)
    collator = Collator(processor, prompt_format="llava")
    heldout = caption_batch(collator, random.Random(f"heldout/{seed}"), cfg.heldout, processor_size(processor))
    model.eval()
    with torch.no_grad():
        caption_loss = model(**on(heldout, device)).loss.item()
    perception = readback(model, collator, cfg.readback, seed=seed)
    model.to("cpu")
    return {"tower_accuracy": tower, "caption_loss": caption_loss, "perception": perception, "losses": losses,
            "pretrain_seconds": time.perf_counter() - start}  # fmt: skip


def processor_size(processor: LlavaProcessor) -> int:
    return processor.image_processor.crop_size["height"]


def train_captions(model: LlavaForConditionalGeneration, processor, cfg: PretrainConfig, *, seed: int, log) -> list:
    """Stage 2: projector and language model learn to caption what the (frozen) tower perceives; every
    `text_every`-th step is language modelling on task words alone (see text_batch)."""
    collator = Collator(processor, prompt_format="llava")
    rng = random.Random(f"pretrain/{seed}")
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    model.train()
    losses, size = [], processor_size(processor)
    for step in range(cfg.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        text = cfg.text_every and step % cfg.text_every == cfg.text_every - 1
        batch = text_batch(collator, rng, cfg.batch_size, size, cfg.reading_share) if text else caption_batch(
            collator, rng, cfg.batch_size, size, cfg.qa_share)  # fmt: skip
        loss = model(**on(batch, model.device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not text:  # the caption loss curve
            losses.append(loss.item())
        log(step + 1, f"loss {loss.item():.3f}")
    return losses
