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

# EvalAI's answer processor (m4c_evaluator's EvalAIAnswerProcessor, which LLaVA and CoIN score TextVQA with).
# The tables are EvalAI's data, reproduced as they are (capitalised keys such as "Im" never match, as there).
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip
# EvalAI's list: no apostrophe, period, "%", "*", "#", ":", "&", "$", "^" or "|" (those stay in the answer).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # EvalAI's pattern: any period not followed by a digit
_PERIODS_REMOVED = 32  # EvalAI passes re.UNICODE (= 32) where sub() takes its count


def normalize_vqa(answer: str) -> str:
    """EvalAI's answer processor, step for step, so that our TextVQA scores are CoIN's.

    Lower-case; drop "," and "?" and split "'s" off its word (" 's"); whitespace; punctuation from EvalAI's
    list, dropped where it touches a space and spaced out elsewhere; periods not followed by a digit (the
    first 32); number words to digits; articles; then the contractions table ("dont" -> "don't").
    """
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    text = _strip_punctuation(text)
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


def _strip_punctuation(text: str) -> str:
    """EvalAI's rule: a mark that touches a space anywhere in the text is dropped, otherwise spaced out.

    EvalAI also drops every mark when a comma sits between digits; that never fires, as its tokeniser has
    already removed every comma, so it is left out here.
    """
    out = text
    for mark in PUNCTUATION:
        out = out.replace(mark, "" if mark + " " in text or " " + mark in text else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


def answers(example: TestExample) -> list[str]:
    return example.answer if isinstance(example.answer, list) else [example.answer]


def vqa_soft(prediction: str, example: TestExample) -> float:
    """TextVQA accuracy as EvalAI / m4c_evaluator computes it, on answers normalised by `normalize_vqa`.

    For each of the human answers, min(1, matches among the others / 3), averaged: with CoIN's 10 answers this
    equals EvalAI's score exactly, except that an empty prediction is never correct (as for every scorer here).
    A single answer is a normalised exact match.
    """
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
