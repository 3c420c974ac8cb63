"""Lesson 04, rate limiting (`notebooks/04_rate_limiting.ipynb`): the exercise check."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, delete_keys, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here

SLIDING_USERS, SLIDING_LIMIT, SLIDING_THREADS = 50, 4, 8


def check_sliding_log(r: redis.Redis, ns: Namespace, allow: Callable) -> Result:
    """`allow(r, key, limit, window_ms) -> bool` is an atomic sliding log. 8 threads ask for 50
    users in lockstep (each user 8 times, limit 4 per 60 s): exactly 4 per user must pass, and keys expire."""
    base = ns.key("check", "sliding-log")
    users = [f"{base}:{u}" for u in range(SLIDING_USERS)]
    admitted: dict[str, int] = dict.fromkeys(users, 0)
    lock, errors = threading.Lock(), []
    step = threading.Barrier(SLIDING_THREADS)  # the lockstep: every thread asks for a user at the same moment,
    # so that a check and an add in separate steps are raced on every user, however the machine schedules them

    def client() -> None:
        try:
            for key in users:
                step.wait(60)
                if allow(r, key, SLIDING_LIMIT, 60_000):
                    with lock:
                        admitted[key] += 1
        except threading.BrokenBarrierError:  # another thread failed (reported below) or hung
            return
        except Exception as err:  # reported below, never swallowed
            errors.append(err)
            step.abort()

    threads = [threading.Thread(target=client) for _ in range(SLIDING_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        ttl = r.pttl(users[0])
        entries = max((r.zcard(k) for k in users if r.type(k) == "zset"), default=0)
    finally:
        delete_keys(r, [k for k in r.scan_iter(match=base + "*")])
    if errors:
        return Result(False, f"your function raised {errors[0]!r}.")
    problems = []
    over = {k: n for k, n in admitted.items() if n > SLIDING_LIMIT}
    total, expected = sum(admitted.values()), SLIDING_USERS * SLIDING_LIMIT
    if over:
        problems.append(f"{len(over)} of {SLIDING_USERS} users got more than {SLIDING_LIMIT} requests through "
                        f"({total} admitted, expected {expected}): the check and the add must happen in one atomic "
                        "step (one script), and every request needs its own member.")
    elif total < expected:
        problems.append(f"only {total} admitted, expected exactly {expected} ({SLIDING_LIMIT} per user).")
    if entries > SLIDING_LIMIT:
        problems.append(f"a sorted set holds {entries} entries: a denied request must not be recorded.")
    if ttl < 0:
        problems.append("the key has no expiry: PEXPIRE it by the window so idle users cost nothing.")
    asked = SLIDING_USERS * SLIDING_THREADS
    return verdict(problems, f"exactly {SLIDING_LIMIT} per user, {total} of {asked} concurrent requests; keys expire.")
