"""Print the single-task sweep (configs/sweeps/single-task.yaml) as a markdown table: one row per run folder
and method, the score of each task right after training it alone, and their mean.

    python tools/sweep_table.py runs/sweep/lr-*
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def rows(folder: Path) -> tuple[list[str], list[str]]:
    results = json.loads((folder / "results.json").read_text())
    runs = results.get("runs") or [{"order": results["benchmark"]["tasks"], "methods": results["methods"]}]
    lr = results["config"]["train"]["lr"]
    out = []
    for method in runs[0]["methods"]:
        scores = {run["order"][0]: run["methods"][method]["matrix"][1][0] for run in runs}
        mean = sum(scores.values()) / len(scores)
        out.append(f"| {method} | {lr:g} | " + " | ".join(f"{s:.1f}" for s in scores.values()) + f" | {mean:.1f} |")
    return out, list(scores)


def main(folders: list[str]) -> None:
    table, tasks = [], []
    for folder in folders:
        lines, tasks = rows(Path(folder))
        table += lines
    print("| method | lr | " + " | ".join(tasks) + " | mean |")
    print("|---|---|" + "---|" * (len(tasks) + 1))
    print("\n".join(sorted(table)))


if __name__ == "__main__":
    main(sys.argv[1:])
