"""Lesson 03, sessions (`notebooks/03_sessions.ipynb`): the exercise check, and the commands an ACL can name."""

from __future__ import annotations

from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, delete_keys, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import capabilities


def known_commands(r: redis.Redis, commands: list[str]) -> list[str]:
    """Those of `commands` (names like `hget` or `client|setinfo`) that the server `r` knows: ACL SETUSER refuses
    a rule that names an unknown command, and CLIENT SETINFO, say, came with Redis 7.2."""
    caps = capabilities(r)
    return [c for c in commands if caps.has(c)]


def check_touch_session(r: redis.Redis, ns: Namespace, touch: Callable) -> Result:
    """`touch(r, key, idle_ms) -> bool` refreshes an existing session hash's idle TTL and returns
    True; for a missing session it returns False and writes nothing."""
    live, missing = ns.key("check", "session", "live"), ns.key("check", "session", "missing")
    r.delete(live, missing)
    r.hset(live, mapping={"user_id": "u1", "last_seen": "0"})
    r.pexpire(live, 2000)
    try:
        refreshed = touch(r, live, 60_000)
        ttl_after = r.pttl(live)
        absent = touch(r, missing, 60_000)
        created = r.exists(missing)
        leftover = r.hgetall(missing) if created else {}
    finally:
        delete_keys(r, [live, missing])
    problems = []
    if refreshed is not True:
        problems.append(f"touching a live session returned {refreshed!r}, expected True (HSET returns how many "
                        "fields are NEW, so 0 for a refresh: use EXPIRE's reply, or a script).")
    if not 50_000 < ttl_after <= 60_000:
        problems.append(f"the live session's TTL is {ttl_after} ms after touch, expected about 60,000 ms.")
    if absent is not False:
        problems.append(f"touching a missing session returned {absent!r}, expected False.")
    if created:
        problems.append(f"touching a missing session created {missing!r} holding {leftover}: a half session "
                        "with no user. Check that the session exists before writing, in the same round trip.")
    return verdict(problems, "refreshes live sessions, reports and leaves missing ones alone.")
