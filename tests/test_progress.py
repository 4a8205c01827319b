"""Without a terminal (a log file, CI, a cluster job), progress is plain lines: every 10 % of a loop."""

import io

from rich.console import Console

from branchlora.progress import RunDisplay, step_progress


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=60), out  # a file, not a terminal


def test_step_progress_prints_a_line_every_tenth_of_the_steps():
    console, out = plain_console()
    with step_progress("pre-training the tiny base", 100, console=console) as update:
        for step in range(1, 101):
            update(step, f"loss {1 / step:.3f}")
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("pre-training the tiny base: step 10/100  loss 0.100  ")
    assert lines[-1].startswith("pre-training the tiny base: step 100/100  loss 0.010")


def test_step_progress_disabled_prints_nothing():
    console, out = plain_console()
    with step_progress("x", 10, enabled=False, console=console) as update:
        update(5, "")
    assert out.getvalue() == ""


def test_run_display_without_a_terminal_prints_lines_and_keeps_brackets():
    console, out = plain_console()
    with RunDisplay(console, 1) as display:
        display.start("branchlora", 0, 0, 2)
        for step in range(1, 21):
            display.on_step("task [a]", step, 20, {"task": 0.5} if step >= 10 else {})
        display.done("branchlora", {"metrics": {"acc": 1, "maa": 2, "bwt": 0}, "train_seconds": 3, "eval_seconds": 1})
    lines = out.getvalue().splitlines()
    assert lines[0] == "branchlora (seed 0): 2 tasks"
    assert lines[1].startswith("branchlora (seed 0) · task [a]: step 2/20  ")  # long lines are never wrapped
    assert any(line.startswith("branchlora (seed 0) · task [a]: step 20/20  task 0.500  ") for line in lines)
    assert lines[-1].startswith("✓ branchlora (seed 0): ACC 1.00")
