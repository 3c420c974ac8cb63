"""Lesson 08, distributed locks (`notebooks/08_locks.ipynb`): the exercise checks."""

from __future__ import annotations

from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, verdict


class _RacyClient(redis.Redis):
    """A real client of the same server that, right after a GET of the lock returns our token, lets the
    lock expire and another client take it: the moment a two-step release is exposed to."""

    lock_key = ""
    rival_token = "rival"
    raced = False

    def execute_command(self, *args, **options):
        reply = super().execute_command(*args, **options)
        if args and str(args[0]).upper() == "GET" and args[1] == self.lock_key and reply is not None:
            redis.Redis(connection_pool=self.connection_pool).set(self.lock_key, self.rival_token, px=5000)
            self.raced = True
        return reply


def check_safe_release(r: redis.Redis, ns: Namespace, release: Callable[[redis.Redis, str, str], bool]) -> Result:
    """`release(r, key, token)` deletes the lock at `key` only if it holds `token`, atomically,
    and returns whether it did."""
    key = ns.key("check", "lock")
    problems = []
    r.set(key, "mine", px=5000)
    if not release(r, key, "mine") or r.exists(key):
        problems.append("releasing our own lock did not delete it (or did not return True).")
    r.set(key, "someone-else", px=5000)
    if release(r, key, "mine") or r.get(key) != "someone-else":
        problems.append("it deleted (or claimed to release) a lock held by someone else: compare the token first.")
    racy = _RacyClient(connection_pool=r.connection_pool)
    racy.lock_key = key
    r.set(key, "mine", px=5000)
    release(racy, key, "mine")
    if not problems and racy.raced and r.get(key) != racy.rival_token:
        problems.append("between your GET and your DEL the lock expired and another client took it; your DEL "
                        "removed their lock. Compare and delete in one step: a Lua script.")
    r.delete(key)
    return verdict(problems, "it releases only its own lock, and atomically (a rival's lock survived the race).")


def check_redlock_validity(validity: Callable[[int, int, float, float], float]) -> Result:
    """`validity(acquired, nodes, elapsed_ms, ttl_ms)` is the time left in ms for a Redlock that
    won `acquired` of `nodes` in `elapsed_ms`: ttl - elapsed - drift (ttl * 0.01 + 2 ms) with a strict
    majority, else 0."""
    cases = [  # (acquired, nodes, elapsed_ms, ttl_ms, expected, what a wrong answer usually got wrong)
        (5, 5, 0, 10_000, 9898, "subtract the clock drift allowance, ttl * 0.01 + 2 ms"),
        (3, 3, 400, 1000, 588, "subtract the time spent acquiring"),
        (3, 3, 995, 1000, 0, "after 995 ms of a 1000 ms TTL nothing is left once drift is counted: return 0, "
                             "never a negative validity"),
        (2, 5, 10, 1000, 0, "2 of 5 is not a majority: a quorum hard-coded as 2 lets two clients both hold it"),
        (2, 4, 10, 1000, 0, "2 of 4 is not a strict majority (n // 2 + 1 = 3)"),
        (3, 5, 10, 1000, 978, "3 of 5 is a majority"),
        (2, 3, 10, 1000, 978, "2 of 3 is a majority"),
    ]
    for acquired, nodes, elapsed, ttl, expected, hint in cases:
        got = validity(acquired, nodes, elapsed, ttl)
        if got is None or abs(float(got) - expected) > 0.5:
            return Result(False, f"validity({acquired}, {nodes}, {elapsed}, {ttl}) gave {got}, expected {expected}: "
                                 f"{hint}.")
    return Result(True, "majority, elapsed time and drift all counted.")
