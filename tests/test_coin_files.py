"""CoIN's files as released, and images as a viewer shows them: text-only items, EXIF rotation, 16-bit greyscale,
alpha, decompression bombs, header-only sizes."""

import json

import numpy as np
import pytest
from PIL import Image

from branchlora.data.benchmark import BenchmarkError, image_size, load_benchmark, open_image, padded_square_box
from branchlora.evaluation.scorers import answers, score

from coin_release import write_coin_release
from support import one_task_stream

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(width: int, height: int) -> Image.Image:
    """Red, green / blue, white quadrants: any flip or rotation moves a colour to another corner."""
    image = Image.new("RGB", (width, height))
    for (x, y), colour in zip([(0, 0), (1, 0), (0, 1), (1, 1)], [RED, GREEN, BLUE, WHITE], strict=True):
        image.paste(colour, (x * width // 2, y * height // 2, (x + 1) * width // 2, (y + 1) * height // 2))
    return image


def corner_colours(image: Image.Image) -> list[tuple[int, ...]]:
    """The colour at the centre of each quadrant, top-left, top-right, bottom-left, bottom-right."""
    w, h = image.size
    return [image.getpixel((w * x // 4, h * y // 4)) for y in (1, 3) for x in (1, 3)]


def close(a: list[tuple[int, ...]], b: list[tuple[int, ...]], tolerance: int = 12) -> bool:
    return all(abs(p - q) <= tolerance for pa, pb in zip(a, b, strict=True) for p, q in zip(pa, pb, strict=True))


@pytest.mark.parametrize(("orientation", "stored_from_shown"), [
    (3, Image.Transpose.ROTATE_180),  # stored upside down
    (6, Image.Transpose.ROTATE_90),  # a viewer turns it 90 degrees clockwise: stored turned counter-clockwise
    (8, Image.Transpose.ROTATE_270),
])  # fmt: skip
def test_exif_orientation_is_applied(tmp_path, orientation, stored_from_shown):
    shown = quadrants(40, 24)
    exif = Image.Exif()
    exif[0x0112] = orientation
    shown.transpose(stored_from_shown).save(tmp_path / "photo.jpg", quality=95, exif=exif)
    image = open_image(tmp_path / "photo.jpg")
    assert image.mode == "RGB" and image.size == (40, 24)
    assert close(corner_colours(image), [RED, GREEN, BLUE, WHITE])
    assert image_size(tmp_path / "photo.jpg") == (40, 24)


def test_image_size_reads_only_the_header(tmp_path):
    """A JPEG cut where its pixels begin still has a size: image_size never decodes; open_image refuses it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    quadrants(64, 32).save(tmp_path / "full.jpg", exif=exif)
    data = (tmp_path / "full.jpg").read_bytes()
    scan = data.index(b"\xff\xda")  # start of scan: its header, then the compressed pixels
    (tmp_path / "cut.jpg").write_bytes(data[: scan + 2 + int.from_bytes(data[scan + 2 : scan + 4]) + 8])
    assert image_size(tmp_path / "cut.jpg") == (32, 64)
    with pytest.raises(BenchmarkError, match=r"cut\.jpg: cannot read image"):
        open_image(tmp_path / "cut.jpg")


def test_image_size_names_an_unreadable_file(tmp_path):
    (tmp_path / "bad.jpg").write_text("no image")
    with pytest.raises(BenchmarkError, match=r"^\S*bad\.jpg: cannot read image: [^\n]*$"):
        image_size(tmp_path / "bad.jpg")


def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # a real 16-bit file
    image = open_image(tmp_path / "deep.png")
    expected = [round(v * 255 / 65535) for v in (0, 1000, 32768, 65535)]  # 0, 4, 128, 255
    assert [image.getpixel((x, 0)) for x in range(4)] == [(v, v, v) for v in expected]


def test_alpha_is_shown_over_white(tmp_path):
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    assert [open_image(tmp_path / "rgba.png").getpixel((x, 0)) for x in (0, 1)] == [WHITE, BLUE]
    palette = Image.new("P", (2, 1), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    assert [open_image(tmp_path / "p.png").getpixel((x, 0)) for x in (0, 1)] == [WHITE, RED]
    Image.new("LA", (1, 1), (0, 128)).save(tmp_path / "la.png")
    assert open_image(tmp_path / "la.png").getpixel((0, 0)) == (127, 127, 127)  # black at half alpha over white
    Image.new("CMYK", (1, 1), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    assert close([open_image(tmp_path / "cmyk.jpg").getpixel((0, 0))], [RED])


@pytest.mark.parametrize(("pixels", "side"), [(100, 12), (100, 20)])  # a warning (> limit), an error (> 2x limit)
def test_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch, pixels, side):
    Image.new("RGB", (side, side)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pixels)
    for read in (open_image, image_size):
        with pytest.raises(BenchmarkError, match=r"^\S*bomb\.png: image too large to read safely \([^\n]*\)$"):
            read(tmp_path / "bomb.png")


def test_text_only_items(tmp_path):
    """CoIN's ScienceQA: items without "image" and without the marker are text-only; `where` names each item."""
    train = [{"id": "t", "conversations": [{"from": "human", "value": "Which is a mammal?\nA. cat\nB. fish"},
                                           {"from": "gpt", "value": "A"}]}]  # fmt: skip
    test = [{"question_id": 1, "text": "Which is a mammal?\nA. cat\nB. fish", "answer": "A"},
            {"question_id": 2, "image": "a.png", "text": "What colour?", "answer": "red"}]  # fmt: skip
    path = one_task_stream(tmp_path, train=train, test=test)
    bench = load_benchmark(path)
    (item,) = bench.train_examples(0)
    assert item.image is None and item.instruction == "Which is a mammal?\nA. cat\nB. fish"
    assert item.where == f"{tmp_path}/train.json: item 0"
    first, second = bench.test_examples(0)
    assert first.image is None and second.image == tmp_path / "img" / "a.png"
    assert second.where == f"{tmp_path}/test.json: item 1"


def test_marker_without_an_image_is_refused(tmp_path):
    train = [{"id": "t", "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                           {"from": "gpt", "value": "red"}]}]  # fmt: skip
    with pytest.raises(BenchmarkError, match=r"train\.json: item 0: field 'image': missing, but the conversation"):
        load_benchmark(one_task_stream(tmp_path, train=train))


def test_jsonl_where_names_the_line(tmp_path):
    path = one_task_stream(tmp_path)
    item = {"question_id": 7, "image": "a.png", "text": "What colour?", "answer": "red"}
    (tmp_path / "test.jsonl").write_text("\n" + json.dumps(item) + "\n")
    path.write_text(path.read_text().replace("test.json", "test.jsonl"))
    (example,) = load_benchmark(path).test_examples(0)
    assert example.where == f"{tmp_path}/test.jsonl: item 0 (line 2)"


@pytest.mark.parametrize(("box", "size", "expected"), [
    ((16, 32, 32, 32), (64, 64), (0.25, 0.5, 0.75, 1.0)),  # a square image: no padding
    ((100, 50, 200, 100), (640, 480), (100 / 640, 130 / 640, 300 / 640, 230 / 640)),  # 80 px bands above and below
    ((0, 0, 375, 500), (375, 500), (0.125, 0.0, 0.875, 1.0)),  # a portrait photo: 62.5 px bands left and right
])  # fmt: skip
def test_padded_square_box_by_hand(box, size, expected):
    assert padded_square_box(box, size) == pytest.approx(expected)


def test_grounding_as_coin_ships_it_and_as_pixels(tmp_path):
    """CoIN's string box (no answer) is kept as it is; a pixel box on a landscape image moves into the square."""
    test = [{"question_id": 1, "image": "a.png", "text": "the dog", "answer_bbox": "[0.16, 0.20, 0.47, 0.36]",
             "size": [640, 480]},
            {"question_id": 2, "image": "a.png", "text": "the dog", "answer_bbox": [100, 50, 200, 100],
             "size": [640, 480]}]  # fmt: skip
    shipped, pixels = load_benchmark(one_task_stream(tmp_path, test=test, metric="bbox_iou")).test_examples(0)
    assert shipped.box == (0.16, 0.2, 0.47, 0.36) and shipped.answer == "[0.16, 0.20, 0.47, 0.36]"
    assert pixels.box == pytest.approx((0.15625, 0.203125, 0.46875, 0.359375))
    assert pixels.answer == "[0.16, 0.20, 0.47, 0.36]"
    assert score("bbox_iou", shipped.answer, pixels) == 1.0
    per_axis = "[0.16, 0.10, 0.47, 0.31]"  # the same box normalised by width and height separately: IoU 0.41
    assert score("bbox_iou", per_axis, pixels) == 0.0


def test_coin_release_miniature_loads(tmp_path):
    """The miniature of CoIN's release, at configs/coin.yaml's paths, loads with CoIN's own shapes intact."""
    path = write_coin_release(tmp_path, items=3)
    bench = load_benchmark(path)
    names = ["scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]
    assert bench.task_names == names and bench.image_root == tmp_path / "cl_dataset"
    assert [bench.task(n).test.name for n in names] == ["test.json", "val.json", "test.json", "test.json",
                                                        "val.json", "test.json", "val.json", "test.json"]  # fmt: skip
    assert bench.task("vqav2").test == tmp_path / "playground/Instructions_Original/VQAv2/val.json"
    assert all(len(bench.train_examples(n)) == len(bench.test_examples(n)) == 3 for n in names)
    sqa_train, sqa_test = bench.train_examples("scienceqa"), bench.test_examples("scienceqa")
    assert [e.image is None for e in sqa_train] == [e.image is None for e in sqa_test] == [False, False, True]
    assert all(len(e.answer) == 10 for e in bench.test_examples("textvqa"))
    examples = [e for n in names[1:] for e in bench.train_examples(n) + bench.test_examples(n)]
    assert {image_size(e.image) for e in examples} == {(640, 480), (500, 375), (375, 500), (480, 640)}
    raw = json.loads(bench.task("grounding").test.read_text())
    assert all(isinstance(r["answer_bbox"], str) and "answer" not in r for r in raw)
    for record, example in zip(raw, bench.test_examples("grounding"), strict=True):
        (width, height), (x1, y1, x2, y2) = record["size"], example.box
        side = max(width, height)  # the box lies on the image, inside the padding bands of the square
        assert (side - width) / 2 / side - 0.01 <= x1 < x2 <= (side + width) / 2 / side + 0.01
        assert (side - height) / 2 / side - 0.01 <= y1 < y2 <= (side + height) / 2 / side + 0.01
        assert image_size(example.image) == (width, height)
    train = bench.train_examples("grounding")[0]
    assert train.answer.startswith("[0.") and train.instruction.startswith("Please provide the bounding box")
    for name in names:  # each task's own answer is right by the metric configs/coin.yaml names for it
        metric = bench.task(name).metric
        assert all(score(metric, answers(e)[0], e) == 1.0 for e in bench.test_examples(name)), name
