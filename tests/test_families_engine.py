"""Qwen2-VL, Qwen2.5-VL, LLaVA-NeXT, OneVision and InternVL through the whole engine: dynamic-resolution batches, crops,
every kind of method trained, evaluated with generation, checkpointed and restored, tasks selected with keys."""

import pytest
import torch
from PIL import Image

from branchlora.adapters import adapter_layers
from branchlora.batch import samples
from branchlora.continual import load_checkpoint, run_method
from branchlora.data.benchmark import TestExample
from branchlora.data.collate import Collator
from branchlora.methods import Task, get_method
from branchlora.models.family import require_family, sample_rows

from engine_support import TOY_EVAL, TOY_TRAIN, fresh, toy_stream
from family_support import (
    internvl_model_and_processor,
    llava_next_model_and_processor,
    llava_onevision_model_and_processor,
    qwen_model_and_processor,
)

METHODS = ["lora", "moelora", "branchlora", "proglora", "lilora", "ewc", "lwf", "olora", "hide", "sefe", "clmoe"]


BUILD = {
    "llava_next": llava_next_model_and_processor,
    "llava_onevision": llava_onevision_model_and_processor,
    "internvl": internvl_model_and_processor,
}
# All methods on one family, three on each other: why, in test_every_kind_of_method_trains_evaluates_and_restores.
ALL_METHODS_ON = "qwen2_vl"
PAIRS = [(ALL_METHODS_ON, name) for name in METHODS] + [
    (kind, name)
    for kind in ("qwen2_5_vl", "llava_next", "llava_onevision", "internvl")
    for name in ("lora", "branchlora", "lilora")
]


def _family(kind: str, folder):
    model, processor = BUILD[kind]() if kind in BUILD else qwen_model_and_processor(kind)
    return kind, model, processor, toy_stream(folder, processor, n_train=8, n_test=2)


def two_images(folder) -> list[TestExample]:
    """A square red image and a tall blue one: different patch grids, crops or tiles."""
    examples = []
    for i, image in enumerate([Image.new("RGB", (64, 64), (200, 0, 0)), Image.new("RGB", (40, 90), (0, 0, 200))]):
        image.save(folder / f"{i}.png")
        examples.append(TestExample(str(i), folder / f"{i}.png", "What colour?", "red"))
    return examples


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    """Each family's model and toy stream, built once."""
    cache = {}

    def get(kind: str):
        if kind not in cache:
            cache[kind] = _family(kind, tmp_path_factory.mktemp(kind))
        return cache[kind]

    return get


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def qwen(request, tmp_path_factory):
    return _family(request.param, tmp_path_factory.mktemp("images"))


def test_images_of_different_sizes_batch_and_route_on_text(qwen, tmp_path):
    kind, model, processor, _ = qwen
    batch = Collator(processor).prompt_batch(two_images(tmp_path))
    grid = batch["image_grid_thw"]
    assert grid.shape == (2, 3) and not torch.equal(grid[0], grid[1])  # two patch grids
    assert batch["pixel_values"].shape[0] == int(grid.prod(-1).sum())
    image = batch["input_ids"] == processor.image_token_id
    assert torch.equal(batch["mm_token_type_ids"], image.long())
    assert image.sum(-1).tolist() == (grid.prod(-1) // 4).tolist()  # one token per merged 2 x 2 patch
    first = batch["attention_mask"].argmax(dim=-1)  # the first real token, where BranchLoRA's router looks
    assert not image[torch.arange(2), first].any()
    rows = sample_rows(model, batch)
    assert rows.tolist() == [0] * int(grid[0].prod() // 4) + [1] * int(grid[1].prod() // 4)
    one = list(samples(batch))  # per-sample batches keep each image's own patches
    assert [s["pixel_values"].shape[0] for s in one] == grid.prod(-1).tolist()
    family = require_family(model)
    with torch.no_grad():
        together = family.embed_image(model, batch)
        for i, sample in enumerate(one):
            torch.testing.assert_close(family.embed_image(model, sample)[0], together[i], rtol=1e-4, atol=1e-5)


def test_internvl_tiles_batch_split_and_route_on_text(families, tmp_path):
    """InternVL tiles each image (here 5 tiles for a square image, 3 for a tall one); the collator counts
    them back from the image tokens, per-sample code splits the tiles by that count."""
    _, model, processor, _ = families("internvl")
    batch = Collator(processor).prompt_batch(two_images(tmp_path))
    tiles = batch["num_patches"]
    assert tiles.tolist() == [5, 3] and batch["pixel_values"].shape[0] == 8
    first = batch["attention_mask"].argmax(dim=-1)  # the first real token, where BranchLoRA's router looks
    assert not (batch["input_ids"] == processor.image_token_id)[torch.arange(2), first].any()
    assert sample_rows(model, batch).tolist() == [0] * 5 + [1] * 3
    one = list(samples(batch))
    assert [s["pixel_values"].shape[0] for s in one] == [5, 3]
    family = require_family(model)
    with torch.no_grad():
        together = family.embed_image(model, batch)
        logits = model(**{k: v for k, v in batch.items() if k != "num_patches"}).logits
        for i, sample in enumerate(one):
            torch.testing.assert_close(family.embed_image(model, sample)[0], together[i], rtol=1e-4, atol=1e-5)
            alone = model(**{k: v for k, v in sample.items() if k != "num_patches"}).logits[0, -1]
            torch.testing.assert_close(alone, logits[i, -1], rtol=1e-4, atol=1e-4)  # left padding: last column


@pytest.mark.parametrize(("kind", "name"), PAIRS)
def test_every_kind_of_method_trains_evaluates_and_restores(families, kind, name, tmp_path):
    """Every method on Qwen2-VL, the family furthest from LLaVA-1.5 (which the tiny base runs through every method
    in test_engine and the methods' own tests): a patch grid per image, 2 x 2 patches merged into one projector row,
    so every method's hooks (routers' per-sample rows, keys from image features, distillation and Fisher passes,
    the checkpoint) meet variable-length image rows. The other families change only how an image becomes projector
    rows and which module holds what: Qwen2.5-VL the same grid under another tower, its image keys as wide as its
    merger's output; LLaVA-NeXT a base image and crops; OneVision crops unpadded to the image's aspect; InternVL
    tiles counted back from the image tokens. Three methods read those in three ways and run on each: LoRA (plain
    adapters: only where they are injected and restored), BranchLoRA (routers over the text rows, task keys from
    the image rows: sample_rows, embed_image, vision_width) and LiLoRA (its own routing over the same rows, keys).
    The other eight methods add nothing that depends on the family."""
    _, model, _, data = families(kind)
    adapter = {"r": 8, "alpha": 16, "n_branches": 4}
    if name == "lilora":
        adapter = {"r": 8, "alpha": 16, "sub_rank": 4}
    method, tuned = get_method(name)(adapter), fresh(model)
    result = run_method(method, tuned, data, TOY_TRAIN, TOY_EVAL, tmp_path)
    assert len(result.matrix) == 4 and all(0 <= x <= 100 for row in result.matrix for x in row)
    names = [n for n, _ in adapter_layers(tuned)]
    assert names and not any(".visual.blocks." in n or "vision_tower" in n for n in names)  # never the tower
    restored_method, restored = get_method(name)(adapter), fresh(model)
    restored_method.setup(restored)
    assert load_checkpoint(tmp_path / "task-02", restored, restored_method) == 2
    for (_, layer), (_, again) in zip(adapter_layers(tuned), adapter_layers(restored), strict=True):
        for key, value in layer.adapter_parameters().items():
            assert torch.equal(value, again.adapter_parameters()[key]), key
    if name in ("branchlora", "lilora", "hide", "clmoe"):  # methods that pick their task with the keys
        batch = data.collator.prompt_batch(data.test[0] + data.test[2])
        chosen = method.eval_task_ids(tuned, batch, Task(0, data.names[0]))
        assert chosen.shape[0] == 4
        assert result.to_json(3)["selector_accuracy"] is not None
