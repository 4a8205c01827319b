"""Wall time of `branchlora run --dry-run` on a CoIN-sized benchmark: N generated items (default 100,000).

Writes a benchmark of 4 tasks (90 % train, 10 % test) whose every item names its own image path (a symbolic
link to one of a handful of small JPEGs, so that every item's header is read as on real data), then times the
dry run on the tiny base. Usage: python tools/dry_run_bench.py [--items 100000] [--folder /tmp/dry-run-bench]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

from PIL import Image
from rich.console import Console

from branchlora.config import load_config, parse_override
from branchlora.experiment import plan_experiment

SIZES = [(500, 375), (640, 480), (375, 500), (1024, 768), (333, 500), (612, 612)]
TASKS = 4


def write_benchmark(folder: Path, items: int) -> Path:
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(SIZES):
        Image.new("RGB", size, (40 * i, 120, 200)).save(images / f"source-{i}.jpg")
    per_task = items // TASKS
    tasks = []
    for t in range(TASKS):
        train, test = [], []
        for i in range(per_task):
            link = images / f"t{t}-{i}.jpg"
            if not link.exists():
                link.symlink_to(images / f"source-{i % len(SIZES)}.jpg")
            question = f"<image>\nWhat is shown in this photograph of scene {i} of task {t}? Answer the question " \
                       "using a single word or phrase."  # fmt: skip
            turns = [{"from": "human", "value": question}, {"from": "gpt", "value": f"answer {i}"}]
            if i % 10:
                train.append({"image": link.name, "conversations": turns})
            else:
                test.append({"question_id": f"{t}-{i}", "image": link.name, "text": question, "answer": f"answer {i}"})
        for split, data in (("train", train), ("test", test)):
            (folder / f"task{t}-{split}.json").write_text(json.dumps(data))
        tasks.append({"name": f"task{t}", "train": f"task{t}-train.json", "test": f"task{t}-test.json",
                      "metric": "exact_match"})  # fmt: skip
    path = folder / "bench.yaml"
    path.write_text(json.dumps({"name": "dry-run-bench", "image_root": "images", "tasks": tasks}))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/dry-run-bench"))
    args = parser.parse_args()
    bench = write_benchmark(args.folder, args.items)
    sets = [f"benchmark={bench}", "benchmark_options={}", "methods=lora", f"out={args.folder / 'out'}", "orders=[]"]
    config = load_config("quick", None, [parse_override(s) for s in sets])
    start = time.perf_counter()
    plan = plan_experiment(config, console=Console(file=io.StringIO()))
    seconds = time.perf_counter() - start
    longest = {t["task"]: (t["longest_train"], t["longest_test"]) for t in plan["tasks"]}
    print(f"{args.items} items, {TASKS} tasks: dry run {seconds:.1f} s; longest (train, test) {longest}")


if __name__ == "__main__":
    main()
