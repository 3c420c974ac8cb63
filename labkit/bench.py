"""Benchmarks, measured side by side in one run and reported as medians and ratios."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from labkit.server import available_engines
from labkit.server.process import Server

Row = tuple[str, float]


def spawn_to_ping_ms(engine: str | None = None, modules: bool = True) -> float:
    """Milliseconds from creating a server to its first PONG (the server is stopped afterwards)."""
    started = time.perf_counter()
    server = Server(engine, modules=modules).start()
    elapsed = (time.perf_counter() - started) * 1000
    server.stop()
    return elapsed


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


def bench_server(runs: int = 20) -> list[Row]:
    """Median spawn-to-PING time of every installed engine, without and with the modules."""
    rows: list[Row] = []
    for name in available_engines():
        rows.append((f"{name} spawn-to-PING", median_of(runs, lambda n=name: spawn_to_ping_ms(n, modules=False))))
        if name == "valkey9":
            rows.append((f"{name} + search/JSON modules", median_of(runs, lambda n=name: spawn_to_ping_ms(n))))
    return rows


SUITES: dict[str, Callable[[], list[Row]]] = {"server": bench_server}


def run(suite: str = "server") -> list[Row]:
    """Run one suite and print its table; the first row is the baseline of the ratios."""
    rows = SUITES[suite]()
    base = rows[0][1]
    print(f"{'benchmark':40} {'median ms':>10} {'ratio':>7}")
    for name, ms in rows:
        print(f"{name:40} {ms:10.1f} {ms / base:7.2f}")
    return rows
