"""Benchmarks in CoIN's formats, the embedded minicoin generator, and prompt collation."""

from branchlora.data.benchmark import (
    Benchmark,
    BenchmarkError,
    TaskSpec,
    TestExample,
    TrainExample,
    load_benchmark,
    open_image,
)

__all__ = [
    "Benchmark",
    "BenchmarkError",
    "TaskSpec",
    "TestExample",
    "TrainExample",
    "load_benchmark",
    "open_image",
]
