"""Suite `cache`: labkit's `cached` next to a raw GET and dogpile.cache, then stampedes per strategy."""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from labkit.bench.core import Row, rate_row, side_by_side_rounds
from labkit.server.process import Server

SUITE = "cache"
RAW = "raw GET + json.loads"
UNPROTECTED = "none"  # the stampede strategy the others are compared with


def _hit_calls(r: redis.Redis, server: Server) -> dict[str, Callable[[], object]]:
    """One cache hit of each contender, every cache warmed first."""
    from dogpile.cache import make_region

    from labkit.cache import cached

    r.set("raw", json.dumps({"id": 1, "name": "widget"}))
    labkit_hit = cached(r, prefix="bench", ttl=600, strategy="xfetch", name="widget")(
        lambda pid: {"id": pid, "name": "widget"})
    region = make_region().configure("dogpile.cache.redis", expiration_time=600, arguments={
        "host": server.host, "port": server.port, "password": server.password, "redis_expiration_time": 600})
    dogpile_hit = region.cache_on_arguments()(lambda pid: {"id": pid, "name": "widget"})
    labkit_hit(1), dogpile_hit(1)
    return {RAW: lambda: json.loads(r.get("raw")),
            "labkit cached (xfetch)": lambda: labkit_hit(1),
            "dogpile.cache redis": lambda: dogpile_hit(1)}


def _stampede_rows(r: redis.Redis, clients: int) -> list[Row]:
    """Recomputes and misses when a hot key expires under `clients` readers, for each strategy."""
    from labkit.cache import STRATEGIES
    from labkit.lessons.l02_caching import stampede

    rows: list[Row] = []
    for strategy in STRATEGIES:
        result = stampede(r, "bench-stampede", strategy, clients=clients)
        base = strategy == UNPROTECTED
        rows.append(Row(SUITE, "stampede: recomputes at expiry", strategy, result.recomputes, "recomputes", base))
        rows.append(Row(SUITE, "stampede: misses at expiry", strategy, result.misses, "misses", base))
    return rows


def run(seconds: float = 1.0, clients: int = 50) -> list[Row]:
    """Cache hits per second (from median latencies, the three timed in turns): labkit's `cached` (xfetch)
    next to a raw GET loop (the baseline) and dogpile.cache's Redis backend on one quiet server; then
    stampede recomputes and misses per strategy, against no protection."""
    with Server(modules=False) as server:
        r = server.client()
        timed = side_by_side_rounds(_hit_calls(r, server), reps=int(3000 * seconds), settle=1)
        rows = [rate_row(SUITE, "hits per second", name, t, "hits/s", baseline=name == RAW)
                for name, t in timed.items()]
        return rows + _stampede_rows(r, clients)
