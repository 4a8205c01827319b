"""Plots of accuracy matrices and method comparisons (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from branchlora.atomic import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _nan(values: list[float | None]) -> list[float]:
    """None (a score not taken, a metric n/a) as NaN: matplotlib leaves it blank."""
    return [float("nan") if x is None else x for x in values]


def plot_matrix(matrix: list[list[float | None]], tasks: list[str], method: str, path: Path) -> None:
    """Heatmap of R[t][i]: rows = after task t (row 0 = base), columns = task evaluated; unscored cells blank."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * len(tasks), 1.0 + 0.6 * len(matrix)))
    ax.imshow([_nan(row) for row in matrix], vmin=0, vmax=100, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=40, ha="right")
    ax.set_yticks(range(len(matrix)), ["base", *tasks[: len(matrix) - 1]])
    for t, row in enumerate(matrix):
        for i, x in enumerate(row):
            if x is not None:
                ax.text(i, t, f"{x:.0f}", ha="center", va="center", color="white" if x < 60 else "black", fontsize=8)
    ax.set_xlabel("evaluated on")
    ax.set_ylabel("after training on")
    ax.set_title(f"{method}: accuracy matrix (%)")
    _save(fig, path)


def plot_task_curves(matrix: list[list[float | None]], tasks: list[str], method: str, path: Path) -> None:
    """Each task's score across the stages: learning, then forgetting."""
    fig, ax = plt.subplots(figsize=(7, 4))
    stages = range(len(matrix))
    for i, task in enumerate(tasks):
        ax.plot(stages, _nan([row[i] for row in matrix]), marker="o", markersize=3, label=task)
        if i + 1 < len(matrix):
            ax.axvline(i + 1, color="grey", lw=0.3)
    ax.set_xticks(list(stages), ["base", *tasks[: len(matrix) - 1]], rotation=40, ha="right")
    ax.set_ylim(-2, 102)
    ax.set_ylabel("score (%)")
    ax.set_title(f"{method}: each task's score after each training stage")
    ax.legend(fontsize=7, ncol=2, loc="upper left")
    _save(fig, path)


def plot_comparison(methods: dict[str, dict], path: Path) -> None:
    """ACC, MAA and BWT side by side for every method (error bars when repeated)."""
    names = list(methods)
    keys = ("acc", "maa", "bwt")
    fig, ax = plt.subplots(figsize=(1.5 + 1.3 * len(names), 4))
    width = 0.8 / len(keys)
    for j, key in enumerate(keys):
        values = [methods[n].get("repeats", {}).get(key, {}).get("mean", methods[n]["metrics"][key]) for n in names]
        errors = [methods[n].get("repeats", {}).get(key, {}).get("std", 0.0) or 0.0 for n in names]
        xs = [i + (j - 1) * width for i in range(len(names))]
        ax.bar(xs, _nan(values), width, yerr=errors, capsize=3, label=key.upper())
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("%")
    ax.set_title("methods compared")
    ax.legend()
    _save(fig, path)
