"""Suite `ratelimit`: labkit's limiters next to the `limits` library, decisions per second and round trips."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from labkit.bench.core import Row
from labkit.server.process import Server

SUITE = "ratelimit"
BASELINE = "limits moving window"
LIMIT = 1_000_000  # never reached: we time decisions, not denials


def _rate(decide: Callable[[], object], seconds: float, clients: int) -> float:
    """Decisions per second from `clients` threads calling `decide` for `seconds`."""
    counts = [0] * clients
    deadline = time.perf_counter() + seconds

    def client(i: int) -> None:
        while time.perf_counter() < deadline:
            decide()
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / seconds


def _round_trips(server: Server, decide: Callable[[], object], n: int = 200) -> float:
    """Requests the server read per call of `decide` (the INFO that measures counts itself once)."""
    r = server.client()
    before = r.info("stats")["total_reads_processed"]
    for _ in range(n):
        decide()
    return (r.info("stats")["total_reads_processed"] - before - 1) / n


def _contenders(server: Server) -> dict[str, Callable[[], object]]:
    """One decision of each limiter: the `limits` library's two Redis strategies, then labkit's five."""
    from limits import RateLimitItemPerSecond
    from limits.storage import RedisStorage
    from limits.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    from labkit import ratelimit

    r = server.client()
    item = RateLimitItemPerSecond(LIMIT)
    storage = RedisStorage(server.url.removesuffix("/0"))
    contenders: dict[str, Callable[[], object]] = {
        BASELINE: lambda: MovingWindowRateLimiter(storage).hit(item, "bench"),
        "limits sliding window counter": lambda: SlidingWindowCounterRateLimiter(storage).hit(item, "bench"),
    }
    windowed = (ratelimit.FixedWindow, ratelimit.SlidingLog, ratelimit.SlidingWindowCounter)
    for cls in ratelimit.ALGORITHMS:
        limiter = cls(r, LIMIT, 1, prefix="bench") if cls in windowed else cls(r, LIMIT, LIMIT, prefix="bench")
        contenders[f"labkit {cls.algorithm}"] = lambda lim=limiter: lim.allow("bench")
    return contenders


def run(seconds: float = 1.0) -> list[Row]:
    """Decisions per second (1 and 4 clients) and round trips per decision: labkit's limiters next to the
    `limits` library's moving window (the baseline) and sliding window counter, on one quiet server."""
    rows: list[Row] = []
    with Server(modules=False) as server:
        r = server.client()
        for name, decide in _contenders(server).items():
            r.flushdb()  # a server of our own: start each contender from an empty keyspace
            decide()
            base = name == BASELINE
            rows.append(Row(SUITE, "decisions, 1 client", name, _rate(decide, seconds, 1), "decisions/s", base))
            rows.append(Row(SUITE, "decisions, 4 clients", name, _rate(decide, seconds, 4), "decisions/s", base))
            rows.append(Row(SUITE, "round trips per decision", name, _round_trips(server, decide), "round trips",
                            base))
    return rows
