"""The tiny base: a few-million-parameter LLaVA (CLIP-style tower, projector, LLaMA-style LM) built in code.

It is a real transformers `LlavaForConditionalGeneration` with a real `LlavaProcessor`, so every line
of the engine that runs on it runs unchanged on llava-hf/llava-1.5-7b-hf.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import torch
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

from branchlora.typed import check_fields

TINY_VERSION = 2  # bump when the architecture or the pre-training recipe changes, so caches rebuild


@dataclass(frozen=True)
class TinyConfig:
    """Sizes of the tiny base. 64 px / patch 8 = 64 image tokens (the CLS token is dropped)."""

    image_size: int = field(default=64, metadata={"help": "image side in pixels"})
    patch_size: int = field(default=8, metadata={"help": "vision patch side: (image_size / patch_size)^2 tokens"})
    vision_hidden: int = field(default=128, metadata={"help": "vision tower width"})
    vision_layers: int = field(default=4, metadata={"help": "vision tower layers"})
    vision_heads: int = field(default=4, metadata={"help": "vision tower attention heads"})
    hidden: int = field(default=192, metadata={"help": "language model width"})
    layers: int = field(default=4, metadata={"help": "language model layers"})
    heads: int = field(default=4, metadata={"help": "language model attention heads"})
    intermediate: int = field(default=512, metadata={"help": "language model MLP width"})
    vocab_size: int = field(default=768, metadata={"help": "byte-level BPE vocabulary (special tokens included)"})
    max_positions: int = field(default=512, metadata={"help": "language model context length"})

    def __post_init__(self) -> None:
        check_fields(self, minimum=1)


def build_model(cfg: TinyConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlavaForConditionalGeneration:
    """Randomly initialised tiny LLaVA whose special-token ids match `tokenizer`."""
    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=2 * cfg.vision_hidden,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
    )
    text = LlamaConfig(
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        vocab_size=len(tokenizer),
        max_position_embeddings=cfg.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def build_processor(cfg: TinyConfig, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """A LlavaProcessor with the PIL CLIP image processor (no torchvision needed)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # the CLS token, which "default" then drops
    )


def fingerprint(*configs: object, seed: int) -> str:
    """A short hash of everything that determines the built base: the cache key."""
    blob = json.dumps([TINY_VERSION, seed, *(asdict(c) for c in configs)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
