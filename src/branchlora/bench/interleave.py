"""Ratios that hold on a shared machine: the compared variants take turns, round after round, until each
ratio's bootstrap confidence interval is within a tolerance (or a time cap is hit).

Timing A's block, then B's, lets a change of machine load between the blocks into the ratio.  Here each
round runs every variant once, in a fresh random order, and a ratio is the median over rounds of the
per-round ratio a_i / b_i, so load that drifts slower than a round cancels.  Its interval is a percentile
bootstrap over rounds.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from branchlora.bench.timing import summarise


@dataclass(frozen=True)
class Schedule:
    """When an interleaved comparison stops: every ratio within `tolerance`, or `max_rounds`, or `cap_s`."""

    warmup: int = 2  # rounds run and not kept (allocator, caches, lazy initialisation)
    min_rounds: int = 5
    max_rounds: int = 200
    cap_s: float = 120.0  # wall-clock seconds for the kept rounds of one comparison
    tolerance: float = 0.05  # target half-width of the interval, relative to the ratio
    confidence: float = 0.95
    resamples: int = 2000


def bootstrap_ratio(num: list[float], den: list[float], confidence: float = 0.95, resamples: int = 2000) -> dict:
    """Median of the paired ratios num_i / den_i with its percentile bootstrap interval (rounds resampled).

    Returns {ratio, low, high, half_width (relative to ratio), rounds}; the resampling is seeded, so the
    same timings give the same interval.
    """
    r = torch.tensor(num, dtype=torch.float64) / torch.tensor(den, dtype=torch.float64)
    estimate = float(r.quantile(0.5))
    if len(r) < 2:
        return {"ratio": estimate, "low": estimate, "high": estimate, "half_width": float("inf"), "rounds": len(r)}
    rows = torch.randint(len(r), (resamples, len(r)), generator=torch.Generator().manual_seed(0))
    medians = r[rows].quantile(0.5, dim=1)
    tail = (1 - confidence) / 2
    low, high = (float(v) for v in medians.quantile(torch.tensor([tail, 1 - tail], dtype=torch.float64)))
    return {"ratio": estimate, "low": low, "high": high, "half_width": (high - low) / 2 / estimate, "rounds": len(r)}


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none): what else was running."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def interleave(
    samplers: dict[str, Callable[[], float]],
    ratios: dict[str, tuple[str, str]],
    schedule: Schedule,
    clock: Callable[[], float] = time.perf_counter,
) -> dict:
    """Run `samplers` (each returns the seconds of one sample) in turns until every ratio in `ratios`
    ({name: (numerator, denominator)}) is known to `schedule.tolerance`.

    Returns {"times": {variant: summarise(...)}, "ratios": {name: bootstrap_ratio(...)}, "rounds",
    "seconds", "converged", "load": [1-min load at start, at end]}.
    """
    order = list(samplers)
    shuffle = random.Random(0).shuffle
    seconds: dict[str, list[float]] = {name: [] for name in order}
    load_start = load_average()
    for _ in range(schedule.warmup):
        for name in order:
            samplers[name]()
    start, rounds, stats, converged = clock(), 0, {}, False
    while rounds < schedule.max_rounds:
        shuffle(order)
        for name in order:
            seconds[name].append(samplers[name]())
        rounds += 1
        if rounds < schedule.min_rounds:
            continue
        stats = {
            name: bootstrap_ratio(seconds[a], seconds[b], schedule.confidence, schedule.resamples)
            for name, (a, b) in ratios.items()
        }
        converged = all(s["half_width"] <= schedule.tolerance for s in stats.values())
        if converged or clock() - start >= schedule.cap_s:
            break
    return {
        "times": {name: summarise(values) for name, values in seconds.items()},
        "ratios": stats,
        "rounds": rounds,
        "seconds": clock() - start,
        "converged": converged,
        "load": [load_start, load_average()],
    }
