"""Stage 2 of the tiny base again with another language model, on the committed base's frozen vision tower, and
its perception read back (overall as in base_info.json, and by scene type as tools/perception_by_scene.py).

    OMP_NUM_THREADS=1 python tools/stage2_lm.py --hidden 192 --layers 8 --intermediate 512 --steps 2000

Nothing is saved: it asks whether a wider or deeper language model describes crowded scenes better.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

from transformers import LlavaForConditionalGeneration, LlavaProcessor

from branchlora.data.collate import Collator
from branchlora.models.loading import PACKAGED
from branchlora.models.perception import readback
from branchlora.models.pretrain import PretrainConfig, train_captions
from branchlora.models.tiny import TinyConfig, build_model

sys.path.insert(0, str(Path(__file__).parent))
from perception_by_scene import SCENES, caption_readback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000, help="caption steps (the committed recipe's 2000)")
    args = parser.parse_args()
    committed = LlavaForConditionalGeneration.from_pretrained(PACKAGED)
    processor = LlavaProcessor.from_pretrained(PACKAGED)
    sizes = replace(TinyConfig(), hidden=args.hidden, layers=args.layers, intermediate=args.intermediate,
                    heads=args.heads)  # fmt: skip
    model = build_model(sizes, processor.tokenizer, seed=0)
    model.model.vision_tower.load_state_dict(committed.model.vision_tower.state_dict())
    model.model.vision_tower.requires_grad_(False)
    start = time.perf_counter()
    losses = train_captions(model, processor, PretrainConfig(steps=args.steps), seed=0, log=lambda *_: None)
    seconds = time.perf_counter() - start
    model.eval()
    collator = Collator(processor, prompt_format="llava")
    overall = {k: v for k, v in readback(model, collator, 240, seed=0).items() if k != "examples"}
    rng = random.Random("by-scene")
    by_scene = {s.__name__: {k: round(v) for k, v in caption_readback(model, collator, s, 48, rng).items()}
                for s in SCENES}  # fmt: skip
    lm = sum(p.numel() for p in model.model.language_model.parameters())
    print(json.dumps({"args": vars(args), "lm_params": lm, "train_seconds": round(seconds), "readback": overall,
                      "by_scene": by_scene, "last_caption_losses": [round(x, 3) for x in losses[-5:]]}))  # fmt: skip


if __name__ == "__main__":
    main()
