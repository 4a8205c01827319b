"""A model tuned on the default benchmark uses the image: its loss rises when the images are shuffled or blank."""

import pytest
import torch
from accelerate import Accelerator

from branchlora.config import load_config
from branchlora.data.benchmark import load_benchmark
from branchlora.data.collate import Collator
from branchlora.methods import Task, get_method
from branchlora.models.loading import load_base
from branchlora.train import forward, train_task


@pytest.mark.parametrize("task", ["imagenet", "scienceqa", "gqa"])
def test_tuned_model_loses_more_without_its_images(tmp_path, task):
    """The shape's name, its colour (a letter) and its side: answers not in the question, one word each.

    (grounding's and vqav2's answers share most tokens with another image's, a box's format and a count of 1-3,
    so a mean token loss shows their use of the image far less: docs/results.md, "How minicoin was cut".)"""
    config = load_config("default")  # the default run's adapter and learning rates, fewer steps
    model, processor = load_base("tiny")
    bench = load_benchmark("minicoin", cache_dir=tmp_path, train_size=64, test_size=2)
    collator = Collator(processor)
    method = get_method("lora")(config.adapter)
    method.setup(model)
    train = config.train.__class__(**{**vars(config.train), "max_steps": 40})
    examples = bench.train_examples(task)
    accelerator = Accelerator(cpu=True)
    train_task(model, method, Task(0, task), examples, collator.train_batch, train, accelerator)
    batch = collator.train_batch(examples[:48])
    losses = {}
    with torch.no_grad():
        for name, pixels in (("true", batch["pixel_values"]), ("shuffled", batch["pixel_values"].roll(1, dims=0)),
                             ("blank", torch.zeros_like(batch["pixel_values"]))):  # fmt: skip
            losses[name] = forward(model, {**batch, "pixel_values": pixels}, None, accelerator).loss.item()
    assert losses["shuffled"] > 1.5 * losses["true"] and losses["blank"] > 1.5 * losses["true"], losses
