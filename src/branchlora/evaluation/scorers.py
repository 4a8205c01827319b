"""Scorers: one prediction against one test example, in [0, 1], by the metric names benchmark YAMLs use.

The CoIN rules follow CoIN's evaluation scripts (zackschen/CoIN, ETrain/Eval/LLaVA/CoIN/eval_*.py), one
per task: option_letter (ScienceQA), vqa_soft (TextVQA), contains_cased (ImageNet), gqa_match (GQA),
upper_match (VizWiz, VQAv2), ocrvqa_match (OCR-VQA), bbox_iou (Grounding). `contains` and `exact_match`
are the looser, case-insensitive rules the built-in minicoin uses. Everywhere: the prediction is stripped
of surrounding whitespace first (CoIN's model_vqa scripts strip what they write), an empty prediction is
never correct, and a test item's answer list counts a match with any of its answers. Deliberate
differences from CoIN's scripts are named in each scorer's docstring.
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


def _any_answer(prediction: str, example: TestExample, same: Callable[[str, str], bool]) -> float:
    """1.0 when the stripped, non-empty prediction is `same` as one of the example's answers."""
    pred = prediction.strip()
    return float(bool(pred) and any(same(pred, a) for a in answers(example)))


def exact_match(prediction: str, example: TestExample) -> float:
    """Case-insensitive equality, trailing periods stripped on both sides (minicoin's rule for short answers)."""
    return _any_answer(prediction, example, lambda p, a: _plain(p) == _plain(a))


def contains(prediction: str, example: TestExample) -> float:
    """Case-insensitive ImageNet rule: the label in the prediction or the prediction in the label."""
    return _any_answer(prediction, example, lambda p, a: _plain(a) in _plain(p) or _plain(p) in _plain(a))


def contains_cased(prediction: str, example: TestExample) -> float:
    """CoIN's ImageNet rule (eval_ImagetNet.py): answer in prediction or prediction in answer, case-sensitive.

    Differs on purpose: CoIN counts an empty prediction right ("" is in every label); here it is wrong.
    """
    return _any_answer(prediction, example, lambda p, a: a in p or p in a)


def gqa_match(prediction: str, example: TestExample) -> float:
    """CoIN's GQA rule (convert_gqa_for_eval.py, then GQA's eval): prediction.rstrip('.').lower() == answer.

    The answer is lower-cased too (GQA's answers already are, so this changes nothing on CoIN's data).
    """
    return _any_answer(prediction, example, lambda p, a: p.rstrip(".").lower() == a.lower())


def upper_match(prediction: str, example: TestExample) -> float:
    """CoIN's VizWiz and VQAv2 rule (eval_vizwiz.py, eval_vqav2.py): prediction.upper() == answer.upper().

    No punctuation is stripped: "Yes." is wrong for "yes". "unanswerable" is an answer like any other.
    """
    return _any_answer(prediction, example, lambda p, a: p.upper() == a.upper())


def ocrvqa_match(prediction: str, example: TestExample) -> float:
    """CoIN's OCR-VQA rule (eval_ocrvqa.py): a prediction containing "Unanswerable" (that spelling) is wrong,
    otherwise prediction.lower() == answer.lower()."""
    return _any_answer(prediction, example, lambda p, a: "Unanswerable" not in p and p.lower() == a.lower())


_OPTIONS = "ABCDE"
_ONE_CHARACTER_WORD = re.compile(r"\b(\w)\b")


def parse_option_letter(prediction: str) -> str | None:
    """ScienceQA's letter as CoIN's eval_science_qa.py parses it, on the stripped prediction.

    Exactly one of A-E; else "X. ..." with X in A-E; else the first one-character word (a letter, digit or
    "_"), upper-cased ("I think B" gives "I", "b" gives "B"); else None. CoIN then counts a letter beyond
    the question's choices wrong; comparing with the answer's letter does the same.
    """
    text = prediction.strip()
    if len(text) == 1 and text in _OPTIONS:
        return text
    if len(text) >= 3 and text[0] in _OPTIONS and text[1:3] == ". ":
        return text[0]
    first = _ONE_CHARACTER_WORD.search(text)
    return first.group(1).upper() if first else None


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
    """CoIN's Grounding rule (eval_grounding.py): IoU > 0.5 between the predicted and the true box, both
    [x1, y1, x2, y2] normalised to the image padded to a max(w, h) square (`TestExample.box`; CoIN scales both
    by max(w, h) first, which leaves IoU unchanged).

    Differs on purpose in the parse: CoIN removes every bracket, then drops the first and last character of
    what is left before splitting at commas, so "[0.61, 0.36, 0.92, 0.83]" is read as y2 = 0.8 (the last
    digit lost) and any text around the box makes it unreadable; here the first well-formed box in the text
    is read whole, and one with x2 <= x1 or y2 <= y1 is wrong.
    """
    pred = parse_box(prediction)
    return float(pred is not None and example.box is not None and iou(pred, example.box) > 0.5)


SCORERS: dict[str, Callable[[str, TestExample], float]] = {
    "option_letter": option_letter,
    "vqa_soft": vqa_soft,
    "contains": contains,
    "contains_cased": contains_cased,
    "exact_match": exact_match,
    "gqa_match": gqa_match,
    "upper_match": upper_match,
    "ocrvqa_match": ocrvqa_match,
    "bbox_iou": bbox_iou,
}


def score(metric: str, prediction: str, example: TestExample) -> float:
    """Score one prediction by `metric`; an unknown metric names the known ones."""
    if metric not in SCORERS:
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(SCORERS)}")
    return SCORERS[metric](prediction, example)
