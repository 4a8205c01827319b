"""Can a fresh language model of the tiny base's sizes learn to look a named object up in a scene told in words?

Two measurements behind docs/sweep.md rounds 7 and 8, one thread each, either with the base's LLaMA language
model or (`--lm lfm2`) with an LFM2 one of the same sizes whose layers 0 and 2 are short convolutions:

    # bare associative recall on token ids: K (colour, shape) id pairs, then a separator and one shape id;
    # the answer is its colour id (the colour comes first, as in the captions); scored also by the pair's place
    OMP_NUM_THREADS=1 python tools/recall_probe.py --pairs 2 [--lm lfm2]
    # one kind of general question (data/questions.py) about scenes told in words, trained on alone,
    # loss on the answer only; optionally after N steps of bare recall, with up to F filler ids between pairs
    # or with K pairs and no fillers
    OMP_NUM_THREADS=1 python tools/recall_probe.py --kind colour_of [--warm 1000 --fill 4 | --warm 4000 --warm-pairs 4]

The question score is teacher-forced exact match of the whole answer and EOS on 256 held-out scenes, split
by how many objects the scene has: with one object any colour the scene shows is right, with two the random
level is about 50 %.
"""

from __future__ import annotations

import argparse
import copy
import random
import time

import torch
from transformers import Lfm2Config, LlavaForConditionalGeneration, LlavaProcessor

from branchlora.data import questions, world
from branchlora.data.collate import IGNORE_INDEX, Collator, answer_labels, pad
from branchlora.models.loading import PACKAGED
from branchlora.models.perception import schedule
from branchlora.models.tiny import TinyConfig, build_model

COLOUR_IDS, SHAPE_IDS, FILLER_IDS, SEPARATOR = (100, 108), 200, (300, 400), 50  # arbitrary ids of the tokenizer


def fixed_recall(n: int, g: torch.Generator, pairs: int, keys: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """`pairs` (colour, shape) id pairs with distinct shapes, the separator, a shape; label: its colour."""
    c = torch.randint(*COLOUR_IDS, (n, pairs), generator=g)
    s = torch.stack([torch.randperm(keys, generator=g)[:pairs] + SHAPE_IDS for _ in range(n)])
    j = torch.randint(0, pairs, (n,), generator=g)
    q, a = s[torch.arange(n), j], c[torch.arange(n), j]
    ids = torch.cat([torch.stack([c, s], 2).reshape(n, -1), torch.full((n, 1), SEPARATOR), q[:, None], a[:, None]], 1)
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, -1] = a
    return ids, labels


def filled_recall(collator: Collator, n: int, g: torch.Generator, fill: int) -> dict[str, torch.Tensor]:
    """Two or three pairs, each followed by 0..`fill` random filler ids, as words follow each object in a caption."""
    rows, labels = [], []
    for _ in range(n):
        k = int(torch.randint(2, 4, (1,), generator=g))
        c = torch.randint(*COLOUR_IDS, (k,), generator=g)
        s = torch.randperm(6, generator=g)[:k] + SHAPE_IDS
        seq = []
        for i in range(k):
            gap = int(torch.randint(0, fill + 1, (1,), generator=g))
            seq += [int(c[i]), int(s[i])] + torch.randint(*FILLER_IDS, (gap,), generator=g).tolist()
        j = int(torch.randint(0, k, (1,), generator=g))
        rows.append(seq + [SEPARATOR, int(s[j]), int(c[j])])
        labels.append([IGNORE_INDEX] * (len(rows[-1]) - 1) + [int(c[j])])
    batch = pad(rows, collator.pad_id, left=False)
    batch["labels"] = pad(labels, IGNORE_INDEX, left=False)["input_ids"]
    return batch


def told_items(rng: random.Random, n: int, asker) -> list:
    """(scene, (question, answer)) pairs that `asker` can ask, no degraded photos."""
    out = []
    while len(out) < n:
        scene = world.random_scene(rng, 64, degraded=0.0)
        if scene.shapes and (asked := asker(rng, scene)):
            out.append((scene, asked))
    return out


def told_batch(collator: Collator, items: list) -> dict[str, torch.Tensor]:
    """The scene told in words and the question, labels on the answer and EOS only."""
    rows, labels = [], []
    for scene, (question, answer) in items:
        head = collator.with_bos(collator.tokens(f"USER: {world.caption(scene)} {question} ASSISTANT:"))
        full = collator.with_bos(collator.tokens(f"USER: {world.caption(scene)} {question} ASSISTANT: {answer}"))
        ids, lab = answer_labels(full + [collator.eos_id], head)
        rows.append(ids)
        labels.append(lab)
    batch = pad(rows, collator.pad_id, left=False)
    batch["labels"] = pad(labels, IGNORE_INDEX, left=False)["input_ids"]
    return batch


def probe_pairs(model, args: argparse.Namespace) -> None:
    """Bare recall alone: accuracy on 512 held-out rows every 100 steps, also by the asked pair's place."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    ids, _ = fixed_recall(512, torch.Generator().manual_seed(2), args.pairs)
    place = (ids[:, 1 : 2 * args.pairs : 2] == ids[:, -2:-1]).float().argmax(1)  # which pair was asked
    start = time.time()
    for step in range(args.steps):
        batch_ids, batch_labels = fixed_recall(64, g, args.pairs)
        loss = model(input_ids=batch_ids, labels=batch_labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % 100 == 0:
            with torch.no_grad():
                said = model(input_ids=ids).logits[:, -2].argmax(-1)
            right = (said == ids[:, -1]).float()
            by_place = " ".join(f"{right[place == k].mean():.2f}" for k in range(args.pairs))
            print(f"step {step + 1} loss {loss.item():.3f} held-out {right.mean():.3f} by pair {by_place} "
                  f"{time.time() - start:.0f}s", flush=True)  # fmt: skip


def probe_kind(model, collator: Collator, args: argparse.Namespace) -> None:
    """Optional bare-recall warm-up, then one kind of question told in words; scored every 250 steps."""
    asker = getattr(questions, args.kind)
    held_out = told_items(random.Random("held-out"), 256, asker)
    objects = torch.tensor([len(scene.shapes) for scene, _ in held_out])

    @torch.no_grad()
    def score() -> tuple[float, dict[int, str]]:
        model.eval()
        batch = told_batch(collator, held_out)
        said = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].argmax(-1)
        labels = batch["labels"][:, 1:]
        right = ((said == labels) | (labels == IGNORE_INDEX)).all(1)
        model.train()
        by_objects = {k: f"{100 * right[objects == k].float().mean():.0f}" for k in sorted(set(objects.tolist()))}
        return 100 * right.float().mean().item(), by_objects

    g = torch.Generator().manual_seed(1)
    warm_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for step in range(args.warm):
        if args.warm_pairs:  # K bare pairs, as --pairs K: learned by content after its plateau
            ids, labels = fixed_recall(64, g, args.warm_pairs)
            loss = model(input_ids=ids, labels=labels).loss
        else:
            loss = model(**filled_recall(collator, 64, g, args.fill)).loss
        loss.backward()
        warm_optimizer.step()
        warm_optimizer.zero_grad()
        if (step + 1) % 200 == 0:
            print(f"warm-up step {step + 1} loss {loss.item():.3f}", flush=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng, start = random.Random("train"), time.time()
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * schedule(step, args.steps, 50)
        loss = model(**told_batch(collator, told_items(rng, args.batch, asker))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 250 == 0:
            right, by_objects = score()
            print(f"step {step + 1} loss {loss.item():.3f} exact {right:.1f} by objects {by_objects} "
                  f"{time.time() - start:.0f}s", flush=True)  # fmt: skip


def with_short_conv(model: LlavaForConditionalGeneration) -> LlavaForConditionalGeneration:
    """The same LLaVA with an LFM2 language model of the same width, depth and MLP: layers 0 and 2 a gated
    short causal convolution over 3 tokens instead of attention, so every token sees its two predecessors."""
    llama = model.config.text_config
    same = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")
    same += ("vocab_size", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
    text = Lfm2Config(
        **{name: getattr(llama, name) for name in same},
        block_auto_adjust_ff_dim=False,
        layer_types=["conv" if i % 2 == 0 else "full_attention" for i in range(llama.num_hidden_layers)],
        tie_word_embeddings=False,
    )
    config = copy.deepcopy(model.config)
    config.text_config = text
    torch.manual_seed(0)
    out = LlavaForConditionalGeneration(config)
    sizes = [sum(p.numel() for p in m.model.language_model.parameters()) for m in (out, model)]
    print(f"language model parameters: LFM2 {sizes[0]:,}, LLaMA {sizes[1]:,}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=0, help="bare recall with this many pairs (instead of --kind)")
    parser.add_argument("--kind", default="colour_of", help="a question kind of data/questions.py")
    parser.add_argument("--warm", type=int, default=0, help="bare-recall steps (batch 64) before the questions")
    parser.add_argument("--fill", type=int, default=0, help="most filler ids after each warm-up pair")
    parser.add_argument("--warm-pairs", type=int, default=0, help="--warm on this many bare pairs, no fillers")
    parser.add_argument("--steps", type=int, default=0, help="default: 1500 (--pairs) or 2000 (--kind)")
    parser.add_argument("--batch", type=int, default=32, help="told scenes a step")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lm", choices=("llama", "lfm2"), default="llama", help="lfm2: short convolutions")
    args = parser.parse_args()
    args.steps = args.steps or (1500 if args.pairs else 2000)
    torch.manual_seed(0)
    processor = LlavaProcessor.from_pretrained(str(PACKAGED))
    model = build_model(TinyConfig(), processor.tokenizer, seed=0)
    if args.lm == "lfm2":
        model = with_short_conv(model)
    if args.pairs:
        probe_pairs(model, args)
    else:
        probe_kind(model, Collator(processor, prompt_format="llava"), args)


if __name__ == "__main__":
    main()
