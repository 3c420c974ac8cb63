"""Lesson 00, setup and tour (`notebooks/00_setup.ipynb`): the exercise check."""

from __future__ import annotations

import redis

from labkit.clients import text
from labkit.lessons import Result, check, verdict

GREETING = "hello"
GREETING_TTL_S = 60


@check
def check_greeting(r: redis.Redis, key: str) -> Result:
    """`key` holds the string "hello" and expires by itself within 60 seconds."""
    value = r.get(key)
    if value is None:
        return Result(False, f"there is no key {key!r}; write it with r.set(...) using exactly that key.")
    value = text(value)
    ttl_ms = r.pttl(key)
    problems = []
    if value != GREETING:
        problems.append(f"the value is {value!r}, expected {GREETING!r}.")
    if ttl_ms == -1:
        problems.append("the key never expires: give it a time to live (SET ... EX 60, or r.set(key, v, ex=60)).")
    elif ttl_ms > GREETING_TTL_S * 1000:
        problems.append(
            f"it expires in {ttl_ms / 1000:,.0f} s, more than {GREETING_TTL_S} s: EX takes seconds, PX milliseconds."
        )
    return verdict(problems, f"{key} = {value!r}, expiring in {ttl_ms / 1000:.1f} s.")
