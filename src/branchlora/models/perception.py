"""Stage 1 of the tiny base: a vision tower that perceives the minicoin world (LLaVA's CLIP, in miniature).

LLaVA starts from a vision tower that already sees; ours is trained for it on dense targets read off the
scene itself.  For every patch: the share of its pixels covered by each kind of thing (a shape class,
written text, a book cover, nothing), by each colour and by each written word; for every image: which
words are written, and whether the photo is too degraded to read.  The language model never sees these
labels: stage 2 teaches it to describe what the tower perceives (captions); the tasks are learned later still.
"""

from __future__ import annotations

import math
import random
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from branchlora.data import world
from branchlora.data.collate import pad


class PerceptionHeads(nn.Module):
    """Linear read-outs of the tower's patch features: per patch (kind, colour, word, row, column), per image
    (words, degraded).  Row and column keep where a patch is in its features, as CLIP's patches do: dense
    targets alone let the tower drop it, and the language model then cannot say where things are."""

    def __init__(self, width: int, side: int) -> None:
        super().__init__()
        self.kind = nn.Linear(width, len(world.SHAPE_LABELS))
        self.colour = nn.Linear(width, len(world.COLOUR_LABELS))
        self.word = nn.Linear(width, 1 + len(world.WORD_LABELS))
        self.words = nn.Linear(width, len(world.WORD_LABELS))
        self.degraded = nn.Linear(width, 1)
        self.row = nn.Linear(width, side)
        self.column = nn.Linear(width, side)

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:  # patches: (B, P, d)
        pooled = patches.mean(dim=1)  # (B, d): what the projector passes on is the patches, so read them
        return {"kind": self.kind(patches), "colour": self.colour(patches), "word": self.word(patches),
                "row": self.row(patches), "column": self.column(patches),
                "words": self.words(pooled), "degraded": self.degraded(pooled).squeeze(-1)}  # fmt: skip


def patch_shares(maps: np.ndarray, patch: int, classes: int) -> np.ndarray:
    """(H, W) class ids -> (P, classes): the share of each class among each patch's pixels (patches row-major)."""
    h, w = maps.shape
    rows, cols = np.indices((h, w))
    patch_id = (rows // patch) * (w // patch) + cols // patch  # (H, W)
    counts = np.bincount((patch_id * classes + maps).ravel(), minlength=(h // patch) * (w // patch) * classes)
    return counts.reshape(-1, classes).astype(np.float32) / (patch * patch)


def pixel_values(images: list, image_processor) -> torch.Tensor:
    """(B, 3, H, W) normalised as the processor does for images already at its size (it would only rescale)."""
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images])).permute(0, 3, 1, 2)
    return (x / 255.0 - mean) / std


def perception_batch(rng: random.Random, n: int, image_processor, patch: int) -> dict[str, torch.Tensor]:
    """Images of random scenes and their perception targets."""
    scenes = [world.random_scene(rng, image_processor.crop_size["height"]) for _ in range(n)]
    pixels = pixel_values([world.render(s) for s in scenes], image_processor)
    maps = [world.label_maps(s) for s in scenes]
    kind = np.stack([patch_shares(m[0], patch, len(world.SHAPE_LABELS)) for m in maps])
    colour = np.stack([patch_shares(m[1], patch, len(world.COLOUR_LABELS)) for m in maps])
    word = np.stack([patch_shares(m[2], patch, 1 + len(world.WORD_LABELS)) for m in maps])
    words = torch.zeros(n, len(world.WORD_LABELS))
    for i, s in enumerate(scenes):
        for text in world.written_words(s):
            words[i, world.WORD_LABELS.index(text)] = 1.0
    degraded = torch.tensor([float(s.degraded) for s in scenes])
    return {"pixel_values": pixels, "kind": torch.from_numpy(kind), "colour": torch.from_numpy(colour),
            "word": torch.from_numpy(word), "words": words * (1 - degraded[:, None]), "degraded": degraded}  # fmt: skip


def perception_loss(tower: nn.Module, heads: PerceptionHeads, batch: dict[str, torch.Tensor]) -> dict:
    """Soft cross-entropy per patch (degraded images excluded), BCE per image; and accuracies to watch."""
    patches = tower(batch["pixel_values"]).last_hidden_state[:, 1:]  # (B, P, d), CLS dropped as LLaVA does
    out = heads(patches)
    clear = (1 - batch["degraded"])[:, None]  # (B, 1): a degraded photo has no readable patches
    losses = {}
    for name in ("kind", "colour", "word"):
        ce = -(batch[name] * F.log_softmax(out[name], dim=-1)).sum(-1)  # (B, P)
        losses[name] = (ce * clear).sum() / clear.sum().clamp_min(1) / ce.shape[1]
    for name, target in patch_places(out).items():
        losses[name] = F.cross_entropy(out[name].flatten(0, 1), target.repeat(out[name].shape[0]))
    losses["words"] = F.binary_cross_entropy_with_logits(out["words"], batch["words"])
    losses["degraded"] = F.binary_cross_entropy_with_logits(out["degraded"], batch["degraded"])
    with torch.no_grad():
        has_word = batch["words"].sum(-1) > 0
        word_right = out["words"].argmax(-1) == batch["words"].argmax(-1)
        accuracy = {
            "kind": _patch_accuracy(out["kind"], batch["kind"], clear),
            "colour": _patch_accuracy(out["colour"], batch["colour"], clear),
            "word": word_right[has_word].float().mean().item() if has_word.any() else float("nan"),
            "where": placed(out).float().mean().item(),
        }
    return {"losses": losses, "accuracy": accuracy}


def _patch_accuracy(logits: torch.Tensor, shares: torch.Tensor, clear: torch.Tensor) -> float:
    """Share of (clear) patches whose predicted class is the one covering most of the patch."""
    right = (logits.argmax(-1) == shares.argmax(-1)).float() * clear
    return (right.sum() / (clear.sum() * right.shape[1]).clamp_min(1)).item()


def patch_places(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each patch's row and column (patches row-major, as patch_shares), sized from the heads' outputs."""
    side, where = out["row"].shape[-1], torch.arange(out["row"].shape[1])
    return {"row": where // side, "column": where % side}


def placed(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, P): whether the heads read both the row and the column of each patch right."""
    places = patch_places(out)
    return (out["row"].argmax(-1) == places["row"]) & (out["column"].argmax(-1) == places["column"])


def on(batch: dict[str, torch.Tensor], device: torch.device | str) -> dict[str, torch.Tensor]:
    """The batch's tensors on `device` (batches are generated on the CPU, so every device sees the same data)."""
    return {k: v.to(device) for k, v in batch.items()}


def train_tower(
    tower: nn.Module, image_processor, patch: int, cfg, *, seed: int, log, device: str = "cpu"
) -> dict[str, float]:
    """Train the vision tower (and throw-away heads) on perception; returns held-out accuracies.

    `cfg` is the base's PretrainConfig (tower_steps, tower_batch_size, tower_lr, warmup); `log(step, status)`."""
    torch.manual_seed(seed)
    side = tower.config.image_size // patch
    heads = PerceptionHeads(tower.config.hidden_size, side).to(device)
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.tower_lr, weight_decay=0.01)
    rng = random.Random(f"perception/{seed}")
    tower.train()
    for step in range(cfg.tower_steps):
        for group in optimizer.param_groups:
            group["lr"] = cfg.tower_lr * schedule(step, cfg.tower_steps, cfg.warmup)
        batch = on(perception_batch(rng, cfg.tower_batch_size, image_processor, patch), device)
        result = perception_loss(tower, heads, batch)
        losses = result["losses"]
        loss = sum(v for k, v in losses.items() if k not in ("row", "column"))
        if cfg.tower_position:  # off: the same graph, so the same tower, as the recipe without it
            loss = loss + cfg.tower_position * (losses["row"] + losses["column"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        log(step + 1, "  ".join(f"{k} {v:.3f}" for k, v in {"loss": loss.item(), **result["accuracy"]}.items()))
    tower.eval()
    with torch.no_grad():
        held_out = perception_batch(random.Random(f"perception-heldout/{seed}"), 256, image_processor, patch)
        return perception_loss(tower, heads, on(held_out, device))["accuracy"]


def schedule(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


# ---- perception read back from the base's own captions ---------------------------------------------------
_COLOUR = "|".join(world.COLOURS)
_POSITION = "top left|top right|bottom left|bottom right|top|bottom|left|right|middle"
_OBJECT = re.compile(rf"a ({_COLOUR}) ({'|'.join(world.SHAPES)}) (?:at|in) the ({_POSITION})\b")
_WORD = re.compile(rf"the word (\w+) written in ({_COLOUR}|black) (?:at|in) the ({_POSITION})\b")
_COVER = re.compile(rf"a ({_COLOUR}) book cover with the title (\w+) by (\w+)")
READBACK_FACTS = ("shape", "colour", "position", "count", "word")


def read_caption(text: str) -> dict[str, list]:
    """The facts a caption states, as sorted lists: shapes, colours, positions, the object count, words."""
    objects, words, cover = _OBJECT.findall(text), _WORD.findall(text), _COVER.search(text)
    colours = [c for c, _, _ in objects] + [c for _, c, _ in words] + ([cover[1]] if cover else [])
    return {
        "shape": sorted(s for _, s, _ in objects),
        "colour": sorted(colours),
        "position": sorted([p for _, _, p in objects] + [p for _, _, p in words]),
        "count": [len(objects)],
        "word": sorted([w for w, _, _ in words] + ([cover[2], cover[3]] if cover else [])),
        "degraded": ["nothing can be seen" in text],
    }


@torch.no_grad()
def readback(model: nn.Module, collator, n: int, *, seed: int, prompt: str = "Describe the image.") -> dict:
    """Caption `n` held-out scenes and compare the facts read back with the scenes' true captions.

    Each fact is scored per scene (all of the scene's shapes, colours, ... must match) over the scenes that
    have it: shape, colour, position and count over scenes with shapes; word over scenes with writing."""
    rng = random.Random(f"readback/{seed}")
    scenes = [world.random_scene(rng, collator.processor.image_processor.crop_size["height"], 0.0) for _ in range(n)]
    predicted = []
    for start in range(0, n, 48):
        chunk = scenes[start : start + 48]
        ids, visual = collator.encode([collator.prompt_text(prompt)] * len(chunk), [world.render(s) for s in chunk])
        batch = on({**pad([collator.with_bos(row) for row in ids], collator.pad_id, left=True), **visual}, model.device)
        out = model.generate(**batch, max_new_tokens=96, do_sample=False,
                             pad_token_id=collator.pad_id, eos_token_id=collator.eos_id)  # fmt: skip
        predicted += collator.decode(out[:, batch["input_ids"].shape[1] :])
    right = {fact: [] for fact in READBACK_FACTS}
    for scene, text in zip(scenes, predicted, strict=True):
        truth, said = read_caption(world.caption(scene)), read_caption(text)
        for fact in READBACK_FACTS:
            has_it = bool(truth["word"]) if fact == "word" else bool(truth["shape"])
            if has_it:
                right[fact].append(truth[fact] == said[fact])
    accuracy = {fact: round(100.0 * sum(r) / max(1, len(r)), 2) for fact, r in right.items()}
    examples = [[world.caption(s), t] for s, t in zip(scenes[:3], predicted[:3], strict=True)]
    return {**accuracy, "scenes": n, "examples": examples}
