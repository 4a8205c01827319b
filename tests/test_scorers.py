"""Scorers: the tricky cases of each CoIN rule."""

import pytest

from branchlora.data.benchmark import TestExample
from branchlora.evaluation.scorers import SCORERS, normalize_vqa, parse_box, score


def ex(answer, bbox=None, size=None) -> TestExample:
    return TestExample("q", None, "question", answer, bbox, size)


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [("B", "B", 1), ("B. a circle", "B", 1), ("The answer is C.", "C", 1), ("I think A", "A", 1),
     ("b", "B", 0), ("", "A", 0), ("circle", "A", 0), ("A", "B", 0), (" D\n", "D", 1)],
)  # fmt: skip
def test_option_letter(pred, answer, expected):
    assert score("option_letter", pred, ex(answer)) == expected


def test_vqa_normalisation():
    assert normalize_vqa("The Two dogs.") == "2 dogs"
    assert normalize_vqa("an apple") == "apple"
    assert normalize_vqa("dont") == "don't"
    assert normalize_vqa("3.5") == "3.5"
    assert normalize_vqa("yes!") == "yes"


def test_vqa_soft_leave_one_out():
    humans = ["fox"] * 2 + ["box"] * 8
    assert score("vqa_soft", "fox", ex(humans)) == pytest.approx((2 * 1 / 3 + 8 * 2 / 3) / 10)
    assert score("vqa_soft", "The box.", ex(humans)) == 1.0
    assert score("vqa_soft", "cat", ex(humans)) == 0.0
    assert score("vqa_soft", "", ex(humans)) == 0.0


def test_vqa_soft_single_answer_is_normalised_exact_match():
    assert score("vqa_soft", "Two", ex("2")) == 1.0
    assert score("vqa_soft", "three", ex("2")) == 0.0


def test_contains_rejects_empty_prediction():
    assert score("contains", "a red circle", ex("circle")) == 1.0
    assert score("contains", "circ", ex("circle")) == 1.0
    assert score("contains", "", ex("circle")) == 0.0
    assert score("contains", "  ", ex("circle")) == 0.0
    assert score("contains", "square", ex("circle")) == 0.0


def test_exact_match_and_unanswerable():
    assert score("exact_match", "Yes.", ex("yes")) == 1.0
    assert score("exact_match", "yes it is", ex("yes")) == 0.0
    assert score("exact_match", "Unanswerable", ex("unanswerable")) == 1.0  # VizWiz: a valid answer
    assert score("exact_match", "unanswerable", ex("eve")) == 0.0  # OCR-VQA: always wrong
    assert score("exact_match", "", ex("")) == 0.0


@pytest.mark.parametrize(
    ("text", "box"),
    [("[0.25, 0.50, 0.75, 1.00]", (0.25, 0.5, 0.75, 1.0)), ("box: (0.1,0.2,0.3,0.4).", (0.1, 0.2, 0.3, 0.4)),
     ("0 .5 1 1", None), ("[0.25, 0.50, 0.75]", None), ("[0.5, 0.5, 0.25, 1.0]", None), ("none", None),
     ("[.25, .5, .75, 1]", (0.25, 0.5, 0.75, 1.0))],
)  # fmt: skip
def test_parse_box(text, box):
    assert parse_box(text) == box


def test_bbox_iou_threshold():
    truth = ex("", bbox=[16.0, 32.0, 32.0, 32.0], size=(64, 64))  # = [0.25, 0.5, 0.75, 1.0]
    assert score("bbox_iou", "[0.25, 0.50, 0.75, 1.00]", truth) == 1.0
    assert score("bbox_iou", "[0.25, 0.50, 0.75, 0.80]", truth) == 1.0  # IoU 0.6
    assert score("bbox_iou", "[0.25, 0.50, 0.50, 1.00]", truth) == 0.0  # IoU exactly 0.5
    assert score("bbox_iou", "[0.25, 0.50, 0.75", truth) == 0.0
    assert score("bbox_iou", "", truth) == 0.0


def test_unknown_metric_names_known_ones():
    with pytest.raises(KeyError, match="option_letter"):
        score("bleu", "x", ex("x"))
    assert set(SCORERS) == {"option_letter", "vqa_soft", "contains", "exact_match", "bbox_iou"}
