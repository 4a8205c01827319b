"""The small visual world minicoin and the tiny base share: coloured shapes, big words, book covers.

A `Scene` is plain data (what is where); `render` draws it with PIL and `caption` describes it in words.
Keeping the two apart lets the task generators ask questions about a scene and the base model's
pre-training describe the very same scenes, without either knowing about the other.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (30, 160, 50),
    "blue": (35, 75, 225),
    "yellow": (235, 195, 20),
    "purple": (145, 50, 185),
    "orange": (245, 125, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
WORDS = ("cat", "dog", "sun", "box", "map", "hat", "pen", "cup", "key", "bus", "egg", "fox", "owl", "jam")
NAMES = ("ana", "bob", "eve", "max", "kim", "leo", "ian", "zoe")
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")
BACKGROUND = (240, 240, 236)
INK = (20, 20, 20)

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1) in pixels, x1 and y1 exclusive


@dataclass
class Shape:
    shape: str
    colour: str
    box: Box


@dataclass
class Text:
    text: str
    colour: str | None  # None = black ink
    box: Box  # the area the text is centred in
    role: str = "word"  # "word", "title" or "author"


@dataclass
class Scene:
    size: int = 64
    shapes: list[Shape] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    cover: str | None = None  # background colour name of a book cover
    degraded: bool = False  # blurred and darkened beyond reading
    surface: tuple[int, int, int] = BACKGROUND  # what the picture is taken against


@lru_cache(maxsize=32)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """PIL's bundled scalable font; the bitmap fallback is unreadably small at 64 px."""
    return ImageFont.load_default(size=size)


def grid_box(size: int, cells: int, col: int, row: int, w: int = 1, h: int = 1, margin: int = 2) -> Box:
    """The pixel box of a (w x h)-cell block at (col, row) in a cells x cells grid, shrunk by margin."""
    step = size / cells
    x0, y0 = round(col * step), round(row * step)
    x1, y1 = round((col + w) * step), round((row + h) * step)
    return (x0 + margin, y0 + margin, x1 - margin, y1 - margin)


def draw_shape(draw: ImageDraw.ImageDraw, item: Shape, fill: tuple[int, ...] | None = None) -> None:
    """Draw one shape in its colour, or in `fill` (the label maps paint class ids with the same geometry)."""
    x0, y0, x1, y1 = item.box
    fill = fill or COLOURS[item.colour]
    cx, cy, w = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0
    if item.shape == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif item.shape == "ring":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), outline=fill, width=max(2, w // 5))
    elif item.shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif item.shape == "triangle":
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=fill)
    elif item.shape == "diamond":
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=fill)
    elif item.shape == "cross":
        t = max(2, w // 3)
        draw.rectangle((cx - t / 2, y0, cx + t / 2, y1 - 1), fill=fill)
        draw.rectangle((x0, cy - t / 2, x1 - 1, cy + t / 2), fill=fill)
    else:
        raise ValueError(f"unknown shape {item.shape!r}; known: {', '.join(SHAPES)}")


def draw_text(draw: ImageDraw.ImageDraw, item: Text, fill: tuple[int, ...] | None = None) -> None:
    """Centre the text in its box at the largest font size that fits (legibility over style)."""
    x0, y0, x1, y1 = item.box
    for size in range(min(28, y1 - y0), 6, -1):
        left, top, right, bottom = draw.textbbox((0, 0), item.text, font=font(size), stroke_width=1)
        if right - left <= x1 - x0 and bottom - top <= y1 - y0:
            break
    x = (x0 + x1 - (right - left)) / 2 - left
    y = (y0 + y1 - (bottom - top)) / 2 - top
    fill = fill or (COLOURS[item.colour] if item.colour else INK)
    draw.text((x, y), item.text, font=font(size), fill=fill, stroke_width=1, stroke_fill=fill)


def render(scene: Scene) -> Image.Image:
    """Draw a scene as an RGB image; degraded scenes are blurred and darkened until unreadable."""
    image = Image.new("RGB", (scene.size, scene.size), scene.surface)
    draw = ImageDraw.Draw(image)
    if scene.cover:
        draw.rectangle((4, 2, scene.size - 5, scene.size - 3), fill=COLOURS[scene.cover])
    for item in scene.shapes:
        draw_shape(draw, item)
    for item in scene.texts:
        draw_text(draw, item)
    if scene.degraded:
        image = image.filter(ImageFilter.GaussianBlur(radius=scene.size / 10))
        image = image.point(lambda v: v // 4 + 10)
    return image


def position_words(box: Box, size: int) -> str:
    """'top left', 'middle', 'bottom right'... from the centre of a box, in thirds of the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    col = ("left", "", "right")[min(2, int(3 * cx / size))]
    row = ("top", "", "bottom")[min(2, int(3 * cy / size))]
    return " ".join(w for w in (row, col) if w) or "middle"


def reading_order(item: Shape) -> tuple[float, float]:
    """Top to bottom, then left to right, by the box's centre."""
    return (item.box[1] + item.box[3], item.box[0] + item.box[2])


def caption(scene: Scene) -> str:
    """Describe everything visible: what is where, colours, and written words. No questions, no tasks."""
    if scene.degraded:
        return "a dark blurry photo where nothing can be seen."
    parts = []
    if scene.cover:
        title = next((t.text for t in scene.texts if t.role == "title"), "")
        author = next((t.text for t in scene.texts if t.role == "author"), "")  # "by NAME"
        parts.append(f"a {scene.cover} book cover with the title {title} {author}")
    for item in sorted(scene.shapes, key=reading_order):  # a fixed order: the caption is a function of the image
        parts.append(f"a {item.colour} {item.shape} at the {position_words(item.box, scene.size)}")
    for item in scene.texts:
        if item.role == "word":
            ink = item.colour or "black"
            parts.append(f"the word {item.text} written in {ink} at the {position_words(item.box, scene.size)}")
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return text.replace("at the middle", "in the middle") + "."


def distinct(rng: random.Random, pool: tuple[str, ...] | list[str], k: int) -> list[str]:
    """k different items of pool, in random order."""
    return rng.sample(list(pool), k)


# Scene samplers: every minicoin task and the base's caption pre-training draw from these.


def single_object(rng: random.Random, size: int = 64, colours: tuple[str, ...] = tuple(COLOURS)) -> Scene:
    """One big shape near the centre, in one of `colours`."""
    side = rng.randint(size * 9 // 16, size * 3 // 4)
    x0, y0 = rng.randint(2, size - side - 2), rng.randint(2, size - side - 2)
    return Scene(size, [Shape(rng.choice(SHAPES), rng.choice(colours), (x0, y0, x0 + side, y0 + side))])


def pair_scene(rng: random.Random, size: int = 64) -> Scene:
    """Two different shapes in two different quadrants."""
    cells = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], 2)
    shapes, colours = distinct(rng, SHAPES, 2), distinct(rng, list(COLOURS), 2)
    items = [
        Shape(s, c, grid_box(size, 2, col, row, margin=3))
        for s, c, (col, row) in zip(shapes, colours, cells, strict=True)
    ]
    return Scene(size, items)


def quadrant_scene(rng: random.Random, size: int = 64, count: int = 1, shapes: tuple[str, ...] = SHAPES) -> Scene:
    """`count` copies of one of `shapes`, each in its own quadrant and colour (pair_scene's geometry)."""
    shape = rng.choice(shapes)
    cells = rng.sample([(0, 0), (1, 0), (0, 1), (1, 1)], count)
    return Scene(size, [Shape(shape, rng.choice(list(COLOURS)), grid_box(size, 2, c, r, margin=3)) for c, r in cells])


def quadrant_of(item: Shape, size: int) -> tuple[int, int]:
    """(column, row), each 0 or 1: the quadrant that holds the centre of `item`'s box."""
    return int(item.box[0] + item.box[2] >= size), int(item.box[1] + item.box[3] >= size)


def grid_scene(rng: random.Random, size: int = 64, count: int = 3) -> Scene:
    """Up to `count` shapes of 1x1 or 2x2 cells on a 4x4 grid, no two overlapping or looking alike."""
    taken: set[tuple[int, int]] = set()
    looks: set[tuple[str, str]] = set()
    items = []
    for _ in range(20 * count):
        w = rng.randint(1, 2)  # square blocks keep shapes undistorted
        col, row = rng.randint(0, 4 - w), rng.randint(0, 4 - w)
        cells = {(col + i, row + j) for i in range(w) for j in range(w)}
        look = (rng.choice(SHAPES), rng.choice(list(COLOURS)))
        if cells & taken or look in looks:
            continue
        taken |= cells
        looks.add(look)
        items.append(Shape(look[0], look[1], grid_box(size, 4, col, row, w, w)))
        if len(items) == count:
            break
    return Scene(size, items)


def count_scene(rng: random.Random, size: int = 64) -> Scene:
    """1-4 copies of one shape plus 0-2 other shapes, on a 3x3 grid."""
    target, other = distinct(rng, SHAPES, 2)
    n, extra = rng.randint(1, 4), rng.randint(0, 2)
    cells = rng.sample([(c, r) for c in range(3) for r in range(3)], n + extra)
    kinds = [target] * n + [other] * extra
    items = [
        Shape(k, rng.choice(list(COLOURS)), grid_box(size, 3, c, r, margin=3))
        for k, (c, r) in zip(kinds, cells, strict=True)
    ]
    return Scene(size, items)


def word_scene(rng: random.Random, size: int = 64) -> Scene:
    """A big coloured word, sometimes with a small shape in a corner."""
    top = rng.randint(0, size // 4)
    scene = Scene(size, texts=[Text(rng.choice(WORDS), rng.choice(list(COLOURS)), (2, top, size - 2, top + size // 2))])
    if rng.random() < 0.5:
        col = rng.choice((0, 3))
        scene.shapes.append(Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), grid_box(size, 4, col, 3)))
    return scene


def book_scene(rng: random.Random, size: int = 64) -> Scene:
    """A book cover: a title word on top and an author line ("by NAME") below."""
    cover = rng.choice([c for c in COLOURS if c not in ("blue", "purple")])  # black ink stays readable
    title = Text(rng.choice(WORDS), None, (8, 5, size - 8, size * 9 // 16), "title")
    author = Text(f"by {rng.choice(NAMES)}", None, (8, size * 9 // 16 + 1, size - 8, size - 5), "author")
    return Scene(size, texts=[title, author], cover=cover)


SAMPLERS = (single_object, pair_scene, grid_scene, count_scene, word_scene, book_scene)


def random_scene(rng: random.Random, size: int = 64, degraded: float = 0.08) -> Scene:
    """A scene as any minicoin task might draw it; with probability `degraded` an unreadable photo."""
    scene = rng.choice(SAMPLERS)(rng, size)
    scene.degraded = rng.random() < degraded
    return scene


# Per-pixel class ids of a scene, for the vision tower's perception pre-training: what covers each pixel
# (a shape, written text, a book cover) and in which colour.  Drawn with the renderer's own geometry.
SHAPE_LABELS = ("none", *SHAPES, "text", "cover")
COLOUR_LABELS = ("none", *COLOURS, "black")
WORD_LABELS = (*WORDS, *NAMES)


def label_maps(scene: Scene) -> np.ndarray:
    """(3, H, W) uint8: the SHAPE_LABELS, COLOUR_LABELS and 1 + WORD_LABELS ids of each pixel (0: none).

    Each item is drawn as a 1-bit mask with the renderer's own geometry, so no pixel is a blend of two classes.
    """
    maps = np.zeros((3, scene.size, scene.size), dtype=np.uint8)
    layers = [(Shape("cover", scene.cover, (4, 2, scene.size - 5, scene.size - 3)), "cover")] if scene.cover else []
    layers += [(item, item.shape) for item in scene.shapes] + [(item, "text") for item in scene.texts]
    for item, kind in layers:
        mask = Image.new("1", (scene.size, scene.size), 0)
        draw = ImageDraw.Draw(mask)
        if kind == "text":
            draw_text(draw, item, fill=1)
        elif kind == "cover":
            draw.rectangle(item.box, fill=1)
        else:
            draw_shape(draw, item, fill=1)
        on = np.asarray(mask, dtype=bool)
        maps[0][on] = SHAPE_LABELS.index(kind)
        maps[1][on] = COLOUR_LABELS.index(item.colour or "black")
        if kind == "text":
            maps[2][on] = 1 + WORD_LABELS.index(item.text.removeprefix("by "))
    return maps


def written_words(scene: Scene) -> list[str]:
    """The words a reader sees: a word, a title, an author's name (without "by")."""
    return [t.text.removeprefix("by ") for t in scene.texts]
