"""Shared fixtures: a tiny random LLaVA built offline from a config (no weights, no hub), and one cache for the
session (the micro base pre-trained once, each minicoin generated once), never the user's ~/.cache."""

import os
import shutil
import tempfile

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # tiny models: a second thread costs more than it gives


_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Point BRANCHLORA_CACHE at a fresh folder for the whole session (torchrun's ranks inherit it): what one test
    builds there (the micro base, a minicoin) the next one finds, and nothing reaches ~/.cache/branchlora."""
    config.stash[_CACHE] = tempfile.mkdtemp(prefix="branchlora-tests-")
    os.environ["BRANCHLORA_CACHE"] = config.stash[_CACHE]


def pytest_unconfigure(config: pytest.Config) -> None:
    if _CACHE in config.stash:
        shutil.rmtree(config.stash[_CACHE], ignore_errors=True)


def build_tiny_llava(layers: int = 2, seed: int = 0):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        image_size=16, patch_size=8,
    )  # fmt: skip
    text = LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=128,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=3, vision_feature_select_strategy="default"
    )
    return LlavaForConditionalGeneration(config).eval()


def tiny_llava_inputs(batch: int = 2, text_len: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """BOS, 4 image tokens (16 px / patch 8, CLS dropped), then text; the first sample left-padded by 2."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(4, 64, (batch, text_len), generator=g)
    image = torch.full((batch, 4), 3)
    bos = torch.ones(batch, 1, dtype=torch.long)
    input_ids = torch.cat([bos, image, text], dim=1)
    mask = torch.ones_like(input_ids)
    input_ids = torch.cat([torch.zeros(batch, 2, dtype=torch.long), input_ids], dim=1)
    mask = torch.cat([torch.zeros(batch, 2, dtype=torch.long), mask], dim=1)
    mask[1:, :2] = 1  # only the first sample is padded
    input_ids[1:, :2] = 5
    pixel_values = torch.randn(batch, 3, 16, 16, generator=g)
    return {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values}


@pytest.fixture
def tiny_llava():
    return build_tiny_llava()


@pytest.fixture(scope="session")
def small_toy(tmp_path_factory):
    """(micro base, a toy stream of 8 train / 2 test items per task), built once for the session."""
    from engine_support import micro_base, toy_stream

    model, processor = micro_base()
    return model, toy_stream(tmp_path_factory.mktemp("toy"), processor, n_train=8, n_test=2)


@pytest.fixture(autouse=True)
def _one_precision_per_test():
    """Accelerate keeps one state per process: a test that ran in bf16 (an in-process `branchlora run`) must not
    leave its autocast to the next test's plain `Accelerator(cpu=True)`."""
    yield
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state.get("_mixed_precision") not in (None, "no"):
        AcceleratorState._reset_state()
