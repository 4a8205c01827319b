"""Tiny randomly initialised models of every supported family, through transformers' own classes."""

from __future__ import annotations

import torch
import transformers as T

TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 320}  # fmt: skip
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
          "image_size": 28, "patch_size": 14}  # fmt: skip
MROPE = {"type": "mrope", "mrope_section": [2, 3, 3]}
IDS = {"image_token_id": 300, "video_token_id": 301, "vision_start_token_id": 302, "vision_end_token_id": 303}


def tiny_family_model(kind: str) -> torch.nn.Module:
    """A two-layer model of `kind` (a transformers model_type) with random weights."""
    torch.manual_seed(0)
    if kind == "qwen2_vl":
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2, "patch_size": 14,
                  "spatial_merge_size": 2, "temporal_patch_size": 2}  # fmt: skip
        config = T.Qwen2VLConfig(text_config={**TEXT, "rope_scaling": MROPE}, vision_config=vision, **IDS)
        return T.Qwen2VLForConditionalGeneration(config).eval()
    if kind == "qwen2_5_vl":
        vision = {"depth": 2, "hidden_size": 32, "out_hidden_size": 64, "intermediate_size": 64, "num_heads": 4,
                  "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "fullatt_block_indexes": [1],
                  "window_size": 56}  # fmt: skip
        config = T.Qwen2_5_VLConfig(text_config={**TEXT, "rope_scaling": MROPE}, vision_config=vision, **IDS)
        return T.Qwen2_5_VLForConditionalGeneration(config).eval()
    llama = {**TEXT, "model_type": "llama"}
    clip = {**VISION, "model_type": "clip_vision_model"}
    if kind == "llava":
        return T.LlavaForConditionalGeneration(
            T.LlavaConfig(text_config=llama, vision_config=clip, image_token_id=300)
        ).eval()
    if kind == "llava_next":
        config = T.LlavaNextConfig(text_config=llama, vision_config=clip, image_grid_pinpoints=[[28, 28]],
                                   image_token_index=300)  # fmt: skip
        return T.LlavaNextForConditionalGeneration(config).eval()
    if kind == "llava_onevision":
        siglip = {**VISION, "model_type": "siglip_vision_model"}
        config = T.LlavaOnevisionConfig(text_config={**TEXT, "model_type": "qwen2"}, vision_config=siglip,
                                        image_grid_pinpoints=[[28, 28]], image_token_index=300)  # fmt: skip
        return T.LlavaOnevisionForConditionalGeneration(config).eval()
    if kind == "internvl":
        vision = {**VISION, "image_size": [28, 28], "patch_size": [14, 14]}
        config = T.InternVLConfig(text_config={**TEXT, "model_type": "qwen2"}, vision_config=vision,
                                  downsample_ratio=0.5, image_token_id=300)  # fmt: skip
        return T.InternVLForConditionalGeneration(config).eval()
    raise ValueError(kind)


KINDS = ("llava", "llava_next", "llava_onevision", "internvl", "qwen2_vl", "qwen2_5_vl")


def image_batch(kind: str, sizes: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Random pixel inputs for images of `sizes` (patch grids h x w; Qwen: variable per image)."""
    if kind.startswith("qwen"):
        grid = torch.tensor([[1, h, w] for h, w in sizes])
        return {"pixel_values": torch.randn(int(grid.prod(-1).sum()), 3 * 2 * 14 * 14), "image_grid_thw": grid}
    return {"pixel_values": torch.randn(len(sizes), 3, 28, 28)}
