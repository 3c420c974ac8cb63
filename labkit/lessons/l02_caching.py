"""Lesson 02, caching and stampedes (`notebooks/02_caching.ipynb`): the slow database the cache sits in
front of, the stampede experiment, and the exercise checks."""

from __future__ import annotations

import math
import random
import sqlite3
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis

from labkit.cache import cached
from labkit.errors import ConfigError
from labkit.keys import Namespace
from labkit.lessons import Result, check, delete_keys, verdict

# -- the database to cache ------------------------------------------------------------------------------
CATEGORIES = ("books", "games", "garden", "kitchen", "music", "outdoor", "toys", "tools")


class SlowDatabase:
    """A products table of `rows` rows in SQLite (standard library); every query also waits `latency_ms`,
    which stands in for the network and load of a remote database (lesson 02 says so wherever it reports a time)."""

    def __init__(self, rows: int = 10_000, latency_ms: float = 30.0, seed: int = 7) -> None:
        if rows < 1 or latency_ms < 0:
            raise ConfigError(f"need rows >= 1 and latency_ms >= 0, got {rows} and {latency_ms}.")
        self.rows, self.latency_ms = rows, latency_ms
        self.queries = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        rng = random.Random(seed)
        self._db.execute("CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT, category TEXT, price REAL)")
        self._db.executemany(
            "INSERT INTO products VALUES (?, ?, ?, ?)",
            [(i, f"product {i}", rng.choice(CATEGORIES), round(rng.uniform(2, 200), 2)) for i in range(1, rows + 1)],
        )

    def _query(self, sql: str, params: tuple) -> list[tuple]:
        time.sleep(self.latency_ms / 1000)
        with self._lock:
            self.queries += 1
            return self._db.execute(sql, params).fetchall()

    def product(self, pid: int) -> dict | None:
        """The product with id `pid`, or None."""
        found = self._query("SELECT id, name, category, price FROM products WHERE id = ?", (pid,))
        return dict(zip(("id", "name", "category", "price"), found[0], strict=True)) if found else None

    def update_price(self, pid: int, price: float) -> None:
        self._query("UPDATE products SET price = ? WHERE id = ?", (price, pid))
        with self._lock:
            self._db.commit()


# -- the stampede experiment ----------------------------------------------------------------------------
@dataclass
class StampedeResult:
    """One stampede experiment: how often the source was hit, and what clients waited."""

    strategy: str
    clients: int
    recomputes: int
    misses: int
    early_refreshes: int
    latencies_ms: list[float]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p99(self) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def stampede(r: redis.Redis, prefix: str, strategy: str, clients: int = 50, ttl: float = 1.0,
             recompute_s: float = 0.05, run_s: float = 1.6, think_s: float = 0.02, beta: float = 1.0,
             should_refresh: Callable[[float, float], bool] | None = None) -> StampedeResult:
    """Warm a hot key, then let `clients` threads read it in a loop (pausing ~`think_s`) for `run_s`
    seconds, across its expiry at `ttl`. The source takes `recompute_s` per call. Counts what happened.
    `should_refresh(delta_ms, remaining_ms)` replaces XFetch's test (to run a broken copy of it)."""
    if clients < 1 or not run_s > ttl:
        raise ConfigError(f"need clients >= 1 and run_s > ttl, got {clients} and {run_s} <= {ttl}.")
    calls = {"n": 0}

    def source(item: int) -> dict:
        calls["n"] += 1
        time.sleep(recompute_s)
        return {"item": item, "version": calls["n"]}

    hot = cached(r, prefix=prefix, ttl=ttl, strategy=strategy, beta=beta, stale_ttl=ttl)(source)
    if should_refresh is not None:
        hot.should_refresh = should_refresh
    hot.invalidate(1)
    hot(1)  # warm: the key now expires `ttl` from here
    warm = dict(recomputes=hot.stats.recomputes, misses=hot.stats.misses, early=hot.stats.early_refreshes)
    latencies: list[float] = []
    lock, start, stop_at = threading.Lock(), threading.Barrier(clients), time.monotonic() + run_s

    def client() -> None:
        start.wait()
        while time.monotonic() < stop_at:
            began = time.perf_counter()
            hot(1)
            with lock:
                latencies.append((time.perf_counter() - began) * 1000)
            time.sleep(random.expovariate(1 / think_s))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 30  # a background refresh (swr) holds the lock until it has written: wait
    while r.exists(f"{hot.key(1)}:lock") and time.monotonic() < deadline:  # for it, whatever the load
        time.sleep(0.005)
    hot.invalidate(1)
    return StampedeResult(strategy, clients, hot.stats.recomputes - warm["recomputes"],
                          hot.stats.misses - warm["misses"], hot.stats.early_refreshes - warm["early"], latencies)


# -- exercise checks ------------------------------------------------------------------------------------
@check
def check_xfetch(should_refresh: Callable[[float, float, float, float, float], bool]) -> Result:
    """`should_refresh(now, expiry, delta, beta, rand) -> bool` is XFetch's test
    `now - delta * beta * ln(rand) >= expiry`, with `rand` uniform in (0, 1]."""
    problems = []
    if not should_refresh(100.0, 100.0, 10.0, 1.0, 1.0) or should_refresh(99.0, 100.0, 10.0, 1.0, 1.0):
        problems.append("with rand = 1 (ln 1 = 0) it must refresh exactly when now >= expiry.")
    rng = random.Random(2015)
    draws = [1.0 - rng.random() for _ in range(4000)]
    early = sum(bool(should_refresh(0.0, 10.0, 10.0, 1.0, u)) for u in draws) / len(draws)
    expected = math.exp(-1)  # P(-ln U >= remaining / (delta * beta)) with remaining = delta
    if early == 0:
        problems.append("it never refreshes early: -ln(rand) is positive, so `now - delta*beta*ln(rand)` is LATER "
                        "than now; check the sign (a common copy has `+` or compares the wrong way).")
    elif abs(early - expected) > 0.05:
        problems.append(f"with delta = remaining time it refreshed early {early:.0%} of the time; "
                        f"XFetch does so {expected:.0%} of the time (e^-1).")
    bigger_beta = sum(bool(should_refresh(0.0, 10.0, 10.0, 2.0, u)) for u in draws) / len(draws)
    if not problems and bigger_beta <= early:
        problems.append("beta > 1 must make early refreshes MORE likely.")
    return verdict(problems, f"refreshes early {early:.0%} of the time when one recompute-time is left "
                             f"(theory {expected:.0%}); more often with beta = 2 ({bigger_beta:.0%}).")


class _ReadWatcher(redis.Redis):
    """A real client of the same server that notes which threads have had a reply to `GET <key>`."""

    key = ""
    readers: set[int]

    def execute_command(self, *args, **options):
        reply = super().execute_command(*args, **options)
        if len(args) > 1 and str(args[0]).upper() == "GET" and args[1] == self.key:
            self.readers.add(threading.get_ident())
        return reply


SINGLE_FLIGHT_CALLERS = 20


@check
def check_single_flight(r: redis.Redis, ns: Namespace, get_or_compute: Callable) -> Result:
    """`get_or_compute(r, key, compute, lock_ttl_ms)` returns the cached value at `key`, or computes
    it under a lock at `key + ":lock"` that holds a token: one compute for many concurrent callers, and a
    client never deletes a lock it does not own.

    Nothing here depends on timing. The callers start together (a barrier), and the compute does not
    finish before every caller has read the cache and missed (or 1 s has passed, for answers that take
    the lock before reading): a missing re-read always shows as extra computes. The expired-lock case is
    ordered by events: the rival takes the lock only once the first client's lock is really gone, and the
    first client's compute returns only after that."""
    problems = []
    key = ns.key("check", "single-flight")
    n = SINGLE_FLIGHT_CALLERS
    watched = _ReadWatcher(connection_pool=r.connection_pool)
    watched.key, watched.readers = key, set()
    computes = []

    def compute() -> str:
        computes.append(1)
        deadline = time.monotonic() + 1
        while len(watched.readers) < n and time.monotonic() < deadline:
            time.sleep(0.002)
        return "fresh"

    r.delete(key, key + ":lock")
    answers: list = []
    start = threading.Barrier(n)

    def caller() -> None:
        start.wait(30)
        answers.append(get_or_compute(watched, key, compute, 30_000))

    threads = [threading.Thread(target=caller) for _ in range(n)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(computes) > 1:
            problems.append(f"{len(computes)} computes for {n} concurrent callers: after taking the lock, read the "
                            "cache again (another client may have filled it while you waited), and let waiters "
                            "re-read rather than compute.")
        if answers != ["fresh"] * n:
            problems.append(f"callers got {sorted(set(map(str, answers)))}, expected 'fresh' for all {n}.")
        # a lock that outlives its TTL: A's lock (50 ms) expires while A computes; another client takes it
        r.delete(key, key + ":lock")
        computing, rival_in = threading.Event(), threading.Event()

        def slow() -> str:
            computing.set()
            rival_in.wait(30)
            return "slow"

        first = threading.Thread(target=get_or_compute, args=(r, key, slow, 50))
        first.start()
        expired = False
        if not computing.wait(30):
            problems.append("get_or_compute never called compute() on an empty cache.")
        else:
            deadline = time.monotonic() + 10
            while r.exists(key + ":lock") and time.monotonic() < deadline:
                time.sleep(0.005)
            expired = not r.exists(key + ":lock")
            if not expired:
                problems.append("a lock taken with lock_ttl_ms = 50 was still there 10 s later: pass lock_ttl_ms "
                                "as the lock's PX, so that a crashed holder cannot block everyone.")
            else:
                r.set(key + ":lock", "someone-else", px=60_000)
        rival_in.set()
        first.join(30)
        if expired and r.get(key + ":lock") != "someone-else":
            problems.append("when its lock had expired, the first client deleted a lock another client held: "
                            "store a random token in the lock and release it only if the token is still yours "
                            "(a Lua compare-and-delete).")
    finally:
        delete_keys(r, [k for k in r.scan_iter(match=key + "*")])
    return verdict(problems, f"one compute for {n} concurrent callers; never releases a lock it does not own.")
