"""Suite `ratelimit`: each of labkit's limiters next to the `limits` library's nearest strategy, decisions per
second with 50 users in turn, and round trips per decision."""

from __future__ import annotations

import functools
import statistics
from collections.abc import Callable

from labkit.bench.core import Row, cycling, rate_row, side_by_side_rounds
from labkit.clients import options
from labkit.server.process import Server

SUITE = "ratelimit"
BASELINE = "limits moving window"  # the baseline of the round-trip metric
USERS = [f"user-{i}" for i in range(50)]
PER_MINUTE = (100, 1_000_000)  # most requests refused, then none: the sliding logs grow during the run
# labkit's limiter -> the `limits` strategy nearest to it (`limits` has no token bucket or GCRA: its sliding
# window counter is the other smooth limiter in constant memory)
NEAREST = {"fixed window": "fixed window", "sliding log": "moving window",
           "sliding window counter": "sliding window counter", "token bucket": "sliding window counter",
           "GCRA": "sliding window counter"}


def _theirs(server: Server, per_minute: int) -> dict[str, Callable[[str], object]]:
    """One decision for a user of each `limits` strategy, at `per_minute`."""
    from limits import parse
    from limits.storage import RedisStorage
    from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter, SlidingWindowCounterRateLimiter

    # its client with labkit's timeouts and no retry, as labkit's own limiters have: the same terms
    storage, item = RedisStorage(server.url.removesuffix("/0"), **options()), parse(f"{per_minute}/minute")
    strategies = {"fixed window": FixedWindowRateLimiter, "moving window": MovingWindowRateLimiter,
                  "sliding window counter": SlidingWindowCounterRateLimiter}
    return {name: functools.partial(cls(storage).hit, item) for name, cls in strategies.items()}


def _ours(server: Server, per_minute: int) -> dict[str, Callable[[str], object]]:
    """One decision for a user of each labkit limiter, at `per_minute` (a burst of that many for the rate
    limiters)."""
    from labkit import ratelimit

    r, windowed = server.client(), (ratelimit.FixedWindow, ratelimit.SlidingLog, ratelimit.SlidingWindowCounter)
    limiters = {cls.algorithm: cls(r, per_minute, 60, prefix="bench") if cls in windowed
                else cls(r, per_minute / 60, per_minute, prefix="bench") for cls in ratelimit.ALGORITHMS}
    return {name: limiter.allow for name, limiter in limiters.items()}


def _round_trips(server: Server, decide: Callable[[], object], n: int = 51) -> float:
    """Requests the server read during one call of `decide` (each INFO that measures counts itself once,
    subtracted): the median of `n` calls, so that a stray read (a connection's handshake, another client)
    does not move it."""
    r = server.client()
    decide()  # connections opened and scripts loaded before counting
    counts = []
    for _ in range(n):
        before = r.info("stats")["total_reads_processed"]
        decide()
        counts.append(r.info("stats")["total_reads_processed"] - before - 1)
    return float(statistics.median(counts))


def _pair_rows(server: Server, per_minute: int, reps: int) -> list[Row]:
    """Each labkit limiter timed in turns with its nearest `limits` strategy (the baseline), on an empty
    keyspace, each side deciding for the 50 users in the same order. Each turn makes one untimed decision
    first (`settle`): the windows fill twice as fast as the timed decisions alone would fill them, for both
    sides alike."""
    rows: list[Row] = []
    theirs, ours = _theirs(server, per_minute), _ours(server, per_minute)
    r = server.client()
    for algorithm, peer in NEAREST.items():
        r.flushdb()  # a server of our own: every pair starts from an empty keyspace
        calls = {f"limits {peer}": cycling(theirs[peer], USERS), f"labkit {algorithm}": cycling(ours[algorithm], USERS)}
        for name, timed in side_by_side_rounds(calls, reps=reps, settle=1).items():
            rows.append(rate_row(SUITE, f"decisions, {per_minute:,}/min, 50 users: {algorithm}", name, timed,
                                 "decisions/s", baseline=name.startswith("limits")))
    return rows


def run(seconds: float = 1.0) -> list[Row]:
    """Decisions per second (from median latencies, each pair timed in turns): each labkit limiter next to
    the `limits` library's nearest strategy (the baseline), 50 users in turn, at 100 and at 1,000,000 per
    minute; then round trips per decision, against `limits`' moving window."""
    rows: list[Row] = []
    with Server(modules=False) as server:
        for per_minute in PER_MINUTE:
            rows += _pair_rows(server, per_minute, reps=int(2000 * seconds))
        theirs, ours = _theirs(server, PER_MINUTE[-1]), _ours(server, PER_MINUTE[-1])
        contenders = {BASELINE: theirs["moving window"]} | {f"labkit {name}": d for name, d in ours.items()}
        for name, decide in contenders.items():
            rows.append(Row(SUITE, "round trips per decision", name, _round_trips(server, lambda d=decide: d("bench")),
                            "round trips", name == BASELINE))
    return rows
