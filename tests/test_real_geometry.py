"""Every family at its REAL image geometry (tests/real_geometry.py): the saved folder loads through the project's
loader, the processor gives a photo the number of image tokens the family's published rules give it, the model
trains on and embeds real-sized batches; LLaVA-1.5 and LLaVA-NeXT also run the whole CLI on photo-sized JPEGs.

The token counts are computed here from the published rules (LLaVA-NeXT's anyres, OneVision's anyres_max_9, Qwen's
smart resize, InternVL's dynamic tiling), not read from transformers."""

import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from branchlora.batch import model_inputs
from branchlora.cli import app
from branchlora.data.collate import Collator
from branchlora.evaluation import metrics
from branchlora.models.family import require_family, sample_rows
from branchlora.models.loading import load_pretrained

from family_support import KINDS
from real_geometry import NEXT_PINPOINTS, ONEVISION_PINPOINTS, PHOTOS, build_family_folder, write_photo_stream

LONG = 1 << 16  # no length limit in these checks: H2's model.max_length decides that for runs


def best_fit(width: int, height: int, pinpoints: list[list[int]]) -> tuple[int, int]:
    """LLaVA-NeXT's select_best_resolution: the (height, width) pinpoint that keeps the most of the image's pixels
    once it is scaled to fit, ties broken by the least padding."""

    def keep_and_waste(pin: list[int]) -> tuple[int, int]:
        scale = min(pin[1] / width, pin[0] / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        return kept, pin[0] * pin[1] - kept

    best = max(pinpoints, key=lambda pin: (keep_and_waste(pin)[0], -keep_and_waste(pin)[1]))
    return best[0], best[1]


def anyres_tokens(width: int, height: int, pinpoints: list[list[int]], side: int, max_crops: int | None) -> int:
    """LLaVA-NeXT's (max_crops None) and OneVision's anyres_max_N image tokens: the base crop's grid, plus the
    high-resolution grid with the padding rows or columns removed, one newline token per row; OneVision shrinks
    that grid to about N crops' worth when it is over 1.1 times that."""
    grid = side // 14  # patches per crop side
    rows, cols = (n // side * grid for n in best_fit(width, height, pinpoints))
    if width / height > cols / rows:
        rows -= 2 * ((rows - int(height * cols / width)) // 2)
    else:
        cols -= 2 * ((cols - int(width * rows / height)) // 2)
    if max_crops is not None and (ratio := math.sqrt(rows * cols / (max_crops * grid**2))) > 1.1:
        rows, cols = int(rows // ratio), int(cols // ratio)
    return grid * grid + rows * cols + rows


def qwen_tokens(width: int, height: int, min_pixels: int = 3136, max_pixels: int = 12845056) -> int:
    """Qwen2-VL's smart resize (sides rounded to multiples of 28 = patch 14 x merge 2, area within the bounds),
    then one token per 2 x 2 patches."""
    h, w = round(height / 28) * 28, round(width / 28) * 28
    if h * w > max_pixels or h * w < min_pixels:
        raise AssertionError("the test photos stay within Qwen's pixel bounds")
    return (h // 28) * (w // 28)


def internvl_tokens(width: int, height: int, max_tiles: int = 12) -> int:
    """InternVL's dynamic tiling: the (cols, rows) grid of at most `max_tiles` 448 px tiles whose aspect is closest
    to the image's (ties: the larger grid when the image has the pixels for it), plus a thumbnail tile when there
    is more than one; 256 tokens a tile (32 x 32 patches, pixel shuffle 0.5)."""
    grids = sorted({(c, r) for n in range(1, max_tiles + 1) for c in range(1, n + 1) for r in range(1, n + 1)
                    if c * r <= max_tiles}, key=lambda g: g[0] * g[1])  # fmt: skip
    best, best_diff = (1, 1), float("inf")
    for c, r in grids:
        diff = abs(width / height - c / r)
        if diff < best_diff or (diff == best_diff and width * height > 0.5 * 448 * 448 * c * r):
            best, best_diff = (c, r), diff
    tiles = best[0] * best[1]
    return 256 * (tiles + (tiles > 1))


EXPECTED = {  # image tokens of a 500x375 and a 1024x768 photo, from the published rules above
    "llava": lambda w, h: (336 // 14) ** 2,
    "llava_next": lambda w, h: anyres_tokens(w, h, NEXT_PINPOINTS, 336, None),
    "llava_onevision": lambda w, h: anyres_tokens(w, h, ONEVISION_PINPOINTS, 384, 9),
    "qwen2_vl": qwen_tokens,
    "qwen2_5_vl": qwen_tokens,
    "internvl": internvl_tokens,
}
PROCESSORS = {"llava": "LlavaProcessor", "llava_next": "LlavaNextProcessor", "qwen2_vl": "Qwen2VLProcessor",
              "llava_onevision": "LlavaOnevisionProcessor", "internvl": "InternVLProcessor",
              "qwen2_5_vl": "Qwen2_5_VLProcessor"}  # fmt: skip


def test_the_published_rules_give_the_published_counts():
    """The rules above against numbers worked by hand: 576 for LLaVA-1.5 (24 x 24); LLaVA-NeXT puts a 4:3 photo on
    the 672 x 672 grid, 48 x 36 after unpadding, 36 newlines, 576 base; OneVision a 500x375 photo on 384 x 768
    (27 x 36 + 27 + 729) and a 1024x768 one on 768 x 1152 (54 x 73 + 54 + 729); Qwen rounds 500x375 to 504 x 364
    (18 x 13 tokens), 1024x768 to 1036 x 756 (37 x 27); InternVL tiles any 4:3 photo 4 x 3, plus the thumbnail."""
    assert [EXPECTED["llava_next"](*p) for p in PHOTOS] == [2340, 2340]
    assert [EXPECTED["llava_onevision"](*p) for p in PHOTOS] == [1728, 4725]
    assert [qwen_tokens(*p) for p in PHOTOS] == [234, 999]
    assert [internvl_tokens(*p) for p in PHOTOS] == [3328, 3328]
    assert anyres_tokens(3000, 3000, ONEVISION_PINPOINTS, 384, 9) == 729 + 81 * 82  # 162 x 162 cut to 81 x 81


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Each family's folder, built once."""
    root, built = tmp_path_factory.mktemp("real-geometry"), {}

    def get(kind: str):
        if kind not in built:
            built[kind] = build_family_folder(kind, root / kind)
        return built[kind]

    return get


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    paths = []
    for i, size in enumerate(PHOTOS):
        Image.new("RGB", size, (30 * i, 90, 160)).save(root / f"{i}.jpg")
        paths.append(root / f"{i}.jpg")
    return paths


@pytest.mark.parametrize("kind", KINDS)
def test_folder_loads_and_the_processor_gives_the_published_token_counts(kind, folders, photos):
    folder = folders(kind)
    assert json.loads((folder / "config.json").read_text())["dtype"] == "float16"  # as published
    model, processor = load_pretrained(str(folder))
    assert type(processor).__name__ == PROCESSORS[kind] and model.config.model_type == kind
    collator = Collator(processor, max_length=LONG)
    for path, size in zip(photos, PHOTOS, strict=True):
        batch = collator.prompt_batch([_test_item(path)])
        assert int((batch["input_ids"] == model.config.image_token_id).sum()) == EXPECTED[kind](*size), size


def _test_item(path):
    from branchlora.data.benchmark import TestExample

    return TestExample(question_id=path.stem, image=path, instruction="What colour is the picture?", answer="blue")


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_of_both_photos_trains_and_embeds(kind, folders, photos):
    """One batch with a 500x375 and a 1024x768 photo (different crops, tiles or patch grids): the loss is finite
    and reaches the adapters' inputs, each row's selector embedding equals that photo's alone, and the projector's
    rows map back to their photo."""
    model, processor = load_pretrained(str(folders(kind)))
    model.float()
    collator, family = Collator(processor, max_length=LONG), require_family(model)
    from branchlora.data.benchmark import TrainExample

    items = [TrainExample(image=p, instruction="What colour is the picture?", answer="blue") for p in photos]
    batch = collator.train_batch(items)
    loss = model(**model_inputs(batch)).loss
    loss.backward()
    assert torch.isfinite(loss) and family.part(model, "projector").parameters().__next__().grad is not None
    with torch.no_grad():
        both = family.embed_image(model, batch)
        alone = torch.cat([family.embed_image(model, collator.train_batch([item])) for item in items])
    torch.testing.assert_close(both, alone, rtol=1e-4, atol=1e-5)
    rows = sample_rows(model, batch)
    if rows is not None:  # Qwen: merged patches; anyres: crops; InternVL: tiles
        alone_rows = [len(sample_rows(model, collator.train_batch([item]))) for item in items]
        assert rows.bincount().tolist() == alone_rows


runner = CliRunner()
E2E = ("llava", "llava_next")  # the others cost 20-60 s each on one thread; their batches are checked above


@pytest.mark.parametrize("kind", E2E)
def test_run_resume_and_predict_through_the_cli(kind, folders, tmp_path):
    """`branchlora run --base DIR` on photo-sized JPEGs, lora and branchlora: trains, scores, checkpoints; `--resume`
    of the finished run trains nothing and writes the same matrix; `predict` answers and names a task."""
    (tmp_path / "data").mkdir()
    bench, out = write_photo_stream(tmp_path / "data"), tmp_path / "out"
    sets = ["train.max_steps=2", "train.batch_size=2", "eval.batch_size=2", "eval.max_new_tokens=3", "adapter.r=8"]
    args = ["run", "--base", str(folders(kind)), "--benchmark", str(bench), "--methods", "lora,branchlora",
            "--out", str(out), *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["benchmark"]["tasks"] == ["color", "shape"]
    for name in ("lora", "branchlora"):
        r = data["methods"][name]
        assert len(r["matrix"]) == 3 and all(len(row) == 2 for row in r["matrix"])
        assert all(score in (0.0, 50.0, 100.0) for row in r["matrix"] for score in row)  # 2 items a task
        assert r["metrics"]["acc"] == pytest.approx(metrics.acc(r["matrix"]))
        assert r["metrics"]["bwt"] == pytest.approx(metrics.bwt(r["matrix"]))
        assert r["metrics"]["maa"] == pytest.approx(metrics.maa(r["matrix"]))
        assert {p.name for p in (out / name).iterdir()} >= {"task-00", "task-01"}, name  # a checkpoint per stage
    assert data["methods"]["branchlora"]["selector_accuracy"] == 100.0  # two distinct instructions
    again = runner.invoke(app, [*args, "--resume"])
    assert again.exit_code == 0, again.output
    resumed = json.loads((out / "results.json").read_text())
    for name in ("lora", "branchlora"):
        assert resumed["methods"][name]["matrix"] == data["methods"][name]["matrix"]
    image = tmp_path / "data" / "shape-1.jpg"
    said = runner.invoke(app, ["predict", "--checkpoint", str(out / "branchlora"), "--image", str(image),
                               "--prompt", "Is it wide or tall?"])  # fmt: skip
    assert said.exit_code == 0, said.output
    assert "answer:" in said.output and "shape" in said.output
