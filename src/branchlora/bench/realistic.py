"""A realistic-width run on this CPU (issue 27, item 6): LLaVA-1.5-7B's real widths with random weights, two tasks
of photo-sized images, a few steps each of lora, moelora and branchlora through the project's own `train_task`,
then `evaluate_all` (generation) on each task's test items and `save_checkpoint`.

The language model keeps 2 of its 32 decoder layers at width 4096 (vocabulary 32064) and CLIP-L/336 4 of its 24
layers at width 1024; the tokenizer is the tiny base's (its "<image>" id becomes the model's image token) and the
image processor CLIP's at 336 px, so a training item is 576 image tokens and a short question and answer.  Each
method runs in a fresh process, so its peak RSS is its own: the same stream at toy widths first pages in the code
(bench/memory.py's `shrunk`), then the real widths run with forward hooks on the model's parts and the collate
functions and the backward timed.  Written: DIR/METHOD.json per method, DIR/realistic.json for all.

    PYTHONPATH=src OMP_NUM_THREADS=1 python -m branchlora.bench.realistic --out /tmp/realistic
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from PIL import Image

from branchlora.bench.memory import PartTimer, peak_rss_bytes, reset_peak, rss_bytes, shrunk

PHOTOS = ((500, 375), (1024, 768))  # a COCO-sized photo and a larger one, landscape 4:3 (width, height)
STREAM = (("color", "What colour is the picture?", ("red", "blue")), ("shape", "Is it wide or tall?", ("wide", "tall")))
METHODS = ("lora", "moelora", "branchlora")
FILES = ("adapters.safetensors", "projector.safetensors", "method.pt")  # a stage checkpoint's tensors
MIB = 2**20


def write_photo_stream(root: Path, per_task: int = 2) -> Path:
    """A two-task benchmark in CoIN's file formats over photo-sized JPEGs (alternating 500x375 and 1024x768):
    `per_task` train and test items a task.  Returns its YAML file."""
    tasks = []
    for name, question, answers in STREAM:
        items = []
        for i in range(per_task):
            answer, size = answers[i % 2], PHOTOS[i % 2]
            image = f"{name}-{i}.jpg"
            Image.new("RGB", size, (200, 40, 40) if i % 2 == 0 else (40, 40, 200)).save(root / image)
            items.append((f"{name}-{i}", image, answer))
        train = [{"id": k, "image": im, "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                  {"from": "gpt", "value": a}]} for k, im, a in items]  # fmt: skip
        test = [{"question_id": k, "image": im, "text": question, "answer": a} for k, im, a in items]
        (root / f"{name}-train.json").write_text(json.dumps(train))
        (root / f"{name}-test.json").write_text(json.dumps(test))
        files = {"train": f"{name}-train.json", "test": f"{name}-test.json"}
        tasks.append({"name": name, **files, "metric": "exact_match"})
    path = root / "photos.yaml"
    path.write_text(json.dumps({"name": "photos", "image_root": str(root), "tasks": tasks}))
    return path


def llava_processor():
    """LLaVA-1.5's CLIP image processor at 336 px / patch 14 (576 image tokens) with the tiny base's tokenizer."""
    from transformers import AutoTokenizer

    from branchlora.models.loading import PACKAGED
    from branchlora.models.tiny import TinyConfig, build_processor

    tokenizer = AutoTokenizer.from_pretrained(PACKAGED)
    return build_processor(replace(TinyConfig(), image_size=336, patch_size=14), tokenizer)


def realistic_config(model: str, text_layers: int, vision_layers: int, image_token_id: int):
    """A LLaVA-1.5 preset's config at its real widths with fewer layers; the image token is the tokenizer's."""
    from branchlora.models.presets import llava_15_config

    config = llava_15_config(model)
    config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers = text_layers, vision_layers
    config.image_token_id = image_token_id
    return config


def step_split(seconds: dict[str, float], total: float) -> dict[str, float]:
    """A training step's (or evaluation's) `total` seconds by part from PartTimer sums: the input pipeline, the
    vision tower's forward, the language model's (decoder layers without adapters, lm_head), the adapters' own
    forward, the backward (language model and adapters together), and the rest (embeddings, projector, loss,
    the method's extra losses, clipping, AdamW, generation's bookkeeping)."""
    adapters = seconds.get("adapter_layers", 0.0) - seconds.get("adapter_base_linears", 0.0)
    parts = {
        "input_pipeline": seconds.get("input_pipeline", 0.0),
        "vision_tower": seconds.get("vision_tower", 0.0),
        "language_model": seconds.get("decoder_layers", 0.0) - adapters + seconds.get("lm_head", 0.0),
        "adapters": adapters,
        "backward": seconds.get("backward", 0.0),
    }
    return {**parts, "rest": total - sum(parts.values()), "total": total}


def mean_split(splits: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(s[k] for s in splits) / len(splits) for k in splits[0]} if splits else {}


def run_stream(config, method_name: str, bench_path: Path, steps: int, items: int, new_tokens: int, out: Path) -> dict:
    """Build the model, train every task of the benchmark for `steps` steps, evaluate every task on `items` test
    items, save the last stage's checkpoint under `out`; seconds by part and peak RSS above the start."""
    import torch
    from transformers import LlavaForConditionalGeneration

    from branchlora.continual import MethodResult, evaluate_all, save_checkpoint
    from branchlora.data.benchmark import load_benchmark
    from branchlora.evaluation.evaluate import EvalConfig
    from branchlora.experiment import stream
    from branchlora.methods import Task, get_method
    from branchlora.models.loading import make_collator
    from branchlora.train import TrainConfig, make_accelerator, train_task

    bench = load_benchmark(bench_path)
    data = stream(bench, bench.task_names, make_collator(llava_processor(), config))
    train_config = TrainConfig(max_steps=steps, batch_size=1)
    accelerator = make_accelerator(train_config, cpu=True)
    timer = PartTimer()
    collator = data.collator
    train_batch = timer.wrap(collator.train_batch, "input_pipeline")
    collator.prompt_batch = timer.wrap(collator.prompt_batch, "input_pipeline")  # evaluate_task calls it
    accelerator.backward = timer.wrap(accelerator.backward, "backward")
    lengths: list[int] = []

    def collate(examples: list) -> dict:
        batch = train_batch(examples)
        lengths.append(batch["input_ids"].shape[1])
        return batch

    gc.collect()
    before = rss_bytes()
    reset_peak()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config)
    method = get_method(method_name)()
    method.setup(model)
    timer.watch_llava(model)
    result = {"build_seconds": time.perf_counter() - t0, "steps": [], "task_end_seconds": []}
    mark = [0.0]

    def on_step(step: int, total: int, losses: dict) -> None:
        now = time.perf_counter()
        result["steps"].append(step_split(dict(timer.seconds), now - mark[0]))
        timer.seconds.clear()
        mark[0] = now

    for index, (name, examples) in enumerate(zip(data.names, data.train, strict=True)):
        timer.seconds.clear()
        mark[0] = time.perf_counter()
        train_task(model, method, Task(index, name), examples, collate, train_config, accelerator, on_step)
        result["task_end_seconds"].append(time.perf_counter() - mark[0])  # the method's task-end hook
    result["train_peak_bytes"] = peak_rss_bytes() - before
    reset_peak()
    timer.seconds.clear()
    t0 = time.perf_counter()
    evaluation = EvalConfig(batch_size=items, max_new_tokens=new_tokens, limit=items)
    scores = evaluate_all(model, method, data, evaluation, accelerator)
    eval_seconds = time.perf_counter() - t0
    result["eval_per_task"] = {k: v / len(scores) for k, v in step_split(dict(timer.seconds), eval_seconds).items()}
    result["eval_peak_bytes"] = peak_rss_bytes() - before
    result["scores"] = {name: s.score for name, s in scores.items()}
    result["predictions"] = {name: s.predictions for name, s in scores.items()}
    folder = save_checkpoint(out, len(data.names) - 1, model, method, MethodResult(), {})
    result["checkpoint_bytes"] = {f: (folder / f).stat().st_size for f in FILES if (folder / f).exists()}
    result["seq_len"] = max(lengths)
    return result


def measure(method_name: str, out: Path, steps: int, items: int, new_tokens: int) -> dict:
    """One method in this process: a toy-width pass to page in the code, then the real widths, and the estimate."""
    from transformers import AutoConfig

    from branchlora.memory import Setting, estimate_memory

    config_path, bench_path = out / "config.json", out / "data" / "photos.yaml"
    data = json.loads(config_path.read_text())
    config = AutoConfig.for_model(**{k: v for k, v in data.items() if not k.startswith("_")})
    run_stream(shrunk(config), method_name, bench_path, 1, 1, 1, out / "warm-up" / method_name)
    result = run_stream(config, method_name, bench_path, steps, items, new_tokens, out / method_name)
    n_tasks = len(result["task_end_seconds"])
    estimate = estimate_memory(str(config_path), method_name, Setting(1, result["seq_len"], "no", tasks=n_tasks))
    # Every step counts: Accelerate's loader collates a batch ahead (the first step holds two collates), and
    # each task's first step also sets its optimizer up.
    return {"method": method_name, **result, "step_mean": mean_split(result["steps"]),
            "estimated_bytes": estimate["peak_bytes"], "estimate_terms": estimate["bytes"],
            "ratio_train_peak_to_estimate": result["train_peak_bytes"] / estimate["peak_bytes"]}  # fmt: skip


def prepare(out: Path, model: str, text_layers: int, vision_layers: int, items: int) -> None:
    """DIR/config.json (the cut model) and DIR/data (the photo benchmark), shared by the methods' processes."""
    tokenizer = llava_processor().tokenizer
    config = realistic_config(model, text_layers, vision_layers, tokenizer.convert_tokens_to_ids("<image>"))
    (out / "data").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(config.to_json_string())
    write_photo_stream(out / "data", per_task=items)


def table(results: list[dict]) -> str:
    """Markdown: seconds per training step (mean) and per task evaluation by part; memory against the estimate."""
    parts = list(results[0]["step_mean"])
    head = "| part | " + " | ".join(f"{r['method']} step | {r['method']} eval/task" for r in results) + " |"
    lines = [head, "|---|" + "---:|" * 2 * len(results)]
    for part in parts:
        cells = [f"{r['step_mean'][part]:.2f} | {r['eval_per_task'][part]:.2f}" for r in results]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines += ["", "| method | seq_len | train peak | eval peak | estimate | peak / estimate | checkpoint |",
              "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['method']} | {r['seq_len']} | {r['train_peak_bytes'] / MIB:.0f} MiB | "
                     f"{r['eval_peak_bytes'] / MIB:.0f} MiB | {r['estimated_bytes'] / MIB:.0f} MiB | "
                     f"{r['ratio_train_peak_to_estimate']:.2f} | "
                     f"{sum(r['checkpoint_bytes'].values()) / MIB:.1f} MiB |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the config, data, checkpoints, JSON")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--model", default="llava-1.5-7b", help="a LLaVA-1.5 preset (its real widths)")
    parser.add_argument("--text-layers", type=int, default=2)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per task (batch 1)")
    parser.add_argument("--items", type=int, default=2, help="train and test items per task")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure this method in this process
    args = parser.parse_args(argv)
    if args.one:
        result = measure(args.one, args.out, args.steps, args.items, args.max_new_tokens)
        (args.out / f"{args.one}.json").write_text(json.dumps(result, indent=1))
        return
    prepare(args.out, args.model, args.text_layers, args.vision_layers, args.items)
    results = []
    for name in args.methods.split(","):
        common = ["--out", str(args.out), "--steps", str(args.steps), "--items", str(args.items)]
        command = [sys.executable, "-m", "branchlora.bench.realistic", "--one", name, *common,
                   "--max-new-tokens", str(args.max_new_tokens)]  # fmt: skip
        subprocess.run(command, check=True, env=os.environ.copy())
        results.append(json.loads((args.out / f"{name}.json").read_text()))
        print(f"{name}: done", file=sys.stderr)
    (args.out / "realistic.json").write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
