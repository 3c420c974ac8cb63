"""Suite `server`: how long each installed engine takes from spawn to its first PONG."""

from __future__ import annotations

import statistics
import time

from labkit.bench.core import Row
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
    """Median spawn-to-PING time of every installed engine, without and with the modules (valkey9), the
    contenders taking turns `runs` times; the first engine without modules is the baseline, and each row
    keeps the medians of 5 blocks of turns as its rounds (the ratio's spread)."""
    spawns = {}
    for name in available_engines():
        spawns[name] = lambda n=name: spawn_to_ping_ms(n, modules=False)
        if name == "valkey9":
            spawns[f"{name} + search/JSON modules"] = lambda n=name: spawn_to_ping_ms(n)
    times: dict[str, list[float]] = {name: [] for name in spawns}
    for _ in range(runs):
        for name, spawn in spawns.items():
            times[name].append(spawn())
    blocks = max(1, min(5, runs))
    size = runs // blocks
    return [Row(SUITE, METRIC, name, statistics.median(ms), "ms", baseline=k == 0,
                rounds=tuple(statistics.median(ms[b * size:(b + 1) * size]) for b in range(blocks)))
            for k, (name, ms) in enumerate(times.items())]
