"""Benchmarks, measured side by side in one run, printed as values with ratios to a baseline, and written
to `build/bench/results.json`. One module per suite; `core` holds the row type, timing, printer and writer.

Example:
    >>> from labkit.bench import side_by_side
    >>> sorted(side_by_side({"a": lambda: None, "b": lambda: None}, reps=3))
    ['a', 'b']
"""

from labkit.bench.core import (
    Row,
    comparisons,
    cycling,
    format_rows,
    median_of,
    print_rows,
    rate_row,
    results_path,
    side_by_side,
    side_by_side_rounds,
    write_results,
)
from labkit.bench.runner import SUITES, run
from labkit.bench.vectors import clustered_vectors, load_vectors

__all__ = [
    "SUITES", "Row", "clustered_vectors", "comparisons", "cycling", "format_rows", "load_vectors", "median_of",
    "print_rows", "rate_row", "results_path", "run", "side_by_side", "side_by_side_rounds", "write_results",
]
