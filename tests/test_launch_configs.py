"""The shipped Accelerate launch configs load with Accelerate's own reader and say what their names say."""

from dataclasses import replace
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

from branchlora.config import load_config
from branchlora.train import check_deepspeed

CONFIGS = Path(__file__).parents[1] / "configs" / "accelerate"


@pytest.mark.parametrize(
    ("name", "kind", "processes"),
    [
        ("1gpu", DistributedType.NO, 1),
        ("ddp-8gpu", DistributedType.MULTI_GPU, 8),
        ("zero2-8gpu", DistributedType.DEEPSPEED, 8),
        ("fsdp-8gpu", DistributedType.MULTI_GPU, 8),  # sharding is branchlora's own: train.shard_frozen
    ],
)
def test_launch_config(name, kind, processes):
    config = ClusterConfig.from_yaml_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type == kind and config.num_processes == processes and config.mixed_precision == "bf16"
    if kind == DistributedType.DEEPSPEED:
        assert config.deepspeed_config["zero_stage"] == 2
        coin = load_config(None, CONFIGS.parent / "coin-llava-1.5-7b.yaml")  # the run it is shipped for
        check_deepspeed(config.deepspeed_config, replace(coin.train, save_every=0))
