"""`branchlora run`: train methods on a task stream, then print and write the results."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from branchlora.cli.errors import user_errors
from branchlora.config import load_config, parse_override
from branchlora.report import fmt


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text!r}: expected integers separated by commas") from None


def _given(text: str | None, flag: str) -> str | None:
    """A flag's value; an empty one is refused rather than silently replaced by the default."""
    if text is not None and not text.strip():
        raise ValueError(f"{flag} is empty: give a value, or leave the flag out for the default")
    return text


def _names(text: str | None, flag: str) -> list[str] | None:
    """'a, b' -> ['a', 'b']; an empty list is refused (see `_given`)."""
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ValueError(f"{flag} {text!r} names nothing: give comma-separated names, or leave the flag out")
    return names


def _orders(text: str) -> list[list[str]]:
    return [[t.strip() for t in order.split(",") if t.strip()] for order in text.split(";") if order.strip()]


def _cell(result: dict, metric: str) -> str:
    """A metric, as mean ± std when the run was repeated over seeds or orders; n/a where it could not be
    computed (eval.future off: no upper triangle)."""
    if "repeats" in result:
        stats = result["repeats"][metric]
        return f"{fmt(stats['mean'], missing='n/a')} ± {fmt(stats['std'], missing='n/a')}"
    return fmt(result["metrics"][metric], missing="n/a")


def run(
    config: str = typer.Option(None, "--config", help="a YAML experiment file (applied over the preset)"),
    preset: str = typer.Option("default", help="quick (a smoke run) or default (what `make run` runs)"),
    methods: str = typer.Option(None, help="comma-separated methods, e.g. lora,moelora,branchlora"),
    benchmark: str = typer.Option(None, help="a built-in benchmark name (minicoin) or a benchmark YAML file"),
    base: str = typer.Option(None, help="tiny, a Hugging Face id (llava-hf/llava-1.5-7b-hf) or a model folder"),
    out: str = typer.Option(None, help="output folder (results.json, report.md, plots/, checkpoints)"),
    seed: int = typer.Option(None, help="one seed"),
    seeds: str = typer.Option(None, help="several seeds, e.g. 0,1,2: the report gives mean and std"),
    orders: str = typer.Option(None, help="task orders: tasks by comma, orders by ';'"),
    device: str = typer.Option(None, help="auto, cpu or cuda"),
    log_with: str = typer.Option(
        None, help="experiment trackers, by comma: tensorboard, wandb, mlflow, ...; none: no logs (default auto)"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue after the last complete task checkpoint"),
    overwrite: bool = typer.Option(False, "--overwrite", help="clear the previous run in --out first"),
    dry_run: bool = typer.Option(False, "--dry-run", help="check everything and print the plan; train nothing"),
    overrides: list[str] = typer.Option(
        [], "--set", help="replace any config key (docs/configuration.md): --set train.lr=1e-3; null: default"
    ),
) -> None:
    """Train and evaluate methods on a task stream; writes results.json, report.md and plots/."""
    console = Console()
    with user_errors():
        flags = {"methods": _names(methods, "--methods"), "benchmark": _given(benchmark, "--benchmark"),
                 "base": _given(base, "--base"), "out": _given(out, "--out"), "device": _given(device, "--device"),
                 "seeds": [seed] if seed is not None else (seeds and _ints(seeds)),
                 "orders": orders and _orders(orders), "log_with": _names(log_with, "--log-with")}  # fmt: skip
        entries = [parse_override(o) for o in overrides] + [((k,), v) for k, v in flags.items() if v is not None]
        cfg = load_config(preset, config, entries)
        from branchlora.experiment import plan_experiment, run_experiment  # heavy imports once the config is valid

        if dry_run:
            plan_experiment(cfg, resume=resume, overwrite=overwrite, console=console)
            return
        results = run_experiment(cfg, resume=resume, overwrite=overwrite, console=console)
    table = Table(title=f"{results['benchmark']['name']} · {len(results['benchmark']['tasks'])} tasks")
    for column in ("method", "ACC", "MAA", "BWT", "forgetting", "tunable", "selector", "train s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for name, r in results["methods"].items():
        selector = r.get("selector_accuracy")
        cells = [_cell(r, k) for k in ("acc", "maa", "bwt", "forgetting")]
        table.add_row(name, *cells, f"{r['params']['tunable']:,}", "-" if selector is None else f"{selector:.1f}%",
                      f"{r['train_seconds']:.0f}")  # fmt: skip
    console.print(table)
    console.print(f"Written: {cfg.out}/results.json, {cfg.out}/report.md, {cfg.out}/plots/")
