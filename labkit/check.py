"""Exercise checks: each says whether an answer is right and, if not, what to change.

A check never raises for a wrong answer; it returns a `Result` that is falsy and explains the problem.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis


@dataclass(frozen=True)
class Result:
    """The verdict of one check; truthy when the answer is right."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{'✅ correct' if self.passed else '❌ not yet'}: {self.message}"

    def _repr_markdown_(self) -> str:
        return f"**{'✅ Correct' if self.passed else '❌ Not yet'}**: {self.message}"


def _verdict(problems: list[str], success: str) -> Result:
    return Result(False, " ".join(problems)) if problems else Result(True, success)


# --- lesson 00 -------------------------------------------------------------------------------------
GREETING = "hello"
GREETING_TTL_S = 60


def greeting(r: redis.Redis, key: str) -> Result:
    """Lesson 00: `key` holds the string "hello" and expires by itself within 60 seconds."""
    value = r.get(key)
    if value is None:
        return Result(False, f"there is no key {key!r}; write it with r.set(...) using exactly that key.")
    value = value.decode() if isinstance(value, bytes) else value
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
    return _verdict(problems, f"{key} = {value!r}, expiring in {ttl_ms / 1000:.1f} s.")
