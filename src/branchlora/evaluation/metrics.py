"""The accuracy matrix and its metrics (CoIN's definitions; MCITlib's names MFN, MFT, MAA, BWT in the
docstrings), as pure functions of the matrix.

R[t][i] is the score (0-100) on task i after training task t; row 0 is the model before any task, so R
has T + 1 rows and T columns.  Indices below are 1-based for tasks, as in the papers.  A score not taken
is None (eval.future off: the upper triangle, row 0 included); a metric that needs one is None (n/a),
never computed from the scores that remain.
"""

from __future__ import annotations

from collections.abc import Iterable
from statistics import mean

Matrix = list[list[float | None]]


def _check(R: Matrix) -> int:
    T = len(R[0]) if R else 0
    if T == 0 or len(R) != T + 1 or any(len(row) != T for row in R):
        raise ValueError(f"an accuracy matrix needs T + 1 rows of T scores, got {len(R)} rows")
    return T


def _mean(values: Iterable[float | None]) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else mean(values)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def acc(R: Matrix) -> float | None:
    """Mean score on all tasks after the last task: (1/T) sum_i R[T][i]. MCITlib's MFN (Mean Final
    accuracy), also called Last."""
    T = _check(R)
    return _mean(R[T])


def maa(R: Matrix) -> float | None:
    """Mean average accuracy (MCITlib's MAA): (1/T) sum_t (1/t) sum_{i<=t} R[t][i], the mean over stages of
    the mean score on the tasks learned so far; needs only the lower triangle."""
    T = _check(R)
    return _mean(_mean(R[t][:t]) for t in range(1, T + 1))


def bwt(R: Matrix) -> float | None:
    """Backward transfer (MCITlib's BWT): (1/(T-1)) sum_{i<T} R[T][i] - R[i][i] (negative = forgetting)."""
    T = _check(R)
    return _mean(_minus(R[T][i - 1], R[i][i - 1]) for i in range(1, T)) if T > 1 else 0.0


def mft(R: Matrix) -> float | None:
    """Mean fine-tuned accuracy (MCITlib's MFT, Mean Finetune accuracy): (1/T) sum_i R[i][i], each task's
    score right after it was learned."""
    T = _check(R)
    return _mean(R[i][i - 1] for i in range(1, T + 1))


def fwt(R: Matrix) -> float | None:
    """Forward transfer: mean over i >= 2 of R[i-1][i] - R[0][i] (needs the upper triangle and row 0)."""
    T = _check(R)
    return _mean(_minus(R[i - 1][i - 1], R[0][i - 1]) for i in range(2, T + 1)) if T > 1 else 0.0


def forgetting(R: Matrix) -> float | None:
    """Average forgetting (Chaudhry et al., 2018): mean over i < T of max_{l = 1..T-1} R[l][i] - R[T][i].

    The best score on task i is taken over every row after a task was trained (1..T-1), the rows before task
    i was learned included, as in the CL literature and CoIN's tables; row 0 (the untrained model) is not.
    So it needs the upper triangle: without it, n/a.
    """
    T = _check(R)
    if T == 1:
        return 0.0
    column = [[R[l][i - 1] for l in range(1, T)] for i in range(1, T)]
    best = [None if any(x is None for x in c) else max(c) for c in column]
    return _mean(_minus(b, R[T][i - 1]) for i, b in enumerate(best, start=1))


METRICS = {"acc": acc, "maa": maa, "bwt": bwt, "mft": mft, "fwt": fwt, "forgetting": forgetting}


def all_metrics(R: Matrix) -> dict[str, float | None]:
    return {name: None if (value := fn(R)) is None else round(value, 4) for name, fn in METRICS.items()}


def upper_masked(row: list[float], stage: int) -> list[float | None]:
    """Row `stage` of the matrix as eval.future=false keeps it: tasks 1..stage scored, the rest None."""
    return [x if i < stage else None for i, x in enumerate(row)]
