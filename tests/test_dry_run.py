"""`--dry-run`'s plan: what each task and method would cost, from the real checks and a weightless model."""

import io

from rich.console import Console

from branchlora.config import load_config, parse_override
from branchlora.experiment import plan_experiment


def test_the_plan_counts_items_steps_and_tunable_parameters(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHLORA_CACHE", str(tmp_path / "cache"))
    sets = ["benchmark_options={train_size: 4, test_size: 3}", "eval.limit=2", "methods=lora,multitask"]
    config = load_config("quick", None, [parse_override(s) for s in [*sets, f"out={tmp_path / 'out'}"]])
    plan = plan_experiment(config, console=Console(file=io.StringIO()))
    assert [(t["train"], t["test"], t["steps"]) for t in plan["tasks"]] == [(4, 2, 12)] * 8  # quick: 12 steps a task
    assert plan["methods"]["lora"] == {"tunable": 522_624, "steps": 8 * 12}  # the README's count at r 32
    assert plan["methods"]["multitask"]["steps"] == 12  # the joint bound trains once, on the union
    assert plan["base"]["sizes"]["hidden"] == 192 and not (tmp_path / "out").exists()
