"""The live display of a run: one bar per method and task, with its loss and ETA; a line per result."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunDisplay:
    def __init__(self, console: Console, n_runs: int) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.overall = self.progress.add_task("methods", total=n_runs, loss="")
        self.current = None
        self.label = ""

    def __enter__(self) -> RunDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def start(self, method: str, seed: int, order: int, n_tasks: int) -> None:
        self.label = f"{method} (seed {seed}{f', order {order}' if order else ''})"
        self.current = None

    def on_step(self, task: str, step: int, total: int, losses: dict[str, float]) -> None:
        loss = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        if self.current is None or step == 1:
            if self.current is not None:
                self.progress.remove_task(self.current)
            self.current = self.progress.add_task(f"{self.label} · {task}", total=total, loss=loss)
        self.progress.update(self.current, completed=step, loss=loss)

    def done(self, method: str, result: dict) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        m = result["metrics"]
        self.console.print(
            f"[green]✓[/] {self.label}: ACC {m['acc']:.2f}  MAA {m['maa']:.2f}  BWT {m['bwt']:.2f}"
            f"  ({result['train_seconds']:.0f}s train, {result['eval_seconds']:.0f}s eval)"
        )
        self.progress.advance(self.overall)
