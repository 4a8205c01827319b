"""Scorers: the tricky cases of each CoIN rule."""

import random
import re

import pytest

from branchlora.data.benchmark import TestExample
from branchlora.evaluation.scorers import CONTRACTIONS, SCORERS, contains, normalize_vqa, parse_box, score


def ex(answer, box=None) -> TestExample:
    return TestExample("q", None, "question", answer, box=box)


# CoIN's eval_science_qa.py by hand: exact A-E; "X. " with X in A-E; else the first one-character word, upper-cased
@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [("B", "B", 1), ("B. a circle", "B", 1), ("The answer is C.", "C", 1), ("(C) red", "C", 1),
     ("I think A", "A", 0),  # "I" is the first one-character word
     ("b", "B", 1), ("it is a circle", "A", 1),  # lower case is upper-cased: "a" counts as A
     ("B.a circle", "B", 1),  # no ". ": the word "B" is found by the third rule
     ("F", "A", 0), ("2 circles", "B", 0), ("", "A", 0), ("circle", "A", 0), ("A", "B", 0), (" D\n", "D", 1)],
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
    assert score("contains", "Circle.", ex("circle")) == 1.0
    assert score("contains", "", ex("circle")) == 0.0
    assert score("contains", "  ", ex("circle")) == 0.0
    assert score("contains", "square", ex("circle")) == 0.0


# CoIN's rules by hand, (prediction, answer, right): eval_ImagetNet.py, convert_gqa_for_eval.py + GQA's eval,
# eval_vizwiz.py / eval_vqav2.py, eval_ocrvqa.py
@pytest.mark.parametrize(("metric", "pred", "answer", "expected"), [
    ("contains_cased", "golden retriever", "golden retriever", 1),
    ("contains_cased", "a golden retriever dog", "golden retriever", 1),  # answer in prediction
    ("contains_cased", "retriever", "golden retriever", 1),  # prediction in answer
    ("contains_cased", "Golden retriever", "golden retriever", 0),  # case-sensitive
    ("contains_cased", "", "golden retriever", 0),  # CoIN: right ("" is in every label); here: wrong
    ("contains_cased", "  ", "golden retriever", 0),
    ("gqa_match", "Yes.", "yes", 1), ("gqa_match", "yes..", "yes", 1), ("gqa_match", "left", "left", 1),
    ("gqa_match", "yes it is", "yes", 0), ("gqa_match", ".yes", "yes", 0), ("gqa_match", "", "yes", 0),
    ("upper_match", "Unanswerable", "unanswerable", 1),  # VizWiz: a valid answer
    ("upper_match", "yes", "Yes", 1), ("upper_match", "Yes.", "yes", 0),  # no period stripped
    ("upper_match", "2", "two", 0), ("upper_match", "", "yes", 0),
    ("ocrvqa_match", "Harry Potter", "harry potter", 1), ("ocrvqa_match", "harry potter.", "harry potter", 0),
    ("ocrvqa_match", "Unanswerable", "unanswerable", 0),  # a prediction with "Unanswerable" is always wrong
    ("ocrvqa_match", "unanswerable", "unanswerable", 1),  # CoIN checks that spelling only
    ("ocrvqa_match", "", "x", 0),
])  # fmt: skip
def test_coin_rules(metric, pred, answer, expected):
    assert score(metric, pred, ex(answer)) == expected


def test_exact_match_and_unanswerable():
    assert score("exact_match", "Yes.", ex("yes")) == 1.0
    assert score("exact_match", "yes it is", ex("yes")) == 0.0
    assert score("exact_match", "Unanswerable", ex("unanswerable")) == 1.0  # VizWiz: a valid answer
    assert score("exact_match", "unanswerable", ex("eve")) == 0.0  # OCR-VQA: always wrong
    assert score("exact_match", "", ex("")) == 0.0


def test_a_list_of_answers_counts_any():
    for metric in ("exact_match", "contains", "contains_cased", "gqa_match", "upper_match", "ocrvqa_match"):
        assert score(metric, "blue", ex(["red", "blue"])) == 1.0, metric
        assert score(metric, "green", ex(["red", "blue"])) == 0.0, metric


@pytest.mark.parametrize(
    ("text", "box"),
    [("[0.25, 0.50, 0.75, 1.00]", (0.25, 0.5, 0.75, 1.0)), ("box: (0.1,0.2,0.3,0.4).", (0.1, 0.2, 0.3, 0.4)),
     ("0 .5 1 1", None), ("[0.25, 0.50, 0.75]", None), ("[0.5, 0.5, 0.25, 1.0]", None), ("none", None),
     ("[.25, .5, .75, 1]", (0.25, 0.5, 0.75, 1.0))],
)  # fmt: skip
def test_parse_box(text, box):
    assert parse_box(text) == box


def test_bbox_iou_threshold():
    truth = ex("", box=(0.25, 0.5, 0.75, 1.0))
    assert score("bbox_iou", "[0.25, 0.50, 0.75, 1.00]", truth) == 1.0
    assert score("bbox_iou", "[0.25, 0.50, 0.75, 0.80]", truth) == 1.0  # IoU 0.6
    assert score("bbox_iou", "[0.25, 0.50, 0.50, 1.00]", truth) == 0.0  # IoU exactly 0.5
    assert score("bbox_iou", "[0.25, 0.50, 0.75", truth) == 0.0
    assert score("bbox_iou", "", truth) == 0.0
    assert score("bbox_iou", "The box is [0.25, 0.50, 0.75, 1.00].", truth) == 1.0  # CoIN's parse: unreadable
    assert score("bbox_iou", "[0.25, 0.50, 0.75, 0.79]", truth) == 1.0  # IoU 0.58; CoIN reads y2 = 0.7: IoU 0.4


def test_unknown_metric_names_known_ones():
    with pytest.raises(KeyError, match="option_letter"):
        score("bleu", "x", ex("x"))
    assert set(SCORERS) == {"option_letter", "vqa_soft", "contains", "contains_cased", "exact_match", "gqa_match",
                            "upper_match", "ocrvqa_match", "bbox_iou", "ai2d_match", "pvqa_contains", "sci_match",
                            "finvis_match", "ocrbench", "cvbench", "mathvista_rule", "mmtbench_server"}  # fmt: skip


# An independent reference of EvalAI's published answer processor and TextVQA accuracy (m4c_evaluator),
# written from its rules rather than from our scorer, with its own tables for the words generated below.
REF_MARKS = ';/[]"{}()=+\\_-><@`,?!'
REF_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
               "seven": "7", "eight": "8", "nine": "9", "ten": "10"}  # fmt: skip
REF_CONTRACTIONS = {"dont": "don't", "isnt": "isn't", "yall": "y'all", "somebody'd": "somebodyd",
                    "let's": "let's", "Im": "I'm", "it'dve": "it'd've", "whats": "what's", "cant": "can't"}  # fmt: skip


def ref_normalize(answer: str) -> str:
    text = answer.lower()
    text = text.replace(",", "")
    text = text.replace("?", "")
    text = text.replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    before = text
    comma_between_digits = re.search(r"[0-9],+[0-9]", before) is not None
    for mark in REF_MARKS:
        touches_space = (mark + " ") in before or (" " + mark) in before
        text = text.replace(mark, "" if comma_between_digits or touches_space else " ")
    kept, removed = [], 0
    for i, char in enumerate(text):
        followed_by_digit = i + 1 < len(text) and text[i + 1] in "0123456789"
        if char == "." and not followed_by_digit and removed < 32:
            removed += 1
            continue
        kept.append(char)
    words = []
    for word in "".join(kept).lower().split():
        word = REF_NUMBERS.get(word, word)
        if word not in ("a", "an", "the"):
            words.append(word)
    return " ".join(REF_CONTRACTIONS.get(w, w) for w in words)


def ref_textvqa_accuracy(prediction: str, humans: list[str]) -> float:
    pred = ref_normalize(prediction)
    gts = [ref_normalize(h) for h in humans]
    total = 0.0
    for i in range(len(gts)):
        matches = len([j for j in range(len(gts)) if j != i and gts[j] == pred])
        total += min(1.0, matches / 3)
    return total / len(gts)


TOKENS = [
    "dog", "Cat", "STOP", "red", "yes", "no", "coca-cola", "t-shirt", "50", "3.5", "1,000", "10%", "%", "two",
    "Three", "NONE", "ten", "a", "an", "The", "dont", "don't", "Dont", "isnt", "im", "Im", "yall", "somebody'd",
    "let's", "lets", "dog's", "MARY'S", "it's", "'s", "end.", "e.g.", "u.s.a", "a.m.", "?", "!", "(note)", "[x]",
    "a/b", "x_y", "#1", "$5", "&", "@home", "`q`", ";", '"quoted"', "<b>", "+", "=", "\\", ",", ".", "...",
    "it'dve", "whats", "cant", "2,5", "v1.2.", "-",
]  # fmt: skip
SEPARATORS = (" ", " ", "", ", ", "  ", "\n", "\t", " - ", "?")


def random_answer(rng: random.Random) -> str:
    parts = [rng.choice(TOKENS) for _ in range(rng.randint(1, 5))]
    text = parts[0]
    for part in parts[1:]:
        text += rng.choice(SEPARATORS) + part
    return text if rng.random() < 0.8 else text.upper()


def test_normalisation_matches_evalai_reference_on_generated_answers():
    rng = random.Random(0)
    for _ in range(600):
        text = random_answer(rng)
        assert normalize_vqa(text) == ref_normalize(text), text
    many_periods = "x. " * 40  # EvalAI removes at most 32 periods (its count argument is re.UNICODE)
    assert normalize_vqa(many_periods) == ref_normalize(many_periods) == " ".join(["x"] * 32 + ["x."] * 8)


def test_vqa_soft_matches_evalai_textvqa_accuracy_on_generated_cases():
    rng = random.Random(1)
    compared = 0
    for _ in range(400):
        pool = [random_answer(rng) for _ in range(3)]
        humans = [rng.choice(pool) for _ in range(10)]
        humans = [h.upper() if rng.random() < 0.2 else h for h in humans]
        prediction = rng.choice(pool + [random_answer(rng)])
        expected = ref_textvqa_accuracy(prediction, humans) if ref_normalize(prediction) else 0.0
        assert score("vqa_soft", prediction, ex(humans)) == pytest.approx(expected), (prediction, humans)
        compared += expected > 0
    assert compared > 100  # the generator gives partial and full credit, not only zeros


@pytest.mark.parametrize(
    ("text", "normalised"),
    [("Dont", "don't"), ("50 %", "50 %"), ("50%", "50%"), ("It's Mary's dog", "it 's mary 's dog"),
     ("1,000", "1000"), ("What?", "what"), ("the U.S.A.", "usa"), ("version 2.0.", "version 2.0"),
     ("well-known", "well known"), ("well-known - yes", "wellknown yes"), ("Im", "im"),
     ("somebody'd", "somebodyd"), ("Two dogs.", "2 dogs"), ("x (y)", "x y"), ("#1 & $5", "#1 & $5")],
)  # fmt: skip
def test_evalai_normalisation_by_hand(text, normalised):
    assert normalize_vqa(text) == normalised


def test_vqa_soft_by_hand():
    assert score("vqa_soft", "dont", ex(["don't"] * 3 + ["dont"] + ["no"] * 6)) == 1.0
    assert score("vqa_soft", "50%", ex(["50 %"] * 10)) == 0.0
    assert score("vqa_soft", "50%", ex(["50%"] * 2 + ["fifty"] * 8)) == pytest.approx(0.6)
    assert len(CONTRACTIONS) == 120 and CONTRACTIONS["hadn'tve"] == "hadn't've"


def test_a_prediction_empty_once_plain_is_never_contained():
    example = TestExample("1", None, "What is it?", "circle")
    assert [contains(p, example) for p in (".", " . ", "circle.", "a circle")] == [0.0, 0.0, 1.0, 1.0]
