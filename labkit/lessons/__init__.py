"""One module per lesson (`lNN_<name>.py`, named after `notebooks/NN_<name>.ipynb`): its experiments and its
exercise checks.

A check (`check_...`, marked `@check`) never raises for a wrong answer; it returns a `Result` that is falsy
and says what to change. When a learner runs it against a workshop server, its verdict is also recorded
(`labkit.workshop.record`). An experiment runs a measured scenario (often with real processes) and returns
what it counted.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import redis

from labkit import workshop
from labkit.server import Capabilities, available_engines, capabilities, spawn
from labkit.server.binaries import ENGINES

P = ParamSpec("P")
T = TypeVar("T")
_MODULE = re.compile(r"^labkit\.lessons\.(l\d\d)_\w+$")
CHECKS: dict[str, list[str]] = {}  # lesson ("l00") -> its checks, in the order its module defines them
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


def check(fn: Callable[P, Result]) -> Callable[P, Result]:
    """Mark an exercise check of a lesson module: it must return a `Result`, and its verdict is recorded as
    the learner's progress when it runs against a workshop server (elsewhere nothing changes)."""
    found = _MODULE.match(fn.__module__)
    if not found or not fn.__name__.startswith("check_"):
        raise TypeError(f"@check marks check_... functions of labkit/lessons/lNN_<name>.py, got "
                        f"{fn.__module__}.{fn.__qualname__}.")
    lesson = found[1]
    if fn.__name__ not in CHECKS.setdefault(lesson, []):
        CHECKS[lesson].append(fn.__name__)

    @functools.wraps(fn)
    def checked(*args: P.args, **kwargs: P.kwargs) -> Result:
        result = fn(*args, **kwargs)
        if not isinstance(result, Result):
            raise TypeError(f"{fn.__name__} returned {result!r}: a check returns a Result (see verdict()).")
        workshop.record(lesson, fn.__name__, result.passed, result.message)
        return result

    return checked


def all_checks() -> dict[str, list[str]]:
    """Every lesson's checks (imports every lesson module), lessons in order."""
    for module in pkgutil.iter_modules(__path__):
        if re.match(r"^l\d\d_", module.name):
            importlib.import_module(f"{__name__}.{module.name}")
    return {lesson: list(CHECKS[lesson]) for lesson in sorted(CHECKS)}


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


def on_each_engine(experiment: Callable[[redis.Redis, Capabilities], T], *, modules: bool = False) -> list[T]:
    """`experiment(r, caps)` on a fresh server of every engine installed here, one engine after another: `r`
    a client of that server (its keys and settings are the experiment's own), `caps` what it can do (an
    experiment that needs what `caps` lacks returns a row saying so). Each server is stopped, and its client
    closed, before the next starts. Lessons show engines side by side with it."""
    return [row for _, row in on_each_engine_named(experiment, modules=modules)]


def on_each_engine_named(experiment: Callable[[redis.Redis, Capabilities], T], *,
                         modules: bool = False) -> list[tuple[str, T]]:
    """`on_each_engine`, each row paired with the lab's name of its engine (`valkey9`, `redis8`: what
    `LABKIT_ENGINE` takes). Unlike the name and version a server reports (`caps.engine`, `caps.version`), it
    tells apart two installed engines of the same family and version."""
    rows = []
    for engine in available_engines():
        with spawn(engine, modules=modules) as server:
            r = server.client()
            try:
                rows.append((engine, experiment(r, capabilities(r))))
            finally:
                r.close()
    return rows


def engines_not_installed() -> list[str]:
    """The engines labkit knows that are not installed here (what a side-by-side cell could not show)."""
    installed = available_engines()
    return [name for name in ENGINES if name not in installed]
