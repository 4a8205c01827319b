"""The memory estimate: its formulas against hand counts, and the method terms against the parameter counts."""

from __future__ import annotations

import pytest

from branchlora.memory import (
    EstimateError,
    Setting,
    Widths,
    decoder_layer_bytes,
    estimate_memory,
    frozen_bytes,
    logits_bytes,
    optimizer_bytes,
)
from branchlora.models.loading import PACKAGED
from branchlora.params import count_parameters

TINY = str(PACKAGED / "config.json")


def test_decoder_layer_counts_norms_attention_and_mlp() -> None:
    w = Widths(hidden=8, intermediate=20, layers=2, kv_hidden=4, vocab=50)
    # norms 2*8*4 = 64; attention (16 + 8) * 2 = 48; mlp 60 * 2 = 120: 232 bytes a token, 10 tokens
    assert decoder_layer_bytes(10, w, act=2) == 2320


def test_logits_and_weights() -> None:
    assert logits_bytes(3, 100, act=2) == 3 * 100 * 14  # bf16 logits + three fp32 (tokens, vocab) tensors
    assert frozen_bytes(1000, "bf16", 4, shard=True) == 500  # 2000 bytes over 4 processes
    assert frozen_bytes(1000, "no", 4, shard=False) == 4000
    assert optimizer_bytes(10, 2, shard=False) == {"gradients": 40, "adamw": 80, "ddp_buckets": 40}


def test_estimate_counts_the_model_as_params_does() -> None:
    counted = count_parameters(TINY, "lora")
    est = estimate_memory(TINY, "lora", Setting(batch=2, seq_len=96, precision="no", tasks=1))
    assert est["params"]["trainable"] == counted["tunable"]
    assert est["params"]["frozen"] + est["params"]["fp32"] == counted["total"]
    assert est["bytes"]["frozen_weights"] == 4 * est["params"]["frozen"]
    assert est["bytes"]["adamw"] == 8 * counted["tunable"]


def test_ewc_keeps_a_fisher_and_anchors_per_earlier_task() -> None:
    est = estimate_memory(TINY, "ewc", Setting(batch=1, seq_len=96, precision="no", tasks=3))
    assert est["bytes"]["ewc_fisher_anchors"] == 2 * 2 * 4 * est["params"]["trainable"]


def test_checkpointing_lowers_the_estimate_and_bad_settings_fail() -> None:
    full = estimate_memory(TINY, "branchlora", Setting(batch=8, seq_len=128, precision="no", tasks=1))
    ckpt = estimate_memory(
        TINY, "branchlora", Setting(batch=8, seq_len=128, precision="no", checkpointing=True, tasks=1)
    )
    assert ckpt["bytes"]["activations"] < full["bytes"]["activations"]
    with pytest.raises(EstimateError, match="precision 'fp16'"):
        Setting(precision="fp16")
