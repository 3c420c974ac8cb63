"""Run suites by name, print each one's table and keep the results file up to date."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from labkit.bench import cache, ceiling, locks, ratelimit, server, streams, vectors
from labkit.bench.core import Row, ceiling_of, print_rows, results_path, write_results

SUITES: dict[str, Callable[[], list[Row]]] = {
    "server": server.run, "ceiling": ceiling.run, "ratelimit": ratelimit.run, "cache": cache.run,
    "streams": streams.run, "locks": locks.run, "vectors": vectors.run,
}


def run(names: Iterable[str] | None = None, results: Path | None = None) -> list[Row]:
    """Run the named suites (default: all, in order), printing each table as it finishes, each rate read as
    a fraction of the server's single-client ceiling once the `ceiling` suite has measured it.

    After each suite the rows so far are written to `results` (default: `build/bench/results.json` under
    the checkout), so a suite that fails leaves the finished ones on disk.

    Raises:
        KeyError: a name is not a suite of SUITES.
    """
    names = list(dict.fromkeys(names or SUITES))
    unknown = [name for name in names if name not in SUITES]
    if unknown:
        raise KeyError(f"unknown suite(s) {', '.join(unknown)}: choose from {', '.join(SUITES)}")
    path = results or results_path()
    rows: list[Row] = []
    for name in names:
        print(f"== bench {name} ==", flush=True)
        suite_rows = SUITES[name]()
        print_rows(suite_rows, ceiling_of(rows + suite_rows))
        rows += suite_rows
        write_results(rows, path)
    print(f"results: {path}")
    return rows
