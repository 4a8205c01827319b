"""`branchlora bench` at toy sizes: every level runs, the JSON has its keys, the numbers are sane."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from branchlora.adapters import ADAPTERS, AdapterConfig
from branchlora.bench import BenchSizes, run_bench

TOY = BenchSizes(
    shapes=((32, 48),), tokens=(2, 8), warmup=1, repeats=2, whole_warmup=0, whole_repeats=1, r=16, n=4, k=2,
    hidden=32, ffn=48, step_tokens=(2, 8), step_warmup=0, step_repeats=1,
    gen_hidden=32, gen_ffn=48, gen_layers=1, gen_prompt=4, gen_new=2, gen_repeats=1, max_rounds=3,
    layer_cap_s=5.0, step_cap_s=5.0, gen_cap_s=5.0,
)  # fmt: skip


def test_bench_reports_every_method_and_ratio():
    result = json.loads(json.dumps(run_bench(TOY)))  # JSON-serialisable as it is
    assert result["device"].startswith("cpu")
    assert set(result["layer"]) == {"linear", "peft_lora", "lora", "moelora", "hydralora", "branchlora"}
    for method, row in result["layer"].items():
        assert row["median_ms"] > 0 and row["saved_mb"] >= 0
        assert (row["overhead_ms"] > 0) == (method != "linear")
    assert result["layer"]["branchlora"]["tunable"] < result["layer"]["moelora"]["tunable"]  # one A, not E
    assert all(row["median_ms"] > 0 and row["tunable"] > 0 for row in result["step"].values())
    generation = result["generation"]
    assert generation["merged_equals_unmerged"]
    assert all(generation[k]["tokens_per_s"] > 0 for k in ("base", "branchlora_unmerged", "branchlora_merged"))
    assert set(result["ratios"]) >= {
        "branchlora_vs_moelora_layer",
        "branchlora_vs_moelora_step",
        "branchlora_vs_peft_lora_layer",
        "merged_generation_vs_base",
    }
    assert all(v > 0 for v in result["ratios"].values())
    for name, interval in result["intervals"].items():  # every ratio comes with its interval
        assert interval["low"] <= result["ratios"][name] <= interval["high"] and 1 <= interval["rounds"] <= 3
    assert set(result["comparisons"]) == {"layer", "step", "generation"}
    # Op counts per wrapped Linear (forward + backward) and per training step, for every method.
    layer_ops, step_ops = result["ops"]["layer"], result["ops"]["step"]
    assert set(layer_ops) == {"peft_lora", "lora", "moelora", "hydralora", "branchlora", "branchlora_frozen"}
    assert set(step_ops) == {"frozen", "lora", "moelora", "branchlora"}
    assert all(0 < ops["kernel_ops"] < ops["aten_ops"] for ops in [*layer_ops.values(), *step_ops.values()])
    assert step_ops["frozen"]["aten_ops"] < step_ops["lora"]["aten_ops"]
    # Issue 15's target: BranchLoRA issues no more ops than MoELoRA per Linear (with or without frozen
    # branches), and fewer per training step.
    for count in ("aten_ops", "kernel_ops"):
        assert max(layer_ops[m][count] for m in ("branchlora", "branchlora_frozen")) <= layer_ops["moelora"][count]
        assert step_ops["branchlora"][count] < step_ops["moelora"][count]
    assert set(result["audit"]) == {"frozen", "lora", "moelora", "branchlora"} and result["check"]["routing_agrees"]


def test_cli_rejects_a_bad_device():
    from branchlora.cli import app

    result = CliRunner().invoke(app, ["bench", "--device", "tpu"])
    assert result.exit_code != 0 and "device must be cpu|cuda" in result.output


@pytest.mark.parametrize(
    ("kind", "routing", "shape"),
    [("lora", "first", (2, 3)), ("lora", "first", (5,)), ("moelora", "first", (2, 3)),
     ("branchlora", "first", (2, 3)), ("branchlora", "token", (2, 3)), ("branchlora", "first", (3,))],
)  # fmt: skip
def test_in_place_fast_paths_have_exact_gradients(kind, routing, shape):
    """The update is added into the base output in place; autograd must still see every input."""
    torch.manual_seed(0)
    layer = ADAPTERS[kind](nn.Linear(6, 5), AdapterConfig(kind=kind, r=4, n_branches=2, top_k=1, routing=routing))
    layer = layer.double().eval()
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.normal_()
    x = torch.randn(*shape, 6, dtype=torch.float64, requires_grad=True)
    params = [p for p in layer.adapter_parameters().values() if p.requires_grad]
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *params), fast_mode=True)


def test_adapters_add_no_host_sync_and_run_bf16_matmuls():
    """Under bf16 autocast, a training step with each adapter syncs the host no more than the bare model does
    (transformers' own mask check) and runs its matmuls in bf16; BranchLoRA's path includes dropout."""
    from branchlora.bench.audit import audit_step

    cpu = torch.device("cpu")
    frozen = audit_step("frozen", cpu, TOY)
    for method in ("lora", "moelora", "branchlora"):
        audit = audit_step(method, cpu, TOY)
        assert audit["host_syncs"] == frozen["host_syncs"], method
        assert audit["float32_matmul_share"] < 1e-3, method


def test_branchlora_check_against_float64():
    from branchlora.bench.audit import check_branchlora

    exact = check_branchlora(torch.device("cpu"), torch.float32)
    assert exact["routing_agrees"] and max(v for k, v in exact.items() if k != "routing_agrees") < 1e-5
    bf16 = check_branchlora(torch.device("cpu"), torch.bfloat16)
    assert 1e-4 < bf16["out"] < 2e-2  # bf16 rounding, visible and bounded


def test_kernel_times_are_a_separate_last_pass(monkeypatch):
    """On a GPU the kernel-time pass runs after every wall-clock timing; here device_ms is replaced by a
    stand-in that runs the step once and counts, so the pass is checked on a CPU."""
    calls = []

    def fake_device_ms(fn, repeats):
        fn()
        calls.append(repeats)
        return 2.0

    monkeypatch.setattr("branchlora.bench.layer.device_ms", fake_device_ms)
    monkeypatch.setattr("branchlora.bench.step.device_ms", fake_device_ms)
    result = run_bench(TOY, kernel_times=True)
    assert result["layer"]["branchlora"]["adapter_device_ms"] == 2.0 * len(TOY.shapes)
    assert result["layer"]["linear"]["adapter_device_ms"] == 0.0 and result["step"]["moelora"]["device_ms"] == 2.0
    assert result["ratios"]["branchlora_vs_moelora_layer_device"] == 1.0
    assert len(calls) == len(TOY.shapes) * (2 * 6 - 1) + 4  # whole + adapter per method (linear: whole), 4 steps


def test_op_audit_counts_by_hand():
    from branchlora.bench.ops import count_ops

    x = torch.randn(4, 4)
    # mm and sum run kernels; t is a view: 3 aten ops, 2 kernels.
    assert count_ops(lambda: (x @ x).t().sum()) == {"aten_ops": 3, "kernel_ops": 2}


def test_training_optimizer_matches_torch_default_with_fewer_ops():
    """The loop's fused AdamW gives torch's default (a loop over parameters on a CPU) results and issues far
    fewer ops for BranchLoRA's many small parameters."""
    from branchlora.bench.ops import count_ops
    from branchlora.train import make_optimizer

    torch.manual_seed(0)
    params = [nn.Parameter(torch.randn(16, 4)) for _ in range(10)]
    grads = [torch.randn_like(p) for p in params]
    copies = [nn.Parameter(p.detach().clone()) for p in params]
    ours = make_optimizer([{"params": params, "lr": 1e-2}], 0.0)
    reference = torch.optim.AdamW([{"params": copies, "lr": 1e-2}], weight_decay=0.0, foreach=False)
    assert ours.defaults["fused"]

    def step(ps, optimizer):
        for p, g in zip(ps, grads, strict=True):
            p.grad = g.clone()
        optimizer.step()

    ops, reference_ops = count_ops(lambda: step(params, ours)), count_ops(lambda: step(copies, reference))
    for p, q in zip(params, copies, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert ops["aten_ops"] * 4 < reference_ops["aten_ops"]


def test_loop_bench_compares_like_with_like():
    """`bench --loop` at toy size: both loops train the same parameters (LoRA on the same Linears plus the
    projector), every variant is timed, and the ratios come with intervals."""
    from branchlora.bench.loop import LoopSizes, bench_loop

    result = bench_loop(LoopSizes(steps=3, batch_size=4, warmup=0, least=2, cap_s=0.0))
    assert result["rounds"] == 2 and set(result["seconds_per_step"]) == {"peft_lora", "lora", "branchlora"}
    assert result["tunable"]["lora"] == result["tunable"]["peft_lora"] > result["tunable"]["branchlora"] > 0
    assert all(t["median_ms"] > 0 for t in result["seconds_per_step"].values())
    for name in ("lora_vs_peft_loop", "branchlora_vs_peft_loop"):
        assert result["intervals"][name]["low"] <= result["ratios"][name] <= result["intervals"][name]["high"]
