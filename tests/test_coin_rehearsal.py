"""A CoIN rehearsal: the documented command on CoIN's release layout and a real-geometry LLaVA-1.5 folder.

`branchlora run --config configs/coin-llava-1.5-7b.yaml` with only the data paths, the base, the device and the
sizes overridden, as a user with CoIN's files and llava-1.5-7b-hf would run it: all eight tasks train and are
scored from files laid out as CoIN releases them (text-only ScienceQA, Grounding's string boxes, val.json tests),
with 336 px images padded to a square (576 image tokens) and a float16 checkpoint loaded in the run's precision.
"""

import json

import pytest
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.evaluation import metrics

from coin_release import write_coin_release
from real_geometry import build_family_folder

COIN = ["scienceqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]
# What the rehearsal changes beyond the paths, base and device: sizes for a tiny model on a CPU.
SIZES = ["adapter.r=8", "adapter.alpha=16", "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1",
         "eval.batch_size=4", "eval.max_new_tokens=4", "methods=[lora,branchlora]"]  # fmt: skip


def test_the_coin_config_trains_and_scores_all_eight_tasks_from_coin_s_release_layout(tmp_path):
    bench = write_coin_release(tmp_path / "coin", items=2)
    base = build_family_folder("llava", tmp_path / "llava-1.5-tiny")
    assert json.loads((base / "config.json").read_text())["dtype"] == "float16"  # as llava-1.5-7b-hf ships
    out = tmp_path / "run"
    args = ["run", "--config", "configs/coin-llava-1.5-7b.yaml", "--benchmark", str(bench), "--base", str(base),
            "--device", "cpu", "--out", str(out), *[a for s in SIZES for a in ("--set", s)]]  # fmt: skip
    plan = CliRunner().invoke(app, [*args, "--dry-run"])
    assert plan.exit_code == 0, plan.output
    assert "longest" in plan.output and "576" not in plan.output.split("longest")[0]  # lengths come after the header
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert data["benchmark"]["tasks"] == COIN
    for name in ("lora", "branchlora"):
        r = data["methods"][name]
        assert len(r["matrix"]) == 9 and all(len(row) == 8 for row in r["matrix"])
        # CoIN scores the tasks seen so far: the upper triangle stays empty and FWT is n/a.
        assert all(r["matrix"][t][i] is None for t in range(9) for i in range(t, 8)), r["matrix"]
        assert all(r["matrix"][t][i] is not None for t in range(1, 9) for i in range(t)), r["matrix"]
        assert r["metrics"]["acc"] == pytest.approx(metrics.acc(r["matrix"]))
        assert r["metrics"]["fwt"] is None
        for t, task in enumerate(COIN):
            stage = out / name / "predictions" / f"stage-{t + 1:02d}"
            lines = (stage / f"{task}.jsonl").read_text().splitlines()
            assert len(lines) == 2, (stage, lines)  # both test items, scored, re-scorable by question id
            assert {"question_id", "prompt", "text", "score"} <= set(json.loads(lines[0])), lines[0]
