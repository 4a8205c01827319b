"""Instruction templates per minicoin task, after CoIN's "Original" and "10Type" instruction sets.

Each template wraps a task's question with that task's answer-format instruction, so the tasks differ
in wording and answer format the way CoIN's do. "original" has one template per task, "10type" ten.
"""

from __future__ import annotations

import random

_SHORT = "Answer the question using a single word or phrase."
_BOX = "Please provide the bounding box coordinate of the region this sentence describes: {question}"

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "scienceqa": {
        "original": ("{question}\n{options}\nAnswer with the option's letter from the given choices directly.",),
        "10type": (
            "{question}\n{options}\nAnswer with the option's letter from the given choices directly.",
            "{question}\n{options}\nReply with the letter of the right option.",
            "Choose the correct option.\n{question}\n{options}\nGive only its letter.",
            "{question}\n{options}\nWhich letter is correct?",
            "Multiple choice: {question}\n{options}\nAnswer with a letter.",
            "{question}\nOptions:\n{options}\nThe answer letter is?",
            "Pick one letter.\n{question}\n{options}",
            "{question}\n{options}\nSelect the option and answer with its letter only.",
            "Look at the image and answer.\n{question}\n{options}\nLetter:",
            "{question}\n{options}\nRespond with just the option letter.",
        ),
    },
    "textvqa": {
        "original": ("{question}\n" + _SHORT,),
        "10type": (
            "{question}\n" + _SHORT,
            "Read the text in the image. {question}",
            "{question} Answer with the word you read.",
            "Look at the writing. {question}",
            "{question}\nGive a short answer.",
            "OCR question: {question}",
            "{question} Reply in one word.",
            "Based on the visible text, {question}",
            "{question}\nAnswer briefly.",
            "Read carefully. {question} One word.",
        ),
    },
    "imagenet": {
        "original": ("What is the object in the image?\n" + _SHORT,),
        "10type": (
            "What is the object in the image?\n" + _SHORT,
            "Name the object shown.",
            "What kind of object is this?",
            "Classify the object in the picture.",
            "Which category does the object belong to?",
            "What is pictured here? One word.",
            "Identify the object.",
            "Give the class name of the object.",
            "What object do you see?",
            "Label the image with its object class.",
        ),
    },
    "gqa": {
        "original": ("{question}\n" + _SHORT,),
        "10type": (
            "{question}\n" + _SHORT,
            "{question} Short answer.",
            "Look at the scene. {question}",
            "{question}\nReply with one word.",
            "Answer about the layout: {question}",
            "{question} Be brief.",
            "Consider where things are. {question}",
            "{question}\nAnswer in a word.",
            "Scene question: {question}",
            "{question} One-word answer please.",
        ),
    },
    "vizwiz": {
        "original": (
            "{question}\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + _SHORT,
        ),
        "10type": (
            "{question}\nWhen the provided information is insufficient, respond with 'Unanswerable'.\n" + _SHORT,
            "{question} If you cannot tell, say unanswerable.",
            "A blind user asks: {question}",
            "{question}\nAnswer unanswerable if the photo is unclear.",
            "Help me: {question}",
            "{question} Reply unanswerable when it cannot be seen.",
            "My photo may be blurry. {question}",
            "{question}\nOne word, or unanswerable.",
            "Question from a user: {question}",
            "{question} If unsure, answer unanswerable.",
        ),
    },
    "grounding": {
        "original": (_BOX,),
        "10type": (
            _BOX,
            "Give the box of: {question}",
            "Where is the {question}? Answer with [x1, y1, x2, y2].",
            "Locate {question} and give its bounding box.",
            "Bounding box for {question}?",
            "Find {question}. Output normalised coordinates.",
            "Box the region: {question}",
            "Coordinates of {question}, please.",
            "Output the box that contains {question}.",
            "Detect {question} and answer with its box.",
        ),
    },
    "vqav2": {
        "original": ("{question}\n" + _SHORT,),
        "10type": (
            "{question}\n" + _SHORT,
            "{question} Answer with a number or yes/no.",
            "Quick question: {question}",
            "{question}\nShort answer please.",
            "Look at the picture. {question}",
            "{question} One word.",
            "Answer the visual question: {question}",
            "{question}\nReply briefly.",
            "About this image: {question}",
            "{question} Keep it short.",
        ),
    },
    "ocrvqa": {
        "original": ("{question}\n" + _SHORT,),
        "10type": (
            "{question}\n" + _SHORT,
            "This is a book cover. {question}",
            "{question} Read it from the cover.",
            "Book question: {question}",
            "{question}\nAnswer with the text on the cover.",
            "Look at the cover. {question}",
            "{question} Give the exact word.",
            "From the cover: {question}",
            "{question}\nShort answer.",
            "Read the book cover. {question}",
        ),
    },
}
INSTRUCTION_SETS = ("original", "10type")


def instruction(task: str, instructions: str, rng: random.Random, **fields: str) -> str:
    """Fill a template of `task` from set `instructions` ("original" or "10type") with `fields`."""
    if instructions not in INSTRUCTION_SETS:
        raise ValueError(f"unknown instruction set {instructions!r}; choose one of {', '.join(INSTRUCTION_SETS)}")
    templates = TEMPLATES[task][instructions]
    template = templates[0] if len(templates) == 1 else rng.choice(templates)
    return template.format(**fields)
