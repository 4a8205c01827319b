"""How well a base answers the general questions of data/questions.py, per kind of question: about the image, or
(`--read-steps N`) about the scene told in words, after N steps of training its language model on such text alone
(pretrain.reading_line), to ask whether the language model can bind a question to what it reads. `--fresh` starts
that reading from a randomly initialised model of the default sizes instead (a text-only stage 0 before the
recipe's two stages), `--answer-only` puts the loss on the answers alone, and `--eval-every K` scores the kinds
every K steps.

    OMP_NUM_THREADS=1 python tools/base_questions.py [--base FOLDER] [--per-kind 48]
    OMP_NUM_THREADS=1 python tools/base_questions.py --read-steps 2000
    OMP_NUM_THREADS=1 python tools/base_questions.py --fresh --answer-only --read-steps 2000 --batch 32 --lr 1e-3 \
        --eval-every 500

Exact match of the whole answer sentence on held-out scenes (no degraded photos), greedy decoding.
"""

from __future__ import annotations

import argparse
import random

import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from branchlora.data import questions, world
from branchlora.data.collate import IGNORE_INDEX, Collator, answer_labels, pad
from branchlora.models.loading import PACKAGED
from branchlora.models.perception import schedule
from branchlora.models.pretrain import text_batch
from branchlora.models.tiny import TinyConfig, build_model


def answer_batch(
    collator: Collator, rng: random.Random, n: int, asked: int = 1, copies: float = 0.0
) -> dict[str, torch.Tensor]:
    """Scenes told in words, each with `asked` questions in turns (the first as pretrain.reading_line asks it),
    labels on the answers and EOS only, as instruction tuning masks: more answers per told scene.  With
    probability `copies` a line asks instead to repeat the told scene word for word: every answer token is
    then a look-back target, the induction that finding "the diamond" in the text needs."""

    def first_turn(prompt: str, answer: str) -> tuple[list[int], list[int]]:
        head = collator.with_bos(collator.tokens(f"USER: {prompt} ASSISTANT:"))
        full = collator.with_bos(collator.tokens(f"USER: {prompt} ASSISTANT: {answer}"))
        return answer_labels(full + [collator.eos_id], head)

    rows, labels = [], []
    for _ in range(n):
        scene = world.random_scene(rng, 64)
        told = world.caption(scene)
        if copies and rng.random() < copies:
            turns = [first_turn(f"{told} Repeat the description.", told)]
        else:
            asks = {}
            for _ in range(20 * asked):  # distinct questions, so no answer is copied from an earlier turn
                if len(asks) == asked:
                    break
                asks.setdefault(*questions.ask(rng, scene))
            (question, answer), *more = asks.items()
            turns = [first_turn(f"{told} {question}", answer), *collator.follow_up_turns(((question, answer),),
                                                                                       tuple(more))]  # fmt: skip
        rows.append(sum((ids for ids, _ in turns), []))
        labels.append(sum((lab for _, lab in turns), []))
    batch = pad(rows, collator.pad_id, left=False)
    batch["labels"] = pad(labels, IGNORE_INDEX, left=False)["input_ids"]
    return batch


def train_reading(model, collator: Collator, args: argparse.Namespace) -> None:
    """Projector and language model trained on questions about scenes told in words (no image)."""
    model.model.vision_tower.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random("reading")
    model.train()
    for step in range(args.read_steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * schedule(step, args.read_steps, 50)
        batch = answer_batch(collator, rng, args.batch, args.asked, args.copies) if args.answer_only else text_batch(
            collator, rng, args.batch, 64, reading_share=1.0)  # fmt: skip
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 500 == 0 or step == args.read_steps - 1:
            print(f"reading step {step}: loss {loss.item():.3f}", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.read_steps:
            print(f"after {step + 1} reading steps:", flush=True)
            table(model, collator, args)
            model.train()
    model.eval()


@torch.no_grad()
def answers(model, collator: Collator, items: list, in_words: bool) -> list[str]:
    """Greedy answers to (scene, (question, answer)) items, shown the image or told the scene's caption."""
    if in_words:
        rows = [collator.tokens(f"USER: {world.caption(s)} {q} ASSISTANT:") for s, (q, _) in items]
        visual = {}
    else:
        rows, visual = collator.encode([collator.prompt_text(q) for _, (q, _) in items],
                                       [world.render(s) for s, _ in items])  # fmt: skip
    batch = pad([collator.with_bos(row) for row in rows], collator.pad_id, left=True)
    out = model.generate(**batch, **visual, max_new_tokens=40, do_sample=False, pad_token_id=collator.pad_id,
                         eos_token_id=collator.eos_id)  # fmt: skip
    return [text.strip() for text in collator.decode(out[:, batch["input_ids"].shape[1] :])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=str(PACKAGED), help="folder of a tiny base (default: the committed one)")
    parser.add_argument("--per-kind", type=int, default=48)
    parser.add_argument("--read-steps", type=int, default=0, help="train on text alone first; ask in words")
    parser.add_argument("--fresh", action="store_true", help="read from a randomly initialised model (stage 0)")
    parser.add_argument("--answer-only", action="store_true", help="reading loss on the answers alone")
    parser.add_argument("--asked", type=int, default=1, help="with --answer-only: questions per told scene")
    parser.add_argument("--copies", type=float, default=0.0, help="with --answer-only: share of repeat lines")
    parser.add_argument("--batch", type=int, default=16, help="reading lines per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak reading learning rate (warm-up, cosine)")
    parser.add_argument("--eval-every", type=int, default=0, help="also score every K reading steps")
    args = parser.parse_args()
    torch.manual_seed(0)
    processor = LlavaProcessor.from_pretrained(args.base)
    collator = Collator(processor, prompt_format="llava")
    if args.fresh:
        model = build_model(TinyConfig(), processor.tokenizer, seed=0)
    else:
        model = LlavaForConditionalGeneration.from_pretrained(args.base).eval()
    if args.read_steps:
        train_reading(model, collator, args)
    table(model, collator, args)


def table(model, collator: Collator, args: argparse.Namespace) -> None:
    """Exact-match accuracy per kind of question on the same held-out scenes, as a markdown table."""
    model.eval()
    rng = random.Random("base-questions")
    print("| question | exact match % | example: truth -> said |\n|---|---|---|")
    for asker in questions.ASKERS:
        items = []
        while len(items) < args.per_kind:
            scene = world.random_scene(rng, degraded=0.0)
            if (scene.shapes or asker is questions.read) and (asked := asker(rng, scene)):
                items.append((scene, asked))
        said = answers(model, collator, items, in_words=args.read_steps > 0)
        right = sum(s == a for s, (_, (_, a)) in zip(said, items, strict=True))
        print(f"| {asker.__name__} | {100 * right / len(items):.0f} | {items[0][1][1]} -> {said[0]} |")


if __name__ == "__main__":
    main()
