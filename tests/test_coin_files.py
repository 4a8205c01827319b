"""CoIN's files as released, and images as a viewer shows them: text-only items, EXIF rotation, 16-bit greyscale,
alpha, decompression bombs, header-only sizes."""

import json

import numpy as np
import pytest
from PIL import Image

from branchlora.data.benchmark import BenchmarkError, image_size, load_benchmark, open_image
from test_benchmark import write_stream

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
    path = write_stream(tmp_path, train=train, test=test)
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
        load_benchmark(write_stream(tmp_path, train=train))


def test_jsonl_where_names_the_line(tmp_path):
    path = write_stream(tmp_path)
    item = {"question_id": 7, "image": "a.png", "text": "What colour?", "answer": "red"}
    (tmp_path / "test.jsonl").write_text("\n" + json.dumps(item) + "\n")
    path.write_text(path.read_text().replace("test.json", "test.jsonl"))
    (example,) = load_benchmark(path).test_examples(0)
    assert example.where == f"{tmp_path}/test.jsonl: item 0 (line 2)"
