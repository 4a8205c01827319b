"""The experiment configuration: dataclasses with defaults, help and allowed values written once.

A run is layered: a preset under branchlora/configs/, then the user's YAML file, then the command line
(`--set section.key=value` and the flags).  Each layer *replaces* every key it names: a YAML file names
its top-level keys and the keys inside `train:`, `eval:` and `model:`; `--set a.b=v` names a.b; `null` restores
the default.  Options belong to what they configure: a layer that changes `benchmark` (or `base`)
drops the earlier layers' `benchmark_options` and `orders` (or `base_options`), so the preset's minicoin
sizes and task orders never reach the user's own benchmark.  Every value is converted and checked
at load (branchlora/typed.py); a bad one fails at once with one line naming the key and the value.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from branchlora.adapters import AdapterConfig
from branchlora.data.benchmark import BUILTIN
from branchlora.data.minicoin import MiniCoinOptions
from branchlora.evaluation.evaluate import EvalConfig
from branchlora.methods import get_method
from branchlora.models.loading import ModelConfig
from branchlora.models.pretrain import PretrainConfig
from branchlora.models.tiny import TinyConfig
from branchlora.replay import ReplayConfig
from branchlora.tracking import resolve_trackers
from branchlora.train import SEED_MAX, TrainConfig
from branchlora.typed import ConfigError, build, check_fields, checked

PRESETS = ("quick", "default")
DEVICES = ("auto", "cpu", "cuda")
SECTIONS = ("train", "eval", "model")  # a YAML file's mapping for these is merged key by key
# What a layer drops from the earlier layers when it changes the owner: a preset's minicoin sizes and task
# orders do not reach the user's own benchmark, nor the tiny base's sizes another base.
OWNED = {"benchmark": ("benchmark_options", "orders"), "base": ("base_options",)}


@dataclass
class BaseOptions:
    """Options of the tiny base (`base: tiny`): its seed, sizes and pre-training recipe."""

    seed: int = field(  # torch.manual_seed takes seeds below 2**64
        default=0, metadata={"help": "seed of the tokenizer, the initialisation and pre-training", "max": 2**64 - 1}
    )
    tiny: dict = field(default_factory=dict, metadata={"help": "sizes (TinyConfig)", "of": TinyConfig})
    pretraining: dict = field(default_factory=dict, metadata={"help": "recipe (PretrainConfig)", "of": PretrainConfig})

    def __post_init__(self) -> None:
        check_fields(self, minimum=0)
        for f in fields(self):
            if "of" in f.metadata:  # checked (and converted) now, kept as the mapping the user gave
                setattr(self, f.name, checked(f.metadata["of"], getattr(self, f.name), f.name))


@dataclass
class RunConfig:
    """One experiment: a benchmark, a base model, the methods to compare, how to train and evaluate."""

    benchmark: str = field(default="minicoin", metadata={"help": "built-in benchmark name or a YAML file"})
    benchmark_options: dict = field(
        default_factory=dict,
        metadata={"help": "options of the built-in benchmark (see benchmark_options.*); a layer that changes "
                          "benchmark drops the earlier ones; none allowed for a YAML benchmark"},
    )  # fmt: skip
    base: str = field(default="tiny", metadata={"help": "'tiny' (built and cached) or a llava-hf id / folder"})
    base_options: dict = field(
        default_factory=dict,
        metadata={"help": "tiny base only (see base_options.*); a layer that changes base drops the earlier ones"},
    )
    methods: list[str] = field(
        default_factory=lambda: ["lora", "moelora", "branchlora"], metadata={"help": "methods to compare"}
    )
    adapter: dict = field(default_factory=dict, metadata={"help": "adapter overrides for every method (r, alpha..)"})
    method_options: dict = field(
        default_factory=dict, metadata={"help": "per-method options, e.g. {branchlora: {keys: prototype}}"}
    )
    model: ModelConfig = field(
        default_factory=ModelConfig, metadata={"help": "sequence length, processor options (see model.*)"}
    )
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training (see train.*)"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation (see eval.*)"})
    replay: ReplayConfig = field(default_factory=ReplayConfig, metadata={"help": "experience replay (see replay.*)"})
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata={"help": "repeat the run for each seed", "min": 0, "max": SEED_MAX}
    )
    orders: list[list[str]] = field(
        default_factory=list, metadata={"help": "task orders to run (empty: the benchmark's order)"}
    )
    out: str = field(default="runs/latest", metadata={"help": "output folder"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda", "choices": DEVICES})
    log_with: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={"help": "experiment trackers: auto (TensorBoard if installed), none, tensorboard, wandb, mlflow, .."},
    )

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.out.strip():
            raise ConfigError("out", "expected a folder, got an empty string")
        self.out = str(Path(self.out).expanduser())  # "~/runs" in a config file is the home folder, as on a shell
        _no_repeats(self.methods, "methods")
        _no_repeats(self.seeds, "seeds")
        for i, order in enumerate(self.orders):
            _no_repeats(order, f"orders[{i}]")
        for key, value in (("methods", self.methods), ("seeds", self.seeds), *(("orders", o) for o in self.orders)):
            if not value:
                raise ConfigError(key, f"expected at least one entry, got {value}")
        self.benchmark_options = _owned_options(self.benchmark in BUILTIN, MiniCoinOptions, self.benchmark_options,
                                                "benchmark_options", f"benchmark {self.benchmark!r}")  # fmt: skip
        self.base_options = _owned_options(self.base == "tiny", BaseOptions, self.base_options, "base_options",
                                           f"base {self.base!r}")  # fmt: skip
        check_methods(self)
        try:
            resolve_trackers(self.log_with)
        except ValueError as err:
            raise ConfigError("log_with", str(err).removeprefix("log_with: ")) from None


def _no_repeats(values: list, key: str) -> None:
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ConfigError(key, f"{', '.join(repeated)} given more than once in {values}")


def _owned_options(applies: bool, cls: type, options: dict, key: str, owner: str) -> dict:
    """Options checked against the dataclass of what they configure, or refused where they do not apply."""
    if not applies:
        if options:
            raise ConfigError(key, f"{sorted(options)} do not apply to {owner} (built-in benchmarks / the tiny "
                                   "base only); remove them or set them to {}")  # fmt: skip
        return {}
    return checked(cls, options, key)


def check_methods(config: RunConfig) -> None:
    """Check every method's adapter and options, so a bad value fails before any work; keep them converted."""
    unknown = sorted(set(config.method_options) - set(config.methods))
    if unknown:
        raise ConfigError("method_options", f"names {unknown}, which are not in methods {config.methods}")
    adapter, options = {}, {}
    for name in config.methods:
        method = get_method(name)
        adapter = checked(AdapterConfig, config.adapter, f"adapter (method {name})", method.adapter_defaults)
        given = config.method_options.get(name)
        if given is not None:
            options[name] = checked(method.Options, given, f"method_options.{name}", method.option_defaults)
    config.adapter, config.method_options = adapter, options


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path} is a folder") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping of keys, got {type(data).__name__}")
    return data


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return Path(str(resources.files("branchlora") / "configs" / f"{name}.yaml"))


Entry = tuple[tuple[str, ...], Any]  # a key path a layer names, and the value it gives


def parse_override(text: str) -> Entry:
    """'train.lr=1e-3' -> (("train", "lr"), 0.001): the value is read as YAML (null: the default)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or "" in key.split("."):
        raise ValueError(f"--set {text!r}: expected section.key=value")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ValueError(f"--set {text!r}: the value is not valid YAML") from None
    return tuple(key.strip().split(".")), value


def file_entries(data: dict) -> list[Entry]:
    """The keys a YAML file names: its top-level keys, and each key inside the train / eval / model sections."""
    entries: list[Entry] = []
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            entries += [((key, sub), v) for sub, v in value.items()]
        else:
            entries.append(((key,), value))
    return entries


def apply_layer(data: dict, entries: list[Entry]) -> None:
    """Set every named key (null: remove it, so the default applies), after dropping the earlier layers'
    options (and, for a benchmark, task orders) of a benchmark or base this layer changes."""
    for path, value in entries:
        if path[0] in OWNED and len(path) == 1 and value != data.get(path[0]):
            for owned in OWNED[path[0]]:  # the earlier layers' only: this layer's own are set below
                data.pop(owned, None)
    for path, value in entries:
        node = data
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        if value is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = value


def load_config(
    preset: str | None = "default", path: str | Path | None = None, overrides: list[Entry] = ()
) -> RunConfig:
    """The preset, then the user's file, then the command line's entries, each replacing what it names.

    A benchmark file given as the config (configs/ucit.yaml: a `tasks` list, no run keys) runs that benchmark
    with the preset's other settings, as `--benchmark FILE` would."""
    data: dict = {}
    if preset:
        apply_layer(data, file_entries(read_yaml(preset_path(preset))))
    if path:
        given = read_yaml(Path(path))
        benchmark = "tasks" in given and not given.keys() & {f.name for f in fields(RunConfig)}
        apply_layer(data, [(("benchmark",), str(path))] if benchmark else file_entries(given))
    apply_layer(data, list(overrides))
    return build(RunConfig, data, "")


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
        if "of" in f.metadata:  # a mapping checked against a dataclass: list that dataclass's keys
            rows += _rows(f"{prefix}{f.name}.", f.metadata["of"])
            continue
        meaning = f.metadata.get("help") or f"see `{cls.__name__}`"
        rows.append(f"| `{prefix}{f.name}` | `{default}` | {meaning}{_rules(f.metadata)} |")
    return rows


def _rules(meta: dict) -> str:
    """The allowed values, as the reference shows them after the help."""
    rules = [f"{sign} {meta[key]}" for key, sign in (("min", ">="), ("above", ">"), ("max", "<=")) if key in meta]
    return f" ({', '.join(rules)})" if rules else ""


def reference() -> str:
    """The configuration reference (markdown), generated from the dataclasses' help: the run, the built-in
    benchmark's and the tiny base's options, the adapter (`adapter.*`, defaults of the branchlora method)
    and each method's own options."""
    from branchlora.methods import METHODS, MethodOptions

    lines = ["| key | default | meaning |", "|---|---|---|", *_rows("", RunConfig)]
    lines += _rows("benchmark_options.", MiniCoinOptions) + _rows("base_options.", BaseOptions)
    lines += _rows("adapter.", AdapterConfig) + _rows("method_options.<any>.", MethodOptions)
    base = tuple(f.name for f in fields(MethodOptions))
    seen: set[type] = set()
    for name, method in sorted(METHODS.items()):
        if method.Options not in seen and method.Options is not MethodOptions:
            seen.add(method.Options)
            lines += _rows(f"method_options.{name}.", method.Options, skip=base)
    return "\n".join(lines)
