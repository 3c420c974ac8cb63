"""Distributed locks: a single-server `Lock` with fencing tokens, `Redlock` over independent servers, and
a `FencedStore` that rejects writes carrying an older token than one it already accepted.

A lock with a TTL can expire while its holder still works (a pause, a slow call): no lock alone can
stop a stale holder from writing afterwards. The fencing token, a number that grows with every
acquisition, lets the resource itself refuse that write.
"""

from __future__ import annotations

import contextlib
import random
import secrets
import threading
import time

import redis

from labkit import scripts, validate
from labkit.clients import derive, text
from labkit.errors import ConfigError, LockNotAcquired, LockNotHeld


class Lock:
    """A lock on one server: SET NX PX with a random token, and a fencing token from the same script.

    `acquire()` takes it (retrying with random pauses for up to `blocking_timeout` seconds); `release()`
    and `extend()` act only if our token is still there, and raise `LockNotHeld` otherwise: the lock
    expired, so the work since then was not protected. As a context manager it raises `LockNotAcquired`
    (a `TimeoutError`) if it cannot take the lock, and `LockNotHeld` at the end of the block if the lock
    was lost meanwhile. An acquisition belongs to the thread that made it: threads sharing one `Lock`
    take turns, and one cannot release or extend another's.

    Example:
        >>> with Lock(r, "invoice:42", ttl_ms=5000) as lock:
        ...     store.write(lock.fence, "paid")
    """

    def __init__(self, r: redis.Redis, name: str, *, ttl_ms: int = 10_000, blocking_timeout: float | None = 10.0,
                 prefix: str = "lab:lock") -> None:
        if blocking_timeout is not None:
            validate.seconds(blocking_timeout, "blocking_timeout (or None to wait forever)", allow_zero=True)
        self.r, self.name, self.blocking_timeout = r, validate.name(name, "name"), blocking_timeout
        self.ttl_ms = validate.milliseconds(ttl_ms, "ttl_ms")
        validate.prefix(prefix)
        self.key = f"{prefix}:{{{name}}}"
        self.fence_key = f"{self.key}:fence"
        self._held = threading.local()  # this thread's token and fence
        self._acquire = scripts.register(r, "locks/acquire")
        self._release = scripts.register(r, "locks/release")
        self._extend = scripts.register(r, "locks/extend")

    @property
    def token(self) -> str | None:
        """This thread's random token while it holds the lock, else None."""
        return getattr(self._held, "token", None)

    @property
    def fence(self) -> int | None:
        """The fencing token of this thread's latest acquisition (it grows with every acquisition)."""
        return getattr(self._held, "fence", None)

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock for this thread; True on success. Sets `token` and `fence` (the fencing token)."""
        token = secrets.token_hex(16)
        deadline = None if self.blocking_timeout is None else time.monotonic() + self.blocking_timeout
        while True:
            fence = self._acquire(keys=[self.key, self.fence_key], args=[token, self.ttl_ms])
            if fence:
                self._held.token, self._held.fence = token, int(fence)
                return True
            if not blocking or (deadline is not None and time.monotonic() >= deadline):
                return False
            pause = random.uniform(0.002, 0.02)
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))

    def release(self) -> None:
        """Release this thread's lock if it still holds it; `LockNotHeld` if it never did or it expired."""
        if self.token is None:
            raise LockNotHeld(f"Lock {self.name!r} is not held by this client (this thread): acquire() it first.")
        token, self._held.token = self.token, None
        if not self._release(keys=[self.key], args=[token]):
            raise LockNotHeld(f"Lock {self.name!r} expired (ttl {self.ttl_ms} ms) or was taken by another client "
                              "before release: the work done after the expiry was not protected.")

    def extend(self, ttl_ms: int | None = None) -> None:
        """Give the lock a new TTL in ms (default: the original) if this thread still holds it; `LockNotHeld`
        otherwise."""
        ttl_ms = self.ttl_ms if ttl_ms is None else validate.milliseconds(ttl_ms, "ttl_ms")
        if self.token is None or not self._extend(keys=[self.key], args=[self.token, ttl_ms]):
            raise LockNotHeld(f"Lock {self.name!r} cannot be extended: it is not ours any more (or never was).")

    def owned(self) -> bool:
        """Whether the server still holds this thread's token (one GET; the answer may be stale a moment later)."""
        return self.token is not None and text(self.r.get(self.key)) == self.token

    def __enter__(self) -> Lock:
        if not self.acquire():
            raise LockNotAcquired(f"Could not acquire lock {self.name!r} within {self.blocking_timeout} s: "
                                  "another client holds it. Wait longer (blocking_timeout=) or try later.")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.release()
        except LockNotHeld as lost:
            if exc is None:
                raise
            exc.add_note(str(lost))


class Redlock:
    """A lock held on a majority of independent servers (the Redlock algorithm).

    `acquire()` tries SET NX PX on every node, each call bounded by `node_timeout_ms`; it holds the lock
    if a majority answered yes and time is left: validity = ttl - elapsed (monotonic clock) - drift. Else
    it releases what it took and retries after a random delay. `release()` tries every node, whatever
    the others do. Redlock does not issue fencing tokens: pair it with a resource that checks one.
    """

    def __init__(self, clients: list[redis.Redis], name: str, *, ttl_ms: int = 10_000, retries: int = 3,
                 retry_delay_ms: int = 200, node_timeout_ms: int = 50, drift_factor: float = 0.01,
                 prefix: str = "lab:redlock") -> None:
        if not clients:
            raise ConfigError("Redlock needs a list of independent servers (3 or 5), got none.")
        if len(clients) % 2 == 0:
            raise ConfigError(f"Redlock needs an odd number of independent servers (3 or 5), got {len(clients)}: "
                              "with an even number, a failure can split them into two equal halves.")
        validate.milliseconds(ttl_ms, "ttl_ms")
        validate.milliseconds(node_timeout_ms, "node_timeout_ms")
        validate.name(name, "name")
        validate.prefix(prefix)
        if node_timeout_ms >= ttl_ms:
            raise ConfigError(f"node_timeout_ms ({node_timeout_ms}) must be far below ttl_ms ({ttl_ms}).")
        validate.integer(retries, "retries", minimum=0)
        validate.integer(retry_delay_ms, "retry_delay_ms", minimum=0)
        validate.number(drift_factor, "drift_factor", low=0, high=1, high_open=True)
        timeout = node_timeout_ms / 1000
        self.nodes = [derive(c, retries=0, socket_timeout=timeout, socket_connect_timeout=timeout) for c in clients]
        self.name, self.key, self.ttl_ms = name, f"{prefix}:{name}", int(ttl_ms)
        self.retries, self.retry_delay_ms, self.drift_factor = retries, retry_delay_ms, drift_factor
        self.quorum = len(clients) // 2 + 1
        self.token: str | None = None
        self.validity_ms = 0.0
        self.acquired_on = 0
        self._release_scripts = [scripts.register(node, "locks/release") for node in self.nodes]

    def _lock_on(self, node: redis.Redis, token: str) -> bool:
        try:
            return bool(node.set(self.key, token, nx=True, px=self.ttl_ms))
        except (redis.RedisError, OSError):
            return False

    def _unlock_all(self, token: str) -> int:
        released = 0
        for script in self._release_scripts:
            with contextlib.suppress(redis.RedisError, OSError):  # a node down or slow: its copy expires by TTL
                released += int(script(keys=[self.key], args=[token]))
        return released

    def acquire(self) -> float:
        """Try up to `1 + retries` times; the remaining validity in ms if acquired, else 0.0."""
        for attempt in range(self.retries + 1):
            token = secrets.token_hex(16)
            started = time.monotonic()
            won = sum(self._lock_on(node, token) for node in self.nodes)
            self.acquired_on = won
            elapsed_ms = (time.monotonic() - started) * 1000
            validity = self.ttl_ms - elapsed_ms - (self.ttl_ms * self.drift_factor + 2)
            if won >= self.quorum and validity > 0:
                self.token, self.validity_ms, self.acquired_on = token, validity, won
                return validity
            self._unlock_all(token)
            if attempt < self.retries:
                time.sleep(random.uniform(0, self.retry_delay_ms) / 1000)
        return 0.0

    def release(self) -> int:
        """Release on every node that still has our token; returns how many did. `LockNotHeld` if not held."""
        if self.token is None:
            raise LockNotHeld(f"Redlock {self.name!r} is not held by this client: acquire() it first.")
        token, self.token, self.validity_ms = self.token, None, 0.0
        return self._unlock_all(token)


class FencedStore:
    """A value that refuses a write carrying a fencing token below the highest it accepted: the current
    holder writes as often as it likes with its token; a holder whose lock was taken over cannot.

    Example:
        >>> store = FencedStore(r, "invoice:42")
        >>> store.write(7, "paid"), store.write(7, "paid, receipt sent"), store.write(6, "stale")
        (True, True, False)
    """

    def __init__(self, r: redis.Redis, name: str, *, prefix: str = "lab:fenced") -> None:
        self.r = r
        validate.name(name, "name")
        validate.prefix(prefix)
        self.key = f"{prefix}:{{{name}}}:value"
        self.highest_key = f"{prefix}:{{{name}}}:highest-token"
        self._write = scripts.register(r, "locks/fenced_write")

    def write(self, token: int, value: str) -> bool:
        """True if written; False if `token` is stale (below the highest accepted)."""
        validate.integer(token, "token (a lock's fence)")
        return bool(self._write(keys=[self.key, self.highest_key], args=[token, value]))

    def read(self) -> str | None:
        """The value last written (None if none was)."""
        return text(self.r.get(self.key))
