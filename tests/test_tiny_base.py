"""The tiny base: tokenizer round-trips, micro pre-training learns, the cache reloads identically."""

import json

import pytest
import torch

from branchlora.models.loading import base_info, load_base
from branchlora.models.tokenizer import train_tokenizer

from engine_support import MICRO, MICRO_PRETRAIN


@pytest.mark.parametrize(
    "text",
    ["a red circle at the top left.", "zebra xylophone quokka", "naïve café, 日本語, emoji 🦊!",
     "tabs\tand\nnewlines  ", "USER: <image>\nWhat? ASSISTANT: [0.25, 0.50, 0.75, 1.00]", "\x00\x7f\u200b"],
)  # fmt: skip
def test_tokenizer_round_trips_any_utf8(text):
    tok = train_tokenizer(["a red circle at the top left", "the word fox written in blue"] * 20, vocab_size=300)
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id
    assert tok.decode(ids[1:]) == text


@pytest.fixture(scope="module")
def micro_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    model, processor = load_base("tiny", cache_dir=cache, tiny=MICRO, pretraining=MICRO_PRETRAIN, progress=False)
    return cache, model, processor


def test_micro_pretraining_learns_and_reports(micro_cache):
    cache, model, _ = micro_cache
    (folder,) = (cache / "models").iterdir()
    info = json.loads((folder / "base_info.json").read_text())
    assert info["pretraining"]["steps"] == 20 and info["params"] > 0
    report = base_info(model)
    assert report["name"] == "tiny" and report["pretrain_seconds"] > 0 and 0 < report["caption_loss"] < 6
    assert not [p.name for p in (cache / "models").iterdir() if p.name.startswith(".tmp")]  # no half cache


def test_loss_decreases(micro_cache):
    _, model, _ = micro_cache
    curve = base_info(model)["loss_curve"]
    assert len(curve) >= 10 and sum(curve[-3:]) / 3 < 0.7 * sum(curve[:3]) / 3


def test_reload_from_cache_is_identical(micro_cache, monkeypatch):
    cache, model, processor = micro_cache
    monkeypatch.setenv("BRANCHLORA_CACHE", str(cache))
    again, processor2 = load_base("tiny", tiny=MICRO, pretraining=MICRO_PRETRAIN, progress=False)
    assert base_info(again)["pretrain_seconds"] == 0.0
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert processor2.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert type(again).__name__ == "LlavaForConditionalGeneration"
    names = dict(again.named_modules())
    assert "model.language_model.layers.0.self_attn.q_proj" in names and "lm_head" in names
