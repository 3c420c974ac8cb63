"""Fault injection on the client side of a real server: run a hook before each command a client sends.

A hook can raise `redis.ConnectionError` to play a client that crashes between two round trips, or act
through another client to play a request that arrives in between. The server stays real; only the
moment is chosen by the test instead of by luck.
"""

from __future__ import annotations

from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

Hook = Callable[[int], None]  # called with the number of the command about to be sent: 1, 2, ...


def hooked_client(r: redis.Redis, hook: Hook) -> redis.Redis:
    """A client of `r`'s server, without retries, that calls `hook(n)` before sending its n-th command
    (a pipeline is one command; the connection's own handshake is not counted)."""
    sent = [0]

    class Hooked(r.connection_pool.connection_class):
        armed = False

        def send_packed_command(self, command, check_health=True):
            if self.armed:
                sent[0] += 1
                hook(sent[0])
            return super().send_packed_command(command, check_health)

        def connect_check_health(self, *args, **kwargs):
            super().connect_check_health(*args, **kwargs)
            self.armed = True

    kwargs = {**r.connection_pool.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
    kwargs.pop("retry_on_error", None)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=Hooked, **kwargs))


def crash_before(n: int) -> Hook:
    """A hook that plays a crash just before the n-th command: it and every later one fail."""
    def hook(k: int) -> None:
        if k >= n:
            raise redis.ConnectionError(f"crashed before command {k} (injected by the test)")
    return hook
