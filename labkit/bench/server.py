"""Suite `server`: how long each installed engine takes from spawn to its first PONG."""

from __future__ import annotations

import time

from labkit.bench.core import Row, median_of
from labkit.server import available_engines
from labkit.server.process import Server

SUITE = "server"
METRIC = "spawn to first PONG"


def spawn_to_ping_ms(engine: str | None = None, modules: bool = True) -> float:
    """Milliseconds from creating a server to its first PONG (the server is stopped afterwards)."""
    started = time.perf_counter()
    server = Server(engine, modules=modules).start()
    elapsed = (time.perf_counter() - started) * 1000
    server.stop()
    return elapsed


def run(runs: int = 20) -> list[Row]:
    """Median spawn-to-PING time of every installed engine, without and with the modules (valkey9); the
    first engine without modules is the baseline."""
    rows: list[Row] = []
    for name in available_engines():
        ms = median_of(runs, lambda n=name: spawn_to_ping_ms(n, modules=False))
        rows.append(Row(SUITE, METRIC, name, ms, "ms", baseline=not rows))
        if name == "valkey9":
            ms = median_of(runs, lambda n=name: spawn_to_ping_ms(n))
            rows.append(Row(SUITE, METRIC, f"{name} + search/JSON modules", ms, "ms"))
    return rows
