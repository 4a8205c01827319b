"""Tiny randomly initialised models of every supported family, through transformers' own classes."""

from __future__ import annotations

import re

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


QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]


class ImageOnlyQwenProcessor(T.Qwen2VLProcessor):
    """Qwen2-VL's processor without its video processor (which needs torchvision, not installed here)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        T.ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def qwen_model_and_processor(kind: str) -> tuple[torch.nn.Module, ImageOnlyQwenProcessor]:
    """A tiny random Qwen2-VL / Qwen2.5-VL (`kind`) and a processor on the tiny base's tokenizer plus Qwen's
    special tokens and a Qwen-style chat template; images are resized to at most 56 x 56 pixels (4 x 4 patches)."""
    from branchlora.models.loading import PACKAGED

    tokenizer = T.LlavaProcessor.from_pretrained(PACKAGED).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_TOKENS})
    images = T.Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2,
                                     temporal_patch_size=2)  # fmt: skip
    processor = ImageOnlyQwenProcessor(images, tokenizer, chat_template=QWEN_TEMPLATE)
    model = tiny_family_model(kind)
    tokens = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]  # in IDS' order
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in zip(IDS, tokens, strict=True)}
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id, **ids}  # fmt: skip
    text = {**TEXT, "vocab_size": len(tokenizer), "rope_scaling": MROPE}
    config = type(model.config)(text_config=text, vision_config=model.config.vision_config.to_dict(), **special)
    torch.manual_seed(0)
    return type(model)(config).eval(), processor


def llava_next_model_and_processor() -> tuple[torch.nn.Module, T.LlavaNextProcessor]:
    """A tiny random LLaVA-NeXT on the tiny base's tokenizer; 28-pixel crops, up to two per image."""
    from branchlora.models.loading import PACKAGED

    base = T.LlavaProcessor.from_pretrained(PACKAGED)
    tokenizer, pinpoints = base.tokenizer, [[28, 28], [28, 56], [56, 28]]
    images = T.LlavaNextImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28},
                                       image_grid_pinpoints=pinpoints)  # fmt: skip
    processor = T.LlavaNextProcessor(images, tokenizer, patch_size=14, vision_feature_select_strategy="default",
                                     chat_template=base.chat_template, image_token=base.image_token,
                                     num_additional_image_tokens=1)  # fmt: skip
    special = {"image_token_index": tokenizer.convert_tokens_to_ids(base.image_token),
               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = T.LlavaNextConfig(text_config={**TEXT, "model_type": "llama", "vocab_size": len(tokenizer)},
                               vision_config={**VISION, "model_type": "clip_vision_model"},
                               image_grid_pinpoints=pinpoints, **special)  # fmt: skip
    torch.manual_seed(0)
    return T.LlavaNextForConditionalGeneration(config).eval(), processor


class ImageOnlyOneVisionProcessor(T.LlavaOnevisionProcessor):
    """LLaVA-OneVision's processor without its video processor (which needs torchvision, not installed here)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, num_image_tokens=None,
                 vision_feature_select_strategy=None, image_token="<image>", video_token="<video>",
                 vision_aspect_ratio="anyres_max_9", **kwargs):  # fmt: skip
        self.num_image_tokens, self.vision_feature_select_strategy = num_image_tokens, vision_feature_select_strategy
        self.image_token, self.video_token, self.vision_aspect_ratio = image_token, video_token, vision_aspect_ratio
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(video_token)
        T.ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def llava_onevision_model_and_processor() -> tuple[torch.nn.Module, ImageOnlyOneVisionProcessor]:
    """A tiny random LLaVA-OneVision (SigLIP tower, Qwen2 LM) on the tiny base's tokenizer; 28-pixel crops."""
    from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

    from branchlora.models.loading import PACKAGED

    base = T.LlavaProcessor.from_pretrained(PACKAGED)
    tokenizer, pinpoints = base.tokenizer, [[28, 28], [28, 56], [56, 28]]
    tokenizer.add_special_tokens({"additional_special_tokens": ["<video>"]})
    images = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    processor = ImageOnlyOneVisionProcessor(
        images, tokenizer, chat_template=base.chat_template, num_image_tokens=4,
        vision_feature_select_strategy="full", image_token=base.image_token,
    )  # fmt: skip
    special = {"image_token_index": processor.image_token_id, "video_token_index": processor.video_token_id,
               "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = T.LlavaOnevisionConfig(text_config={**TEXT, "model_type": "qwen2", "vocab_size": len(tokenizer)},
                                    vision_config={**VISION, "model_type": "siglip_vision_model"},
                                    image_grid_pinpoints=pinpoints, vision_feature_select_strategy="full",
                                    vision_feature_layer=-1, **special)  # fmt: skip
    torch.manual_seed(0)
    return T.LlavaOnevisionForConditionalGeneration(config).eval(), processor


INTERNVL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<IMG_CONTEXT>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
INTERNVL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
                   "video_token": "<video>"}  # fmt: skip


class ImageOnlyInternVLProcessor(T.InternVLProcessor):
    """InternVL's processor without its video processor (which needs torchvision, not installed here)."""

    def __init__(self, image_processor=None, tokenizer=None, image_seq_length=1, chat_template=None, **kwargs):
        T.ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)
        self.image_seq_length = image_seq_length
        self.start_image_token, self.end_image_token = tokenizer.start_image_token, tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token, self.video_token = tokenizer.context_image_token, tokenizer.video_token
        self.image_token_id = tokenizer.context_image_token_id
        image, video = re.escape(self.image_token), re.escape(self.video_token)
        self.multimodal_pattern = re.compile(f"(?P<image>{image})|(?P<video>{video})")


def internvl_model_and_processor() -> tuple[torch.nn.Module, ImageOnlyInternVLProcessor]:
    """A tiny random InternVL (Qwen2 LM) on the tiny base's tokenizer plus InternVL's image tokens; images are
    tiled into up to four 28-pixel tiles plus a thumbnail, one image token per tile (2 x 2 patches, shuffled)."""
    from branchlora.models.loading import PACKAGED

    tokenizer = T.LlavaProcessor.from_pretrained(PACKAGED).tokenizer
    tokenizer.add_special_tokens({"additional_special_tokens": list(INTERNVL_TOKENS.values())})
    for name, token in INTERNVL_TOKENS.items():  # what InternVL's tokenizer config declares
        setattr(tokenizer, name, token)
        setattr(tokenizer, f"{name}_id", tokenizer.convert_tokens_to_ids(token))
    images = T.GotOcr2ImageProcessorPil(size={"height": 28, "width": 28}, crop_to_patches=True, min_patches=1,
                                        max_patches=4)  # fmt: skip
    processor = ImageOnlyInternVLProcessor(images, tokenizer, image_seq_length=1, chat_template=INTERNVL_TEMPLATE)
    vision = {**VISION, "image_size": [28, 28], "patch_size": [14, 14]}
    special = {"image_token_id": tokenizer.context_image_token_id, "bos_token_id": tokenizer.bos_token_id,
               "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}  # fmt: skip
    config = T.InternVLConfig(text_config={**TEXT, "model_type": "qwen2", "vocab_size": len(tokenizer)},
                              vision_config=vision, downsample_ratio=0.5, **special)  # fmt: skip
    torch.manual_seed(0)
    return T.InternVLForConditionalGeneration(config).eval(), processor
