"""Can a task be learned at all from the base? Full fine-tuning of the LM's linear layers against LoRA (PEFT).

    python tools/probe_tuning.py --task scienceqa --tuning full --lr 1e-3 --steps 150
    python tools/probe_tuning.py --task scienceqa --tuning lora --lr 3e-3 --steps 150

Separates "the base lacks what the task needs" (full fine-tuning fails too) from "the adapter learns too
slowly" (only LoRA fails). minicoin items are generated in memory (300 to train, 64 held out); constant lr,
batch 16, no projector or tower training. Prints the held-out accuracy of the answer's first token.
"""

from __future__ import annotations

import argparse
import random
import re

import torch

from branchlora.adapters.config import LLAVA_TARGETS
from branchlora.data import world
from branchlora.data.collate import Collator
from branchlora.data.minicoin import GENERATORS, TASKS, MiniCoinOptions
from branchlora.models.loading import load_base


def items(task: str, seed: int, n: int) -> tuple[list, list[str], list[str]]:
    rng, opts = random.Random(seed), MiniCoinOptions()
    generated = [GENERATORS[task](rng, opts) for _ in range(n)]
    return [world.render(i.scene) for i in generated], [i.instruction for i in generated], [i.answer for i in generated]


def first_token_accuracy(model, collator: Collator, held_out) -> float:
    batch = collator.encode_train(*held_out)
    with torch.no_grad():
        logits = model(**batch).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    first = (labels != -100).float().argmax(dim=1)  # (B,) position of the answer's first token
    rows = torch.arange(len(labels))
    return (logits[rows, first].argmax(-1) == labels[rows, first]).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASKS, default="scienceqa")
    parser.add_argument("--tuning", choices=("full", "lora"), default="full")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, processor = load_base("tiny", progress=False)
    collator = Collator(processor, prompt_format="llava")
    model.requires_grad_(False)
    if args.tuning == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=32, lora_alpha=64, target_modules=LLAVA_TARGETS))
    else:  # the very Linears the adapters wrap (the `llava` target preset), trained whole
        for name, p in model.named_parameters():
            p.requires_grad = re.fullmatch(LLAVA_TARGETS, name.removesuffix(".weight")) is not None
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    train, held_out = items(args.task, 0, 300), items(args.task, 1, 64)
    for step in range(args.steps):
        pick = random.Random(step).sample(range(300), 16)
        model.train()
        loss = model(**collator.encode_train(*([part[i] for i in pick] for part in train))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % 25 == 0:
            model.eval()
            accuracy = first_token_accuracy(model, collator, held_out)
            print(f"{args.task} {args.tuning} lr {args.lr:g} step {step + 1}: train loss {loss.item():.3f}, "
                  f"held-out first-token accuracy {100 * accuracy:.0f} %", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
