"""A model tuned on the default benchmark uses the image: its loss rises when the images are shuffled or blank."""

import torch
from accelerate import Accelerator

from branchlora.config import load_config
from branchlora.data.benchmark import load_benchmark
from branchlora.data.collate import Collator
from branchlora.methods import Task, get_method
from branchlora.models.loading import load_base
from branchlora.train import forward, train_task


def test_tuned_model_loses_more_without_its_images(tmp_path):
    config = load_config("default")  # the default run's adapter and learning rates, fewer steps
    model, processor = load_base("tiny")
    bench = load_benchmark("minicoin", cache_dir=tmp_path, train_size=64, test_size=2)
    collator = Collator(processor)
    method = get_method("lora")(config.adapter)
    method.setup(model)
    train = config.train.__class__(**{**vars(config.train), "max_steps": 15})
    examples = bench.train_examples("imagenet")  # naming the shape: the answer is not in the question
    accelerator = Accelerator(cpu=True)
    train_task(model, method, Task(0, "imagenet"), examples, collator.train_batch, train, accelerator)
    batch = collator.train_batch(examples[:48])
    losses = {}
    with torch.no_grad():
        for name, pixels in (("true", batch["pixel_values"]), ("shuffled", batch["pixel_values"].roll(1, dims=0)),
                             ("blank", torch.zeros_like(batch["pixel_values"]))):  # fmt: skip
            losses[name] = forward(model, {**batch, "pixel_values": pixels}, None, accelerator).loss.item()
    assert losses["shuffled"] > 1.5 * losses["true"] and losses["blank"] > 1.5 * losses["true"], losses
