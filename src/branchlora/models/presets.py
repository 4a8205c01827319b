"""Real model shapes, built on the meta device (no weights, no download) for parameter accounting."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from branchlora.files import first_line, read_json

# LLaVA-1.5: CLIP ViT-L/14-336 + mlp2x_gelu projector + Vicuna (LLaMA) 7B / 13B.
LLAVA_15 = {
    "llava-1.5-7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "heads": 32},
    "llava-1.5-13b": {"hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40, "heads": 40},
}


def llava_15_config(name: str):
    """The transformers LlavaConfig of a LLaVA-1.5 preset (the dimensions of llava-hf/llava-1.5-*-hf)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    dims = LLAVA_15[name]
    vision = CLIPVisionConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=336, patch_size=14, projection_dim=768,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=dims["hidden_size"], intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["num_hidden_layers"], num_attention_heads=dims["heads"],
        num_key_value_heads=dims["heads"], vocab_size=32064, max_position_embeddings=4096,
    )  # fmt: skip
    return LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=32000, projector_hidden_act="gelu",
        vision_feature_layer=-2, vision_feature_select_strategy="default",
    )  # fmt: skip


class LinearStack(nn.Module):
    """A plain model of named nn.Linear layers, from {"linears": {"name": [d_in, d_out], ...}}."""

    def __init__(self, linears: dict[str, list[int]]) -> None:
        super().__init__()
        for name, (d_in, d_out) in linears.items():
            self.add_module(name, nn.Linear(d_in, d_out))


# Other families' published configs, kept as small files in the package (the shapes only; no download).
CONFIG_DIR = Path(str(resources.files("branchlora") / "assets" / "model-configs"))


def preset_names() -> list[str]:
    return [*LLAVA_15, *sorted(p.stem for p in CONFIG_DIR.glob("*.json"))]


def build_meta_model(spec: str) -> nn.Module:
    """A preset name, or a path to a config.json (a transformers config, or a plain Linear stack)."""
    with torch.device("meta"):
        if spec in LLAVA_15:
            from transformers import LlavaForConditionalGeneration

            return LlavaForConditionalGeneration(llava_15_config(spec))
        path = CONFIG_DIR / f"{spec}.json" if (CONFIG_DIR / f"{spec}.json").is_file() else Path(spec)
        if not path.is_file():
            raise FileNotFoundError(
                f"--model {spec!r} is neither a preset ({', '.join(preset_names())}) nor an existing config.json"
            )
        data = read_json(path)
        if "linears" in data:
            return LinearStack(_linears(path, data["linears"]))
        return _transformers_model(path, data)


def _linears(path: Path, table: object) -> dict[str, list[int]]:
    """The 'linears' table, checked: {name: [d_in, d_out]} with positive integer widths."""

    def width(d: object) -> bool:
        return isinstance(d, int) and not isinstance(d, bool) and d >= 1

    if not isinstance(table, dict) or not all(isinstance(v, list) and len(v) == 2 and all(map(width, v))
                                              for v in table.values()):  # fmt: skip
        raise ValueError(f"{str(path)!r}: 'linears' must map names to [d_in, d_out] (positive integers), got "
                         f"{json.dumps(table)[:80]}")  # fmt: skip
    return table


def _transformers_model(path: Path, data: dict) -> nn.Module:
    from huggingface_hub.errors import StrictDataclassError
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers import __version__ as version

    kind = data.get("model_type")
    if kind is None:
        raise ValueError(f"{str(path)!r}: neither a transformers config (no 'model_type') nor a 'linears' table")
    if not isinstance(kind, str) or kind not in CONFIG_MAPPING:
        raise ValueError(f"{str(path)!r}: model_type {kind!r} is not one transformers {version} knows")
    try:
        config = AutoConfig.for_model(**{k: v for k, v in data.items() if not k.startswith("_")})
    except (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError) as err:  # a field's type or value
        why = first_line(err.__cause__ or err)  # a strict dataclass's own first line names only the field
        raise ValueError(f"{str(path)!r}: not a {kind} config transformers can read ({why})") from None
    for auto in (AutoModelForImageTextToText, AutoModelForCausalLM, AutoModel):
        try:
            return auto.from_config(config)
        except ValueError:
            continue
    raise ValueError(f"{path}: transformers cannot build a model of type {data['model_type']!r}")
