"""The commands of README.md and of every page under docs/, and every configs/*.yaml, run as written (at micro
sizes, on stand-in data), so the documentation cannot rot: a command added to any page is picked up here by
itself."""

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from branchlora.cli import app

from cli_support import refused
from engine_support import MICRO, MICRO_PRETRAIN
from field_releases import ROOTS, write_field_release
from real_geometry import build_family_folder

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
PAGES = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]}
runner = CliRunner()
# What each command may fail with by design; every other command must succeed.
REFUSED = {"branchlora run --methods nope": "unknown method 'nope'; valid methods:"}
HUB_ID = "llava-hf/llava-1.5-7b-hf"


def page_commands(text: str) -> list[str]:
    """`branchlora ...` in bash blocks and inline code, with an option and no placeholder (<name>, ...)."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        found += [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("branchlora ")]
        found += [launched(line) for line in block.splitlines() if line.startswith("accelerate launch ")]
    found += [" ".join(span.split()) for span in re.findall(r"`(branchlora [^`]+)`", text)]
    return sorted({c for c in found if len(c.split()) > 2 and "<" not in c and "..." not in c})


def readme_commands() -> list[str]:
    """Every page's commands: README.md and docs/**/*.md (the research notes' `OMP_NUM_THREADS=1 branchlora ...`
    sweeps, with shell variables, are not commands of this kind and are not collected)."""
    return sorted({c for text in PAGES.values() for c in page_commands(text)})


def launched(line: str) -> str:
    """`accelerate launch --config_file F -m branchlora.cli ARGS` as `branchlora ARGS`, once F is checked to exist."""
    config = re.search(r"--config_file (\S+)", line).group(1)
    assert (ROOT / config).is_file(), f"a page launches with {config}, which does not exist"
    return "branchlora " + line.split("-m branchlora.cli ", 1)[1].split("  #")[0].strip()


def fake_benchmark(spec: dict, folder: Path, relocate=lambda p: p) -> Path:
    """A benchmark YAML like `spec` whose task files (2 items each, CoIN formats) and images exist under
    `folder`; `relocate` maps the spec's paths (e.g. /data/coin/...) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "image_root": str(relocate(spec["image_root"]))}
    root = folder / spec["image_root"]
    root.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 30, 30)).save(root / "img.png")
    tasks = []
    for task in spec["tasks"]:
        task = {**task, "train": str(relocate(task["train"])), "test": str(relocate(task["test"]))}
        conversation = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A"}]
        tests = [{"question_id": i, "image": "img.png", "text": "What is it?", "answer": "A"} for i in range(2)]
        for test in tests:
            if task["metric"] == "bbox_iou":
                test.update(answer_bbox=[2, 2, 8, 8], size=[16, 16])
        for key, items in (("train", [{"image": "img.png", "conversations": conversation}] * 2), ("test", tests)):
            (folder / task[key]).parent.mkdir(parents=True, exist_ok=True)
            (folder / task[key]).write_text(json.dumps(items))
        tasks.append(task)
    path = folder / "benchmark.yaml"
    path.write_text(yaml.safe_dump({**spec, "tasks": tasks}))
    return path


def inside(folder: Path):
    return lambda p: folder / Path(p).relative_to("/") if Path(p).is_absolute() else p


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Stand-ins for what the README's commands name: my-stream.yaml, CoIN, a local LLaVA, a finished run."""
    root = tmp_path_factory.mktemp("readme")
    stream_spec = yaml.safe_load(re.search(r"```yaml\n(name: my-stream.*?)```", README, re.S).group(1))
    coin = fake_benchmark(yaml.safe_load((ROOT / "configs" / "coin.yaml").read_text()), root / "coin", inside(root))
    build_family_folder("llava", root / "llava")  # a LLaVA-1.5 folder with its processor: the dry run tokenises
    paths = {
        "my-stream.yaml": fake_benchmark(stream_spec, root / "stream", inside(root)),
        "configs/coin.yaml": coin,
        **{f"configs/{name}.yaml": write_field_release(name, root / name) for name in ROOTS},
        HUB_ID: root / "llava",
        "cat.png": next(root.rglob("img.png")),
    }
    world = {"root": root, "paths": {k: str(v) for k, v in paths.items()}}
    world["run"] = finished_quick_run(world)
    return world


def micro_sets(args: list[str]) -> list[str]:
    """--set entries that shrink the minicoin and the tiny base a command would build (where it builds them)."""
    sets = []
    if "--benchmark" not in args and "--config" not in args:
        sets += ["--set", "benchmark_options={train_size: 8, test_size: 2}"]
    if "--base" not in args and "--config" not in args:
        sets += ["--set", f"base_options={json.dumps({'tiny': vars(MICRO), 'pretraining': vars(MICRO_PRETRAIN)})}"]
    return sets


def quick_run(out: Path) -> list[str]:
    """The README's smoke run at micro sizes (2 steps a task) into `out`."""
    command = "branchlora run --preset quick --methods lora,moelora,branchlora"
    assert command in readme_commands()
    tiny_training = ["--set", "train={max_steps: 2, batch_size: 4}", "--set", "eval={batch_size: 8, max_new_tokens: 4}",
                     "--set", "adapter={r: 8, alpha: 16}"]  # fmt: skip
    return shlex.split(command)[1:] + micro_sets(shlex.split(command)) + tiny_training + ["--out", str(out)]


def finished_quick_run(world: dict) -> Path:
    """The README's smoke run, really trained, for predict, evaluate and resume."""
    out = world["root"] / "runs" / "default"
    result = runner.invoke(app, quick_run(out))
    assert result.exit_code == 0, result.output
    return out


def as_run(command: str, world: dict, tmp_path: Path) -> list[str]:
    """The README command with its stand-ins, micro sizes, and a fresh --out (a `run` is dry-run)."""
    args = shlex.split(re.sub(r"\[(--[\w-]+)\]", r"\1", command))[1:]  # an optional flag, given
    args = [world["paths"].get(a, a).replace("runs/default", str(world["run"])) for a in args]
    if args[0] == "run":
        args += micro_sets(args) + ["--dry-run", "--out", str(tmp_path / "out")]
        if "--config" in args:  # a CoIN config: the stand-in CoIN and LLaVA, and the CPU when there is no GPU
            args += ["--set", f"benchmark={world['paths']['configs/coin.yaml']}", "--base", world["paths"][HUB_ID]]
            args += [] if torch.cuda.is_available() else ["--device", "cpu"]
    if args[0] == "evaluate":
        args += ["--limit", "1"]
    if args[0] == "export":  # into a fresh folder
        args[args.index("--out") + 1] = str(tmp_path / "export")
    if args[0] == "pretrain":  # the micro schedule, into a fresh folder
        args = ["pretrain", "--quick", "--out", str(tmp_path / "base")]
    return args


@pytest.mark.parametrize("command", readme_commands(), ids=str)
def test_readme_command(command, world, tmp_path, monkeypatch):
    if "--device cuda" in command and not torch.cuda.is_available():
        pytest.skip("needs a GPU")
    if command.startswith("branchlora bench"):
        from branchlora.bench.loop import LoopSizes
        from test_bench import TOY

        for sizes in ("QUICK", "FULL", "GPU"):  # the page's command at toy sizes
            monkeypatch.setattr(f"branchlora.cli.bench.{sizes}", TOY)
        monkeypatch.setattr(
            "branchlora.bench.loop.DEFAULT", LoopSizes(steps=3, batch_size=4, warmup=0, least=2, cap_s=0)
        )
    result = runner.invoke(app, as_run(command, world, tmp_path))
    if command in REFUSED:
        refused(result, REFUSED[command])
        return
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    if command.startswith("branchlora run"):
        assert "dry run" in result.output and not (tmp_path / "out").exists()


def test_the_readme_commands_are_found():
    commands = page_commands(README)
    for start in ("branchlora run --benchmark", "branchlora run --config", "branchlora run --preset quick",
                  "branchlora predict", "branchlora evaluate", "branchlora export", "branchlora params"):  # fmt: skip
        assert any(c.startswith(start) for c in commands), start
    assert "make run" in README and "make test" in README
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)  # the results' one picture is in the tree
    assert pictures and all((ROOT / p).is_file() for p in pictures), pictures


def test_the_docs_commands_are_found():
    assert {"README.md", "docs/getting-started.md", "docs/scaling.md", "docs/performance.md"} <= set(PAGES)
    for page, start in (
        ("docs/getting-started.md", "branchlora pretrain --out"),
        ("docs/getting-started.md", "branchlora export"),
        ("docs/scaling.md", "branchlora params --model llava-1.5-7b --method branchlora --memory"),
        ("docs/performance.md", "branchlora bench --quick"),
        ("docs/benchmarks.md", "branchlora run --benchmark"),
        ("docs/methods.md", "branchlora params"),
    ):
        assert any(c.startswith(start) for c in page_commands(PAGES[page])), (page, start)
    assert set(readme_commands()) > set(page_commands(README))  # the pages add commands of their own


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_dry_runs_on_stand_in_data(config, world, tmp_path):
    spec = yaml.safe_load(config.read_text())
    if config.stem in ROOTS:  # the field's benchmarks: their miniature releases, in their own layouts
        args = ["run", "--benchmark", world["paths"][f"configs/{config.name}"]]
    elif "tasks" in spec:  # a benchmark file: dry-run it with its paths moved onto stand-in data
        args = ["run", "--benchmark", str(fake_benchmark(spec, tmp_path / "data", inside(tmp_path / "data")))]
    else:
        args = ["run", "--config", str(config), "--set", f"benchmark={world['paths']['configs/coin.yaml']}"]
        args += [] if torch.cuda.is_available() else ["--device", "cpu"]
    args += ["--base", world["paths"][HUB_ID], "--dry-run", "--out", str(tmp_path / "out")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tunable parameters" in result.output and not (tmp_path / "out").exists()


def test_a_hub_id_that_is_not_available_offline_is_one_clear_line(world, tmp_path):
    args = ["run", "--benchmark", world["paths"]["my-stream.yaml"], "--base", "llava-hf/no-such-model-here",
            "--dry-run", "--out", str(tmp_path / "out")]  # fmt: skip
    refused(
        runner.invoke(app, args, env={"HF_HUB_OFFLINE": "1"}),
        "base 'llava-hf/no-such-model-here': its config is not available",
    )


def test_checkpoints_record_the_run_and_a_changed_resume_is_refused(world):
    state = json.loads((world["run"] / "branchlora" / "task-04" / "state.json").read_text())
    assert state["config"]["methods"] == ["lora", "moelora", "branchlora"] and len(state["tasks"]) == 5  # quick
    assert state["run"]["train"]["max_steps"] == 2 and state["run"]["tasks"] == state["tasks"]
    assert json.loads((world["run"] / "run-config.json").read_text())["orders"] == [state["tasks"]]
    assert not (world["run"] / ".lock").exists()  # released at the end
    changed = [*quick_run(world["run"]), "--resume", "--set", "train={max_steps: 3, batch_size: 4}"]
    result = runner.invoke(app, changed)
    assert result.exit_code == 2 and "train.max_steps: 2 -> 3" in " ".join(result.output.split()), result.output
    result = runner.invoke(app, [*quick_run(world["run"]), "--dry-run"])
    assert result.exit_code == 2 and "is not empty" in result.output  # a dry run checks --out as a run would
    before = sorted(p.name for p in world["run"].iterdir())
    result = runner.invoke(app, [*quick_run(world["run"]), "--overwrite", "--dry-run"])
    assert result.exit_code == 0 and sorted(p.name for p in world["run"].iterdir()) == before
    result = runner.invoke(app, [*quick_run(world["run"]), "--resume"])  # all done: nothing left to train
    assert result.exit_code == 0, result.output
