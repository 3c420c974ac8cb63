"""labkit.ratelimit on a real server: behaviour, bad input, one round trip, reference models, concurrency."""

import dataclasses
import math
import multiprocessing
import random
import re
import threading
import time
import uuid

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.ratelimit import ALGORITHMS, GCRA, Decision, FixedWindow, SlidingLog, SlidingWindowCounter, TokenBucket
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
    if cls is SlidingWindowCounter:  # the full window counts in full at the next start: 863 ms, then 1/5 of 1 s
        assert denied.retry_after == 1.063 and denied.headers()["Retry-After"] == "2"
        assert denied.headers()["RateLimit"] == f'"{limiter.policy}";r=0;t=2'
    else:
        assert 0 < denied.retry_after <= 1.0 and denied.headers()["Retry-After"] == "1"
        assert denied.headers()["RateLimit"] == f'"{limiter.policy}";r=0;t=1'
    assert denied.headers("legacy")["RateLimit-Limit"] == "5" and denied.headers("legacy")["RateLimit-Remaining"] == "0"
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


# --- the response headers: the current IETF draft, and the older trio ------------------------------------
SF_POLICY = re.compile(r'^"[!#-\[\]-~ ]+";q=\d+(;w=\d+)?(;lab-burst=\d+)?$')  # a String item, Integer params (RFC 9651)
SF_LIMIT = re.compile(r'^"[!#-\[\]-~ ]+";r=\d+(;t=\d+)?$')


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_headers_follow_the_draft_fields(cls, r, ns):
    limiter = make(cls, r, ns.key("rl"))
    allowed = at_now(limiter, "alice", cost=2)
    headers = allowed.headers()
    assert set(headers) == {"RateLimit-Policy", "RateLimit"}  # no Retry-After on an admitted request
    assert SF_POLICY.match(headers["RateLimit-Policy"]) and SF_LIMIT.match(headers["RateLimit"]), headers
    if cls in WINDOWED:
        assert headers["RateLimit-Policy"] == f'"{limiter.policy}";q=5;w=1'  # 5 per second
        assert headers["RateLimit"] == f'"{limiter.policy}";r=3;t={math.ceil(allowed.reset_after)}'
    else:  # the sustained rate, the burst as a service-specific parameter, no t when admitted
        assert headers["RateLimit-Policy"] == f'"{limiter.policy}";q=5;w=1;lab-burst=5'
        assert headers["RateLimit"] == f'"{limiter.policy}";r=3'
    for _ in range(4):
        denied = at_now(limiter, "alice")
    denied_headers = denied.headers()
    assert not denied.allowed and SF_LIMIT.match(denied_headers["RateLimit"])
    t = int(denied_headers["RateLimit"].rsplit("t=", 1)[1])
    assert int(denied_headers["Retry-After"]) >= t >= 1  # the draft: Retry-After never ends before the window


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_headers_in_the_legacy_trio(cls, r, ns):
    limiter = make(cls, r, ns.key("rl"))
    decision = at_now(limiter, "alice", cost=5)
    assert decision.headers(style="legacy") == {"RateLimit-Limit": "5", "RateLimit-Remaining": "0",
                                                "RateLimit-Reset": str(math.ceil(decision.reset_after))}
    denied = at_now(limiter, "alice")
    assert set(denied.headers(style="legacy")) == {"RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
                                                   "Retry-After"}


def test_a_window_of_a_fraction_of_a_second_has_no_w(r, ns):
    assert SlidingLog(r, 5, 1.5, prefix=ns.key("rl")).allow("a").headers()["RateLimit-Policy"].endswith(";q=5")
    bucket, gcra = TokenBucket(r, 3, 10, prefix=ns.key("rl")), GCRA(r, 0.5, 10, prefix=ns.key("rl"))
    assert bucket.allow("a").headers()["RateLimit-Policy"].endswith(";q=10;lab-burst=10")
    assert gcra.allow("a").headers()["RateLimit-Policy"].endswith(";q=10;w=20;lab-burst=10")


def test_header_style_and_policy_names_are_checked():
    with pytest.raises(labkit.ConfigError, match="style must be one of draft, legacy"):
        Decision(True, 1, 0, 1, 2).headers("ietf")
    assert Decision(True, 1, 0, 1, 2, policy='a"b\\c').headers()["RateLimit"].startswith('"a\\"b\\\\c";')
    with pytest.raises(labkit.ConfigError, match="printable ASCII"):
        Decision(True, 1, 0, 1, 2, policy="é").headers()


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_allow_at_decides_on_the_given_clock(cls, r, ns):
    limiter = make(cls, r, ns.key("rl"))
    assert limiter.allow_at("alice", NOW_MS).now_ms == NOW_MS
    assert [limiter.allow_at("alice", NOW_MS).allowed for _ in range(5)] == [True] * 4 + [False]
    assert limiter.allow_at("alice", NOW_MS + 60_000).allowed  # a minute later, on that clock
    for bad in (None, -1, 1.5, "now", True):
        with pytest.raises(labkit.ConfigError, match="now_ms"):
            limiter.allow_at("alice", bad)


MINUTE_MS = 1_795_000_020_000  # the start of a clock-aligned minute: 15 s from here stay inside it


def both_limits_enforced(r, prefix: str) -> None:
    """Two fixed windows with different settings for one user, under one prefix: each keeps its own count."""
    per_second, per_minute = FixedWindow(r, 10, 1, prefix=prefix), FixedWindow(r, 100, 60, prefix=prefix)
    admitted = {"second": [], "minute": 0}
    for second in range(15):  # 15 requests in each of 15 seconds, each asked of both limiters
        now = MINUTE_MS + second * 1000
        admitted["second"].append(sum(per_second._decide("alice", 1, now).allowed for _ in range(15)))
        admitted["minute"] += sum(per_minute._decide("alice", 1, now).allowed for _ in range(15))
    assert admitted["second"] == [10] * 15 and admitted["minute"] == 100


def test_a_user_under_10_per_second_and_100_per_minute_gets_both(r, ns):
    both_limits_enforced(r, ns.key("rl"))


def admitted_alone_and_together(r, ns, build):
    """For the limiters `build(prefix)` makes: what each admits of the same arrivals alone under its own
    prefix, and together with the others under one prefix."""
    alone = dict(enumerate(build(None)))
    together = dict(enumerate(build(ns.key("rl", "shared"))))
    counts = {"alone": dict.fromkeys(alone, 0), "together": dict.fromkeys(alone, 0)}
    for step in range(60):
        now = NOW_MS + step * 50
        for i in alone:
            counts["alone"][i] += alone[i]._decide("alice", 1, now).allowed
            counts["together"][i] += together[i]._decide("alice", 1, now).allowed
    return counts["alone"], counts["together"]


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_limiters_with_other_settings_on_one_prefix_keep_separate_state(cls, r, ns):
    def build(prefix):
        settings = [(5, 1.0), (8, 2.0), (5, 2.0)]  # another limit, another period, both
        return [make(cls, r, prefix or ns.key("rl", f"alone-{i}"), limit=limit, per=per)
                for i, (limit, per) in enumerate(settings)]

    alone, together = admitted_alone_and_together(r, ns, build)
    assert together == alone


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


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_on_a_cluster_each_user_is_one_slot_and_users_spread_over_the_primaries(cls, rc):
    limiter = make(cls, rc, f"lab:cluster:{uuid.uuid4().hex[:8]}")
    assert [at_now(limiter, "alice").allowed for _ in range(7)] == [True] * 5 + [False] * 2
    assert at_now(limiter, "bob").allowed and at_now(limiter, "alice", cost=1).retry_after > 0
    assert len({rc.keyslot(k) for k in limiter.keys("alice")}) == 1  # a multi-key script: one slot
    users = [f"user-{i}" for i in range(30)]
    assert all(at_now(limiter, u).allowed for u in users)
    assert len({rc.get_node_from_key(limiter.keys(u)[0]).name for u in users}) == 3
    assert all(rc.exists(limiter.keys(u)[0]) for u in users)


def test_on_a_cluster_a_user_under_10_per_second_and_100_per_minute_gets_both(rc):
    both_limits_enforced(rc, f"lab:cluster:{uuid.uuid4().hex[:8]}")


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
        self.state = new_tat  # stored with %.17g: exactly
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


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_retry_after_is_exactly_when_a_retry_is_admitted(cls, r, ns):
    """After any denial, the same request `retry_after` later is admitted, and 2 ms earlier it is not: a client
    honouring Retry-After is never refused again, and is not told to wait longer than needed. Seeded random
    histories (gaps 0-300 ms, costs 1-3) on an injected clock; each denial is retried and the history goes on."""
    rnd = random.Random(2024)
    limiter = make(cls, r, ns.key("rl"), limit=10, per=1.0)
    denials = 0
    for history in range(60):
        key, now = f"h{history}", NOW_MS + rnd.randrange(1000)
        for _ in range(rnd.randrange(5, 40)):
            now += rnd.choice([0, 1, 5, 20, 100, 300])
            cost = rnd.choice([1, 1, 1, 2, 3])
            decision = limiter._decide(key, cost, now)
            if decision.allowed:
                continue
            denials += 1
            wait_ms = round(decision.retry_after * 1000)
            assert wait_ms >= 1, (history, now, cost)
            if wait_ms > 2:  # a denial writes no count, so probing early does not change the history
                assert not limiter._decide(key, cost, now + wait_ms - 2).allowed, (history, now, cost, wait_ms)
            assert limiter._decide(key, cost, now + wait_ms).allowed, (history, now, cost, wait_ms)
            now += wait_ms
    assert denials >= 50  # the histories do reach the limit, often


def test_a_clock_that_goes_back_never_takes_tokens(r, ns):
    """An NTP step or a failover to a primary whose clock is behind: the bucket refills nothing, and owes nothing."""
    bucket = TokenBucket(r, 10, 10, prefix=ns.key("rl"))
    assert all(bucket._decide("u", 1, NOW_MS + 1000).allowed for _ in range(10))
    behind = bucket._decide("u", 1, NOW_MS)  # the clock 1 s behind
    assert not behind.allowed and behind.remaining == 0 and behind.retry_after == 0.1
    assert bucket._decide("u", 1, NOW_MS + 1100).allowed  # 100 ms after the last decision: one token


def test_gcra_and_the_token_bucket_decide_alike_at_a_rate_of_whole_ms_fractions(r, ns):
    """At 3 units a second (333.33 ms per unit) GCRA keeps its TAT exactly, so it decides as the bucket does."""
    rnd = random.Random(11)
    gcra, bucket = GCRA(r, 3, 5, prefix=ns.key("rl")), TokenBucket(r, 3, 5, prefix=ns.key("rl"))
    now, differ = NOW_MS, []
    for i in range(1500):
        now += rnd.choice([0, 1, 50, 120, 333, 334, 700])
        cost = rnd.choice([1, 1, 2])
        a, b = gcra._decide("u", cost, now).allowed, bucket._decide("u", cost, now).allowed
        if a != b:
            differ.append(i)
    assert differ == []


def test_a_sliding_log_denial_drops_entries_that_left_the_window_and_records_nothing(r, ns):
    log = SlidingLog(r, 10, 1.0, prefix=ns.key("rl"))
    entries = log.keys("u")[0]
    assert all(log._decide("u", 1, NOW_MS).allowed for _ in range(3))
    assert all(log._decide("u", 1, NOW_MS + 600).allowed for _ in range(7))
    assert not log._decide("u", 5, NOW_MS + 1100).allowed  # 7 still inside, 7 + 5 > 10
    assert r.zcard(entries) == 7  # the three from NOW_MS left the window and the denial's trim removed them



def test_a_sliding_log_keeps_one_key_and_counts_every_unit_of_a_large_cost(r, ns):
    log = SlidingLog(r, 2000, 1.0, prefix=ns.key("rl"))
    [entries] = log.keys("u")
    assert log._decide("u", 1, NOW_MS).allowed and log._decide("u", 1234, NOW_MS).allowed  # ZADD in chunks
    assert r.zcard(entries) == 1235 and r.keys(ns.key("rl") + "*") == [entries]
    assert log._decide("u", 765, NOW_MS).remaining == 0 and not log._decide("u", 1, NOW_MS).allowed


def test_a_sliding_log_member_taken_before_a_clock_went_back_is_not_reused(r, ns):
    """Members are "<now>:<n>", n counting on from the entries in the window: after a trim and a clock that
    went back, the next n can name an entry that exists; that unit must still be counted (a new member)."""
    log = SlidingLog(r, 3, 1.0, prefix=ns.key("rl"))
    [entries] = log.keys("u")
    for now in (NOW_MS, NOW_MS, NOW_MS + 900, NOW_MS + 1500):  # the last trims both NOW_MS entries
        assert log._decide("u", 1, now).allowed
    assert r.zcard(entries) == 2  # NOW_MS+900 -> "...:3" and NOW_MS+1500 -> "...:2"
    assert log._decide("u", 1, NOW_MS + 900).allowed  # the clock went back: n = 3 again, taken
    assert r.zcard(entries) == 3 and not log._decide("u", 1, NOW_MS + 900).allowed

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


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_a_decision_is_one_evalsha_of_a_script_loaded_once(cls):
    """Scripts are registered once per client and called by their SHA1: after the first decision loaded it,
    every decision is one EVALSHA, never an EVAL (which would send the whole script each time)."""
    with spawn(modules=False) as srv:
        r = srv.client()
        limiter = make(cls, r, "rl", limit=1000)
        limiter.allow("alice")
        r.config_resetstat()
        for user in ("alice", "bob") * 10:
            make(cls, r, "rl", limit=1000).allow(user)  # a limiter per request, as a handler might make one
        calls = {name: stats["calls"] for name, stats in r.info("commandstats").items()}
        assert calls.get("cmdstat_evalsha") == 20 and "cmdstat_eval" not in calls
        assert "cmdstat_script|load" not in calls and "cmdstat_script" not in calls


@pytest.mark.parametrize("cls", ALGORITHMS)
@pytest.mark.parametrize("decode", [True, False])
def test_a_decision_is_the_frozen_dataclass_built_the_usual_way(cls, r, ns, decode):
    """The hot path fills a Decision's fields at once (`ratelimit._decision`): the result equals, hashes
    and prints as the one its constructor makes, stays frozen, and reads alike from a client without
    decode_responses (bytes replies)."""
    client = r if decode else labkit.clients.derive(r, decode_responses=False)
    limiter = make(cls, client, ns.key("rl"))
    made = [at_now(limiter, "alice", cost=5), at_now(limiter, "alice")]
    assert [d.allowed for d in made] == [True, False]
    for d in made:
        usual = Decision(d.allowed, d.remaining, d.retry_after, d.reset_after, d.limit, d.now_ms, d.policy,
                         d.window, d.burst)
        assert d == usual and hash(d) == hash(usual) and repr(d) == repr(usual)
        assert (d.limit, d.now_ms, d.policy, d.window) == (5, NOW_MS, limiter.policy, 1.0)
        assert d.burst == (0 if cls in WINDOWED else 5) and isinstance(d.remaining, int)
        with pytest.raises(dataclasses.FrozenInstanceError):
            d.allowed = True
    if not decode:
        client.close()


@pytest.mark.parametrize("cls", ALGORITHMS)
def test_a_string_another_program_left_under_a_key_is_a_clear_error(cls, r, ns):
    """WRONGTYPE where the algorithm keeps a hash or a sorted set; GCRA keeps a string, and says the one it
    found is not its timestamp (not a Lua error about a nil in math.max). The next decision is right."""
    limiter = make(cls, r, ns.key("rl"))
    for key in limiter.keys("alice"):
        r.set(key, "notanumber")
    says = r"holds a string that is not a timestamp in ms" if cls is GCRA else r"^WRONGTYPE"
    with pytest.raises(redis.ResponseError, match=says):
        at_now(limiter, "alice")
    assert at_now(limiter, "bob").remaining == 4
