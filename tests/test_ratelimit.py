"""labkit.ratelimit on a real server: behaviour, bad input, one round trip, reference models, concurrency."""

import multiprocessing
import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.ratelimit import ALGORITHMS, GCRA, FixedWindow, SlidingLog, SlidingWindowCounter, TokenBucket
from labkit.server import spawn

WINDOWED = (FixedWindow, SlidingLog, SlidingWindowCounter)
NOW_MS = 1_795_000_000_137  # an injected server clock: no window boundary or refill can fall mid-test


def at_now(limiter, key, cost=1):
    """`limiter.allow(key, cost)` with the clock fixed at NOW_MS (the scripts' ARGV[4], for tests)."""
    return limiter._decide(key, cost, NOW_MS)


def make(cls, r, prefix, limit=5, per=1.0):
    """`limit` units per `per` seconds, in each family's own terms."""
    if cls in WINDOWED:
        return cls(r, limit, per, prefix=prefix)
    return cls(r, limit / per if per > 0 else per, limit, prefix=prefix)


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_admits_the_limit_then_refuses_with_a_wait(cls, r, ns):
    limiter = make(cls, r, ns.key("rl"))
    decisions = [at_now(limiter, "alice") for _ in range(7)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 2
    assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
    denied = decisions[-1]
    assert 0 < denied.retry_after <= 1.0 and denied.headers()["Retry-After"] == "1"
    assert denied.headers()["RateLimit-Limit"] == "5" and denied.headers()["RateLimit-Remaining"] == "0"
    assert at_now(limiter, "bob").allowed  # keys are independent


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_every_key_it_writes_expires(cls, r, ns):
    limiter = make(cls, r, ns.key("rl"))
    limiter.allow("alice", cost=3)
    written = [k for k in limiter.keys("alice") if r.exists(k)]
    assert written and all(0 < ttl <= 2000 or ttl == -2 for ttl in map(r.pttl, written))  # -2: expired already


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_cost_counts_several_units(cls, r, ns):
    limiter = make(cls, r, ns.key("rl"))
    assert at_now(limiter, "a", cost=4).remaining == 1
    assert not at_now(limiter, "a", cost=2).allowed and at_now(limiter, "a", cost=1).allowed


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_bad_input_is_a_clear_error(cls, r):
    for bad in ({"limit": 0}, {"limit": -1}, {"limit": 2.5}, {"per": 0}, {"per": -1}):
        with pytest.raises(labkit.ConfigError):
            make(cls, r, "rl", **bad)
    limiter = make(cls, r, "rl")
    for cost in (0, -1, 6, 1.5):
        with pytest.raises(labkit.ConfigError, match="cost must be"):
            limiter.allow("k", cost=cost)
    with pytest.raises(labkit.ConfigError, match="key must be"):
        limiter.allow("")


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_one_round_trip_per_decision(cls):
    with spawn(modules=False) as srv:
        r = srv.client()
        limiter = make(cls, r, "rl")
        limiter.allow("warm-up")  # loads the script
        before = r.info("stats")["total_reads_processed"]
        for _ in range(10):
            limiter.allow("k")
        assert r.info("stats")["total_reads_processed"] - before - 1 == 10


# --- reference models: the same algorithms in plain Python, fed the same clock ------------------------
def lua_number(x: float) -> float:
    """What Lua 5.1's tostring() keeps of a number stored as a string (14 significant digits)."""
    return float(f"{x:.14g}")


class Model:
    def __init__(self, limit, window_ms):
        self.limit, self.w, self.state = limit, window_ms, None


class FixedWindowModel(Model):
    def allow(self, now, cost):
        start = now - now % self.w
        used = self.state[1] if self.state and self.state[0] == start else 0
        if used + cost > self.limit:
            return False
        self.state = (start, used + cost)
        return True


class SlidingLogModel(Model):
    def allow(self, now, cost):
        self.state = [t for t in (self.state or []) if t > now - self.w]
        if len(self.state) + cost > self.limit:
            return False
        self.state += [now] * cost
        return True


class SlidingWindowCounterModel(Model):
    def allow(self, now, cost):
        start = now - now % self.w
        cur = prev = 0
        if self.state and self.state[0] == start:
            cur, prev = self.state[1], self.state[2]
        elif self.state and self.state[0] == start - self.w:
            prev = self.state[1]
        if prev * ((self.w - (now - start)) / self.w) + cur + cost > self.limit:
            return False
        self.state = (start, cur + cost, prev)
        return True


class TokenBucketModel(Model):
    def allow(self, now, cost):
        per = self.w / self.limit
        tokens = self.limit if self.state is None else min(self.limit, self.state[0] + (now - self.state[1]) / per)
        if tokens < cost:
            return False
        self.state = (lua_number(tokens - cost), now)
        return True


class GCRAModel(Model):
    def allow(self, now, cost):
        per = self.w / self.limit
        tat = max(self.state if self.state is not None else now, now)
        new_tat = tat + cost * per
        if now < new_tat - self.limit * per:
            return False
        self.state = lua_number(new_tat)
        return True


MODELS = {FixedWindow: FixedWindowModel, SlidingLog: SlidingLogModel,
          SlidingWindowCounter: SlidingWindowCounterModel, TokenBucket: TokenBucketModel, GCRA: GCRAModel}
arrivals = st.lists(st.tuples(st.integers(0, 400), st.integers(1, 3)), min_size=1, max_size=40)


@pytest.mark.parametrize("cls", ALGORITHMS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals=arrivals, limit=st.integers(3, 8))
def test_matches_a_reference_model_on_random_arrivals(cls, r, ns, arrivals, limit):
    limiter = make(cls, r, ns.key("rl"), limit=limit, per=1.0)
    model = MODELS[cls](limit, 1000)
    key, now = uuid.uuid4().hex, 1_795_000_000_000 + 137
    for gap, cost in arrivals:
        now += gap
        assert limiter._decide(key, cost, now).allowed == model.allow(now, cost), (gap, cost, now)


# --- concurrency: several threads AND processes, the server's clock, the invariant each promises ------
LIMIT, WINDOW_S, RUN_S = 20, 0.2, 1.0


def hammer(url: str, cls_name: str, prefix: str, start, out, kind: str) -> None:
    """One client: once every client is ready (the `start` barrier), ask as fast as it can for RUN_S
    seconds; report the admitted server times."""
    import labkit.ratelimit as rl

    r = labkit.server.lab.client_for(url)
    limiter = make(getattr(rl, cls_name), r, prefix, limit=LIMIT, per=WINDOW_S)
    admitted = []
    r.ping()
    start.wait(120)  # however long the spawned processes took to start, on a busy machine
    until = time.monotonic() + RUN_S
    while time.monotonic() < until:
        decision = limiter.allow("shared")
        if decision.allowed:
            admitted.append(decision.now_ms)
    out.put((kind, admitted))


def check_invariant(cls, times: list[int]) -> None:
    w = int(WINDOW_S * 1000)
    times.sort()
    if cls in (FixedWindow, SlidingWindowCounter):  # never more than the limit in one clock-aligned window
        per_window: dict[int, int] = {}
        for t in times:
            per_window[t // w] = per_window.get(t // w, 0) + 1
        assert max(per_window.values()) <= LIMIT
    if cls is SlidingLog:  # never more than the limit in ANY window of length W
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:i + LIMIT + 1] if u < t + w) <= LIMIT
    if cls in (TokenBucket, GCRA):  # burst + rate x elapsed (1 ms of clock granularity each side)
        rate = LIMIT / w
        for i in range(len(times)):
            for j in range(i, min(len(times), i + 3 * LIMIT)):
                assert j - i + 1 <= LIMIT + rate * (times[j] - times[i] + 2)


@pytest.mark.slow
@pytest.mark.parametrize("cls", ALGORITHMS)
def test_invariant_holds_under_threads_and_processes(cls, r, ns):
    url = r.connection_pool.connection_kwargs
    url = f"redis://:{url['password']}@{url['host']}:{url['port']}/0"
    prefix = ns.key("rl", cls.__name__)
    ctx = multiprocessing.get_context("spawn")  # (fork() from a process with threads may deadlock)
    results, start = ctx.Queue(), ctx.Barrier(8)  # threads and processes begin together
    args = (url, cls.__name__, prefix, start, results)
    workers = [threading.Thread(target=hammer, args=(*args, "thread")) for _ in range(4)]
    workers += [ctx.Process(target=hammer, args=(*args, "process")) for _ in range(4)]
    for w in workers:
        w.start()
    reports = [results.get(timeout=180) for _ in workers]
    for w in workers:
        w.join(10)
    admitted = [t for _, times in reports for t in times]
    assert sum(len(times) for kind, times in reports if kind == "process") > 0  # the processes took part
    assert len(admitted) >= LIMIT * RUN_S / WINDOW_S * 0.5  # the limiter admitted a real load...
    check_invariant(cls, admitted)  # ...and never more than it promises
