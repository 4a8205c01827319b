"""Experience replay: a few items of every earlier task mixed into each later task's training data.

Any method combines with it (`--set replay.size=N`).  The items kept from task i are drawn from its training
data with a seed of their own, so a resumed run keeps the same ones without saving them.  They train with the
current task's routing (the methods see one task per step); the task-end hooks (freezing statistics, keys,
Fisher) see the task's own data only.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from branchlora.typed import check_fields


@dataclass
class ReplayConfig:
    size: int = field(default=0, metadata={"help": "items kept per task and mixed into later tasks (0: off)", "min": 0})

    def __post_init__(self) -> None:
        check_fields(self)


def replay_items(train: Sequence[Sequence], upto: int, size: int, seed: int) -> list:
    """`size` items of each of the tasks 0..upto-1 (all of a task's items when it has fewer)."""
    return [
        x for i in range(upto) for x in random.Random(seed * 1000 + i).sample(list(train[i]), min(size, len(train[i])))
    ]
