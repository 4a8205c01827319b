"""Load a base model by name: "tiny" (built, pre-trained and cached on first use) or any llava-hf model.

The tiny base is a transformers `LlavaForConditionalGeneration` with its `LlavaProcessor`; a pretrained
model is any supported family's (models/family.py), loaded through transformers' Auto classes, so the
engine has one code path.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    ProcessorMixin,
)
from transformers.utils import is_torchvision_available

from branchlora.atomic import atomic_dir, check_free
from branchlora.data.benchmark import default_cache_dir
from branchlora.data.collate import Collator
from branchlora.models.family import require_family
from branchlora.models.pretrain import PretrainConfig, build_tokenizer, pretrain
from branchlora.models.tiny import TinyConfig, build_model, build_processor, fingerprint
from branchlora.typed import ConfigError, check_fields

INFO_FILE = "base_info.json"
INFO_ATTR = "branchlora_base_info"
# The tiny base built by the default recipe (`branchlora pretrain --out` this folder), shipped with the package.
PACKAGED = Path(str(resources.files("branchlora") / "assets" / "tiny-base"))
ASPECTS = ("auto", "pad", "native")
ATTENTION = ("sdpa", "eager", "flash_attention_2")
PAD_FAMILIES = ("llava",)  # model_type of LLaVA-1.5, trained on images padded to a square (expand2square)


@dataclass
class ModelConfig:
    """How the base model and its processor are loaded, and how long a sequence may be."""

    max_length: int = field(
        default=0,
        metadata={"help": "longest sequence in tokens, image tokens included (0: the model's own limit, its "
                          "text config's max_position_embeddings; CoIN trains at 2048); a longer item is refused",
                  "min": 0},
    )  # fmt: skip
    processor: dict = field(
        default_factory=dict,
        metadata={"help": "keyword arguments of AutoProcessor.from_pretrained, e.g. {min_pixels: 200704, "
                          "max_pixels: 1003520} for Qwen-VL"},
    )  # fmt: skip
    image_aspect: str = field(
        default="auto",
        metadata={"help": "pad: pad each image to a centred square of the processor's mean colour before the "
                          "processor (LLaVA-1.5's expand2square); native: as the processor does; auto: pad for "
                          "the llava-1.5 family (model_type llava), native otherwise", "choices": ASPECTS},
    )  # fmt: skip
    attn_implementation: str = field(
        default="sdpa",
        metadata={"help": "attention kernel passed to from_pretrained (flash_attention_2 needs flash_attn)",
                  "choices": ATTENTION},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("attn_implementation", "flash_attention_2 needs the flash_attn package, which is not "
                                                     "installed; use sdpa")  # fmt: skip


def run_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype the base is loaded in: bfloat16 for a bf16 run (no per-call cast of frozen weights under
    autocast, no second copy kept for backward), float32 otherwise; trainables stay float32 either way."""
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float32


def context_limit(model_config) -> int:
    """The model's own longest sequence: its text config's max_position_embeddings."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return int(text.max_position_embeddings)


def make_collator(processor: ProcessorMixin, model_config, options: ModelConfig | None = None) -> Collator:
    """The Collator a run uses for this model: `options.max_length` (0: the model's limit) and its image aspect."""
    options = options or ModelConfig()
    pad = options.image_aspect == "pad" or (options.image_aspect == "auto" and model_config.model_type in PAD_FAMILIES)
    return Collator(processor, max_length=options.max_length or context_limit(model_config), pad_square=pad)


def packaged_fingerprint() -> str | None:
    """The recipe fingerprint of the committed tiny base, None when the package ships none."""
    info = PACKAGED / INFO_FILE
    return json.loads(info.read_text()).get("fingerprint") if info.is_file() else None


def load_base(
    name: str = "tiny",
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    progress: bool = True,
    tiny: TinyConfig | None = None,
    pretraining: PretrainConfig | None = None,
    options: ModelConfig | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """(model, processor) for "tiny" or a Hugging Face id / local directory, the model in `dtype` whatever its
    checkpoint's; see `base_info` for the report."""
    options = options or ModelConfig()
    if name != "tiny":
        return load_pretrained(name, options, dtype)
    folder = tiny_folder(tiny, pretraining, seed, cache_dir)
    built = not (folder / INFO_FILE).exists()
    if built:
        build_tiny(folder, tiny or TinyConfig(), pretraining or PretrainConfig(), seed=seed, progress=progress)
    model = LlavaForConditionalGeneration.from_pretrained(
        folder, dtype=dtype, attn_implementation=options.attn_implementation
    )
    processor = LlavaProcessor.from_pretrained(folder, **options.processor)
    info = json.loads((folder / INFO_FILE).read_text())
    if not built:
        info["pretrain_seconds"] = 0.0  # this run paid nothing for the base
    setattr(model, INFO_ATTR, info)
    return model.eval(), processor


def tiny_folder(tiny: TinyConfig | None, pretraining: PretrainConfig | None, seed: int, cache_dir: Path | None) -> Path:
    """Where the tiny base of these sizes and recipe lives: the packaged one when it matches, else the cache."""
    key = fingerprint(tiny or TinyConfig(), pretraining or PretrainConfig(), seed=seed)
    if packaged_fingerprint() == key:  # the committed base: the same weights on every machine
        return PACKAGED
    return Path(cache_dir or default_cache_dir()) / "models" / f"tiny-{key}"


def load_pretrained(
    name: str, options: ModelConfig | None = None, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A vision-language model of a supported family (models/family.py: LLaVA-1.5, LLaVA-NeXT, OneVision,
    InternVL, Qwen2-VL, Qwen2.5-VL) from a local folder or the hub, through transformers' Auto classes, in
    `dtype` (not the checkpoint's own: llava-1.5-7b-hf ships float16); when that fails, one line saying why."""
    options = options or ModelConfig()
    try:
        model = AutoModelForImageTextToText.from_pretrained(
            name, dtype=dtype, attn_implementation=options.attn_implementation
        )
        processor = auto_processor(name, **options.processor)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(f"base {str(name)!r}: {_not_loaded(str(name), err)}") from None
    try:
        require_family(model)
    except ValueError as err:
        raise ValueError(f"base {str(name)!r}: {err}") from None
    setattr(model, INFO_ATTR, {"name": str(name), "pretrain_seconds": 0.0, "caption_loss": None})
    return model.eval(), processor


def auto_processor(name: str, **options) -> ProcessorMixin:
    """The model's processor through AutoProcessor, with `options` (model.processor).  OneVision's, Qwen-VL's and
    InternVL's also carry a video processor, which transformers builds only with torchvision; where torchvision is
    missing they come without it (`image_only`), as this tool gives them images only."""
    try:
        return AutoProcessor.from_pretrained(name, **options)
    except ImportError:
        if is_torchvision_available():
            raise
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

    return image_only(PROCESSOR_MAPPING[type(AutoConfig.from_pretrained(name))]).from_pretrained(name, **options)


def image_only(processor_class: type[ProcessorMixin]) -> type[ProcessorMixin]:
    """`processor_class` without its video processor: transformers builds, loads and checks a processor's parts
    from `get_attributes`, so one without "video_processor" never asks for torchvision; images and text go through
    the family's own code, and the class keeps its name (a saved processor names the family's class)."""
    parts = [name for name in processor_class.get_attributes() if name != "video_processor"]
    return type(processor_class.__name__, (processor_class,), {"get_attributes": classmethod(lambda cls: parts)})


def _not_loaded(name: str, err: Exception) -> str:
    """Why transformers could not load `name`, in a few words (its own message spans lines and URLs)."""
    from huggingface_hub import constants

    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if Path(name).expanduser().is_dir():
        return f"the folder holds no loadable vision-language model ({first})"
    where = "is not a local folder and could not be loaded from the Hugging Face hub"
    if constants.HF_HUB_OFFLINE:
        return f"{where}: offline mode (HF_HUB_OFFLINE=1) and not in the local cache"
    if "couldn't connect" in first:
        return f"{where}: no network and not in the local cache"
    return f"{where}: not found ({first})"


def base_info(model: LlavaForConditionalGeneration) -> dict:
    """{"name", "pretrain_seconds" (0 when loaded from the cache or the hub), "caption_loss" (None off-tiny)},
    plus for the tiny base "params", "seed" and its configs, as `load_base` recorded them."""
    return dict(getattr(model, INFO_ATTR, {"name": "unknown", "pretrain_seconds": 0.0, "caption_loss": None}))


def build_tiny(
    folder: Path, tiny: TinyConfig, pretraining: PretrainConfig, *, seed: int, progress: bool, device: str = "cpu"
) -> None:
    """Train the tokenizer, build and pre-train the model (on `device`), and move the result into `folder`
    atomically."""
    check_free(folder)  # before the build: minutes of work, then a rename that could not happen
    tokenizer = build_tokenizer(seed, pretraining, tiny.vocab_size, tiny.image_size)
    model, processor = build_model(tiny, tokenizer, seed=seed), build_processor(tiny, tokenizer)
    report = pretrain(model, processor, pretraining, seed=seed, progress=progress, device=device)
    info = {
        "name": "tiny",
        "fingerprint": fingerprint(tiny, pretraining, seed=seed),
        "pretrain_seconds": round(report["pretrain_seconds"], 1),
        "device": str(device),
        "caption_loss": round(report["caption_loss"], 4),
        "perception": report["perception"],  # % of held-out scenes whose caption states each fact right
        "tower_accuracy": {k: round(100 * v, 2) for k, v in report["tower_accuracy"].items()},
        "loss_curve": loss_curve(report["losses"]),
        "params": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "tiny": asdict(tiny),
        "pretraining": asdict(pretraining),
    }
    with atomic_dir(folder, INFO_FILE) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1))


def loss_curve(losses: list[float], points: int = 20) -> list[float]:
    """The training loss averaged into at most `points` equal chunks: enough to see it fall."""
    chunk = max(1, -(-len(losses) // points))  # ceiling division
    return [round(sum(losses[i : i + chunk]) / len(losses[i : i + chunk]), 4) for i in range(0, len(losses), chunk)]


def tiny_configs(options: dict) -> tuple[TinyConfig, PretrainConfig]:
    """The tiny base's sizes and recipe from plain mappings, as a config file gives them."""
    try:
        return TinyConfig(**options.get("tiny", {})), PretrainConfig(**options.get("pretraining", {}))
    except TypeError as err:
        raise ValueError(f"base_options: {err}") from None


def load_base_from(
    name: str,
    options: dict | None = None,
    *,
    progress: bool = True,
    model: ModelConfig | None = None,
    dtype: torch.dtype = torch.float32,
):
    """`load_base` with the tiny base's options as plain mappings, as a config file gives them:
    {"seed": 0, "tiny": {TinyConfig fields}, "pretraining": {PretrainConfig fields}}."""
    options = checked_base_options(options)
    tiny, pretraining = tiny_configs(options)
    return load_base(name, seed=options.get("seed", 0), tiny=tiny, pretraining=pretraining, progress=progress,
                     options=model, dtype=dtype)  # fmt: skip


def checked_base_options(options: dict | None) -> dict:
    options = dict(options or {})
    unknown = sorted(set(options) - {"seed", "tiny", "pretraining"})
    if unknown:
        raise ValueError(f"base_options: unknown key(s) {unknown}; valid keys: ['pretraining', 'seed', 'tiny']")
    return options


def load_processor(name: str, base_options: dict | None = None, model: ModelConfig | None = None) -> ProcessorMixin:
    """The base's processor alone, no weights read (the dry run): the tiny base's from its folder when built
    (or packaged), else its tokenizer rebuilt from the recipe, which is deterministic."""
    options, model = checked_base_options(base_options), model or ModelConfig()
    if name != "tiny":
        try:
            return auto_processor(name, **model.processor)
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"base {str(name)!r}: {_not_loaded(str(name), err)}") from None
    tiny, pretraining = tiny_configs(options)
    seed = options.get("seed", 0)
    folder = tiny_folder(tiny, pretraining, seed, None)
    if (folder / INFO_FILE).exists():
        return LlavaProcessor.from_pretrained(folder, **model.processor)
    return build_processor(tiny, build_tokenizer(seed, pretraining, tiny.vocab_size, tiny.image_size))
