"""An experiment: every configured method, from the same base and data, over each seed and task order."""

from __future__ import annotations

import copy
import gc
import hashlib
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from branchlora import __version__
from branchlora.adapters import tunable_count
from branchlora.adapters.inject import find_targets, rank_note
from branchlora.config import RunConfig, to_dict
from branchlora.continual import StreamData, require_same_run, run_method
from branchlora.data.benchmark import Benchmark, load_benchmark
from branchlora.data.collate import Collator
from branchlora.data.lengths import longest_sequences
from branchlora.evaluation.scorers import OFFLINE
from branchlora.methods import Task, get_method
from branchlora.models.loading import base_info, load_base_from, load_processor, make_collator, run_dtype
from branchlora.models.tiny import TinyConfig, build_model
from branchlora.progress import RunDisplay
from branchlora.replay import replay_items
from branchlora.report import build_results, write_outputs
from branchlora.rundir import check_apart, check_out, claimed, is_main_process
from branchlora.tracking import flat_config, resolve_trackers
from branchlora.train import HOW, launched_processes, make_accelerator


def stream(bench: Benchmark, order: list[str], collator: Collator) -> StreamData:
    specs = [bench.task(name) for name in order]
    return StreamData(
        names=[s.name for s in specs],
        metrics=[s.metric for s in specs],
        train=[bench.train_examples(s.name) for s in specs],
        test=[bench.test_examples(s.name) for s in specs],
        collator=collator,
        budgets=[s.max_new_tokens for s in specs],
    )


def versions() -> dict[str, str]:
    import accelerate
    import transformers

    return {"branchlora": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__, "python": platform.python_version()}  # fmt: skip


def machine(accelerator) -> dict:
    """Where the numbers were measured: timings (and, through float reductions, results) depend on it."""
    device = torch.cuda.get_device_name() if accelerator.device.type == "cuda" else "cpu"
    return {"device": device, "threads": torch.get_num_threads(), "processes": accelerator.num_processes,
            "cpus": os.cpu_count()}  # fmt: skip


def use_cpu(config: RunConfig, console: Console) -> bool:
    """Whether to run on the CPU; a device or precision that cannot be honoured fails or is said aloud."""
    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        raise ValueError("device=cuda, but torch sees no CUDA GPU: use --device cpu or auto")
    cpu = config.device == "cpu" or not cuda
    if cpu and config.train.mixed_precision == "bf16":
        console.print("note: train.mixed_precision=bf16 on the CPU runs torch's CPU autocast in bfloat16 "
                      "(slower than fp32 on most CPUs; set it to no for fp32)", highlight=False)  # fmt: skip
    return cpu


def task_orders(config: RunConfig, bench: Benchmark) -> list[list[str]]:
    """The orders to run; an unknown task name fails here, naming the benchmark's tasks."""
    orders = config.orders or [bench.task_names]
    for order in orders:
        for name in order:
            bench.task(name)
    return orders


def inputs(bench: Benchmark) -> dict[str, Path]:
    """The files and folders a run reads, by what they are: the benchmark file, its image root, each task's files."""
    named = {"benchmark file": bench.path, "image root": bench.image_root}
    for task in bench.tasks:
        named |= {f"{task.name} train file": task.train, f"{task.name} test file": task.test}
    return named


def content_hashes(bench: Benchmark) -> dict[str, str]:
    """{resolved path: sha256} of the benchmark file and its tasks' files: what --resume checks has not
    changed (a path as typed may name another file from another folder; a file may be edited in place)."""
    paths = [p for what, p in inputs(bench).items() if what != "image root"]
    return {str(p.resolve()): hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in dict.fromkeys(paths)}


def run_identity(config: dict, method: str, seed: int, order: list[str], files: dict[str, str]) -> dict:
    """Everything that changes a method's results in one (seed, order) run: what a resumed checkpoint must match.
    `files` are the benchmark's content hashes (`content_hashes`), so the benchmark is compared by content."""
    keys = ("benchmark_options", "base", "base_options", "model", "adapter", "eval")
    options = config["method_options"].get(method, {})
    return {**{k: config[k] for k in keys}, "method": method, "method_options": options, "benchmark_files": files,
            "train": {**{k: v for k, v in config["train"].items() if k not in HOW}, "seed": seed},
            "tasks": list(order)}  # fmt: skip


def run_folder(out: Path, config: RunConfig, order_index: int, seed: int) -> Path:
    return out if (order_index, seed) == (0, config.seeds[0]) else out / f"order{order_index}-seed{seed}"


def check_resumable(config: RunConfig, bench: Benchmark, orders: list[list[str]]) -> None:
    """Refuse, before any training, checkpoints in --out written with other settings, listing what differs."""
    settings, files = to_dict(config), content_hashes(bench)
    for order_index, order in enumerate(orders):
        for seed in config.seeds:
            for name in config.methods:
                folder = run_folder(Path(config.out), config, order_index, seed) / name
                require_same_run(folder, run_identity(settings, name, seed, order, files))


def run_experiment(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, console: Console | None = None
) -> dict:
    """Train and evaluate every method; write results.json, report.md and plots/ under config.out."""
    console = console or Console()
    cpu, main = use_cpu(config, console), is_main_process()
    if main:  # the other processes of a distributed run find the folder already claimed by this one
        check_out(Path(config.out), resume=resume, overwrite=overwrite)
    bench = load_benchmark(config.benchmark, **config.benchmark_options)
    check_apart(Path(config.out), inputs(bench))
    orders = task_orders(config, bench)
    if resume:
        check_resumable(config, bench, orders)
    if not main:
        return _run(config, bench, orders, cpu, resume, console)
    note_ranks(config, meta_model_factory(config)(), console)
    with claimed(Path(config.out), overwrite=overwrite, config={**to_dict(config), "orders": orders}):
        return _run(config, bench, orders, cpu, resume, console)


def _run(config: RunConfig, bench: Benchmark, orders: list[list[str]], cpu: bool, resume: bool, console) -> dict:
    """Every (order, seed, method), each from a fresh base: the tiny base deep-copied; a real base is the one
    loaded here for the first method, then reloaded from disk (the page cache makes that fast) once the
    previous method's model is freed, so no process holds two copies (a kept CPU copy would cost a 7B base's
    14 GB of host memory per process, 8 times over on 8 GPUs).  Row 0 is scored once (see score_base); only
    the main process writes outputs and draws the progress display."""
    loading = {"model": config.model, "dtype": run_dtype(config.train.mixed_precision)}  # the run's precision
    base, processor = load_base_from(config.base, config.base_options, **loading)
    info = base_info(base)
    collator = make_collator(processor, base.config, config.model)
    longest_sequences(bench, list(dict.fromkeys(n for o in orders for n in o)), collator)  # refused before training
    out, settings, files = Path(config.out), to_dict(config), content_hashes(bench)
    trackers = resolve_trackers(config.log_with)
    accelerator = make_accelerator(config.train, cpu=cpu, log_with=trackers, project_dir=str(out / "logs"))
    main, tiny = accelerator.is_main_process, config.base == "tiny"
    if trackers:
        accelerator.init_trackers(out.name or "branchlora", config=flat_config(settings))
    runs, base_scores = [], {}
    with RunDisplay(console, len(config.methods) * len(config.seeds) * len(orders), enabled=main) as display:
        for order_index, order in enumerate(orders):
            data = stream(bench, order, collator)
            for seed in config.seeds:
                folder = run_folder(out, config, order_index, seed)
                results = {}
                for name in config.methods:
                    method = get_method(name)(config.adapter, config.method_options.get(name))
                    if tiny:
                        model = copy.deepcopy(base)
                    else:  # the base loaded above serves the first method; `model` is then its only holder
                        model, base = base if base is not None else load_base_from(config.base, **loading)[0], None
                    display.start(name, seed, order_index, len(order))
                    identity = run_identity(settings, name, seed, order, files)
                    checkpoint_info = {"base": config.base, "base_options": config.base_options, "tasks": order,
                                       "run": identity, "config": settings}  # fmt: skip
                    result = run_method(
                        method, model, data, replace(config.train, seed=seed), config.eval, folder / name,
                        resume=resume, replay=config.replay.size, accelerator=accelerator, on_step=display.on_step,
                        checkpoint_info=checkpoint_info, base_scores=base_scores,
                    )  # fmt: skip
                    results[name] = result.to_json(len(order))
                    display.done(name, results[name])
                    del model, method
                    gc.collect()  # freed now, before the next base loads, even if reference cycles hold it
                runs.append({"seed": seed, "order": order, "methods": results})
    accelerator.end_training()  # trackers flush and close
    base_summary = {"name": info["name"], "pretrain_seconds": info.get("pretrain_seconds", 0.0),
                    "caption_loss": info.get("caption_loss")}  # fmt: skip
    outputs = (bench.name, runs, base_summary, settings, versions(), machine(accelerator))
    unscored = {t.name: OFFLINE[t.metric] for t in bench.tasks if t.metric in OFFLINE}  # report.md says so
    results = build_results(*outputs, unscored=unscored)
    return write_outputs(out, results) if main else results


def plan_experiment(
    config: RunConfig, *, resume: bool = False, overwrite: bool = False, console: Console | None = None
) -> dict:
    """`--dry-run`: every check a run makes before training (config, --out, benchmark files, every image's
    header, every item's length through the real processor, the model's config, each method on a weightless
    model), then the plan; trains and writes nothing."""
    console = console or Console()
    use_cpu(config, console)
    check_out(Path(config.out), resume=resume, overwrite=overwrite)
    bench = load_benchmark(config.benchmark, **config.benchmark_options)
    check_apart(Path(config.out), inputs(bench))
    orders = task_orders(config, bench)
    if resume:
        check_resumable(config, bench, orders)
    names = list(dict.fromkeys(name for order in orders for name in order))
    make_model = meta_model_factory(config)
    note_ranks(config, make_model(), console)
    collator = make_collator(load_processor(config.base, config.base_options, config.model), make_model().config,
                             config.model)  # fmt: skip
    longest = longest_sequences(bench, names, collator)
    limit = config.eval.limit or None
    processes = launched_processes()  # steps per task count the processes the run is launched on
    tasks = [{"task": name, "train": len(bench.train_examples(name)), "test": len(bench.test_examples(name, limit)),
              "steps": config.train.steps(len(bench.train_examples(name)), processes),
              "longest_train": longest[name]["train"], "longest_test": longest[name]["test"]}
             for name in names]  # fmt: skip
    train = [bench.train_examples(name) for name in orders[0]]
    sizes = [len(items) for items in train]
    # Task i trains on its items and the replayed ones of tasks 0..i-1 (how many: the seed does not matter).
    sequential = sum(
        config.train.steps(n + len(replay_items(train, i, config.replay.size, 0)), processes)
        for i, n in enumerate(sizes)
    )
    methods = {}
    for name in config.methods:
        method = get_method(name)(config.adapter, config.method_options.get(name))
        steps = config.train.joint(len(sizes)).steps(sum(sizes), processes) if method.joint else sequential
        methods[name] = {"tunable": tunable_parameters(make_model(), method, orders[0][0]), "steps": steps}
    base = {"name": config.base, "parameters": sum(p.numel() for p in make_model().parameters())}
    if config.base == "tiny":
        base["sizes"] = asdict(TinyConfig(**config.base_options.get("tiny", {})))
    plan = {"benchmark": bench.name, "base": base, "orders": orders, "tasks": tasks, "methods": methods,
            "out": config.out, "max_length": collator.max_length}  # fmt: skip
    print_plan(plan, config, console)
    return plan


class _Vocab:
    """What the tiny base's builder reads from a tokenizer: enough for a weightless model's shapes."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def convert_tokens_to_ids(self, token: str) -> int:
        return 3


def meta_model_factory(config: RunConfig) -> Callable[[], nn.Module]:
    """A builder of the base on the meta device: the tiny base from its sizes, any other from its config
    alone (AutoConfig: no weights are read; a hub id must be in the local cache when offline)."""
    if config.base == "tiny":
        tiny = TinyConfig(**config.base_options.get("tiny", {}))
        return lambda: _on_meta(lambda: build_model(tiny, _Vocab(tiny.vocab_size)))
    from transformers import AutoConfig, AutoModelForImageTextToText

    try:
        model_config = AutoConfig.from_pretrained(config.base)
    except (OSError, ValueError) as err:
        offline = " (HF_HUB_OFFLINE is set: the hub is not consulted)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ValueError(f"base {config.base!r}: its config is not available: not a local folder with a "
                         f"config.json, nor a model in the local Hugging Face cache{offline} ({type(err).__name__})"
                         ) from None  # fmt: skip
    return lambda: _on_meta(lambda: AutoModelForImageTextToText.from_config(model_config))


def note_ranks(config: RunConfig, model: nn.Module, console: Console) -> None:
    """Print a line for each method whose adapter.r exceeds a width of the layers it wraps on this (weightless)
    base: before any work, in the dry run too."""
    for name in config.methods:
        adapter = get_method(name)(config.adapter, config.method_options.get(name)).adapter
        note = rank_note(model, find_targets(model, adapter.targets), adapter.r)
        if note:
            console.print(f"note: method {name}: {note}", highlight=False)


def _on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return build()


def tunable_parameters(model: nn.Module, method, first_task: str) -> int:
    """What `method` trains on its first task, set up exactly as training sets it up."""
    method.setup(model)
    method.on_task_start(model, Task(0, first_task))
    return tunable_count(model)


def print_plan(plan: dict, config: RunConfig, console: Console) -> None:
    base = plan["base"]
    table = Table(title=f"dry run: {plan['benchmark']} on {base['name']} (nothing trained, nothing written)")
    columns = ("task", "train items", "test items", "steps per task", "longest train", "longest test")
    for column in columns:
        table.add_column(column, justify="left" if column == "task" else "right")
    for task in plan["tasks"]:
        keys = ("train", "test", "steps", "longest_train", "longest_test")
        table.add_row(task["task"], *(str(task[k]) for k in keys))
    console.print(table)
    sizes = ", ".join(f"{k} {v}" for k, v in base.get("sizes", {}).items())
    console.print(f"base {base['name']}: {base['parameters']:,} parameters{f' ({sizes})' if sizes else ''}",
                  highlight=False)  # fmt: skip
    for i, order in enumerate(plan["orders"]):
        console.print(f"order {i}: {' -> '.join(order)}", highlight=False)
    for name, method in plan["methods"].items():
        console.print(f"method {name}: {method['tunable']:,} tunable parameters, {method['steps']} optimizer steps "
                      "per seed and order", highlight=False)  # fmt: skip
    console.print(f"sequences in tokens, image tokens included; max_length {plan['max_length']}", highlight=False)
    console.print(f"seeds {config.seeds}; a real run writes {plan['out']}/", highlight=False)
