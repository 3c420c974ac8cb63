"""Five rate limiters, each answering `allow(key, cost)` in one round trip with a Lua script that reads the
server's clock (so client clocks cannot matter) and sets an expiry on every key it writes.

Window limiters take `(r, limit, window)`: at most `limit` units per `window` seconds. Rate limiters take
`(r, rate, burst)`: `rate` units per second on average, up to `burst` at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from labkit import scripts, validate
from labkit.errors import ConfigError


@dataclass(frozen=True)
class Decision:
    """The answer to one request: admitted or not, units left, seconds to wait, seconds to a full reset."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    limit: int
    now_ms: int = 0  # the server's clock when it decided

    def __bool__(self) -> bool:
        return self.allowed

    def headers(self) -> dict[str, str]:
        """HTTP headers in the IETF RateLimit draft style, plus Retry-After when denied."""
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(math.ceil(self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class Limiter:
    """Shared plumbing: validation, keys, the script call. Subclasses set `script` and `_args`."""

    script = ""
    algorithm = ""
    slug = ""

    def __init__(self, r: redis.Redis, limit: int, prefix: str) -> None:
        self.limit = validate.integer(limit, f"{type(self).__name__}: the limit/burst")
        self.r, self.prefix = r, validate.prefix(prefix)
        self._script = scripts.register(r, self.script)

    def keys(self, key: str) -> list[str]:
        """The keys this limiter keeps for `key`: named by algorithm AND settings, so limiters with other
        settings under one prefix (10/s and 100/min for one user) never share a count; hash-tagged by
        `key`, so a limiter's keys share a cluster slot."""
        return [f"{self.prefix}:{self.slug}:{self._settings()}:{{{key}}}"]

    def _settings(self) -> str:
        raise NotImplementedError

    def allow(self, key: str, cost: int = 1) -> Decision:
        """Admit `cost` units for `key` now, or say how long to wait. One round trip."""
        return self._decide(key, cost, None)

    def _decide(self, key: str, cost: int, now_ms: int | None) -> Decision:
        validate.name(key, "key")
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1 or cost > self.limit:
            raise ConfigError(f"cost must be an integer from 1 to the limit ({self.limit}), got {cost!r}.")
        args = [*self._args(), cost] + ([now_ms] if now_ms is not None else [])
        allowed, remaining, retry_ms, reset_ms, server_now = self._script(keys=self.keys(key), args=args)
        return Decision(bool(allowed), int(remaining), retry_ms / 1000, reset_ms / 1000, self.limit, int(server_now))

    def _args(self) -> list[int | float]:
        raise NotImplementedError


class _WindowLimiter(Limiter):
    def __init__(self, r: redis.Redis, limit: int, window: float, prefix: str = "ratelimit") -> None:
        self.window_ms = validate.milliseconds_from_seconds(window, "window")
        super().__init__(r, limit, prefix)

    def _args(self) -> list[int | float]:
        return [self.limit, self.window_ms]

    def _settings(self) -> str:
        return f"{self.limit}/{self.window_ms}ms"


class FixedWindow(_WindowLimiter):
    """Count units per clock-aligned window; cheap, but up to 2x the limit across a window boundary."""

    script, algorithm, slug = "ratelimit/fixed_window", "fixed window", "fw"


class SlidingLog(_WindowLimiter):
    """One entry per admitted unit; exact: never more than `limit` in any `window`. Memory grows with the limit."""

    script, algorithm, slug = "ratelimit/sliding_log", "sliding log", "log"

    def keys(self, key: str) -> list[str]:
        base = super().keys(key)[0]
        return [base, base + ":seq"]


class SlidingWindowCounter(_WindowLimiter):
    """Two counters, the previous window weighted by its overlap; close to exact in constant memory."""

    script, algorithm, slug = "ratelimit/sliding_window_counter", "sliding window counter", "swc"


class _RateLimiter(Limiter):
    def __init__(self, r: redis.Redis, rate: float, burst: int, prefix: str = "ratelimit") -> None:
        self.rate = validate.number(rate, "rate (units per second)", low=0, low_open=True)
        self.ms_per_unit = 1000 / self.rate
        super().__init__(r, burst, prefix)

    def _args(self) -> list[int | float]:
        return [self.limit, self.ms_per_unit]

    def _settings(self) -> str:
        return f"{self.rate!r}/s,burst{self.limit}"


class TokenBucket(_RateLimiter):
    """A bucket of `burst` tokens refilled at `rate` per second; bursts up to `burst`, then the rate."""

    script, algorithm, slug = "ratelimit/token_bucket", "token bucket", "tb"


class GCRA(_RateLimiter):
    """Token-bucket behaviour from one timestamp per key (the theoretical arrival time)."""

    script, algorithm, slug = "ratelimit/gcra", "GCRA", "gcra"


ALGORITHMS = (FixedWindow, SlidingLog, SlidingWindowCounter, TokenBucket, GCRA)
