"""Waiting in tests: poll a condition with a deadline instead of sleeping for a guessed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], timeout: float = 10.0, every: float = 0.01) -> T:
    """Call `condition` until it returns something true or `timeout` seconds pass; return its last value.

    The timeout is a deadline for something that should happen in milliseconds: generous, so that a busy
    machine's stalls cannot reach it, and only ever spent in full when the behaviour under test is wrong.
    """
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(every)
    return value
