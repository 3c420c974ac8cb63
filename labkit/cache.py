"""Cache-aside with stampede protection: `cached(r, ...)` wraps a function whose results live in Redis.

Each entry is one hash `{v: JSON value, d: recompute time in ms}` whose expiry is the key's own TTL. A read
sends HMGET and PTTL together: one round trip, and the time left comes from the server's clock, to the
millisecond (not TTL's whole seconds, and never from the clocks of the clients, which may disagree). A
result of None ("not found") is cached too, for `negative_ttl` seconds if given. Strategies for what happens
near and at expiry:

- "none": every client that misses recomputes (a stampede at expiry of a hot key);
- "lock": single flight: one client recomputes under a token lock, the others wait and re-read;
- "xfetch": probabilistic early expiration (Vattani et al., VLDB 2015): a hit recomputes early when
  `delta * beta * -ln(random()) >= remaining`, so a few clients (about e on average on an idle machine)
  refresh shortly before expiry, each one waiting for the recompute it runs;
- "swr": stale-while-revalidate: past the TTL the stale value is served for `stale_ttl` more seconds
  while one background refresher recomputes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from labkit import scripts, validate
from labkit.errors import ConfigError

STRATEGIES = ("none", "lock", "xfetch", "swr")


@dataclass
class CacheStats:
    """What a cached function did; updated from any thread (under a lock: `+=` is not atomic)."""

    hits: int = 0
    misses: int = 0
    recomputes: int = 0
    early_refreshes: int = 0
    stale_served: int = 0
    lock_waits: int = 0
    round_trips: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


def cache_key(prefix: str, name: str, args: tuple, kwargs: dict) -> str:
    """`prefix:name:<sha256 of the JSON arguments>`: the full digest, never a truncated one."""
    try:
        payload = json.dumps([args, sorted(kwargs.items())], sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ConfigError(f"cached arguments must be JSON-serialisable ({err}).") from None
    return f"{prefix}:{name}:{hashlib.sha256(payload.encode()).hexdigest()}"


_PLAIN = (str, int)  # argument types whose equality is their JSON's: their keys can be remembered
_REMEMBERED_KEYS = 4096  # per cached function; forgotten all at once when full


def _exchange(conn: redis.Connection, commands: tuple[tuple, ...]) -> list:
    """Send `commands` in one write and read every reply (all of them, even after an error reply, so the
    connection stays in step); raise the first error reply."""
    conn.send_packed_command([b"".join(chunk for command in commands for chunk in conn.pack_command(*command))])
    replies = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except redis.ResponseError as err:
            replies.append(err)
    for reply in replies:
        if isinstance(reply, redis.ResponseError):
            raise reply
    return replies


def function_name(fn: Callable, name: str | None) -> str:
    """What names `fn`'s entries: `name` if given, else `module.qualified_name`; a lambda (or a callable
    without a name) must be given one, or two of them under one prefix would share entries."""
    if name is not None:
        return validate.name(name, "name")
    qualname = getattr(fn, "__qualname__", None)
    if not qualname or qualname.endswith("<lambda>"):
        raise ConfigError(f"cached: {fn!r} has no name of its own to key its entries by (two such functions under "
                          "one prefix would share them): pass name='...', unique under this prefix, or use a def.")
    return f"{getattr(fn, '__module__', None) or '?'}.{qualname}"


def _signature(fn: Callable) -> inspect.Signature | None:
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):  # some built-ins have none: their calls are keyed as written
        return None


class Cached:
    """The wrapper `cached()` returns: call it like the function; `.stats`, `.invalidate(*args)`."""

    def __init__(self, fn: Callable, r: redis.Redis, prefix: str, ttl: float, strategy: str, beta: float,
                 stale_ttl: float, lock_ttl: float, jitter: float, name: str | None = None,
                 negative_ttl: float | None = None) -> None:
        self.fn, self.r, self.prefix, self.strategy = fn, r, prefix, strategy
        self.name, self._signature = function_name(fn, name), _signature(fn)
        self.ttl_ms, self.lock_ms = int(ttl * 1000), int(lock_ttl * 1000)
        self.stale_ms = int(stale_ttl * 1000) if strategy == "swr" else 0  # kept past the TTL, served stale
        self.negative_ms = int((ttl if negative_ttl is None else negative_ttl) * 1000)
        self.beta, self.jitter = beta, jitter
        self.stats = CacheStats()
        self._release = scripts.register(r, "locks/release")
        self._keys: dict[tuple, str] = {}  # recent calls of plain str/int arguments -> their entry's key
        functools.update_wrapper(self, fn)

    def key(self, *args: Any, **kwargs: Any) -> str:
        """The entry for this call: the arguments bound to the function's signature, defaults filled in, so
        `f(1)`, `f(x=1)` and `f(1, y=<its default>)` are one entry. The keys of recent calls whose arguments
        are all plain strings and integers are remembered: binding, JSON and SHA-256 once per call, not once
        per hit (other types are keyed every time: 1, 1.0 and True are equal in Python but not in JSON)."""
        if not (all(type(a) in _PLAIN for a in args) and all(type(v) in _PLAIN for v in kwargs.values())):
            return self._make_key(args, kwargs)
        call = (args, tuple(kwargs.items()))
        found = self._keys.get(call)
        if found is None:
            if len(self._keys) >= _REMEMBERED_KEYS:
                self._keys.clear()
            found = self._keys[call] = self._make_key(args, kwargs)
        return found

    def _make_key(self, args: tuple, kwargs: dict) -> str:
        if self._signature is not None:
            bound = self._signature.bind(*args, **kwargs)
            bound.apply_defaults()
            args, kwargs = (), bound.arguments
        return cache_key(self.prefix, self.name, args, kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> bool:
        """Delete the cached result for these arguments; True if there was one."""
        return self.r.delete(self.key(*args, **kwargs)) == 1

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = self.key(*args, **kwargs)
        found, value, delta_ms, remaining_ms = self._read(key, count=False)  # counted below, with the outcome
        if found and remaining_ms <= 0 and self.strategy != "swr":
            found = False  # past its expiry, in the moment before the server deletes it
        if not found:
            self.stats.add(misses=1, round_trips=1)
            if self.strategy == "lock":
                return self._single_flight(key, args, kwargs)
            return self._recompute(key, args, kwargs)
        self.stats.add(hits=1, round_trips=1)
        if self.strategy == "xfetch" and self.should_refresh(delta_ms, remaining_ms):
            self.stats.add(early_refreshes=1)
            return self._recompute(key, args, kwargs)
        if self.strategy == "swr" and remaining_ms <= 0:
            self.stats.add(stale_served=1)
            self._refresh_in_background(key, args, kwargs)
        return value

    def should_refresh(self, delta_ms: float, remaining_ms: float) -> bool:
        """XFetch: refresh when `now - delta * beta * ln(rand) >= expiry`, i.e. `-delta*beta*ln(rand) >= left`."""
        return delta_ms * self.beta * -math.log(1.0 - random.random()) >= remaining_ms

    # -- the pieces ----------------------------------------------------------------------------------
    def _read(self, key: str, count: bool = True) -> tuple[bool, Any, float, float]:
        """One round trip, HMGET and PTTL: (found, value, recompute ms, ms left before the entry is no longer
        fresh). The time left is the key's TTL on the server's clock, less the stale window (swr)."""
        (raw, delta), ttl_ms = self._hmget_pttl(key)
        if count:
            self.stats.add(round_trips=1)
        if raw is None:
            return False, None, 0.0, 0.0
        return True, json.loads(raw), float(delta or 0), float(ttl_ms) - self.stale_ms

    def _hmget_pttl(self, key: str) -> tuple[list, int]:
        """HMGET v d and PTTL sent together on one connection, as a pipeline sends them, without building a
        pipeline object per hit (a cluster client, which has no single connection, uses a pipeline)."""
        pool = getattr(self.r, "connection_pool", None)
        if pool is None:
            with self.r.pipeline(transaction=False) as pipe:
                pipe.hmget(key, "v", "d")
                pipe.pttl(key)
                return tuple(pipe.execute())
        conn = pool.get_connection()
        try:
            return conn.retry.call_with_retry(lambda: _exchange(conn, (("HMGET", key, "v", "d"), ("PTTL", key))),
                                              lambda _error: conn.disconnect())
        finally:
            pool.release(conn)

    def _recompute(self, key: str, args: tuple, kwargs: dict) -> Any:
        started = time.perf_counter()
        value = self.fn(*args, **kwargs)
        delta_ms = (time.perf_counter() - started) * 1000
        self.stats.add(recomputes=1)
        self._write(key, value, delta_ms)
        return value

    def _write(self, key: str, value: Any, delta_ms: float) -> None:
        try:
            encoded = json.dumps(value)
        except TypeError as err:
            raise ConfigError(f"{self.name} returned a value that is not JSON-serialisable ({err}); "
                              "return plain data (dict, list, str, numbers, None).") from None
        ttl_ms = self.negative_ms if value is None else self.ttl_ms
        ttl_ms = max(1, int(ttl_ms * (1 + random.uniform(-self.jitter, self.jitter)))) if self.jitter else ttl_ms
        with self.r.pipeline() as pipe:  # MULTI/EXEC: the entry never exists without its TTL
            pipe.hset(key, mapping={"v": encoded, "d": f"{delta_ms:.3f}"})
            pipe.pexpire(key, ttl_ms + self.stale_ms)
            pipe.execute()
        self.stats.add(round_trips=1)

    def _single_flight(self, key: str, args: tuple, kwargs: dict) -> Any:
        """One client recomputes under a token lock; the others poll the cache until the value appears. A
        holder that hangs or dies keeps the lock only until `lock_ttl`: then ONE waiter takes it over (its
        SET NX wins) and the others go on waiting for that one's value."""
        lock_key, token = f"{key}:lock", secrets.token_hex(16)
        while True:
            if self.r.set(lock_key, token, nx=True, px=self.lock_ms):
                self.stats.add(round_trips=1)
                try:
                    found, value, _, _ = self._read(key)  # someone may have filled it meanwhile
                    return value if found else self._recompute(key, args, kwargs)
                finally:
                    self._release(keys=[lock_key], args=[token])
                    self.stats.add(round_trips=1)
            self.stats.add(lock_waits=1, round_trips=1)
            time.sleep(0.005)
            found, value, _, _ = self._read(key)
            if found:
                return value

    def _refresh_in_background(self, key: str, args: tuple, kwargs: dict) -> None:
        lock_key, token = f"{key}:lock", secrets.token_hex(16)
        if not self.r.set(lock_key, token, nx=True, px=self.lock_ms):
            return

        def refresh() -> None:
            try:
                found, _, _, remaining_ms = self._read(key)
                if not (found and remaining_ms > 0):  # another refresher may have finished meanwhile
                    self._recompute(key, args, kwargs)
            finally:
                self._release(keys=[lock_key], args=[token])

        threading.Thread(target=refresh, daemon=True).start()


def cached(r: redis.Redis, prefix: str, ttl: float, strategy: str = "xfetch", beta: float = 1.0,
           stale_ttl: float | None = None, lock_ttl: float = 5.0, jitter: float = 0.0,
           name: str | None = None, negative_ttl: float | None = None) -> Callable[[Callable], Cached]:
    """Decorate a function so its results are cached in `r` under `prefix` for `ttl` seconds.

    Entries are keyed `prefix:name:<sha256 of the bound arguments>`; `name` defaults to the function's
    module and qualified name (a lambda must be given one). With "lock", `lock_ttl` should exceed a
    recompute: a holder slower than that is taken over by one waiter. A result of None ("not found") is
    kept `negative_ttl` seconds (default: `ttl`); keep it short, so that a row created after the miss shows
    up soon.

    Example:
        >>> @cached(r, prefix="lab:l02:cache", ttl=60, strategy="xfetch")
        ... def product(pid): return db.fetch(pid)
        >>> product(7); product(7); product.stats.hits
        1
    """
    validate.one_of(strategy, "strategy", STRATEGIES)
    validate.seconds(ttl, "ttl")
    validate.number(beta, "beta", low=0, low_open=True)
    validate.seconds(lock_ttl, "lock_ttl")
    validate.number(jitter, "jitter", low=0, high=1, high_open=True)
    if stale_ttl is not None:
        validate.seconds(stale_ttl, "stale_ttl", allow_zero=True)
    if negative_ttl is not None:
        validate.seconds(negative_ttl, "negative_ttl")
    validate.prefix(prefix)
    stale = (ttl if stale_ttl is None else stale_ttl) if strategy == "swr" else 0.0

    if name is not None:
        validate.name(name, "name")

    def decorate(fn: Callable) -> Cached:
        return Cached(fn, r, prefix, ttl, strategy, beta, stale, lock_ttl, jitter, name, negative_ttl)

    return decorate
