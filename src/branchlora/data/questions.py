"""General visual questions about a scene, answered in full sentences: the tiny base's instruction tuning.

LLaVA-1.5, the base CoIN starts from, was instruction-tuned on a broad mix (VQA, relations, counting,
reading, boxes, multiple choice) before any CoIN task. Our base gets the same in miniature: the skills the
tasks build on, asked in other words and answered in sentences, never in a task's own format (a letter,
a bare word or digit, a box of decimals). So every task still has its format and its phrasing to learn,
and learning one task in sequence still overwrites what the one before taught.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from branchlora.data import world
from branchlora.data.world import NUMBER_WORDS, Scene, Shape

Question = tuple[str, str]  # (instruction, answer)
UNSEEN = "I cannot tell: the photo is too dark and blurry."


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def name(item: Shape) -> str:
    return f"{item.colour} {item.shape}"


def unique_by(scene: Scene, key: Callable[[Shape], str]) -> list[Shape]:
    """The shapes whose `key` (shape, colour or both) no other shape of the scene shares."""
    return [s for s in scene.shapes if sum(key(o) == key(s) for o in scene.shapes) == 1]


def named(scene: Scene) -> list[Shape]:
    """The shapes that "the <colour> <shape>" picks out alone (count scenes may repeat a look)."""
    return unique_by(scene, name)


def quarters(box: world.Box, size: int) -> tuple[int, ...]:
    """The box on a 4 x 4 grid: (left, top, right, bottom) as quarter lines 0-4, the drawing margin undone."""
    step = size / 4
    return tuple(min(4, max(0, round((v + m) / step))) for v, m in zip(box, (-2, -2, 2, 2), strict=True))


def colour_of(rng: random.Random, scene: Scene) -> Question | None:
    if not (unique := unique_by(scene, lambda s: s.shape)):
        return None
    item = rng.choice(unique)
    return f"Tell me the colour of the {item.shape}.", f"The {item.shape} is {item.colour}."


def shape_of(rng: random.Random, scene: Scene) -> Question | None:
    if not (unique := unique_by(scene, lambda s: s.colour)):
        return None
    item = rng.choice(unique)
    return f"What sort of shape is the {item.colour} one?", f"The {item.colour} one is a {item.shape}."


def count(rng: random.Random, scene: Scene) -> Question | None:
    shape = rng.choice([s.shape for s in scene.shapes] + list(world.SHAPES[:2]))
    n = sum(s.shape == shape for s in scene.shapes)
    answer = {0: f"I see no {plural(shape)}.", 1: f"I see one {shape}."}.get(
        n, f"I see {NUMBER_WORDS[n]} {plural(shape)}."
    )
    return f"Count the {plural(shape)} in the picture.", answer


def exists(rng: random.Random, scene: Scene) -> Question | None:
    if rng.random() < 0.5 and scene.shapes:
        colour, shape = rng.choice(scene.shapes).colour, rng.choice(scene.shapes).shape
    else:
        colour, shape = rng.choice(list(world.COLOURS)), rng.choice(world.SHAPES)
    there = any(s.colour == colour and s.shape == shape for s in scene.shapes)
    answer = f"Yes, I can see a {colour} {shape}." if there else f"No, I cannot see a {colour} {shape}."
    return f"Can you find a {colour} {shape} here?", answer


RELATIONS = {  # relation: is `a` in that relation to `b`, from their boxes
    "to the left of": lambda a, b: a.box[2] <= b.box[0],
    "to the right of": lambda a, b: a.box[0] >= b.box[2],
    "above": lambda a, b: a.box[3] <= b.box[1],
    "below": lambda a, b: a.box[1] >= b.box[3],
}


def relation(rng: random.Random, scene: Scene) -> Question | None:
    """What lies in a direction from an object, asked only where one object answers it."""
    options = []
    for b in named(scene):
        for words, holds in RELATIONS.items():
            matches = [a for a in scene.shapes if a is not b and holds(a, b)]
            if len(matches) == 1 and matches[0] in named(scene):
                options.append((matches[0], words, b))
    if not options:
        return None
    a, words, b = rng.choice(options)
    if rng.random() < 0.5:
        return f"Which object is {words} the {name(b)}?", f"The {name(a)} is {words} the {name(b)}."
    other = rng.choice([w for w in RELATIONS if w != words])
    asked = rng.choice((words, other))
    if asked == words or RELATIONS[asked](a, b):
        return f"Is the {name(a)} {asked} the {name(b)}?", f"Yes, the {name(a)} is {asked} the {name(b)}."
    return f"Is the {name(a)} {asked} the {name(b)}?", f"No, the {name(a)} is {words} the {name(b)}."


def where(rng: random.Random, scene: Scene) -> Question | None:
    """Where an object lies on a 4 x 4 grid, in words and quarter lines (the skill boxes build on)."""
    if not (unique := named(scene)):
        return None
    item = rng.choice(unique)
    left, top, right, bottom = quarters(item.box, scene.size)
    return (
        f"On a four by four grid, where is the {name(item)}?",
        f"The {name(item)} spans columns {left} to {right} and rows {top} to {bottom}.",
    )


def read(rng: random.Random, scene: Scene) -> Question | None:
    if scene.cover:
        title, author = (t.text for t in scene.texts)
        return "What does the cover say?", f"The cover says {title}, {author}."
    words = [t for t in scene.texts if t.role == "word"]
    if not words:
        return None
    ink = words[0].colour or "black"
    return "Is anything written here?", f"Yes, the word {words[0].text} is written in {ink}."


def choose(rng: random.Random, scene: Scene) -> Question | None:
    """Multiple choice in a format of its own: numbered options in random order, answered with number and text."""
    truth = rng.choice(scene.shapes)
    wrong = [f"{c} {s}" for c in world.COLOURS for s in world.SHAPES if not any(
        o.colour == c and o.shape == s for o in scene.shapes)]  # fmt: skip
    options = [name(truth), *rng.sample(wrong, rng.randint(2, 4))]
    rng.shuffle(options)
    listed = " ".join(f"({i + 1}) {o}" for i, o in enumerate(options))
    right = options.index(name(truth)) + 1
    return f"Which of these is in the picture? {listed}", f"Option ({right}), the {name(truth)}."


ASKERS: tuple[Callable[[random.Random, Scene], Question | None], ...] = (
    colour_of, shape_of, count, exists, relation, where, read, choose
)  # fmt: skip


def ask(rng: random.Random, scene: Scene) -> Question:
    """One question about `scene` that it can answer (a degraded photo: any question, and UNSEEN)."""
    needs_shapes = {colour_of, shape_of, count, exists, relation, where, choose}
    askers = [a for a in ASKERS if scene.shapes or a not in needs_shapes]
    while True:
        asked = rng.choice(askers)(rng, scene)
        if asked is not None:
            return (asked[0], UNSEEN) if scene.degraded else asked
