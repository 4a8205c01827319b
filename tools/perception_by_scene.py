"""Where a tiny base's perception fails, by scene type: its captions read back, and a linear probe of its
frozen vision tower (per-patch shape and colour on the patches an object covers; every patch's row and column).

    OMP_NUM_THREADS=2 python tools/perception_by_scene.py [--base FOLDER] [--scenes 48] [--probe-steps 300]

If the tower's patches tell shape and colour apart in every kind of scene but the captions of many-object
scenes are wrong, the language model (binding and enumeration), not the tower, is what limits the base; if
they do not tell where they are, no language model can say where things are.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from branchlora.data import world
from branchlora.data.collate import Collator, pad
from branchlora.models import perception as P
from branchlora.models.loading import PACKAGED

SCENES = (world.single_object, world.pair_scene, world.grid_scene, world.count_scene, world.word_scene)


@torch.no_grad()
def caption_readback(model, collator: Collator, sampler, n: int, rng: random.Random) -> dict[str, float]:
    """Exact captions and each read-back fact (perception.readback's scoring) on n scenes of one sampler."""
    scenes = [sampler(rng, 64) for _ in range(n)]
    ids, visual = collator.encode([collator.prompt_text("Describe the image.")] * n, [world.render(s) for s in scenes])
    batch = pad([collator.with_bos(row) for row in ids], collator.pad_id, left=True)
    out = model.generate(**batch, **visual, max_new_tokens=96, do_sample=False, pad_token_id=collator.pad_id,
                         eos_token_id=collator.eos_id)  # fmt: skip
    texts = collator.decode(out[:, batch["input_ids"].shape[1] :])
    right: dict[str, list[bool]] = {fact: [] for fact in P.READBACK_FACTS}
    for scene, text in zip(scenes, texts, strict=True):
        truth, said = P.read_caption(world.caption(scene)), P.read_caption(text)
        for fact in P.READBACK_FACTS:
            if truth["word"] if fact == "word" else truth["shape"]:
                right[fact].append(truth[fact] == said[fact])
    exact = sum(world.caption(s) == t for s, t in zip(scenes, texts, strict=True))
    return {"objects": sum(len(s.shapes) for s in scenes) / n, "exact": 100 * exact / n,
            **{f: 100 * sum(r) / len(r) for f, r in right.items() if r}}  # fmt: skip


def probe_tower(tower, image_processor, steps: int, rng: random.Random) -> P.PerceptionHeads:
    """Fresh linear heads trained on the frozen tower's patch features (perception.py's targets)."""
    heads = P.PerceptionHeads(tower.config.hidden_size, tower.config.image_size // 8)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=3e-3)
    for _ in range(steps):
        losses = P.perception_loss(tower, heads, P.perception_batch(rng, 64, image_processor, 8))["losses"]
        (losses["kind"] + losses["colour"] + losses["row"] + losses["column"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    return heads


@torch.no_grad()
def probe_accuracy(tower, heads, image_processor, sampler, n: int, rng: random.Random) -> dict[str, float]:
    """Shape and colour of the patches that an object covers most of, as the probe reads them."""
    scenes = [sampler(rng, 64) for _ in range(n)]
    maps = [world.label_maps(s) for s in scenes]
    kind = torch.from_numpy(np.stack([P.patch_shares(m[0], 8, len(world.SHAPE_LABELS)) for m in maps]))
    colour = torch.from_numpy(np.stack([P.patch_shares(m[1], 8, len(world.COLOUR_LABELS)) for m in maps]))
    out = heads(tower(P.pixel_values([world.render(s) for s in scenes], image_processor)).last_hidden_state[:, 1:])
    covered = kind.argmax(-1) != 0
    return {"patches": int(covered.sum()), "where": 100 * P.placed(out).float().mean().item(),
            "kind": 100 * (out["kind"].argmax(-1) == kind.argmax(-1))[covered].float().mean().item(),
            "colour": 100 * (out["colour"].argmax(-1) == colour.argmax(-1))[covered].float().mean().item()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=48, help="scenes per type")
    parser.add_argument("--probe-steps", type=int, default=300, help="training steps of the linear probe")
    parser.add_argument("--base", default=str(PACKAGED), help="folder of a tiny base (default: the committed one)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(args.base).eval()
    processor = LlavaProcessor.from_pretrained(args.base)
    collator, tower = Collator(processor, prompt_format="llava"), model.model.vision_tower.requires_grad_(False)
    heads = probe_tower(tower, processor.image_processor, args.probe_steps, random.Random("probe"))
    rng = random.Random("by-scene")
    print("scene type      objects  exact caption  shape colour position count word  | probe: shape colour where")
    for sampler in SCENES:
        read = caption_readback(model, collator, sampler, args.scenes, rng)
        probe = probe_accuracy(tower, heads, processor.image_processor, sampler, 128, rng)
        facts = "  ".join(f"{read[f]:5.0f}" if f in read else "    -" for f in P.READBACK_FACTS)
        kinds = f"{probe['kind']:5.1f} {probe['colour']:5.1f}" if probe["patches"] else "    -     -"
        kinds += f" {probe['where']:5.1f}"
        print(f"{sampler.__name__:15s} {read['objects']:6.1f}  {read['exact']:12.0f}  {facts}  | {kinds}")


if __name__ == "__main__":
    main()
