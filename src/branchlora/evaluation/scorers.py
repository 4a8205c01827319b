"""Scorers: one prediction against one test example, in [0, 1], by the metric names benchmark YAMLs use.

Each follows the rule CoIN's evaluation scripts apply to the task it is named after (research notes:
coin-benchmark.md), minus two quirks: an empty prediction is never correct, and box parsing is robust.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # scorers only read fields; no import cycle with the data package
    from branchlora.data.benchmark import TestExample

# EvalAI's VQA answer normalisation (the standard VQA / TextVQA evaluation).
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = {"a", "an", "the"}
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldnt": "couldn't", "didnt": "didn't",
    "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't", "hasnt": "hasn't", "havent": "haven't",
    "hes": "he's", "im": "i'm", "isnt": "isn't", "itd": "it'd", "itll": "it'll", "ive": "i've",
    "lets": "let's", "shes": "she's", "shouldnt": "shouldn't", "thats": "that's", "theres": "there's",
    "theyre": "they're", "theyve": "they've", "wasnt": "wasn't", "werent": "weren't", "whats": "what's",
    "wheres": "where's", "whos": "who's", "wont": "won't", "wouldnt": "wouldn't", "youre": "you're",
    "youve": "you've",
}  # fmt: skip
PUNCTUATION = set(";/[]\"{}()=+\\_-><@`,?!*#%^&$:|'")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # a period that is not a decimal point
_COMMA_NUMBER = re.compile(r"(\d)(,)(\d)")


def normalize_vqa(answer: str) -> str:
    """EvalAI normalisation: punctuation, periods, number words, articles, contractions."""
    text = answer.replace("\n", " ").replace("\t", " ").strip().lower()
    out = text
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_NUMBER, text):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = []
    for word in out.split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def answers(example: TestExample) -> list[str]:
    return example.answer if isinstance(example.answer, list) else [example.answer]


def vqa_soft(prediction: str, example: TestExample) -> float:
    """min(1, matches/3), averaged leave-one-out over the human answers; one answer = exact match."""
    pred = normalize_vqa(prediction)
    humans = [normalize_vqa(a) for a in answers(example)]
    if not pred:
        return 0.0
    if len(humans) == 1:
        return float(pred == humans[0])
    accs = []
    for i in range(len(humans)):
        others = humans[:i] + humans[i + 1 :]
        accs.append(min(1.0, sum(h == pred for h in others) / 3))
    return sum(accs) / len(accs)


def _plain(text: str) -> str:
    return text.strip().rstrip(".").strip().lower()


def exact_match(prediction: str, example: TestExample) -> float:
    """Case-insensitive, trailing period stripped (GQA, VizWiz, VQAv2, OCR-VQA)."""
    pred = _plain(prediction)
    return float(bool(pred) and any(pred == _plain(a) for a in answers(example)))


def contains(prediction: str, example: TestExample) -> float:
    """ImageNet rule: the label in the prediction or the prediction in the label; empty is wrong."""
    pred = _plain(prediction)
    return float(bool(pred) and any(_plain(a) in pred or pred in _plain(a) for a in answers(example)))


_LETTER_DOT = re.compile(r"^([A-Z])[.):]")
_ANSWER_IS = re.compile(r"answer is \(?([A-Z])\b")


def parse_option_letter(prediction: str) -> str | None:
    """ScienceQA: the exact letter; 'X. ...'; 'The answer is X'; else the first one-letter word."""
    text = prediction.strip()
    if len(text) == 1 and text.isupper():
        return text
    for pattern in (_LETTER_DOT, _ANSWER_IS):
        if m := pattern.search(text):
            return m.group(1)
    for word in text.split():
        word = word.strip(".,:;()[]")
        if len(word) == 1 and word.isupper() and word != "I":
            return word
    return None


def option_letter(prediction: str, example: TestExample) -> float:
    letter = parse_option_letter(prediction)
    return float(letter is not None and any(letter == parse_option_letter(a) for a in answers(example)))


_NUMBER = r"\s*(-?\d+(?:\.\d*)?|-?\.\d+)\s*"
_BOX = re.compile(r"\[?\(?" + ",".join([_NUMBER] * 4) + r"\)?\]?")


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The first '[x1, y1, x2, y2]' (brackets optional) in text, if it is a proper box."""
    m = _BOX.search(text)
    if m is None:
        return None
    x1, y1, x2, y2 = (float(v) for v in m.groups())
    return (x1, y1, x2, y2) if x2 > x1 and y2 > y1 else None


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def bbox_iou(prediction: str, example: TestExample) -> float:
    """Correct when IoU > 0.5 in normalised coordinates; the truth is a pixel [x, y, w, h] with its size."""
    pred = parse_box(prediction)
    if pred is None or example.bbox is None or example.size is None:
        return 0.0
    x, y, w, h = example.bbox
    width, height = example.size
    truth = (x / width, y / height, (x + w) / width, (y + h) / height)
    return float(iou(pred, truth) > 0.5)


SCORERS: dict[str, Callable[[str, TestExample], float]] = {
    "option_letter": option_letter,
    "vqa_soft": vqa_soft,
    "contains": contains,
    "exact_match": exact_match,
    "bbox_iou": bbox_iou,
}


def score(metric: str, prediction: str, example: TestExample) -> float:
    """Score one prediction by `metric`; an unknown metric names the known ones."""
    if metric not in SCORERS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(SCORERS)}")
    return SCORERS[metric](prediction, example)
