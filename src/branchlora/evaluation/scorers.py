"""Scorers: one prediction against one test example, in [0, 1], by the metric names benchmark YAMLs use.

The CoIN rules follow CoIN's evaluation scripts (zackschen/CoIN, ETrain/Eval/LLaVA/CoIN/eval_*.py), one
per task: option_letter (ScienceQA), vqa_soft (TextVQA), contains_cased (ImageNet), gqa_match (GQA),
upper_match (VizWiz, VQAv2), ocrvqa_match (OCR-VQA), bbox_iou (Grounding). `contains` and `exact_match`
are the looser, case-insensitive rules the built-in minicoin uses. Everywhere: the prediction is stripped
of surrounding whitespace first (CoIN's model_vqa scripts strip what they write), an empty prediction is
never correct, and a test item's answer list counts a match with any of its answers. Deliberate
differences from CoIN's scripts are named in each scorer's docstring.

The field's other benchmarks (research/field-benchmarks.md): UCIT's QA tasks use upper_match (HiDe-LLaVA's
eval_deepseek_r1.py) and its caption tasks `coco_caption`; MLLM-DCL (bjzhb666/MLLM-CL, eval_*.py) ai2d_match
(RS, AD), pvqa_contains (Med), sci_match (Sci), finvis_match (Fin); MLLM-ACL ocrbench (OCR), cvbench (VP),
mathvista_rule (Math, its GPT judge's rule-based prefetch only) and mmtbench_server (APP, not scorable here).
A task is scored by `score_task`, which every metric fits: a per-item scorer's task score is the mean of its
items; `coco_caption` scores the task as a whole; a task that needs a judge or a server gets no score (None)
and keeps its predictions for the official evaluator.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import mean
from typing import TYPE_CHECKING

from branchlora.evaluation.captions import caption_scores, require_caption_tools

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
    pred = _plain(prediction)  # "." is empty once plain, and the empty string is in every label
    return _any_answer(prediction, example, lambda _, a: bool(pred) and (_plain(a) in pred or pred in _plain(a)))


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


UNANSWERABLE = "Unanswerable"  # MLLM-CL's scripts count any prediction containing it (that spelling) wrong


def ai2d_match(prediction: str, example: TestExample) -> float:
    """MLLM-DCL's RS and AD rule (MLLM-CL eval_ai2d.py), on lower-cased prediction and answer.

    An answer with a space must appear in the prediction. Otherwise its periods are dropped and, when the
    prediction has several words, it must appear as a word: preceded by a space or followed by a space, "."
    or ","; a one-word prediction need only contain it.
    """

    def rule(pred: str, gt: str) -> bool:
        pred, gt = pred.lower(), gt.lower()
        if " " in gt:
            return gt in pred
        gt = gt.replace(".", "")
        if " " in pred:
            return any(form in pred for form in (" " + gt, gt + " ", gt + ".", gt + ","))
        return gt in pred

    return _any_answer(prediction, example, lambda p, a: UNANSWERABLE not in p and rule(p, a))


def pvqa_contains(prediction: str, example: TestExample) -> float:
    """MLLM-DCL's Med rule (MLLM-CL eval_pvqa.py): the lower-cased answer inside the lower-cased prediction."""
    return _any_answer(prediction, example, lambda p, a: UNANSWERABLE not in p and a.lower() in p.lower())


SCI_EXACT_SOURCES = ("AI2D", "TQA", "VQA", "SciVerse")  # the image file name's prefix before its first "_"


def sci_match(prediction: str, example: TestExample) -> float:
    """MLLM-DCL's Sci rule (MLLM-CL eval_sci.py), dispatched on the image file name's prefix before "_".

    AI2D, TQA, VQA, SciVerse: lower-cased equality. Otherwise (MapQA): a question containing "Which states"
    earns the share of the answer's comma-separated items found among the prediction's comma-separated items
    (both lower-cased, not stripped, as there); any other question, the answer inside the prediction.
    """
    pred = prediction.strip()
    if not pred or UNANSWERABLE in pred:
        return 0.0
    pred, gt = pred.lower(), str(answers(example)[0]).lower()
    source = example.image.name.split("_")[0] if example.image is not None else ""
    if source in SCI_EXACT_SOURCES:
        return float(pred == gt)
    if "Which states" in example.instruction:
        wanted, said = gt.split(","), pred.split(",")
        return sum(item in said for item in wanted) / len(wanted)
    return float(gt in pred)


def finvis_match(prediction: str, example: TestExample) -> float:
    """MLLM-DCL's Fin rule (MLLM-CL eval_finvis.py): the prediction lower-cased, spaces and periods removed,
    equal to the lower-cased answer (Fin's answers are letters or Yes/No)."""

    def same(pred: str, gt: str) -> bool:
        return UNANSWERABLE not in pred and pred.lower().replace(" ", "").replace(".", "") == gt.lower()

    return _any_answer(prediction, example, same)


HANDWRITTEN_MATH = "Handwritten Mathematical Expression Recognition"


def ocrbench(prediction: str, example: TestExample) -> float:
    """OCRBench's rule as MLLM-ACL scores OCR (MLLM-CL eval_ocr.py), by the item's `answer_type`: any answer
    inside the prediction, both stripped and without newlines; lower-cased, except for handwritten
    mathematical expressions, which drop every space instead."""
    math = example.fields.get("answer_type") == HANDWRITTEN_MATH

    def norm(text: str) -> str:
        text = text.strip().replace("\n", "")
        return text.replace(" ", "") if math else text.lower()

    return _any_answer(prediction, example, lambda p, a: norm(a) in norm(p))


def cvbench(prediction: str, example: TestExample) -> float:
    """CV-Bench's rule as MLLM-ACL scores VP (MLLM-CL eval_sat.py): both lower-cased and stripped, spaces,
    newlines and periods removed; the answer inside the prediction."""

    def norm(text: str) -> str:
        return text.lower().strip().replace(" ", "").replace("\n", "").replace(".", "")

    return _any_answer(prediction, example, lambda p, a: norm(a) in norm(p))


MATH_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                 "I'm sorry, but without the image provided", "Cannot determine the answer")  # fmt: skip
_OPTION_PUNCTUATION = str.maketrans({c: " " for c in ".()[],:;!*#{}"})


def infer_option(prediction: str, choices: Sequence[str]) -> str | None:
    """The option letter MathVista's prefetch reads from a prediction (MLLM-CL eval_math.py, VLMEvalKit's
    can_infer): a refusal is "Z"; else the one option letter standing as a word (punctuation spaced out);
    else "Z" when none stands but a lone "Z" does; else the one option whose text the lower-cased prediction
    contains; else None."""
    letters = [chr(65 + i) for i in range(len(choices))]
    if any(refusal in prediction for refusal in MATH_REFUSALS):
        return "Z"
    words = prediction.translate(_OPTION_PUNCTUATION).split()
    standing = [c for c in letters if c in words]
    if len(standing) == 1:
        return standing[0]
    if not standing and "Z" in words:
        return "Z"
    found = [c for c, text in zip(letters, choices, strict=True) if str(text).lower() in prediction.lower()]
    return found[0] if len(found) == 1 else None


def mathvista_prefetch(prediction: str, example: TestExample) -> bool:
    """Whether MathVista's rule-based prefetch already finds the right answer (no GPT judge needed): a
    multiple-choice letter by `infer_option` equal to `answer_option`; an integer or float answer equal to
    the whole prediction read as a number; a text answer never (the judge extracts it)."""
    f, pred = example.fields, prediction.strip()
    try:
        if f.get("question_type") == "multi_choice":
            return infer_option(pred, list(f.get("choices") or [])) == f.get("answer_option")
        kind = {"integer": int, "float": float}.get(str(f.get("answer_type")))
        return kind is not None and kind(pred) == kind(str(answers(example)[0]))
    except ValueError:
        return False


def mathvista_rule(prediction: str, example: TestExample) -> float | None:
    """1.0 where MathVista's prefetch finds the right answer; None (the judge decides) otherwise."""
    return 1.0 if mathvista_prefetch(prediction, example) else None


def server_only(prediction: str, example: TestExample) -> None:
    """MMT-Bench (MLLM-ACL's APP) is scored only by its evaluation server: no item is scored here."""
    return None


SCORERS: dict[str, Callable[[str, TestExample], float | None]] = {
    "option_letter": option_letter,
    "vqa_soft": vqa_soft,
    "contains": contains,
    "contains_cased": contains_cased,
    "exact_match": exact_match,
    "gqa_match": gqa_match,
    "upper_match": upper_match,
    "ocrvqa_match": ocrvqa_match,
    "bbox_iou": bbox_iou,
    "ai2d_match": ai2d_match,
    "pvqa_contains": pvqa_contains,
    "sci_match": sci_match,
    "finvis_match": finvis_match,
    "ocrbench": ocrbench,
    "cvbench": cvbench,
    "mathvista_rule": mathvista_rule,
    "mmtbench_server": server_only,
}
CORPUS_METRICS = ("coco_caption",)  # scored on a whole task: `score_task`
METRIC_NAMES = (*SCORERS, *CORPUS_METRICS)
# Per-item fields whose values split a task's score (MLLM-CL's eval_ocr.py and eval_sat.py print these).
BREAKDOWN_FIELDS = {"ocrbench": ("answer_type",), "cvbench": ("type", "task")}
# Where the task score is not computed offline: what the official evaluator needs instead (report.md says it).
OFFLINE = {
    "mathvista_rule": "MathVista's GPT judge (MLLM-CL eval_math.py) decides the rest; the rule-based prefetch "
    "share is in details.prefetch_correct (a lower bound); model_math.py writes each record's text into "
    "row testmini_<n> of VLMEvalKit's MathVista_MINI.xlsx",
    "mmtbench_server": "MMT-Bench is scored on its evaluation server: MLLM-CL's convert_result_to_submission.py "
    "turns these records (question_id ALL_<n>, text) into the TSV it takes",
}


def score(metric: str, prediction: str, example: TestExample) -> float | None:
    """Score one prediction by a per-item `metric` (None: the item cannot be scored offline)."""
    if metric not in SCORERS:
        raise KeyError(f"unknown metric {metric!r}; per-item metrics: {', '.join(SCORERS)}")
    return SCORERS[metric](prediction, example)


@dataclass
class TaskScores:
    """A task scored as its authors' script scores it."""

    score: float | None  # 0-100; None: not scorable offline (see `note`)
    items: list[float | None]  # per item, 0-1; None where an item has no offline score (all, for corpus metrics)
    details: dict[str, float] = field(default_factory=dict)  # e.g. BLEU-1..4, or the 2D / 3D split
    note: str = ""  # how to score it when `score` is None


def breakdown(items: Sequence[float | None], examples: Sequence[TestExample], keys: Sequence[str]) -> dict[str, float]:
    """{"<key>=<value>": mean item score x 100} over the items whose `fields[key]` is that value."""
    groups: dict[str, list[float]] = defaultdict(list)
    for item, example in zip(items, examples, strict=True):
        for key in keys:
            if key in example.fields and item is not None:
                groups[f"{key}={example.fields[key]}"].append(item)
    return {name: 100.0 * mean(values) for name, values in sorted(groups.items())}


def score_task(metric: str, predictions: Sequence[str], examples: Sequence[TestExample]) -> TaskScores:
    """Score a task's predictions by `metric`: every metric, per-item or corpus-level, through this one call."""
    if metric == "coco_caption":
        details = caption_scores(predictions, [answers(e) for e in examples])
        return TaskScores(details["Average"], [None] * len(examples), details)
    items = [score(metric, p, e) for p, e in zip(predictions, examples, strict=True)]
    details = breakdown(items, examples, BREAKDOWN_FIELDS.get(metric, ()))
    if metric in OFFLINE:
        if metric == "mathvista_rule":
            details["prefetch_correct"] = 100.0 * sum(x is not None for x in items) / len(items)
        return TaskScores(None, items, details, OFFLINE[metric])
    return TaskScores(100.0 * mean(items), items, details)


def check_metric(metric: str, where: object) -> None:
    """At benchmark load: an unknown metric names the known ones; a caption metric needs its tools present."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"{where}: field 'metric': unknown metric {metric!r}; known: {', '.join(METRIC_NAMES)}")
    if metric in CORPUS_METRICS:
        require_caption_tools(where)
