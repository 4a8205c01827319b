"""Progress on screen: rich bars on a terminal, plain lines without one (a log file, CI, a cluster job).

Two users: `step_progress` follows one loop (the tiny base's pre-training); `RunDisplay` follows a run,
one bar (or a few lines) per method and task, and prints a line per finished method.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

LINE_SECONDS = 30.0  # without a terminal, a line at least this often (besides every 10 % of the steps)


class LineProgress:
    """Plain progress lines for a loop of `total` steps: at every 10 % of the steps, after LINE_SECONDS
    without a line, and at the last step; each line says what runs, how far, its status and the time."""

    def __init__(self, console: Console, label: str, total: int) -> None:
        self.console, self.label, self.total = console, label, total
        self.start = self.last = time.perf_counter()
        self.every = max(1, -(-total // 10))  # a tenth, rounded up
        self.next = self.every

    def update(self, step: int, status: str = "") -> None:
        now = time.perf_counter()
        if step < self.next and step < self.total and now - self.last < LINE_SECONDS:
            return
        self.last, self.next = now, step + self.every
        parts = (f"step {step}/{self.total}", status, f"{now - self.start:.0f}s")
        self.console.print(
            escape(f"{self.label}: " + "  ".join(p for p in parts if p)), highlight=False, soft_wrap=True
        )


@contextmanager
def step_progress(
    label: str, total: int, *, enabled: bool = True, console: Console | None = None
) -> Iterator[Callable[[int, str], None]]:
    """Follow a loop of `total` steps; yields `update(step, status)` (step counted from 1).

    A transient rich bar on a terminal, plain lines otherwise (see LineProgress), nothing if not enabled."""
    console = console or Console()
    if not enabled:
        yield lambda step, status="": None
    elif console.is_terminal:
        columns = (TextColumn(escape(label)), BarColumn(), TextColumn("{task.fields[status]}"), TimeRemainingColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            job = bar.add_task("", total=total, status="")
            yield lambda step, status="": bar.update(job, completed=step, status=escape(status))
    else:
        yield LineProgress(console, label, total).update


class RunDisplay:
    """The display of a run: on a terminal, a bar for all runs and one for the current task; otherwise
    a line when a method starts, LineProgress lines through each task, and a line per finished method.
    Not `enabled` (a process other than the main one): nothing at all."""

    def __init__(self, console: Console, n_runs: int, enabled: bool = True) -> None:
        self.console = console if enabled else Console(quiet=True)
        self.live = enabled and console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        )
        self.overall = self.progress.add_task("methods", total=n_runs, loss="")
        self.current = None
        self.lines: LineProgress | None = None
        self.label = ""

    def __enter__(self) -> RunDisplay:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def start(self, method: str, seed: int, order: int, n_tasks: int) -> None:
        self.label = f"{method} (seed {seed}{f', order {order}' if order else ''})"
        self.current = None
        if not self.live:
            self.console.print(escape(f"{self.label}: {n_tasks} tasks"), highlight=False, soft_wrap=True)

    def on_step(self, task: str, step: int, total: int, losses: dict[str, float]) -> None:
        loss = " ".join(f"{k} {v:.3f}" for k, v in losses.items())
        if not self.live:
            if self.lines is None or step == 1:
                self.lines = LineProgress(self.console, f"{self.label} · {task}", total)
            self.lines.update(step, loss)
            return
        if self.current is None or step == 1:
            if self.current is not None:
                self.progress.remove_task(self.current)
            self.current = self.progress.add_task(escape(f"{self.label} · {task}"), total=total, loss=loss)
        self.progress.update(self.current, completed=step, loss=loss)

    def done(self, method: str, result: dict) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
        self.lines = None
        m = {k: "n/a" if v is None else f"{v:.2f}" for k, v in result["metrics"].items()}
        self.console.print(
            f"[green]✓[/] {escape(self.label)}: ACC {m['acc']}  MAA {m['maa']}  BWT {m['bwt']}"
            f"  ({result['train_seconds']:.0f}s train, {result['eval_seconds']:.0f}s eval)",
            soft_wrap=True,
        )
        self.progress.advance(self.overall)
