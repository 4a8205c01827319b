"""`branchlora pretrain`: build the tiny base by the project's recipe (the committed one was built this way)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from branchlora.cli.errors import user_errors


def pretrain(
    out: Path = typer.Option(None, help="folder to write the base to (default: the cache, where runs find it)"),
    seed: int = typer.Option(0, help="seed of the tokenizer, the weights and the generated scenes"),
    quick: bool = typer.Option(False, "--quick", help="micro sizes and a few steps: a smoke test, not a base"),
    sets: list[str] = typer.Option(
        None, "--set", help="a size or recipe option, as a run's base_options: tiny.KEY=VALUE or pretraining.KEY=VALUE"
    ),
    device: str = typer.Option("cpu", help="cpu or cuda: where to train (the base is saved for the CPU)"),
) -> None:
    """Pre-train the tiny base (perception, then captioning) and report how well it sees.

    With --set, the base a run with the same base_options would build, into the same cache folder."""
    with user_errors():
        from dataclasses import asdict

        from branchlora.config import apply_layer, parse_override
        from branchlora.data.benchmark import default_cache_dir
        from branchlora.models.loading import INFO_FILE, build_tiny, tiny_configs
        from branchlora.models.pretrain import QUICK_PRETRAIN, QUICK_TINY, PretrainConfig
        from branchlora.models.tiny import TinyConfig, fingerprint

        tiny, pretraining = (QUICK_TINY, QUICK_PRETRAIN) if quick else (TinyConfig(), PretrainConfig())
        options = {"tiny": asdict(tiny), "pretraining": asdict(pretraining)}
        entries = [parse_override(text) for text in sets or []]
        for path, _ in entries:
            if path[0] not in options or len(path) != 2:
                raise ValueError(f"--set {'.'.join(path)}: expected tiny.KEY=VALUE or pretraining.KEY=VALUE")
        apply_layer(options, entries)
        tiny, pretraining = tiny_configs(options)
        if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
            raise ValueError(f"--device {device!r}: expected cpu, or cuda on a machine with a GPU")
        folder = out or default_cache_dir() / "models" / f"tiny-{fingerprint(tiny, pretraining, seed=seed)}"
        if (folder / INFO_FILE).exists() and out is None:
            raise ValueError(f"{folder} already holds this base; pass --out to build another copy")
        build_tiny(folder, tiny, pretraining, seed=seed, progress=True, device=device)
        info = json.loads((folder / INFO_FILE).read_text())
    table = Table(title=f"tiny base in {folder}: held-out perception read back from its captions (%)")
    for fact in info["perception"]:
        if fact not in ("scenes", "examples"):
            table.add_column(fact, justify="right")
    table.add_row(*(f"{v:.1f}" for k, v in info["perception"].items() if k not in ("scenes", "examples")))
    Console().print(table)
    Console().print(f"caption loss {info['caption_loss']:.4f}, {info['params']:,} parameters, "
                    f"{info['pretrain_seconds']:.0f} s")  # fmt: skip
