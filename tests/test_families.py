"""Model families: one seam says where each keeps its parts; targets, parts, selector embeddings and counts."""

import re

import pytest
import torch

from branchlora.adapters import AdapterConfig, adapter_layers, inject_adapters, unwrap
from branchlora.models.family import family_of, require_family
from branchlora.models.parts import language_model, projector
from branchlora.params import count_parameters

from family_support import KINDS, image_batch, tiny_family_model

LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


@pytest.fixture(scope="module", params=KINDS)
def model(request):
    return request.param, tiny_family_model(request.param)


def test_default_targets_are_the_language_models_seven_linears(model):
    kind, m = model
    names = inject_adapters(m, AdapterConfig(kind="lora", r=4))
    assert len(names) == 7 * 2  # two decoder layers
    assert all(re.fullmatch(r"model\.language_model\.layers\.\d\.(self_attn|mlp)\.\w+", n) for n in names), names
    assert {n.rsplit(".", 1)[1] for n in names} == LINEARS  # never the vision tower's (Qwen2.5's has gate/up/down)
    assert len(list(adapter_layers(m))) == len(names)
    unwrap(m)


def test_ffn_and_projector_preset(model):
    kind, m = model
    names = inject_adapters(m, AdapterConfig(kind="lora", r=4, targets="ffn+projector"))
    proj = [n for n in names if "language_model" not in n]
    assert len(names) - len(proj) == 3 * 2 and len(proj) == 2, names
    assert all(n.startswith(require_family(m).projector + ".") for n in proj)
    unwrap(m)


def test_parts_come_from_the_family(model):
    kind, m = model
    family = family_of(m)
    assert projector(m) is m.get_submodule(family.projector)
    assert language_model(m) is m.model.language_model
    assert ("visual" in family.vision) == kind.startswith("qwen")


def test_selector_image_embedding_batches_variable_sizes(model):
    """Each image's embedding is the same alone and in a batch (Qwen: a different patch count per image)."""
    kind, m = model
    family = require_family(m)
    sizes = [(4, 4), (2, 4), (4, 2)] if kind.startswith("qwen") else [(2, 2)] * 3
    torch.manual_seed(1)
    batch = image_batch(kind, sizes)
    with torch.no_grad():
        together = family.embed_image(m, batch)
        assert together.shape == (3, family.vision_width(m))
        if kind.startswith("qwen"):
            start = 0
            for i, (h, w) in enumerate(sizes):
                alone = {"pixel_values": batch["pixel_values"][start : start + h * w],
                         "image_grid_thw": batch["image_grid_thw"][i : i + 1]}  # fmt: skip
                start += h * w
                torch.testing.assert_close(family.embed_image(m, alone)[0], together[i], rtol=1e-4, atol=1e-5)
        else:
            alone = {"pixel_values": batch["pixel_values"][1:2]}
            torch.testing.assert_close(family.embed_image(m, alone)[0], together[1], rtol=1e-4, atol=1e-5)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="not a supported vision-language family"):
        require_family(torch.nn.Linear(2, 2))


# (decoder Linears (d_in, d_out) of one layer, layers, projector parameters, published size of the base in billions)
PUBLISHED = {
    "qwen2.5-vl-7b": ([(3584, 3584), (3584, 512), (3584, 512), (3584, 3584), (3584, 18944), (3584, 18944),
                       (18944, 3584)], 28, 1280 + 5120 * 5120 + 5120 + 5120 * 3584 + 3584, 8.29),
    "qwen2-vl-7b": ([(3584, 3584), (3584, 512), (3584, 512), (3584, 3584), (3584, 18944), (3584, 18944),
                     (18944, 3584)], 28, 2 * 1280 + 5120 * 5120 + 5120 + 5120 * 3584 + 3584, 8.29),
    "llava-next-7b": ([(4096, 4096)] * 4 + [(4096, 11008)] * 2 + [(11008, 4096)], 32,
                      1024 * 4096 + 4096 + 4096 * 4096 + 4096, 7.06),
    "llava-onevision-7b": ([(3584, 3584), (3584, 512), (3584, 512), (3584, 3584), (3584, 18944), (3584, 18944),
                            (18944, 3584)], 28, 1152 * 3584 + 3584 + 3584 * 3584 + 3584, 8.03),
}  # fmt: skip


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_configs_give_hand_counted_parameters(name):
    linears, layers, proj, billions = PUBLISHED[name]
    lora = count_parameters(name, "lora")
    adapters = layers * sum(128 * (d_in + d_out) for d_in, d_out in linears)
    assert lora["by_part"]["projector"] == proj
    assert lora["tunable"] == adapters + proj
    assert round((lora["total"] - adapters) / 1e9, 2) == billions  # the base alone, as its model card sizes it
    moelora, branch = count_parameters(name, "moelora"), count_parameters(name, "branchlora")
    routers = layers * sum(8 * d_in for d_in, _ in linears)
    assert moelora["tunable"] == lora["tunable"] + routers
    trunk = layers * sum(16 * d_in for d_in, _ in linears)
    assert branch["tunable"] == layers * sum(128 * d_out for _, d_out in linears) + trunk + routers + proj
