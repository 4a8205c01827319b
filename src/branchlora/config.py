"""The experiment configuration: dataclasses with defaults and help written once.

A run is a YAML file (a preset under branchlora/configs/, or the user's), every key of which can be
overridden on the command line with `--set section.key=value`.  Unknown keys are errors that list the
valid ones, so a typo never silently falls back to a default.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from branchlora.evaluation.evaluate import EvalConfig
from branchlora.train import TrainConfig

PRESETS = ("quick", "default")


@dataclass
class RunConfig:
    """One experiment: a benchmark, a base model, the methods to compare, how to train and evaluate."""

    benchmark: str = field(default="minicoin", metadata={"help": "built-in benchmark name or a YAML file"})
    benchmark_options: dict = field(
        default_factory=dict, metadata={"help": "options of a built-in benchmark (minicoin: train_size, ...)"}
    )
    base: str = field(default="tiny", metadata={"help": "'tiny' (built and cached) or a llava-hf id / folder"})
    base_options: dict = field(
        default_factory=dict, metadata={"help": "tiny base only: {seed, tiny: {sizes}, pretraining: {steps, ...}}"}
    )
    methods: list[str] = field(
        default_factory=lambda: ["lora", "moelora", "branchlora"], metadata={"help": "methods to compare"}
    )
    adapter: dict = field(default_factory=dict, metadata={"help": "adapter overrides for every method (r, alpha..)"})
    method_options: dict = field(
        default_factory=dict, metadata={"help": "per-method options, e.g. {branchlora: {keys: prototype}}"}
    )
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training (see train.*)"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation (see eval.*)"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "repeat the run for each seed"})
    orders: list[list[str]] = field(
        default_factory=list, metadata={"help": "task orders to run (empty: the benchmark's order)"}
    )
    out: str = field(default="runs/latest", metadata={"help": "output folder"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})


def _build(cls: type, data: dict, where: str) -> Any:
    """A dataclass from a dict, nested dataclasses included; unknown keys name the valid ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(known)}")
    values = {}
    for name, value in data.items():
        sub = known[name].default_factory if known[name].default_factory is not MISSING else None
        if sub is not None and is_dataclass(sub):
            value = _build(sub, value or {}, f"{where}.{name}")
        values[name] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping of keys, got {type(data).__name__}")
    return data


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return Path(str(resources.files("branchlora") / "configs" / f"{name}.yaml"))


def parse_override(text: str) -> dict:
    """'train.lr=1e-3' -> {"train": {"lr": 0.001}}; the value is read as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--set {text!r}: expected section.key=value")
    value: Any = yaml.safe_load(raw)
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def load_config(
    preset: str | None = "default", path: str | Path | None = None, overrides: list[dict] = ()
) -> RunConfig:
    """The preset, then the user's file, then each override, merged in that order and validated."""
    data: dict = {}
    if preset:
        data = read_yaml(preset_path(preset))
    if path:
        data = _merge(data, read_yaml(Path(path)))
    for override in overrides:
        data = _merge(data, override)
    return _build(RunConfig, data, str(path or f"preset {preset}"))


def to_dict(config: RunConfig) -> dict:
    return asdict(config)


def _rows(prefix: str, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    rows = []
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()
        if is_dataclass(default):
            rows += _rows(f"{prefix}{f.name}.", type(default))
            continue
        rows.append(f"| `{prefix}{f.name}` | `{default}` | {f.metadata.get('help', '')} |")
    return rows


def reference() -> str:
    """The configuration reference (markdown), generated from the dataclasses' help: the run, the adapter
    (`adapter.*`, defaults of the branchlora method) and each method's own options."""
    from branchlora.adapters import AdapterConfig
    from branchlora.methods import METHODS, MethodOptions

    lines = ["| key | default | meaning |", "|---|---|---|", *_rows("", RunConfig), *_rows("adapter.", AdapterConfig)]
    lines += _rows("method_options.<any>.", MethodOptions)
    base = tuple(f.name for f in fields(MethodOptions))
    seen: set[type] = set()
    for name, method in sorted(METHODS.items()):
        if method.Options not in seen and method.Options is not MethodOptions:
            seen.add(method.Options)
            lines += _rows(f"method_options.{name}.", method.Options, skip=base)
    return "\n".join(lines)
