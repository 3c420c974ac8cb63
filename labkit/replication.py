"""Client side of a replicated deployment: retrying through a failover, with a deadline.

During a failover a client sees connection errors and timeouts for as long as the failover takes
(about down-after-milliseconds plus a second or two under Sentinel). redis-py's own retry (none for a
`master_for` client unless you pass `retry=`; 10 for a plain `Redis(host=...)` in redis-py 8) is a count of
attempts with capped backoff: it may or may not outlast a failover, and it is blind (a command that timed out
may have run, and is run again). `retry` keeps trying until a deadline, with backoff, and
leaves it to the caller to make the call safe to repeat (an idempotent write, or one guarded by an
operation id).

Example:
    >>> primary = sentinel.master_for("labmaster", socket_timeout=0.5)
    >>> retry(lambda: primary.set("order:17", "paid"), deadline_s=10)
    True
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from labkit import validate
from labkit.errors import ConfigError

T = TypeVar("T")

# What a failover looks like from a client: the old primary refuses or drops connections, does not answer in
# time, or (through Sentinel) no primary is known yet (MasterNotFoundError is a ConnectionError).
RETRYABLE: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


def retry(call: Callable[[], T], *, deadline_s: float, retry_on: tuple[type[BaseException], ...] = RETRYABLE,
          base_s: float = 0.05, cap_s: float = 0.5, clock: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep, rng: Callable[[], float] = random.random) -> T:
    """Return `call()`, retried after each error of `retry_on` until `deadline_s` seconds have passed; then
    raise the last of those errors. Other errors are raised at once.

    Between attempts it sleeps a random time up to `base_s * 2**attempt`, at most `cap_s` ("full jitter":
    clients that failed together do not come back together), and never sleeps past the deadline. An attempt
    started before the deadline may end after it, by up to the client's own socket timeout.

    Only repeat calls that are safe to repeat: after a timeout the command may have run on the server.
    `clock`, `sleep` and `rng` are there for tests.
    """
    if not callable(call):
        raise ConfigError(f"call must be a function of no arguments (a lambda), got {call!r}.")
    deadline_s = validate.seconds(deadline_s, "deadline_s")
    base_s = validate.seconds(base_s, "base_s")
    cap_s = validate.seconds(cap_s, "cap_s")
    if cap_s < base_s:
        raise ConfigError(f"cap_s must be at least base_s ({base_s}), got {cap_s!r}.")
    if not _exception_classes(retry_on):
        raise ConfigError(f"retry_on must be a non-empty tuple of exception classes, got {retry_on!r}.")
    deadline = clock() + deadline_s
    attempt = 0
    while True:
        try:
            return call()
        except retry_on:
            left = deadline - clock()
            if left <= 0:
                raise
            sleep(min(left, rng() * min(cap_s, base_s * 2 ** attempt)))
            attempt += 1


def _exception_classes(value: object) -> bool:
    return (isinstance(value, tuple) and bool(value)
            and all(isinstance(c, type) and issubclass(c, BaseException) for c in value))
