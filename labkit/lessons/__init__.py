"""One module per lesson (`lNN_<name>.py`, named after `notebooks/NN_<name>.ipynb`): its experiments and its
exercise checks.

A check (`check_...`) never raises for a wrong answer; it returns a `Result` that is falsy and says what to
change. An experiment runs a measured scenario (often with real processes) and returns what it counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import redis

SKIPPED = re.compile(r"^Skipped on this server: (?P<part>.+?)\. Why: (?P<reason>.+)$", re.M)


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


def verdict(problems: list[str], success: str) -> Result:
    """Wrong, naming every problem found, if there are any; else right, with `success` as the message."""
    return Result(False, " ".join(problems)) if problems else Result(True, success)


def delete_keys(r: redis.Redis, keys: list[str]) -> None:
    """Delete the keys a check created (nothing to do for an empty list)."""
    if keys:
        r.delete(*keys)


def skip(part: str, reason: str) -> None:
    """Say that `part` of a lesson (a section, or a piece of one) does not run on this server, and why: one
    line that `python -m labkit matrix` collects. Lessons decide from capabilities, never engine names."""
    print(f"Skipped on this server: {part}. Why: {reason}")
