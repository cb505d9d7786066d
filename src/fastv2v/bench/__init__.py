"""Benchmark methods against their teacher: cost (MACs, model-only and end-to-end speed, memory)
and quality (fidelity to the teacher and ground truth, flicker), measured in one process.

``report = run_bench(models, input, methods=..., intervals=...)`` returns a JSON-ready dict;
``write_report(report, out_dir)`` writes ``bench.json``, ``bench.md`` and ``pareto.png``.
``fastv2v bench`` and ``fastv2v demo`` both go through these two functions.
"""

from fastv2v.bench.memory import PeakMemory
from fastv2v.bench.report import markdown, write_report
from fastv2v.bench.runner import DEFAULT_INTERVALS, DEFAULT_METHODS, parse_intervals, parse_methods, run_bench

__all__ = [
    "DEFAULT_INTERVALS", "DEFAULT_METHODS", "PeakMemory", "markdown", "parse_intervals", "parse_methods",
    "run_bench", "write_report",
]  # fmt: skip
