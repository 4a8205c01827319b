"""Print several runs' results.json as one markdown table: mean +- population std over each run's seeds, the
per-seed ACC, and the diagonal (each task right after training it) of the first seed.

    python tools/results_table.py runs/m-lora runs/m-moelora runs/m-branchlora ... [--plot FILE]

--plot draws their ACC, MAA and BWT side by side, with the seeds' std as error bars (the report's comparison plot).

docs/results.md's tables were made with it, from one `branchlora run --methods M --seeds 0,1,2` per method.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, pstdev

from branchlora.plots import plot_comparison

METRICS = ("acc", "maa", "bwt", "mft", "forgetting")


def methods(folder: Path) -> tuple[list[str], dict[str, tuple[dict, list[dict]]]]:
    """The tasks, and {method: (its result as results.json has it, every run's result)}, of one run folder."""
    results = json.loads((folder / "results.json").read_text())
    runs = results.get("runs") or [{"methods": results["methods"]}]
    per_method = {name: (result, [run["methods"][name] for run in runs]) for name, result in results["methods"].items()}
    return results["benchmark"]["tasks"], per_method


def stat(values: list[float]) -> str:
    return f"{mean(values):.2f} ± {pstdev(values):.2f}"


def main(folders: list[str], plot: Path | None) -> None:
    table = ["| method | seeds | ACC | MAA | BWT | MFT | forgetting | tunable | selector | ACC per seed |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    merged: dict[str, tuple[dict, list[dict]]] = {}  # a method's seeds may come from several folders
    tasks: list[str] = []
    for folder in folders:
        tasks, per_method = methods(Path(folder))
        for name, (first, runs) in per_method.items():
            merged[name] = (merged[name][0], merged[name][1] + runs) if name in merged else (first, runs)
    diagonals = []
    for name, (first, runs) in merged.items():
        cells = [stat([r["metrics"][m] for r in runs]) for m in METRICS]
        selector = " / ".join(f"{r['selector_accuracy']:.1f}" for r in runs if "selector_accuracy" in r) or "-"
        per_seed = " / ".join(f"{r['metrics']['acc']:.2f}" for r in runs)
        table.append(f"| {name} | {len(runs)} | {' | '.join(cells)} | {first['params']['tunable']:,} | {selector} "
                     f"| {per_seed} |")  # fmt: skip
        matrix = first["matrix"]
        diagonals.append(f"| {name} | " + " | ".join(f"{matrix[t + 1][t]:.0f}" for t in range(len(matrix) - 1)))
    print("\n".join(table))
    print("\nDiagonal (right after training each task), first seed:\n")
    print(f"| method | {' | '.join(tasks)} |\n|---|" + "---|" * len(tasks))
    print("\n".join(d + " |" for d in diagonals))
    if plot:  # the comparison plot's error bars: one folder's repeats (the first folder holding the method)
        plot_comparison({name: first for name, (first, _) in merged.items()}, plot)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", help="run folders, each with its results.json")
    parser.add_argument("--plot", type=Path, help="write the ACC / MAA / BWT comparison here (png)")
    args = parser.parse_args()
    main(args.folders, args.plot)
