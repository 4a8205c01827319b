"""The base's general questions: true of their scene, answerable, and never in a minicoin task's format."""

import json
import random
import re
from dataclasses import replace

from branchlora.data import minicoin, questions, world
from branchlora.data.minicoin import MiniCoinOptions
from branchlora.models import pretrain
from branchlora.models.loading import INFO_FILE, build_tiny


def test_answers_are_sentences_never_a_task_answer():
    """A task's answer is a letter, a bare word or number, or a box: no general answer is one of those."""
    rng = random.Random(0)
    opts = MiniCoinOptions()
    task_answers = {minicoin.GENERATORS[t](rng, opts).answer for t in minicoin.TASKS for _ in range(200)}
    for _ in range(2000):
        question, answer = questions.ask(rng, world.random_scene(rng))
        assert answer.endswith(".") and len(answer.split()) >= 3, (question, answer)
        assert answer not in task_answers and not answer.startswith("[")


def test_relations_agree_with_the_caption_positions():
    """Left/right/above/below, recomputed from the boxes' centres independently of RELATIONS' edges."""
    rng = random.Random(1)
    checked = 0
    for _ in range(400):
        scene = world.random_scene(rng, degraded=0.0)
        asked = questions.relation(rng, scene)
        if asked is None:
            continue
        found = re.match(r"(?:Yes|No), the (\w+) (\w+) is (.+) the (\w+) (\w+)\.$", asked[1]) or re.match(
            r"The (\w+) (\w+) is (.+) the (\w+) (\w+)\.$", asked[1]
        )
        ca, sa, words, cb, sb = found.groups()
        a = next(s for s in scene.shapes if (s.colour, s.shape) == (ca, sa))
        b = next(s for s in scene.shapes if (s.colour, s.shape) == (cb, sb))
        ax, ay, bx, by = a.box[0] + a.box[2], a.box[1] + a.box[3], b.box[0] + b.box[2], b.box[1] + b.box[3]
        expected = {"to the left of": ax < bx, "to the right of": ax > bx, "above": ay < by, "below": ay > by}
        assert expected[words], (asked, scene)
        checked += 1
    assert checked > 100


def test_grid_answers_match_the_grounding_box():
    """On grounding's 4 x 4 scenes the quarter lines are the box grounding asks for, times four."""
    rng = random.Random(2)
    opts = MiniCoinOptions()
    for _ in range(100):
        item = minicoin.grounding(rng, opts)
        target = next(s for s in item.scene.shapes if f"the {s.colour} {s.shape}" in item.instruction)
        assert tuple(q / 4 for q in questions.quarters(target.box, item.scene.size)) == item.box


def test_counts_and_presence_are_true():
    rng = random.Random(3)
    for _ in range(300):
        scene = world.count_scene(rng)
        _, answer = questions.count(rng, scene)
        shape = next(s for s in (*world.SHAPES, *map(questions.plural, world.SHAPES)) if answer.endswith(f" {s}."))
        n = sum(shape in (s.shape, questions.plural(s.shape)) for s in scene.shapes)
        said = answer.split()[2]
        assert said == (world.NUMBER_WORDS[n] if n else "no"), (answer, scene)
        question, answer = questions.exists(rng, scene)
        colour, shape = question.removeprefix("Can you find a ").removesuffix(" here?").split()
        assert answer.startswith("Yes") == any((s.colour, s.shape) == (colour, shape) for s in scene.shapes)


def test_degraded_photos_are_not_answered():
    rng = random.Random(4)
    scene = world.random_scene(rng)
    scene.degraded = True
    assert questions.ask(rng, scene)[1] == questions.UNSEEN


def test_reading_lines_ask_about_the_scene_they_tell():
    """A colour question's answer is the colour the told caption gives that shape (the same scene, not another)."""
    rng, checked = random.Random(5), 0
    for _ in range(400):
        told, _, answer = pretrain.reading_line(rng, 64).removeprefix("USER: ").partition(" ASSISTANT: ")
        if found := re.fullmatch(r"The (\w+) is (\w+)\.", answer):
            shape, colour = found.groups()
            assert f"a {colour} {shape} " in told and f"Tell me the colour of the {shape}." in told
            checked += 1
    assert checked > 20


def test_the_recipe_with_questions_and_positions_builds_a_base(tmp_path):
    """The quick schedule with every stage-2 option on: position targets, questions with the image, reading."""
    recipe = replace(pretrain.QUICK_PRETRAIN, tower_position=1.0, qa_share=0.5, reading_share=0.5, text_every=2)
    build_tiny(tmp_path / "base", pretrain.QUICK_TINY, recipe, seed=0, progress=False)
    info = json.loads((tmp_path / "base" / INFO_FILE).read_text())
    assert 0 <= info["tower_accuracy"]["where"] <= 100 and info["pretraining"]["qa_share"] == 0.5
