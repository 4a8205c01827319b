"""The typed configuration: values converted and range-checked at load; layers replace what they name."""

import math

import pytest
import yaml

from branchlora.config import load_config, parse_override, to_dict
from branchlora.data.minicoin import MiniCoinOptions
from branchlora.models.tiny import TinyConfig
from branchlora.train import TrainConfig
from branchlora.typed import ConfigError


def load(*sets: str, preset: str = "quick", path=None):
    return load_config(preset, path, [parse_override(s) for s in sets])


def test_values_are_converted_from_their_yaml_form():
    cfg = load("train.lr=1e-3", "train.max_steps='7'", "eval.oracle=true", "seeds=3", "adapter.alpha=1e2")
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.lr, float)
    assert cfg.train.max_steps == 7 and cfg.eval.oracle is True and cfg.seeds == [3]
    assert cfg.adapter == {"r": 32, "alpha": 100.0}
    assert load("orders=[gqa, textvqa]").orders == [["gqa", "textvqa"]]  # one order given flat
    assert load("seeds=0,1,2").seeds == [0, 1, 2] and load("orders=gqa,textvqa").orders == [["gqa", "textvqa"]]


def test_what_users_type_for_a_value_s_type_is_accepted(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load("train.mixed_precision=no", "train.max_steps=1e2", "eval.limit=100.0", "out=~/runs/x")
    assert (cfg.train.mixed_precision, cfg.train.max_steps, cfg.eval.limit) == ("no", 100, 100)
    assert cfg.out == str(tmp_path / "runs" / "x")
    (tmp_path / "c.yaml").write_text("out: ~/y\ntrain: {mixed_precision: no, max_steps: 2e1}\n")
    cfg = load(path=tmp_path / "c.yaml")
    assert (cfg.out, cfg.train.mixed_precision, cfg.train.max_steps) == (str(tmp_path / "y"), "no", 20)


def test_a_layer_changing_the_benchmark_drops_the_earlier_task_orders(tmp_path):
    assert load().orders == [["scienceqa", "textvqa", "imagenet", "vizwiz", "ocrvqa"]]  # the quick preset's
    (tmp_path / "mine.yaml").write_text("name: mine\n")  # only its name is read here
    assert load(f"benchmark={tmp_path / 'mine.yaml'}").orders == []
    assert load(f"benchmark={tmp_path / 'mine.yaml'}", "orders=[[a, b]]").orders == [["a", "b"]]
    (tmp_path / "c.yaml").write_text(f"benchmark: {tmp_path / 'mine.yaml'}\norders: [[b, a]]\n")
    assert load(path=tmp_path / "c.yaml").orders == [["b", "a"]]  # a file's own orders stay with its benchmark
    assert load("benchmark=minicoin").orders == load().orders  # the same benchmark: nothing dropped


def test_a_benchmark_file_given_as_the_config_runs_that_benchmark():
    cfg = load(path="configs/ucit.yaml")
    assert cfg.benchmark == "configs/ucit.yaml" and cfg.benchmark_options == {} and cfg.orders == []
    assert cfg.train.max_steps == 48  # the preset's other settings stay


def test_a_yaml_file_with_exponent_floats_loads(tmp_path):
    (tmp_path / "c.yaml").write_text("train: {lr: 1e-3, projector_lr: 5e-5}\n")  # YAML 1.1 reads both as strings
    cfg = load(path=tmp_path / "c.yaml")
    assert (cfg.train.lr, cfg.train.projector_lr) == (0.001, 5e-5)
    assert cfg.train.max_steps == 48  # the preset's other train keys are kept: a section merges key by key


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_steps=abc", "train.max_steps: expected an integer, got 'abc'"),
        ("train.max_steps=1.5", "train.max_steps: expected an integer, got 1.5"),
        ("train.mixed_precision=yes", "train.mixed_precision: expected one of no, bf16, got 'yes'"),
        ("out=''", "out: expected a folder, got an empty string"),
        ("train.max_steps=-5", "train.max_steps: must be >= 0, got -5"),
        ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
        ("train.lr=0", "train.lr: must be > 0, got 0.0"),
        ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
        ("train.warmup_ratio=2", "train.warmup_ratio: must be <= 1, got 2.0"),
        ("eval.limit=-1", "eval.limit: must be >= 0, got -1"),
        ("eval.oracle=maybe", "eval.oracle: expected true or false, got 'maybe'"),
        ("seeds=abc", "seeds[0]: expected an integer, got 'abc'"),
        ("seeds=[0, 0]", "seeds: 0 given more than once"),
        ("device=tpu", "device: expected one of auto, cpu, cuda, got 'tpu'"),
        ("train.mixed_precision=fp16", "train.mixed_precision: expected one of no, bf16, got 'fp16'"),
        ("orders=[[gqa, gqa]]", "orders[0]: gqa given more than once"),
        ("methods=[]", "methods: expected at least one entry"),
        ("train.lrr=1", "train: unknown key(s) ['lrr'] (did you mean 'lr'?)"),
        ("benchmark_options.train_size=-3", "benchmark_options.train_size: must be >= 1, got -3"),
        ("benchmark_options.sizes=3", "benchmark_options: unknown key(s) ['sizes']"),
        ("base_options.tiny.hidden=-1", "base_options.tiny.hidden: must be >= 1, got -1"),
        ("adapter.r=abc", "adapter (method lora).r: expected an integer, got 'abc'"),
        ("adapter.r=30", "adapter (method moelora): r=30 is not divisible by N=8"),
        ("method_options.branchlora.key_lr=x", "method_options.branchlora.key_lr: expected a number, got 'x'"),
        ("method_options.ewc.ewc_lambda=1", "method_options: names ['ewc'], which are not in methods"),
    ],
)
def test_bad_values_fail_at_load_naming_key_and_value(override, message):
    with pytest.raises(ConfigError) as err:
        load(override)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_dict_given_later_replaces_the_earlier_one_and_null_restores_the_default():
    assert load("benchmark_options={}").benchmark_options == {}
    assert load("benchmark_options=null").benchmark_options == {}
    assert load("adapter={r: 16}").adapter == {"r": 16}  # alpha of the preset is gone
    assert load("adapter.r=16").adapter == {"r": 16, "alpha": 64}  # a dotted key replaces that key only
    assert load("train=null").train == TrainConfig()
    assert load("train.lr=null").train.lr == TrainConfig().lr


def test_options_belong_to_their_benchmark_and_base(tmp_path):
    cfg = load("benchmark=my.yaml", "base=some/model")
    assert (cfg.benchmark_options, cfg.base_options) == ({}, {})  # the preset's minicoin / tiny options dropped
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"benchmark": "my.yaml"}))
    assert load(path=tmp_path / "c.yaml").benchmark_options == {}
    assert load("benchmark=minicoin").benchmark_options["train_size"] == 96  # same benchmark: options kept
    with pytest.raises(ConfigError, match=r"benchmark_options: \['train_size'\] do not apply to benchmark 'my.yaml'"):
        load("benchmark=my.yaml", "benchmark_options.train_size=3")


def test_the_coin_config_keeps_its_own_settings():
    cfg = load_config("default", "configs/coin-llava-1.5-7b.yaml")
    assert cfg.benchmark == "configs/coin.yaml" and cfg.benchmark_options == {}
    assert cfg.base == "llava-hf/llava-1.5-7b-hf" and cfg.base_options == {}
    assert cfg.train.lr == 2e-4 and cfg.train.mixed_precision == "bf16" and cfg.adapter == {"r": 128, "alpha": 256.0}


def test_library_dataclasses_check_themselves():
    with pytest.raises(ConfigError, match="lr: must be > 0"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ConfigError, match="layers: must be >= 1"):
        TinyConfig(layers=0)
    with pytest.raises(ValueError, match="instructions: expected original or 10type"):
        MiniCoinOptions(instructions="eleven")
    assert TrainConfig(lr="2e-4").lr == 2e-4  # type: ignore[arg-type]


def test_the_config_round_trips_through_its_dict():
    cfg = load("train.lr=1e-3")
    assert load_config(None, None, [((k,), v) for k, v in to_dict(cfg).items()]) == cfg
    assert not any(isinstance(v, float) and math.isnan(v) for v in to_dict(cfg)["train"].values())


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=3", "a=[1"])
def test_malformed_overrides_are_refused(text):
    with pytest.raises(ValueError, match="--set"):
        parse_override(text)
