"""The output folder of a run: checked before any work, claimed by one writer at a time.

A folder that already holds a run is refused unless the user says what to do with it: `--resume`
(continue it; checkpoints whose settings differ are refused later) or `--overwrite` (clear it first).
Nothing a run did not write is ever deleted: `--overwrite` removes only a run's own entries (RUN_FILES and
the folders holding checkpoints), `--resume` refuses a non-empty folder that holds no run, and an `--out`
that holds or contains the benchmark's files or images is refused before anything is written.
A lock file holding the writer's pid keeps a second run out; a lock left by a dead process is taken over.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from branchlora.atomic import check_writable

LOCK = ".lock"
MARKER = "run-config.json"  # written when a run starts: the full config and the task orders
RUN_FILES = (MARKER, "results.json", "report.md", "plots", "logs")  # what a run writes beside its method folders


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (which set RANK), or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Fail with one line if `out` cannot be written or holds a run the user did not mention."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite clears it: give one of them")
    check_writable(out, "--out")
    held = holder(out)
    if held:
        raise ValueError(f"--out {str(out)!r} is locked by {str(out / LOCK)!r} (held by {held}): another run is "
                         "writing there")  # fmt: skip
    contents = sorted(p.name for p in out.iterdir() if p.name != LOCK) if out.is_dir() else []
    if contents and not resume and not overwrite:
        shown = ", ".join(contents[:4]) + (", ..." if len(contents) > 4 else "")
        raise ValueError(f"--out {str(out)!r} is not empty ({shown}): pass --resume to continue the run there, "
                         "--overwrite to replace it, or choose another folder")  # fmt: skip
    if contents and (overwrite or resume) and not holds_run(out):
        flag = "--overwrite clears" if overwrite else "--resume continues"
        raise ValueError(f"--out {str(out)!r} is not empty and holds no branchlora run: {flag} only a run's folder; "
                         "choose an empty or new folder")  # fmt: skip


def check_apart(out: Path, inputs: dict[str, Path]) -> None:
    """Refuse an `--out` that is, or contains, one of the run's inputs (named by what they are): a run
    writes there and `--overwrite` clears it, so the benchmark's files and images must live elsewhere."""
    target = out.expanduser().resolve()
    for what, path in inputs.items():
        resolved = path.expanduser().resolve()
        if resolved == target or target in resolved.parents:
            raise ValueError(f"--out {str(out)!r} holds the {what} ({str(path)!r}): a run writes its results there and "
                             "--overwrite clears them; choose a folder outside the benchmark")  # fmt: skip


def run_entries(out: Path) -> list[Path]:
    """The entries of `out` a run wrote: RUN_FILES and every folder that holds a run's checkpoints or log
    (a method's folder, or an order/seed folder with method folders inside)."""
    return [p for p in out.iterdir() if p.name in RUN_FILES or (p.is_dir() and not p.is_symlink() and _written(p))]


def _written(folder: Path) -> bool:
    return (folder / "log.jsonl").exists() or any(folder.glob("task-[0-9][0-9]")) or holds_run(folder)


def holds_run(out: Path) -> bool:
    """Whether `out` is a run's folder: its config record, its results, or a method's task checkpoint."""
    return (out / MARKER).exists() or (out / "results.json").exists() or any(out.glob("*/task-[0-9][0-9]"))


def holder(out: Path) -> str | None:
    """'pid N on HOST' of a live writer holding the lock, else None (no lock, or its process is gone)."""
    try:
        info = json.loads((out / LOCK).read_text())
        pid, host = int(info["pid"]), str(info["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if host != socket.gethostname():
        return f"pid {pid} on {host}"  # cannot tell whether it lives: assume it does
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return f"pid {pid} on {host}"


@contextmanager
def claimed(out: Path, *, overwrite: bool, config: dict) -> Iterator[None]:
    """Take the lock of `out` (checked by `check_out`), clear it with `overwrite`, record the config; the
    lock is released at the end."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--out {str(out)!r}: cannot create the folder: {err.strerror}") from None
    lock = out / LOCK
    _take_lock(lock)
    try:
        if overwrite:
            for entry in run_entries(out):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        (out / MARKER).write_text(json.dumps(config, indent=1))
        yield
    finally:
        lock.unlink(missing_ok=True)


def _take_lock(lock: Path) -> None:
    """Create the lock atomically (O_EXCL); a stale one (dead pid) is removed and taken over once."""
    for attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held = holder(lock.parent)
            if held or attempt:
                raise ValueError(f"--out {str(lock.parent)!r} is locked by {str(lock)!r} (held by {held}): another "
                                 "run is writing there") from None  # fmt: skip
            lock.unlink(missing_ok=True)
            continue
        except OSError as err:
            raise ValueError(f"--out {str(lock.parent)!r} is not writable: {err.strerror}") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, f)
        return
