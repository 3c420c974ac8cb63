"""Lesson 02, caching and stampedes (`notebooks/02_caching.ipynb`): the exercise checks."""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, delete_keys, verdict


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


def check_single_flight(r: redis.Redis, ns: Namespace, get_or_compute: Callable) -> Result:
    """`get_or_compute(r, key, compute, lock_ttl_ms)` returns the cached value at `key`, or computes
    it under a lock at `key + ":lock"` that holds a token: one compute for many concurrent callers, and a
    client never deletes a lock it does not own."""
    problems = []
    key = ns.key("check", "single-flight")
    computes = []

    def compute() -> str:
        computes.append(1)
        time.sleep(0.05)
        return "fresh"

    r.delete(key, key + ":lock")
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(get_or_compute(r, key, compute, 2000)))
               for _ in range(20)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if len(computes) > 1:
            problems.append(f"{len(computes)} computes for 20 concurrent callers: after taking the lock, read the "
                            "cache again (another client may have filled it while you waited), and let waiters "
                            "re-read rather than compute.")
        if answers != ["fresh"] * 20:
            problems.append(f"callers got {sorted(set(map(str, answers)))}, expected 'fresh' for all 20.")
        # a lock that outlives its TTL: A's lock (50 ms) expires while A computes (150 ms)
        r.delete(key, key + ":lock")
        slow = lambda: (time.sleep(0.15), "slow")[1]  # noqa: E731
        first = threading.Thread(target=get_or_compute, args=(r, key, slow, 50))
        first.start()
        time.sleep(0.08)  # A's 50 ms lock has expired; another client now takes the lock
        r.set(key + ":lock", "someone-else", px=1000)
        first.join()
        if r.get(key + ":lock") != "someone-else":
            problems.append("when its lock had expired, the first client deleted a lock another client held: "
                            "store a random token in the lock and release it only if the token is still yours "
                            "(a Lua compare-and-delete).")
    finally:
        delete_keys(r, [k for k in r.scan_iter(match=key + "*")])
    return verdict(problems, "one compute for 20 concurrent callers; never releases a lock it does not own.")
