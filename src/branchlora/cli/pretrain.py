"""`branchlora pretrain`: build the tiny base by the project's recipe (the committed one was built this way)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from branchlora.cli.errors import user_errors


def pretrain(
    out: Path = typer.Option(None, help="folder to write the base to (default: the cache, where runs find it)"),
    seed: int = typer.Option(0, help="seed of the tokenizer, the weights and the generated scenes"),
    quick: bool = typer.Option(False, "--quick", help="micro sizes and a few steps: a smoke test, not a base"),
) -> None:
    """Pre-train the tiny base (perception, then captioning) and report how well it sees."""
    with user_errors():
        from branchlora.data.benchmark import default_cache_dir
        from branchlora.models.loading import INFO_FILE, build_tiny
        from branchlora.models.pretrain import QUICK_PRETRAIN, QUICK_TINY, PretrainConfig
        from branchlora.models.tiny import TinyConfig, fingerprint

        tiny, pretraining = (QUICK_TINY, QUICK_PRETRAIN) if quick else (TinyConfig(), PretrainConfig())
        folder = out or default_cache_dir() / "models" / f"tiny-{fingerprint(tiny, pretraining, seed=seed)}"
        if (folder / INFO_FILE).exists() and out is None:
            raise ValueError(f"{folder} already holds this base; pass --out to build another copy")
        build_tiny(folder, tiny, pretraining, seed=seed, progress=True)
        info = json.loads((folder / INFO_FILE).read_text())
    table = Table(title=f"tiny base in {folder}: held-out perception read back from its captions (%)")
    for fact in info["perception"]:
        if fact not in ("scenes", "examples"):
            table.add_column(fact, justify="right")
    table.add_row(*(f"{v:.1f}" for k, v in info["perception"].items() if k not in ("scenes", "examples")))
    Console().print(table)
    Console().print(f"caption loss {info['caption_loss']:.4f}, {info['params']:,} parameters, "
                    f"{info['pretrain_seconds']:.0f} s")  # fmt: skip
