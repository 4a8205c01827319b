"""An experiment: every configured method, from the same base and data, over each seed and task order."""

from __future__ import annotations

import copy
import platform
from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console

from branchlora import __version__
from branchlora.config import RunConfig, to_dict
from branchlora.continual import StreamData, run_method
from branchlora.data.benchmark import Benchmark, load_benchmark
from branchlora.data.collate import Collator
from branchlora.methods import get_method
from branchlora.models.loading import base_info, load_base_from
from branchlora.progress import RunDisplay
from branchlora.report import write_outputs
from branchlora.train import make_accelerator


def stream(bench: Benchmark, order: list[str], collator: Collator) -> StreamData:
    specs = [bench.task(name) for name in order]
    return StreamData(
        names=[s.name for s in specs],
        metrics=[s.metric for s in specs],
        train=[bench.train_examples(s.name) for s in specs],
        test=[bench.test_examples(s.name) for s in specs],
        collator=collator,
    )


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"branchlora": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}  # fmt: skip


def check_methods(config: RunConfig) -> None:
    """Fail before any training on an unknown method or a bad option of any method."""
    for name in config.methods:
        get_method(name)(config.adapter, config.method_options.get(name))
    unknown = sorted(set(config.method_options) - set(config.methods))
    if unknown:
        raise ValueError(f"method_options names {unknown}, which are not in methods {config.methods}")


def run_experiment(config: RunConfig, *, resume: bool = False, console: Console | None = None) -> dict:
    """Train and evaluate every method; write results.json, report.md and plots/ under config.out."""
    console = console or Console()
    check_methods(config)
    bench = load_benchmark(config.benchmark, **config.benchmark_options)
    orders = config.orders or [bench.task_names]
    for order in orders:
        for name in order:
            bench.task(name)  # an unknown task name fails here, naming the valid ones
    base, processor = load_base_from(config.base, config.base_options)
    info = base_info(base)
    collator = Collator(processor)
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    accelerator = make_accelerator(config.train, cpu=cpu)
    out = Path(config.out)
    runs = []
    with RunDisplay(console, len(config.methods) * len(config.seeds) * len(orders)) as display:
        for order_index, order in enumerate(orders):
            data = stream(bench, order, collator)
            for seed in config.seeds:
                folder = out if (order_index, seed) == (0, config.seeds[0]) else out / f"order{order_index}-seed{seed}"
                results = {}
                for name in config.methods:
                    method = get_method(name)(config.adapter, config.method_options.get(name))
                    model = copy.deepcopy(base) if config.base == "tiny" else load_base_from(config.base)[0]
                    display.start(name, seed, order_index, len(order))
                    result = run_method(
                        method, model, data, replace(config.train, seed=seed), config.eval, folder / name,
                        resume=resume, accelerator=accelerator, on_step=display.on_step,
                        checkpoint_info={"base": config.base, "base_options": config.base_options, "tasks": order},
                    )  # fmt: skip
                    results[name] = result.to_json(len(order))
                    display.done(name, results[name])
                    del model
                runs.append({"seed": seed, "order": order, "methods": results})
    base_summary = {"name": info["name"], "pretrain_seconds": info.get("pretrain_seconds", 0.0),
                    "caption_loss": info.get("caption_loss")}  # fmt: skip
    return write_outputs(out, bench.name, runs, base_summary, to_dict(config), versions())
