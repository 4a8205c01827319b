"""The files of a run folder: its append-only log, and checkpoint files read with errors that name them.

Loaders raise CheckpointError (a ValueError, so the CLI prints it as one line) instead of the
safetensors / pickle / JSON parser's own message, which names neither the file nor what was expected.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or does not hold what the loader expects."""


def _exists(path: Path) -> None:
    if not path.is_file():
        raise CheckpointError(f"{str(path)!r} is missing: the checkpoint is incomplete")


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def read_json(path: Path) -> dict:
    """A JSON object from `path`."""
    _exists(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({first_line(err)}): the file is corrupt") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r}: expected a JSON object, got {type(data).__name__}")
    return data


def require(data: dict, key: str, kind: type | tuple[type, ...], path: Path) -> Any:
    """data[key], which must exist and be of `kind`."""
    if key not in data:
        raise CheckpointError(f"{str(path)!r}: field {key!r} is missing")
    if not isinstance(data[key], kind) or (kind is int and isinstance(data[key], bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise CheckpointError(f"{str(path)!r}: field {key!r} must be {names}, got {data[key]!r}")
    return data[key]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file."""
    _exists(path)
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file ({first_line(err)})") from None


def read_torch(path: Path) -> Any:
    """A torch.save'd object of plain tensors and containers (weights_only: no code runs on load)."""
    _exists(path)
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable torch file ({first_line(err)})") from None


def check_tensors(path: Path, saved: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Every expected tensor is in `saved`, with the expected shape (else: which one, and the two shapes)."""
    for key, want in expected.items():
        got = saved.get(key)
        if got is None:
            raise CheckpointError(f"{str(path)!r}: tensor {key} is missing")
        if got.shape != want.shape:
            raise CheckpointError(
                f"{str(path)!r}: {key} has shape {tuple(got.shape)} but the model expects {tuple(want.shape)} "
                "(saved for another model or hyper-parameters?)"
            )


class JsonLines:
    """An append-only log, one JSON object per line, each written whole in one write and closed (flushed):
    a killed run leaves every line before the kill intact.  `fields` go into every line; a log that is
    not `enabled` (another process than the main one) writes nothing."""

    def __init__(self, path: Path, enabled: bool = True, **fields: Any) -> None:
        self.path, self.enabled, self.fields = path, enabled, fields

    def __call__(self, event: str, **record: Any) -> None:
        if not self.enabled:
            return
        line = json.dumps({"event": event, "time": round(time.time(), 3), **self.fields, **record}) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(line)
