"""Print several runs' results.json as one markdown table: mean +- population std over each run's seeds, the
per-seed ACC, and the diagonal (each task right after training it) of the first seed.

    python tools/results_table.py runs/m-lora runs/m-moelora runs/m-branchlora ...

docs/results.md's tables were made with it, from one `branchlora run --methods M --seeds 0,1,2` per method.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

METRICS = ("acc", "maa", "bwt", "mft", "forgetting")


def methods(folder: Path) -> dict[str, tuple[dict, list[dict]]]:
    """{method: (its first run's result, every run's result)} of one run folder."""
    results = json.loads((folder / "results.json").read_text())
    runs = results.get("runs") or [{"methods": results["methods"]}]
    return {name: (first, [run["methods"][name] for run in runs]) for name, first in results["methods"].items()}


def stat(values: list[float]) -> str:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return f"{mean:.2f} ± {std:.2f}"


def main(folders: list[str]) -> None:
    table = ["| method | seeds | ACC | MAA | BWT | MFT | forgetting | tunable | selector | ACC per seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    diagonals = []
    for folder in folders:
        for name, (first, runs) in methods(Path(folder)).items():
            cells = [stat([r["metrics"][m] for r in runs]) for m in METRICS]
            selector = " / ".join(f"{r['selector_accuracy']:.1f}" for r in runs if "selector_accuracy" in r) or "-"
            per_seed = " / ".join(f"{r['metrics']['acc']:.2f}" for r in runs)
            table.append(f"| {name} | {len(runs)} | {' | '.join(cells)} | {first['params']['tunable']:,} | {selector} "
                         f"| {per_seed} |")  # fmt: skip
            matrix = first["matrix"]
            diagonals.append(f"| {name} | " + " | ".join(f"{matrix[t + 1][t]:.0f}" for t in range(len(matrix) - 1)))
    print("\n".join(table))
    print("\nDiagonal (right after training each task), first seed:\n")
    print("\n".join(d + " |" for d in diagonals))


if __name__ == "__main__":
    main(sys.argv[1:])
