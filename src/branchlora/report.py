"""What a run leaves behind: results.json (the contract in design.md), report.md and plots/."""

from __future__ import annotations

from pathlib import Path
from statistics import mean, pstdev

from branchlora.atomic import atomic_path, write_json
from branchlora.plots import plot_comparison, plot_matrix, plot_task_curves

METRIC_NAMES = ("acc", "maa", "bwt", "mft", "fwt", "forgetting")
# The papers' LLaVA-1.5-7B numbers on CoIN (ACC / MAA / BWT, tunable parameters), for orientation only.
PAPER_COIN_7B = {
    "lora": (28.74, 32.97, -32.62, None),
    "lwf": (30.41, 34.95, -27.03, None),
    "ewc": (32.90, 36.93, -27.46, None),
    "moelora": (37.13, 42.76, -25.91, "350M"),
    "branchlora": (44.20, 49.94, -20.98, "222M"),
    "multitask": (None, 57.18, None, None),
}


def repeats(runs: list[dict], method: str) -> dict:
    """Mean and (population) standard deviation of each metric over the runs (seeds x orders); None (n/a)
    for a metric some run could not compute (eval.future off)."""
    values = {m: [run["methods"][method]["metrics"][m] for run in runs] for m in METRIC_NAMES}
    return {"n": len(runs), **{m: {"mean": _stat(mean, v), "std": _stat(pstdev, v), "values": v}
                               for m, v in values.items()}}  # fmt: skip


def _stat(fn, values: list[float | None]) -> float | None:
    return None if None in values else round(fn(values), 4)


def build_results(
    bench: str,
    runs: list[dict],
    base: dict,
    config: dict,
    versions: dict,
    machine: dict,
    unscored: dict[str, str] | None = None,
) -> dict:
    """results.json's content; `unscored`: {task: how its official evaluator scores it} for tasks not scorable
    offline (their matrix entries are None)."""
    methods = {}
    for name, first in runs[0]["methods"].items():
        methods[name] = dict(first)
        if len(runs) > 1:
            methods[name]["repeats"] = repeats(runs, name)
    benchmark = {"name": bench, "tasks": runs[0]["order"], **({"unscored": unscored} if unscored else {})}
    results = {"benchmark": benchmark, "methods": methods, "base": base, "config": config, "versions": versions,
               "machine": machine}  # fmt: skip
    if len(runs) > 1:
        results["runs"] = runs
    return results


def write_outputs(out: Path, results: dict) -> dict:
    """Write `build_results`' content as results.json, report.md and plots/ under `out` (the main process)."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tasks = results["benchmark"]["tasks"]
    for name, result in results["methods"].items():
        plot_matrix(result["matrix"], tasks, name, plots / f"matrix-{name}.png")
        plot_task_curves(result["matrix"], tasks, name, plots / f"tasks-{name}.png")
    plot_comparison(results["methods"], plots / "comparison.png")
    write_json(out / "results.json", results)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_report(results))
    return results


def fmt(x: float | None, digits: int = 2, missing: str = "-") -> str:
    return missing if x is None else f"{x:.{digits}f}"


def training_table(tasks: list[dict], method: str) -> list[str]:
    """Per task: steps, the last losses read, and timings (every logged step is in <method>/log.jsonl)."""
    if not tasks:
        return []
    losses = sorted({k for t in tasks for k in t if k.startswith("loss_")})
    header = ["task", "steps", *(k.replace("_", " ") for k in losses), "train s", "eval s", "steps/s"]
    lines = ["", f"Training (the last losses read; every logged step in `{method}/log.jsonl`):", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]  # fmt: skip
    for t in tasks:
        cells = [t["task"], str(t["steps"]), *(fmt(t.get(k), 4) for k in losses)]
        cells += [fmt(t["train_seconds"], 1), fmt(t["eval_seconds"], 1), fmt(t["steps_per_s"], 2)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_report(results: dict) -> str:
    tasks = results["benchmark"]["tasks"]
    base = results["base"]
    lines = [
        f"# {results['benchmark']['name']}: {', '.join(results['methods'])}",
        "",
        f"Base: `{base['name']}` (caption loss {fmt(base.get('caption_loss'), 3)}, pre-training "
        f"{fmt(base['pretrain_seconds'], 0)} s in this run). Tasks in order: {', '.join(tasks)}.",
        "Scores are percentages; ACC = mean after the last task, MAA = mean average accuracy, BWT = backward "
        "transfer (negative = forgetting), MFT = score right after learning, FWT = forward transfer, forgetting "
        "= mean over earlier tasks of (best score after any task before the last) - (final score) (Chaudhry et "
        "al., 2018). MCITlib's names: MFN (mean final accuracy, also Last) = ACC; MFT (mean fine-tuned accuracy) "
        "= MFT; MAA and BWT as here.",
        "",
        "| method | ACC | MAA | BWT | MFT | FWT | forgetting | tunable | selector | train s | eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["methods"].items():
        metrics = [fmt(r["metrics"][k], missing="n/a") for k in METRIC_NAMES]
        lines.append(
            f"| {name} | {' | '.join(metrics)} | {r['params']['tunable']:,} | {fmt(r.get('selector_accuracy'), 1)} | "
            f"{r['train_seconds']:.0f} | {r['eval_seconds']:.0f} |"
        )
    if not results["config"].get("eval", {}).get("future", True):
        lines += ["", "eval.future is off: only the tasks learned so far are scored (CoIN's protocol), so row 0 and "
                  "the matrices' upper triangle are empty (-) and the metrics that need them (FWT, forgetting) "
                  "are n/a."]  # fmt: skip
    for task, note in results["benchmark"].get("unscored", {}).items():
        lines += ["", f"{task} is not scored offline: its matrix entries are empty (-) and the metrics that need "
                  f"them n/a. {note[0].upper()}{note[1:]}; the records are in `<method>/predictions/stage-XX/"
                  f"{task}.jsonl`."]  # fmt: skip
    lines += ["", "Every stage's answers, one JSON Lines file per task: `<method>/predictions/stage-XX/<task>.jsonl` "
              "(stage 00 = the base, stage t = after task t), records {question_id, prompt, text, answer, score, "
              "router when the method selects}: CoIN's eval scripts read question_id and text."]  # fmt: skip
    first = next(iter(results["methods"].values()))
    if "repeats" in first:
        n = first["repeats"]["n"]
        lines += ["", f"Mean ± standard deviation over {n} runs (seeds x orders):", "",
                  "| method | ACC | MAA | BWT | forgetting |", "|---|---|---|---|---|"]  # fmt: skip
        for name, r in results["methods"].items():
            cells = [
                f"{fmt(r['repeats'][k]['mean'], missing='n/a')} ± {fmt(r['repeats'][k]['std'], missing='n/a')}"
                for k in ("acc", "maa", "bwt", "forgetting")
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "![comparison](plots/comparison.png)", ""]
    for name, r in results["methods"].items():
        lines += [f"## {name}", "", "Accuracy matrix (row t = after task t; row 0 = before any task):", "",
                  "| after \\ on | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]  # fmt: skip
        for t, row in enumerate(r["matrix"]):
            lines.append(f"| {'base' if t == 0 else tasks[t - 1]} | " + " | ".join(fmt(x, 1) for x in row) + " |")
        if "selector_confusion" in r:
            lines += ["", f"Task selector after the last task: {r['selector_accuracy']:.1f}% of test samples routed "
                      "to their own task's router (confusion: row = true task, column = chosen router):", "",
                      "| true \\ chosen | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]  # fmt: skip
            for t, row in enumerate(r["selector_confusion"]):
                lines.append(f"| {tasks[t]} | " + " | ".join(str(x) for x in row) + " |")
        lines += training_table(r.get("tasks", []), name)
        lines += ["", f"![matrix](plots/matrix-{name}.png) ![tasks](plots/tasks-{name}.png)", ""]
    lines += ["## For orientation: the papers' numbers on real CoIN (LLaVA-1.5-7B), not measured here", "",
              "| method | ACC | MAA | BWT | tunable |", "|---|---|---|---|---|"]  # fmt: skip
    for name, (a, m, b, p) in PAPER_COIN_7B.items():
        lines.append(f"| {name} | {fmt(a)} | {fmt(m)} | {fmt(b)} | {p or '-'} |")
    lines += ["", f"Versions: {', '.join(f'{k} {v}' for k, v in results['versions'].items())}",
              f"Machine: {', '.join(f'{k} {v}' for k, v in results['machine'].items())}", ""]  # fmt: skip
    return "\n".join(lines)
