"""Parameter accounting on the meta device against the paper's counts."""

import json

import pytest
from typer.testing import CliRunner

from branchlora.cli import app
from branchlora.params import count_parameters


@pytest.mark.parametrize(("method", "paper"), [("moelora", 349.90e6), ("branchlora", 222.37e6)])
def test_llava_7b_counts_match_the_paper(method, paper):
    result = count_parameters("llava-1.5-7b", method)
    assert abs(result["tunable"] - paper) / paper < 0.01
    assert result["by_part"]["projector"] == 1024 * 4096 + 4096 + 4096 * 4096 + 4096  # mlp2x_gelu, 21.0M
    assert 7.0e9 < result["total"] < 7.5e9


def test_branchlora_counts_one_router_per_linear_and_is_37_percent_lighter():
    branch = count_parameters("llava-1.5-7b", "branchlora")
    moe = count_parameters("llava-1.5-7b", "moelora")
    # one (8 x d_in) router per wrapped Linear: 32 layers x (4 x 4096 + 2 x 4096 + 11008) x 8
    assert branch["by_part"]["adapter.routers"] == 32 * (6 * 4096 + 11008) * 8
    assert 1 - branch["tunable"] / moe["tunable"] == pytest.approx(0.3645, abs=1e-3)


def test_13b_and_plain_linear_config(tmp_path):
    assert count_parameters("llava-1.5-13b", "branchlora")["tunable"] > 300e6
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"linears": {"fc1": [16, 32], "fc2": [32, 8]}}))
    result = count_parameters(str(path), "lora")
    assert result["tunable"] == 128 * (16 + 32) + 128 * (32 + 8)
    assert result["total"] == result["tunable"] + 16 * 32 + 32 + 32 * 8 + 8


def test_cli_json_and_errors():
    runner = CliRunner()
    out = runner.invoke(app, ["params", "--model", "llava-1.5-7b", "--method", "branchlora", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data) == {"method", "model", "tunable", "total", "by_part"}
    bad = runner.invoke(app, ["params", "--method", "nope"])
    assert bad.exit_code == 2 and "valid methods:" in bad.output and "branchlora" in bad.output
    bad = runner.invoke(app, ["params", "--model", "missing.json"])
    assert bad.exit_code == 2 and "neither a preset" in bad.output
