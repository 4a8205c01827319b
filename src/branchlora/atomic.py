"""Atomic file writes: a reader (or a resumed run) never sees a half-written file.

A write that fails (a full disk, a lost mount) raises WriteError, one line naming the file, and leaves the
earlier complete file in place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class WriteError(ValueError):
    """A file or folder could not be written; what was there before is kept.  `reason`: the system's word."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def write_failed(path: Path, err: OSError, kept: str) -> WriteError:
    """One line for a failed write of `path`: why (ENOSPC: 'No space left on device') and what is kept."""
    reason = err.strerror or str(err)
    return WriteError(f"cannot write {str(path)!r}: {reason}; {kept}", reason)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the result the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as err:
        kept = "the earlier file is kept" if path.exists() else "nothing was written"
        raise write_failed(path, err, kept) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


@contextmanager
def atomic_dir(final: str | Path, marker: str) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it becomes `final` in one rename.

    `marker` is a file the finished folder holds: if another process got there first, its result stands.
    """
    final = Path(final)
    check_free(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    except OSError as err:
        raise write_failed(final, err, "nothing was written") from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        tmp.rename(final)
    except OSError:
        if not (final / marker).exists():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_writable(folder: Path, name: str = "folder") -> None:
    """Fail with one line naming `name` unless `folder` is, or can be created as, a folder this process writes in."""
    if folder.exists() and not folder.is_dir():
        raise WriteError(f"{name} {str(folder)!r} is a file, not a folder")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():
        raise WriteError(f"{name} {str(folder)!r}: {str(existing)!r} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WriteError(f"{name} {str(folder)!r}: {str(existing)!r} is not writable")


def check_free(folder: Path, name: str = "folder") -> None:
    """Refuse a folder that `atomic_dir` could not create (a file, a folder with entries, an unwritable place),
    before the work that fills it rather than after."""
    check_writable(folder, name)
    if folder.is_dir() and any(folder.iterdir()):
        raise WriteError(f"{name} {str(folder)!r} is not empty: nothing is replaced there; choose a new or empty one")


def write_json(path: str | Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
