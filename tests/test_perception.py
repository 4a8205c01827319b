"""The tiny base's perception: label maps drawn with the renderer's geometry, patch shares, caption read-back."""

import json
import random

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.data import world
from branchlora.data.collate import Collator
from branchlora.models.loading import INFO_FILE, PACKAGED, base_info, load_base_from, packaged_fingerprint
from branchlora.models.perception import READBACK_FACTS, PerceptionHeads, patch_shares, perception_loss, read_caption
from branchlora.models.pretrain import QUICK_PRETRAIN, QUICK_TINY, PretrainConfig, text_batch
from branchlora.models.tiny import TinyConfig, fingerprint

from cli_support import refused


def test_label_maps_cover_exactly_the_drawn_shapes():
    rng = random.Random(0)
    for sampler in (world.single_object, world.pair_scene, world.grid_scene, world.count_scene):
        scene = sampler(rng)
        drawn = np.any(np.asarray(world.render(scene)) != world.BACKGROUND, axis=-1)
        kinds, colours, words = world.label_maps(scene)
        assert np.array_equal(kinds != 0, drawn) and np.array_equal(colours != 0, drawn) and not words.any()
        for item in scene.shapes:  # the centre pixel of a filled shape carries its own class and colour
            if item.shape not in ("ring", "cross"):
                cy, cx = (item.box[1] + item.box[3]) // 2, (item.box[0] + item.box[2]) // 2
                assert world.SHAPE_LABELS[kinds[cy, cx]] == item.shape
                assert world.COLOUR_LABELS[colours[cy, cx]] == item.colour


def test_label_maps_name_the_written_word():
    scene = world.word_scene(random.Random(3))
    kinds, _, words = world.label_maps(scene)
    assert (kinds == world.SHAPE_LABELS.index("text")).sum() > 50
    ids = set(np.unique(words[kinds == world.SHAPE_LABELS.index("text")]).tolist())
    assert ids == {1 + world.WORD_LABELS.index(scene.texts[0].text)}


def test_patch_shares_against_a_loop():
    maps = np.random.default_rng(0).integers(0, 5, size=(16, 16))
    shares = patch_shares(maps, 8, 5)
    for p, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        block = maps[8 * r : 8 * r + 8, 8 * c : 8 * c + 8]
        assert np.allclose(shares[p], [(block == k).mean() for k in range(5)])
    assert np.allclose(shares.sum(-1), 1.0)


def test_read_caption_recovers_every_scene_fact():
    rng = random.Random(1)
    for _ in range(200):
        scene = world.random_scene(rng, degraded=0.0)
        facts = read_caption(world.caption(scene))
        assert facts["count"] == [len(scene.shapes)]
        assert facts["shape"] == sorted(s.shape for s in scene.shapes)
        assert facts["word"] == sorted(world.written_words(scene))
        assert len(facts["position"]) == len(scene.shapes) + sum(t.role == "word" for t in scene.texts)
    assert read_caption("a dark blurry photo where nothing can be seen.")["degraded"] == [True]
    wrong = read_caption("a blue square at the top left.")
    assert wrong != read_caption("a red square at the top left.") and wrong["shape"] == ["square"]


def test_pretrain_quick_writes_a_base_with_its_perception(tmp_path):
    result = CliRunner().invoke(app, ["pretrain", "--quick", "--out", str(tmp_path / "base")])
    assert result.exit_code == 0, result.output
    info = json.loads((tmp_path / "base" / INFO_FILE).read_text())
    assert set(READBACK_FACTS) <= set(info["perception"]) and info["perception"]["scenes"] == 8
    assert all(0 <= info["perception"][f] <= 100 for f in READBACK_FACTS)
    assert (tmp_path / "base" / "model.safetensors").is_file()


def test_pretrain_with_recipe_options_builds_the_base_a_run_would_find(tmp_path, monkeypatch):
    """`pretrain --set` writes into the cache folder that a run with the same base_options reads (no rebuild)."""
    monkeypatch.setenv("BRANCHLORA_CACHE", str(tmp_path / "cache"))
    sets = ["--set", "pretraining.steps=3", "--set", "tiny.layers=1"]
    result = CliRunner().invoke(app, ["pretrain", "--quick", *sets, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    options = {"tiny": {**vars(QUICK_TINY), "layers": 1}, "pretraining": {**vars(QUICK_PRETRAIN), "steps": 3}}
    model, _ = load_base_from("tiny", options, progress=False)
    info = base_info(model)
    assert info["pretrain_seconds"] == 0.0 and info["device"] == "cpu"  # found in the cache, not rebuilt
    assert info["pretraining"]["steps"] == 3 and model.config.text_config.num_hidden_layers == 1
    assert len(info["loss_curve"]) == 3  # three caption steps: one loss each


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "pretraining.stepz=3"], "unexpected keyword argument 'stepz'"),
        (["--set", "train.lr=3"], "--set train.lr: expected tiny.KEY=VALUE or pretraining.KEY=VALUE"),
        (["--device", "tpu"], "--device 'tpu': expected cpu, or cuda on a machine with a GPU"),
    ],
)
def test_pretrain_names_a_bad_option(tmp_path, args, message):
    result = CliRunner().invoke(app, ["pretrain", "--quick", "--out", str(tmp_path / "base"), *args])
    refused(result, message)
    assert not (tmp_path / "base").exists()


def test_committed_base_is_the_default_recipe():
    """Changing the recipe without rebuilding the committed base (`branchlora pretrain --out ...`) fails here."""
    assert packaged_fingerprint() == fingerprint(TinyConfig(), PretrainConfig(), seed=0)
    info = json.loads((PACKAGED / INFO_FILE).read_text())
    assert set(READBACK_FACTS) <= set(info["perception"]) and info["perception"]["word"] >= 95.0
    assert sum(f.stat().st_size for f in PACKAGED.iterdir()) < 25 * 2**20


def test_text_batches_are_task_words_alone(micro_processor):
    """Stage 2's language steps: no image, every real token labelled, and never a question with its answer."""
    collator = Collator(micro_processor, prompt_format="llava")
    batch = text_batch(collator, random.Random(0), 64, 64)
    assert "pixel_values" not in batch
    assert torch.equal(batch["labels"] != -100, batch["attention_mask"].bool())
    assert not (batch["input_ids"] == collator.tokenizer.convert_tokens_to_ids("<image>")).any()
    for text in collator.tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True):
        assert not ("USER:" in text and not text.rstrip().endswith("ASSISTANT:")), text  # no answer follows


@pytest.fixture(scope="module")
def micro_processor(tmp_path_factory):
    from engine_support import micro_base

    return micro_base(tmp_path_factory.mktemp("cache"))[1]


def test_position_targets_are_the_patches_row_and_column():
    """Heads that read the row and column off a one-hot patch index score perfectly; swapped ones do not.
    The targets follow patch_shares' row-major order, so "where" matches the patch the labels describe."""
    side, width = 4, 16
    patches = torch.eye(width).expand(2, width, width)  # (B, P, d): patch p's features are one-hot p
    tower = lambda pixels: type("Out", (), {"last_hidden_state": torch.cat([patches[:, :1], patches], 1)})  # noqa: E731
    heads = PerceptionHeads(width, side)
    index = torch.arange(width)
    with torch.no_grad():
        for head, target in ((heads.row, index // side), (heads.column, index % side)):
            head.weight.copy_(20.0 * torch.nn.functional.one_hot(target, side).T.float())
            head.bias.zero_()
    batch = {"pixel_values": None, "degraded": torch.zeros(2), "words": torch.zeros(2, len(world.WORD_LABELS)),
             **{k: torch.full((2, width, n), 1.0 / n) for k, n in (("kind", len(world.SHAPE_LABELS)),
                ("colour", len(world.COLOUR_LABELS)), ("word", 1 + len(world.WORD_LABELS)))}}  # fmt: skip
    result = perception_loss(tower, heads, batch)
    assert result["accuracy"]["where"] == 1.0 and result["losses"]["row"] < 1e-6 > result["losses"]["column"]
    with torch.no_grad():
        heads.row.weight, heads.column.weight = heads.column.weight, heads.row.weight
    assert perception_loss(tower, heads, batch)["accuracy"]["where"] == 1 / side
