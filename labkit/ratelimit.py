"""Five rate limiters, each answering `allow(key, cost)` in one round trip with a Lua script that reads the
server's clock (so client clocks cannot matter) and sets an expiry on every key it writes.

Window limiters take `(r, limit, window)`: at most `limit` units per `window` seconds. Rate limiters take
`(r, rate, burst)`: `rate` units per second on average, up to `burst` at once.

`Decision.headers()` gives the response headers of the IETF draft "RateLimit header fields for HTTP"
(draft-ietf-httpapi-ratelimit-headers-11, May 2026: `RateLimit-Policy` and `RateLimit`), or the older
`RateLimit-Limit`/`-Remaining`/`-Reset` trio of its drafts up to 06 (`style="legacy"`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from labkit import scripts, validate
from labkit.errors import ConfigError

HEADER_STYLES = ("draft", "legacy")


@dataclass(frozen=True)
class Decision:
    """The answer to one request: admitted or not, units left, seconds to wait before asking again
    (`retry_after`, 0 when admitted), and seconds until the limiter frees quota (`reset_after`: the end of
    the window for the window counters, the oldest entry's exit for the sliding log, a full bucket for
    the rate limiters)."""

    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    limit: int
    now_ms: int = 0  # the server's clock when it decided
    policy: str = "default"  # the limiter's name in the RateLimit headers
    window: float = 0.0  # the seconds `limit` applies to (a burst's refill time for the rate limiters)
    burst: int = 0  # the rate limiters' bucket size (0 for the window limiters)

    def __bool__(self) -> bool:
        return self.allowed

    def headers(self, style: str = "draft") -> dict[str, str]:
        """The HTTP response headers for this decision, with Retry-After (whole seconds, at least 1) when
        denied.

        `style="draft"`: `RateLimit-Policy: "<policy>";q=<limit>;w=<window s>` (w only for a whole number of
        seconds: the draft has no fractions) and `RateLimit: "<policy>";r=<remaining>;t=<s>`, t being the
        effective window (`reset_after`, or the wait when denied, so that Retry-After never ends before it).
        For the token bucket and GCRA, q/w is the sustained rate (a burst's worth per refill time); a full
        bucket admits its burst on top of what refills, which the draft's q cannot say, so the policy adds a
        service-specific parameter `lab-burst=<burst>` (the draft asks for a prefix on such parameters), and
        an admitted decision sends no t (optional): within any t they admit r plus what refills, not r.
        `style="legacy"`: `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (seconds).
        """
        validate.one_of(style, "style", HEADER_STYLES)
        remaining = max(0, self.remaining)
        wait = max(1, math.ceil(self.retry_after))
        if style == "legacy":
            headers = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(remaining),
                       "RateLimit-Reset": str(math.ceil(self.reset_after))}
        else:
            name = _sf_string(self.policy)
            whole = float(self.window).is_integer() and self.window >= 1
            policy = f"{name};q={self.limit}" + (f";w={int(self.window)}" if whole else "")
            t = (f";t={wait}" if not self.allowed else "" if self.burst else f";t={math.ceil(self.reset_after)}")
            headers = {"RateLimit-Policy": policy + (f";lab-burst={self.burst}" if self.burst else ""),
                       "RateLimit": f"{name};r={remaining}{t}"}
        if not self.allowed:
            headers["Retry-After"] = str(wait)
        return headers


def _decision(allowed: bool, remaining: int, retry_after: float, reset_after: float, now_ms: int,
              settings: dict) -> Decision:
    """`Decision(...)` for a limiter's hot path: the frozen dataclass's generated `__init__` sets each of
    its nine fields with a call of `object.__setattr__` (about 1 us a decision, measured); this fills its
    `__dict__` at once. Equal to the Decision built the usual way (tested)."""
    decision = object.__new__(Decision)
    decision.__dict__.update(settings, allowed=allowed, remaining=remaining, retry_after=retry_after,
                             reset_after=reset_after, now_ms=now_ms)
    return decision


def _sf_string(value: str) -> str:
    """`value` as a Structured Field String (RFC 9651): quoted, with backslash and quote escaped."""
    if not value.isascii() or not value.isprintable():
        raise ConfigError(f"A policy name must be printable ASCII, got {value!r}.")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Limiter:
    """Shared plumbing: validation, keys, the script call. Subclasses set `script` and `_args`."""

    script = ""
    algorithm = ""
    slug = ""

    def __init__(self, r: redis.Redis, limit: int, prefix: str) -> None:
        self.limit = validate.integer(limit, f"{type(self).__name__}: the limit/burst")
        self.r, self.prefix = r, validate.prefix(prefix)
        self._script = scripts.register(r, self.script)
        # what every decision repeats, made once (a limiter's settings do not change after it is made): the
        # keys' common head, the script's leading arguments, and the settings every Decision carries
        self._key_head = f"{self.prefix}:{self.slug}:{self._settings()}:{{"
        self._policy = f"{self.slug}-{self._settings()}"
        self._settings_args = tuple(self._args())
        self._decision_settings = {"limit": self.limit, "policy": self._policy, "window": self.window,
                                   "burst": self.limit if isinstance(self, _RateLimiter) else 0}

    def keys(self, key: str) -> list[str]:
        """The keys this limiter keeps for `key`: named by algorithm AND settings, so limiters with other
        settings under one prefix (10/s and 100/min for one user) never share a count; hash-tagged by
        `key`, so a limiter's keys share a cluster slot."""
        return [self._key_head + key + "}"]

    def _settings(self) -> str:
        raise NotImplementedError

    @property
    def policy(self) -> str:
        """This limiter's name in the RateLimit headers: its algorithm and settings, as in its keys."""
        return self._policy

    @property
    def window(self) -> float:
        """The seconds `limit` applies to."""
        raise NotImplementedError

    def allow(self, key: str, cost: int = 1) -> Decision:
        """Admit `cost` units for `key` now, or say how long to wait. One round trip."""
        return self._decide(key, cost, None)

    def allow_at(self, key: str, now_ms: int, cost: int = 1) -> Decision:
        """`allow`, deciding as if the server's clock read `now_ms` (ms since the epoch): for tests and for
        replaying arrivals. A service calls `allow`: trusting the clocks of the callers is the mistake that
        lesson 04 measures."""
        return self._decide(key, cost, validate.integer(now_ms, "now_ms", minimum=0))

    def _decide(self, key: str, cost: int, now_ms: int | None) -> Decision:
        # the hot path: no lists built, no formatting, the Decision filled in one step (see _decision)
        if not isinstance(key, str) or not key:
            validate.name(key, "key")
        if not isinstance(cost, int) or isinstance(cost, bool) or cost < 1 or cost > self.limit:
            raise ConfigError(f"cost must be an integer from 1 to the limit ({self.limit}), got {cost!r}.")
        key = self._key_head + key + "}"
        if now_ms is None:
            reply = self._script.on_key(key, *self._settings_args, cost)
        else:
            reply = self._script.on_key(key, *self._settings_args, cost, now_ms)
        # the script's reply is one string of five integers: the smallest reply that carries the decision
        allowed, remaining, retry_ms, reset_ms, server_now = reply.split()
        return _decision(allowed == "1" or allowed == b"1", int(remaining), int(retry_ms) / 1000,
                         int(reset_ms) / 1000, int(server_now), self._decision_settings)

    def _args(self) -> list[int | float]:
        raise NotImplementedError


class _WindowLimiter(Limiter):
    def __init__(self, r: redis.Redis, limit: int, window: float, prefix: str = "ratelimit") -> None:
        self.window_ms = validate.milliseconds_from_seconds(window, "window")
        super().__init__(r, limit, prefix)

    @property
    def window(self) -> float:
        return self.window_ms / 1000

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


class SlidingWindowCounter(_WindowLimiter):
    """Two counters, the previous window weighted by its overlap; close to exact in constant memory."""

    script, algorithm, slug = "ratelimit/sliding_window_counter", "sliding window counter", "swc"


class _RateLimiter(Limiter):
    def __init__(self, r: redis.Redis, rate: float, burst: int, prefix: str = "ratelimit") -> None:
        self.rate = validate.number(rate, "rate (units per second)", low=0, low_open=True)
        self.ms_per_unit = 1000 / self.rate
        super().__init__(r, burst, prefix)

    @property
    def window(self) -> float:
        return self.limit / self.rate  # the time a whole burst takes to refill

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
