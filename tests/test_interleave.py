"""The interleaved comparison's statistics on synthetic timings, where the true ratio is known."""

import math
import random

import pytest

from branchlora.bench.interleave import Schedule, bootstrap_ratio, interleave


def test_bootstrap_ratio_of_exact_pairs_is_exact():
    stats = bootstrap_ratio([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    assert stats == {"ratio": 2.0, "low": 2.0, "high": 2.0, "half_width": 0.0, "rounds": 4}


def test_bootstrap_ratio_median_and_interval_by_hand():
    # Paired ratios 1, 2, 3, 4, 100: the median is 3 whatever the outlier; the interval lies between the
    # smallest and largest possible resampled medians and contains the estimate.
    stats = bootstrap_ratio([1.0, 2.0, 3.0, 4.0, 100.0], [1.0] * 5)
    assert stats["ratio"] == 3.0 and stats["rounds"] == 5
    assert 1.0 <= stats["low"] <= 3.0 <= stats["high"] <= 100.0
    assert stats["half_width"] == pytest.approx((stats["high"] - stats["low"]) / 2 / 3.0)
    assert bootstrap_ratio([1.0, 2.0, 3.0, 4.0, 100.0], [1.0] * 5) == stats  # seeded: reproducible


def test_bootstrap_interval_narrows_with_more_rounds_and_covers_the_truth():
    rng = random.Random(1)
    widths = []
    for n in (10, 40, 160):
        den = [1.0] * n
        num = [0.5 * math.exp(rng.gauss(0, 0.1)) for _ in range(n)]  # true median ratio 0.5, 10 % noise
        stats = bootstrap_ratio(num, den)
        assert stats["low"] <= 0.5 * 1.03 and stats["high"] >= 0.5 * 0.97
        widths.append(stats["half_width"])
    assert widths[0] > widths[1] > widths[2]


class FakeMachine:
    """Variants whose cost is fixed up to 5 % noise, times a machine load that drifts slowly and jumps:
    what a shared machine does to block timings."""

    def __init__(self, costs: dict[str, float]) -> None:
        self.costs, self.rng, self.now, self.calls = costs, random.Random(0), 0.0, []

    def load(self) -> float:
        return 1.0 + 0.5 * math.sin(self.now / 40.0) + (1.0 if 100 < self.now < 160 else 0.0)

    def sampler(self, name: str):
        def sample() -> float:
            seconds = self.costs[name] * self.load() * math.exp(self.rng.gauss(0, 0.05))
            self.now += seconds
            self.calls.append(name)
            return seconds

        return sample


def test_interleaving_recovers_the_ratio_despite_drifting_load():
    machine = FakeMachine({"a": 1.0, "b": 2.0, "c": 4.0})
    samplers = {name: machine.sampler(name) for name in machine.costs}
    schedule = Schedule(warmup=1, min_rounds=5, max_rounds=500, cap_s=1e9, tolerance=0.02)
    result = interleave(samplers, {"a/b": ("a", "b"), "c/b": ("c", "b")}, schedule, clock=lambda: machine.now)
    assert result["converged"] and result["rounds"] < 500
    for name, truth in (("a/b", 0.5), ("c/b", 2.0)):
        stats = result["ratios"][name]
        assert stats["low"] <= truth <= stats["high"] and stats["half_width"] <= 0.02
        assert stats["ratio"] == pytest.approx(truth, rel=0.03)
    # Every round ran each variant once (warm-up included), in an order that varies between rounds.
    rounds = [machine.calls[i : i + 3] for i in range(0, len(machine.calls), 3)]
    assert len(rounds) == result["rounds"] + 1 and all(sorted(r) == ["a", "b", "c"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1
    assert result["times"]["a"]["n"] == result["rounds"] and len(result["load"]) == 2
    # Timing a's block, then b's, would have put the load change between the blocks into the ratio.
    block = FakeMachine({"a": 1.0, "b": 2.0})
    a = [block.sampler("a")() for _ in range(60)]
    b = [block.sampler("b")() for _ in range(60)]
    assert abs(sorted(a)[30] / sorted(b)[30] - 0.5) > 0.05


def test_interleave_stops_at_the_time_cap():
    machine = FakeMachine({"a": 1.0, "b": 1.0})
    machine.rng = random.Random(3)
    samplers = {name: machine.sampler(name) for name in machine.costs}
    schedule = Schedule(warmup=0, min_rounds=3, max_rounds=1000, cap_s=20.0, tolerance=1e-6)
    result = interleave(samplers, {"a/b": ("a", "b")}, schedule, clock=lambda: machine.now)
    assert not result["converged"] and result["seconds"] >= 20.0 and result["rounds"] < 20
