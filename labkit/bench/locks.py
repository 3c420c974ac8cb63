"""Suite `locks`: labkit's Lock next to redis-py's, labkit's Redlock next to pottery's."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from typing import NamedTuple

import redis

from labkit.bench.core import Row, side_by_side_rounds

SUITE = "locks"


class Contender(NamedTuple):
    """A lock under test: its uncontended acquire and release, the servers it talks to, its group."""

    acquire: Callable[[], object]
    release: Callable[[], object]
    clients: list[redis.Redis]
    servers: str  # "1 server" or "3 servers": the metrics compare contenders with the same servers
    baseline: bool


def _reads(clients: list[redis.Redis]) -> list[int]:
    return [int(c.info("stats")["total_reads_processed"]) for c in clients]


def _round_trips_per_acquire(clients: list[redis.Redis], acquire: Callable[[], object],
                             release: Callable[[], object], n: int = 51) -> float:
    """Requests the servers read during one acquire() alone, summed over servers (each INFO that measures
    counts itself once per server, subtracted): the median of `n` calls, so that one call a busy machine
    slowed past a node timeout (and retried) does not move it."""
    counts = []
    for _ in range(n):
        before = _reads(clients)
        acquire()
        after = _reads(clients)
        release()
        counts.append(sum(a - b - 1 for a, b in zip(after, before, strict=True)))
    return float(statistics.median(counts))


def _contenders(clients: list[redis.Redis]) -> dict[str, Contender]:
    """redis-py's Lock (baseline) and labkit's on one server; pottery's Redlock (baseline) and labkit's on all."""
    from pottery import Redlock as PotteryRedlock

    from labkit.locks import Lock, Redlock

    r = clients[0]
    ours, theirs = Lock(r, "bench", ttl_ms=10_000), r.lock("bench-redispy", timeout=10)
    ours_rl = Redlock(clients, "bench", ttl_ms=10_000)
    pottery = PotteryRedlock(key="bench-pottery", masters=set(clients), auto_release_time=10)
    orders = itertools.count()
    made: dict[str, object] = {}  # the lock of the latest order id, per contender: its release() frees it

    def per_order(name: str, make: Callable[[str], object], acquire: Callable[[object], object]) -> Contender:
        def take() -> object:
            made[name] = lock = make(f"order-{next(orders)}")
            return acquire(lock)
        return Contender(take, lambda: made[name].release(), clients, "3 servers, one lock per order id",
                         name.startswith("pottery"))

    return {
        "redis-py Lock": Contender(lambda: theirs.acquire(blocking=False), theirs.release, clients[:1], "1 server",
                                   True),
        "labkit Lock": Contender(lambda: ours.acquire(blocking=False), ours.release, clients[:1], "1 server", False),
        "pottery Redlock": Contender(lambda: pottery.acquire(blocking=False), pottery.release, clients, "3 servers",
                                     True),
        "labkit Redlock": Contender(ours_rl.acquire, ours_rl.release, clients, "3 servers", False),
        # as a service locks: a new lock object per resource name (an order id), made on shared clients
        "pottery Redlock per order": per_order(
            "pottery Redlock per order",
            lambda key: PotteryRedlock(key=key, masters=set(clients), auto_release_time=10),
            lambda lock: lock.acquire(blocking=False)),
        "labkit Redlock per order": per_order(
            "labkit Redlock per order", lambda key: Redlock(clients, key, ttl_ms=10_000), lambda lock: lock.acquire()),
    }


def run(reps: int = 300) -> list[Row]:
    """Uncontended acquire+release, median microseconds, each pair timed in turns on its own: labkit's Lock
    next to redis-py's on one server, labkit's Redlock next to pottery's on three, one lock object reused and
    one made per order id (as a service locks resources); then round trips per acquire."""
    from labkit.server import nodes

    with nodes(3) as servers:
        contenders = _contenders([s.client() for s in servers])
        for c in contenders.values():  # load scripts and connections before timing
            c.acquire()
            c.release()
        timed = {}
        for group in dict.fromkeys(c.servers for c in contenders.values()):  # each metric's pair on its own
            timed |= side_by_side_rounds({name: lambda c=c: (c.acquire(), c.release())
                                          for name, c in contenders.items() if c.servers == group}, reps=reps, settle=1)
        rows = [Row(SUITE, f"acquire+release, {c.servers}", name, timed[name][0], "us", c.baseline, timed[name][1])
                for name, c in contenders.items()]
        rows += [Row(SUITE, f"round trips per acquire, {c.servers}", name,
                     _round_trips_per_acquire(c.clients, c.acquire, c.release), "round trips", c.baseline)
                 for name, c in contenders.items()]
    return rows
