"""The accuracy matrix and its metrics (CoIN's definitions), as pure functions of the matrix.

R[t][i] is the score (0-100) on task i after training task t; row 0 is the model before any task, so R
has T + 1 rows and T columns.  Indices below are 1-based for tasks, as in the papers.
"""

from __future__ import annotations

from statistics import mean

Matrix = list[list[float]]


def _check(R: Matrix) -> int:
    T = len(R[0]) if R else 0
    if T == 0 or len(R) != T + 1 or any(len(row) != T for row in R):
        raise ValueError(f"an accuracy matrix needs T + 1 rows of T scores, got {len(R)} rows")
    return T


def acc(R: Matrix) -> float:
    """Mean score on all tasks after the last task (also called Last / MFN)."""
    T = _check(R)
    return mean(R[T])


def maa(R: Matrix) -> float:
    """Mean average accuracy: mean over t of the mean score on the tasks learned so far."""
    T = _check(R)
    return mean(mean(R[t][:t]) for t in range(1, T + 1))


def bwt(R: Matrix) -> float:
    """Backward transfer: mean over i < T of R[T][i] - R[i][i] (negative = forgetting)."""
    T = _check(R)
    return mean(R[T][i - 1] - R[i][i - 1] for i in range(1, T)) if T > 1 else 0.0


def mft(R: Matrix) -> float:
    """Mean fine-tuned accuracy: mean of each task's score right after it was learned."""
    T = _check(R)
    return mean(R[i][i - 1] for i in range(1, T + 1))


def fwt(R: Matrix) -> float:
    """Forward transfer: mean over i >= 2 of R[i-1][i] - R[0][i]."""
    T = _check(R)
    return mean(R[i - 1][i - 1] - R[0][i - 1] for i in range(2, T + 1)) if T > 1 else 0.0


def forgetting(R: Matrix) -> float:
    """Average forgetting (Chaudhry et al., 2018): mean over i < T of max_{l = 1..T-1} R[l][i] - R[T][i].

    The best score on task i is taken over every row after a task was trained (1..T-1), the rows before task
    i was learned included, as in the CL literature and CoIN's tables; row 0 (the untrained model) is not.
    """
    T = _check(R)
    if T == 1:
        return 0.0
    return mean(max(R[l][i - 1] for l in range(1, T)) - R[T][i - 1] for i in range(1, T))


METRICS = {"acc": acc, "maa": maa, "bwt": bwt, "mft": mft, "fwt": fwt, "forgetting": forgetting}


def all_metrics(R: Matrix) -> dict[str, float]:
    return {name: round(fn(R), 4) for name, fn in METRICS.items()}
