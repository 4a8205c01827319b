"""`--dry-run`'s plan: what each task and method would cost, from the real checks and a weightless model."""

import io

import pytest
from rich.console import Console
from transformers import LlavaProcessor

from branchlora.config import load_config, parse_override
from branchlora.data.benchmark import load_benchmark
from branchlora.data.collate import Collator, LengthError
from branchlora.experiment import plan_experiment, run_experiment
from branchlora.models.loading import PACKAGED


def test_the_plan_counts_items_steps_and_tunable_parameters(tmp_path):
    sets = ["benchmark_options={train_size: 6, test_size: 3}", "eval.limit=2", "methods=lora,multitask"]  # 4 a task
    config = load_config("quick", None, [parse_override(s) for s in [*sets, f"out={tmp_path / 'out'}"]])
    plan = plan_experiment(config, console=Console(file=io.StringIO()))
    # quick: 5 tasks x 48 steps; scienceqa has SIZE 1 (6 items), the others 2/3 (4 items)
    assert [(t["train"], t["test"], t["steps"]) for t in plan["tasks"]] == [(6, 2, 48)] + [(4, 2, 48)] * 4
    lora = 4 * (4 * 32 * (192 + 192) + 3 * 32 * (192 + 512))  # r 32 on q, k, v, o and gate, up, down; 4 layers
    projector = (128 * 192 + 192) + (192 * 192 + 192)  # vision 128 -> LM 192 -> 192
    assert plan["methods"]["lora"] == {"tunable": lora + projector, "steps": 5 * 48}
    assert plan["methods"]["multitask"]["steps"] == 5 * 48  # the joint bound: the stream's budget, on the union
    assert plan["base"]["sizes"]["hidden"] == 192 and not (tmp_path / "out").exists()


def test_the_plan_counts_replayed_items_in_epoch_budgets(tmp_path):
    """With steps from epochs, task t trains on its items plus replay.size items of each earlier task."""
    sets = ["benchmark_options={train_size: 6, test_size: 3}", "methods=lora,multitask", "train.max_steps=0",
            "train.epochs=1", "train.batch_size=2", "replay.size=3"]  # fmt: skip
    config = load_config("quick", None, [parse_override(s) for s in [*sets, f"out={tmp_path / 'out'}"]])
    plan = plan_experiment(config, console=Console(file=io.StringIO()))
    # task t: its n_t items (6 for scienceqa, then 4) + 3 t replayed, ceil((n_t + 3 t) / 2) steps; the joint
    # bound replays nothing: the stream's own budget, ceil(n_t / 2) a task
    items = [6, 4, 4, 4, 4]
    assert plan["methods"]["lora"]["steps"] == sum(-(-(n + 3 * t) // 2) for t, n in enumerate(items))
    assert plan["methods"]["multitask"]["steps"] == sum(-(-n // 2) for n in items)


def test_the_plan_measures_every_item_and_refuses_one_over_max_length(tmp_path):
    """The longest train and test sequence per task, as the Collator builds them; an item over
    model.max_length is refused by the dry run and by `run`, before any training, naming it."""
    sets = ["benchmark_options={train_size: 4, test_size: 3}", "methods=lora", f"out={tmp_path / 'out'}"]
    config = load_config("quick", None, [parse_override(s) for s in sets])
    plan = plan_experiment(config, console=Console(file=io.StringIO()))
    bench = load_benchmark(config.benchmark, **config.benchmark_options)
    collator = Collator(LlavaProcessor.from_pretrained(PACKAGED), max_length=512)
    for task in plan["tasks"]:
        train, test = bench.train_examples(task["task"]), bench.test_examples(task["task"])
        assert task["longest_train"] == collator.train_batch(train)["attention_mask"].sum(1).max()
        assert task["longest_test"] == collator.prompt_batch(test)["attention_mask"].sum(1).max()
    assert plan["max_length"] == 512  # the tiny base's max_position_embeddings
    longest = plan["tasks"][0]["longest_train"]  # the first task measured
    short = load_config("quick", None, [parse_override(s) for s in [*sets, f"model.max_length={longest - 1}"]])
    refusal = rf"train.json: item \d+: {longest} tokens, more than max_length={longest - 1}; raise model.max_length"
    with pytest.raises(LengthError, match=refusal):
        plan_experiment(short, console=Console(file=io.StringIO()))
    with pytest.raises(LengthError, match=refusal):
        run_experiment(short, console=Console(file=io.StringIO()))
    assert not list((tmp_path / "out").glob("lora/task-*"))
