"""Every item's sequence length before any training, without decoding an image.

A run must not meet an item longer than max_length hours in (the Collator would refuse it mid-task), so the
dry run and `run` both measure every item first: its text through the real tokenizer, its image's tokens
from the size in the file's header through the processor's own rule. Both call `longest_sequences`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from branchlora.data.benchmark import Benchmark, TestExample, TrainExample, image_size
from branchlora.data.collate import Collator

CHUNK = 4096  # items per call of the tokenizer


def longest_sequences(bench: Benchmark, names: Sequence[str], collator: Collator) -> dict[str, dict[str, int]]:
    """{task: {"train": longest training row, "test": longest prompt}} in tokens; the first item longer than
    the collator's max_length raises its LengthError (file, item, length, max_length). Every image is
    checked to open (its header is read) once, however many items share it."""
    sizes: dict[Path, tuple[int, int]] = {}
    tokens: dict[tuple[int, int], int] = {}

    def image_tokens(example: TrainExample | TestExample) -> int:
        if example.image is None:
            return 0
        size = sizes.get(example.image) or sizes.setdefault(example.image, image_size(example.image))
        return tokens.get(size) or tokens.setdefault(size, collator.image_tokens(size))

    longest = {}
    for name in names:
        splits = {"train": bench.train_examples(name), "test": bench.test_examples(name)}
        longest[name] = {split: _longest(collator, items, image_tokens, split == "train")
                         for split, items in splits.items()}  # fmt: skip
    return longest


def _longest(collator: Collator, items: list, image_tokens, train: bool) -> int:
    longest = 0
    for start in range(0, len(items), CHUNK):
        part = items[start : start + CHUNK]
        lengths = collator.lengths(part, [image_tokens(e) for e in part], train=train)
        for example, length in zip(part, lengths, strict=True):
            collator.check_length(length, example.where)
        longest = max(longest, *lengths)
    return longest
