"""Tiny-width models with each supported family's REAL image geometry, saved as folders like the published
checkpoints (float16 config, the family's processor class and its published image settings, a chat template), so
that `branchlora run --base DIR` meets what llava-1.5-7b-hf, llava-v1.6, llava-onevision, Qwen2(.5)-VL and
InternVL3 give it: 336 / 384 / 448 px inputs, patch 14, hundreds to thousands of image tokens per photo.

Widths are tiny (vision 32 wide, 2 layers; text 64 wide, 2 layers; the tiny base's tokenizer), built offline with the
PIL image processors (no torchvision).  The families with a video processor (OneVision, Qwen-VL, InternVL) are saved
naming their published video processor class, which needs torchvision, exactly as a downloaded checkpoint does.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers as T

from branchlora.bench import realistic
from branchlora.models.loading import image_only

from family_support import INTERNVL_TEMPLATE, INTERNVL_TOKENS, KINDS, MROPE, QWEN_TEMPLATE, QWEN_TOKENS, TEXT, VISION

# The published image settings (llava-hf, Qwen and OpenGVLab hf checkpoints' processor configs).
CLIP_336 = {"image_size": 336, "patch_size": 14}
SIGLIP_384 = {"image_size": 384, "patch_size": 14}
INTERNVL_448 = {"image_size": [448, 448], "patch_size": [14, 14]}
NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]  # llava-v1.6, (height, width)
ONEVISION_PINPOINTS = [[384 * i, 384 * j] for i in range(1, 7) for j in range(1, 7)]  # llava-onevision-*-ov-hf
QWEN_PIXELS = {"min_pixels": 3136, "max_pixels": 12845056}  # Qwen2-VL / Qwen2.5-VL-7B-Instruct
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # InternVL
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# llava-hf's LLaVA-1.5 / v1.6 (vicuna) template: "USER: <image>\n<text> ASSISTANT:".
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'].upper() + ': ' }}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
# llava-onevision-hf's Qwen-style template, the image placeholder "<image>" before the text.
ONEVISION_TEMPLATE = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n")
VIDEO_PROCESSORS = {"llava_onevision": "LlavaOnevisionVideoProcessor", "internvl": "InternVLVideoProcessor",
                    "qwen2_vl": "Qwen2VLVideoProcessor", "qwen2_5_vl": "Qwen2VLVideoProcessor"}  # fmt: skip
MAX_POSITIONS = {"llava": 4096, "llava_next": 4096}  # vicuna-7b; the Qwen2 language models: 32768


def tokenizer(kind: str, extra: list[str] = (), named: dict[str, str] | None = None) -> T.PreTrainedTokenizerBase:
    """The tiny base's tokenizer with a family's special tokens, `named` ones also as attributes (InternVL's
    tokenizer config declares `context_image_token` and friends); its limit is the family's context length."""
    from branchlora.models.loading import PACKAGED

    tok = T.AutoTokenizer.from_pretrained(PACKAGED, extra_special_tokens=named)
    if extra:
        tok.add_special_tokens({"additional_special_tokens": list(extra)})
    tok.model_max_length = MAX_POSITIONS.get(kind, 32768)
    return tok


def text_config(tok: T.PreTrainedTokenizerBase, model_type: str) -> dict:
    """The family's language model at family_support's tiny widths, its vocabulary and limit the tokenizer's."""
    limits = {"vocab_size": len(tok), "max_position_embeddings": tok.model_max_length}
    return {**TEXT, "model_type": model_type, **limits, **special_ids(tok)}


def special_ids(tok: T.PreTrainedTokenizerBase) -> dict[str, int]:
    return {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}


def llava(kind: str) -> tuple[torch.nn.Module, T.ProcessorMixin]:
    """LLaVA-1.5 (CLIP 336/14, 576 tokens) or LLaVA-NeXT (the same tower, anyres over llava-v1.6's pinpoints):
    feature layer -2, CLS dropped ("default"), a LLaMA language model."""
    tok = tokenizer(kind)
    image_token = tok.convert_tokens_to_ids("<image>")
    vision = {**VISION, **CLIP_336, "model_type": "clip_vision_model"}
    common = {"text_config": text_config(tok, "llama"), "vision_config": vision, "vision_feature_layer": -2,
              "vision_feature_select_strategy": "default", "image_token_index": image_token,
              **special_ids(tok)}  # fmt: skip
    images = {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}, "image_mean": CLIP_MEAN,
              "image_std": CLIP_STD}  # fmt: skip
    options = {"patch_size": 14, "vision_feature_select_strategy": "default", "num_additional_image_tokens": 1,
               "image_token": "<image>", "chat_template": LLAVA_TEMPLATE}  # fmt: skip
    if kind == "llava":
        model = T.LlavaForConditionalGeneration(T.LlavaConfig(image_seq_length=576, **common))
        return model, T.LlavaProcessor(T.CLIPImageProcessorPil(**images), tok, **options)
    model = T.LlavaNextForConditionalGeneration(T.LlavaNextConfig(image_grid_pinpoints=NEXT_PINPOINTS, **common))
    images = T.LlavaNextImageProcessorPil(image_grid_pinpoints=NEXT_PINPOINTS, do_pad=True, **images)
    return model, T.LlavaNextProcessor(images, tok, **options)


def llava_onevision(kind: str) -> tuple[torch.nn.Module, T.ProcessorMixin]:
    """SigLIP 384/14 (729 tokens a crop, no CLS), anyres_max_9 over the published 36 pinpoints, Qwen2 LM."""
    from transformers.models.llava_onevision import LlavaOnevisionImageProcessorPil

    tok = tokenizer(kind, ["<video>", *QWEN_TOKENS[4:]])
    config = T.LlavaOnevisionConfig(
        text_config=text_config(tok, "qwen2"), vision_config={**VISION, **SIGLIP_384,
        "model_type": "siglip_vision_model"}, image_grid_pinpoints=ONEVISION_PINPOINTS, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9",
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        **special_ids(tok),
    )  # fmt: skip
    images = LlavaOnevisionImageProcessorPil(size={"height": 384, "width": 384}, do_pad=True, image_mean=[0.5] * 3,
                                             image_std=[0.5] * 3, image_grid_pinpoints=ONEVISION_PINPOINTS)  # fmt: skip
    processor = image_only(T.LlavaOnevisionProcessor)(
        images, tok, num_image_tokens=729, vision_feature_select_strategy="full",
        chat_template=ONEVISION_TEMPLATE, vision_aspect_ratio="anyres_max_9",
    )  # fmt: skip
    return T.LlavaOnevisionForConditionalGeneration(config), processor


def qwen_vl(kind: str) -> tuple[torch.nn.Module, T.ProcessorMixin]:
    """Qwen2-VL / Qwen2.5-VL: patch 14, 2 x 2 merge, the published min / max pixels, a Qwen2 LM with M-RoPE."""
    from family_support import IDS, tiny_family_model

    tok = tokenizer(kind, QWEN_TOKENS, {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
    tokens = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]  # in IDS' order
    ids = {name: tok.convert_tokens_to_ids(token) for name, token in zip(IDS, tokens, strict=True)}
    vision = tiny_family_model(kind).config.vision_config.to_dict()  # family_support's 2-layer tower, patch 14
    if kind == "qwen2_5_vl":
        vision["window_size"] = 112  # Qwen2.5-VL's published attention window (8 x 8 merged patches)
    text = {**text_config(tok, kind + "_text"), "rope_scaling": MROPE}
    config = T.AutoConfig.for_model(kind, text_config=text, vision_config=vision, **ids, **special_ids(tok))
    images = T.Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, **QWEN_PIXELS)
    processor_class = T.Qwen2_5_VLProcessor if kind == "qwen2_5_vl" else T.Qwen2VLProcessor
    processor = image_only(processor_class)(images, tok, chat_template=QWEN_TEMPLATE)
    return T.AutoModelForImageTextToText.from_config(config), processor


def internvl(kind: str) -> tuple[torch.nn.Module, T.ProcessorMixin]:
    """InternVL3-hf: 448 px tiles (up to 12 plus a thumbnail), patch 14, pixel shuffle 0.5: 256 tokens a tile."""
    tok = tokenizer(kind, QWEN_TOKENS[4:], INTERNVL_TOKENS)
    config = T.InternVLConfig(
        text_config=text_config(tok, "qwen2"), vision_config={**VISION, **INTERNVL_448}, downsample_ratio=0.5,
        image_token_id=tok.context_image_token_id, **special_ids(tok),
    )  # fmt: skip
    images = T.GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, crop_to_patches=True, min_patches=1,
                                        max_patches=12, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)  # fmt: skip
    processor = image_only(T.InternVLProcessor)(images, tok, image_seq_length=256,
                                                chat_template=INTERNVL_TEMPLATE)  # fmt: skip
    return T.InternVLForConditionalGeneration(config), processor


BUILDERS = {"llava": llava, "llava_next": llava, "llava_onevision": llava_onevision, "internvl": internvl,
            "qwen2_vl": qwen_vl, "qwen2_5_vl": qwen_vl}  # fmt: skip
assert set(BUILDERS) == set(KINDS)


def build_family_folder(kind: str, out: Path) -> Path:
    """A checkpoint folder of `kind` (a transformers model_type, as family_support.KINDS) at `out`: random tiny
    weights saved in float16 (as the published checkpoints are) and the processor, with its published video
    processor class where the family has one.  Returns `out`."""
    torch.manual_seed(0)
    model, processor = BUILDERS[kind](kind)
    model.half().save_pretrained(out)
    processor.save_pretrained(out)
    if kind in VIDEO_PROCESSORS:
        path = Path(out) / "processor_config.json"
        saved = json.loads(path.read_text())
        saved["video_processor"] = {"video_processor_type": VIDEO_PROCESSORS[kind]}
        path.write_text(json.dumps(saved, indent=2))
    return Path(out)


PHOTOS, write_photo_stream = realistic.PHOTOS, realistic.write_photo_stream  # the benchmark's own writer
