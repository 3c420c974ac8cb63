"""The lesson 04 module (`labkit.lessons.l04_rate_limiting`): each check accepts the reference answer and rejects the
known-wrong ones; the replays, the state readers and the outage experiment measure what the lesson says."""

import time
import uuid

import pytest

from labkit.lessons import l04_rate_limiting as lesson
from labkit.ratelimit import GCRA, FixedWindow, SlidingLog, SlidingWindowCounter, TokenBucket
from labkit.server import spawn

SLIDING_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], now, now .. ':' .. seq)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
"""
BUILT_INSIDE = SLIDING_LUA.replace("KEYS[2]", "KEYS[1] .. ':seq'")  # the old reference: a key built in the script


def reference(script):
    return lambda r, key, limit, ms: bool(script(keys=[key, key + ":seq"], args=[limit, ms]))


def test_sliding_log_accepts_the_atomic_script_given_every_key(r, ns):
    result = lesson.check_sliding_log(r, ns, reference(r.register_script(SLIDING_LUA)))
    assert result, result.message
    assert ns.keys(r) == []


ONE_KEY_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local used = redis.call('ZCARD', KEYS[1])
if used >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now, now .. ':' .. used)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def test_sliding_log_accepts_one_key_whose_members_count_on_from_zcard(r, ns):
    script = r.register_script(ONE_KEY_LUA)  # the way the exercise names second, as labkit's SlidingLog does
    result = lesson.check_sliding_log(r, ns, lambda r, key, limit, ms: bool(script(keys=[key], args=[limit, ms])))
    assert result, result.message
    assert ns.keys(r) == []


def test_sliding_log_rejects_a_key_built_inside_the_script(r, ns):
    script = r.register_script(BUILT_INSIDE)
    result = lesson.check_sliding_log(r, ns, lambda r, key, limit, ms: bool(script(keys=[key], args=[limit, ms])))
    assert not result and "a key it never sent" in result.message and ":{probe}:seq" in result.message
    assert "got more than" not in result.message  # otherwise right: only the keys are wrong
    assert ns.keys(r) == []


def test_sliding_log_rejects_count_then_add_across_round_trips(r, ns):
    def count_then_add(r, key, limit, ms):
        now = time.time() * 1000
        r.zremrangebyscore(key, "-inf", now - ms)
        if r.zcard(key) < limit:
            r.zadd(key, {uuid.uuid4().hex: now})
            r.pexpire(key, ms)
            return True
        return False

    result = lesson.check_sliding_log(r, ns, count_then_add)
    assert not result and "one atomic step" in result.message and "never sent" not in result.message
    assert ns.keys(r) == []


def test_sliding_log_rejects_timestamp_members(r, ns):
    def str_time_members(r, key, limit, ms):
        now = time.time() * 1000
        member = str(round(time.time(), 1))  # a coarse clock: simultaneous requests share a member
        with r.pipeline() as pipe:
            pipe.zremrangebyscore(key, "-inf", now - ms)
            pipe.zadd(key, {member: now})
            pipe.zcard(key)
            pipe.pexpire(key, ms)
            count = pipe.execute()[2]
        return count <= limit

    result = lesson.check_sliding_log(r, ns, str_time_members)
    assert not result and "got more than 4 requests through" in result.message


def test_sliding_log_rejects_a_key_without_expiry(r, ns):
    script = r.register_script(SLIDING_LUA.replace("redis.call('PEXPIRE', KEYS[1], ARGV[2])", ""))
    result = lesson.check_sliding_log(r, ns, reference(script))
    assert not result and "no expiry" in result.message


def test_sliding_log_rejects_a_log_that_never_slides(r, ns):
    trim = "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))"
    script = r.register_script(SLIDING_LUA.replace(trim, ""))
    result = lesson.check_sliding_log(r, ns, reference(script))
    assert not result and "does not slide" in result.message
    assert ns.keys(r) == []


def test_sliding_log_rejects_a_log_that_resets_instead_of_sliding(r, ns):
    reset_when_the_oldest_leaves = """local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if oldest[2] and tonumber(oldest[2]) <= now - tonumber(ARGV[2]) then redis.call('DEL', KEYS[1]) end"""
    script = r.register_script(SLIDING_LUA.replace(
        "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))", reset_when_the_oldest_leaves))
    result = lesson.check_sliding_log(r, ns, reference(script))
    assert not result and "forgot a live entry" in result.message


def test_sliding_log_rejects_a_sequence_key_that_never_expires(r, ns):
    script = r.register_script(SLIDING_LUA.replace("redis.call('PEXPIRE', KEYS[2], ARGV[2])", ""))
    result = lesson.check_sliding_log(r, ns, reference(script))
    assert not result and ":{probe}:seq': -1" in result.message and "not within the window" in result.message
    assert ns.keys(r) == []


def test_sliding_log_rejects_a_window_in_seconds(r, ns):
    in_seconds = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local seq = redis.call('INCR', KEYS[2])
redis.call('ZADD', KEYS[1], now, now .. ':' .. seq)
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
"""
    result = lesson.check_sliding_log(r, ns, reference(r.register_script(in_seconds)))
    assert not result and "not the server's time in ms" in result.message and "does not slide" in result.message
    assert "not within the window" in result.message


def test_sliding_log_rejects_the_clients_clock(r, ns):
    script = r.register_script(SLIDING_LUA.replace(
        "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)",
        "local now = tonumber(ARGV[3])"))
    assert "ARGV[3]" in script.script

    def client_clock(r, key, limit, ms):
        return bool(script(keys=[key, key + ":seq"], args=[limit, ms, int(time.time() * 1000)]))

    result = lesson.check_sliding_log(r, ns, client_clock)
    assert not result and "a time of the client's clock" in result.message
    assert "does not slide" not in result.message and "got more than" not in result.message  # otherwise right


def test_sliding_log_reports_an_error_without_hanging_the_other_threads(r, ns):
    def broken(r, key, limit, ms):
        raise ValueError("typo in the script")

    result = lesson.check_sliding_log(r, ns, broken)
    assert not result and "typo in the script" in result.message
    assert ns.keys(r) == []


def test_four_processes_race_and_the_script_admits_exactly_the_limit(r, ns):
    users = [ns.key("race", u) for u in range(20)]
    prefix = ns.key("rl")

    def atomic(client, key):
        return SlidingLog(client, 2, 60, prefix=prefix).allow(key).allowed

    assert lesson.race_processes(lesson.url_of(r), atomic, users) == 40  # 4 app servers x 20 users, 2 each
    assert lesson.race_processes(lesson.url_of(r), lambda client, key: True, users, processes=3) == 60


def test_the_burst_profile_counts_a_burst_of_twice_the_limit(r, ns):
    profile = lesson.burst_profile(SlidingLog(r, 10, 1.0, prefix=ns.key("rl")))
    assert profile["admitted"] == 10 and 0 < profile["retry_after"] <= 1.0 and profile["bytes"] > 0
    bucket = lesson.burst_profile(TokenBucket(r, 10.0, 10, prefix=ns.key("rl")))
    assert 10 <= bucket["admitted"] <= 10 + bucket["refill allowance"]


# -- replays on an injected clock ------------------------------------------------------------------------
def build(r, ns):
    prefix = ns.key("rl")
    return {FixedWindow: FixedWindow(r, 10, 1.0, prefix=prefix), SlidingLog: SlidingLog(r, 10, 1.0, prefix=prefix),
            SlidingWindowCounter: SlidingWindowCounter(r, 10, 1.0, prefix=prefix),
            TokenBucket: TokenBucket(r, 10.0, 10, prefix=prefix), GCRA: GCRA(r, 10.0, 10, prefix=prefix)}


def test_only_the_sliding_log_stays_within_the_limit_in_every_window(r, ns):
    most = {cls: lesson.most_in_any_window(lesson.replay(limiter, "u", lesson.bursty_arrivals()), 1000)
            for cls, limiter in build(r, ns).items()}
    assert most[SlidingLog] == 10
    assert all(most[cls] > 10 for cls in (FixedWindow, SlidingWindowCounter, TokenBucket, GCRA)), most
    assert most[FixedWindow] <= 20 and most[TokenBucket] <= 20  # 2 windows; a burst plus a second's refill


def test_state_readers_follow_each_algorithm(r, ns):
    for cls, limiter in build(r, ns).items():
        points = lesson.replay(limiter, f"pic-{cls.__name__}", lesson.picture_arrivals())
        levels = [p.level for p in points]
        assert min(levels) >= 0 and max(levels) <= 10 + 1e-9, (cls, levels)
        first_burst = points[:15]
        assert [p.allowed for p in first_burst] == [True] * 10 + [False] * 5, cls
        expected_after_10 = 0 if cls is TokenBucket else 10  # tokens left, or units used
        assert first_burst[9].level == pytest.approx(expected_after_10), cls
        assert points[-12].allowed  # after the silence, the last burst starts with a pass


def test_most_in_any_window_counts_windows_starting_anywhere():
    points = [lesson.StatePoint(t, ok, 0) for t, ok in [(0, True), (900, True), (950, True), (1899, True),
                                                         (1900, False), (1950, True)]]
    assert lesson.most_in_any_window(points, 1000) == 3  # 900, 950, 1899 (and 950, 1899, 1950)
    assert lesson.most_in_any_window(points, 100) == 2


def test_a_fast_client_clock_trims_live_entries(r, ns):
    log = SlidingLog(r, 10, 1.0, prefix=ns.key("rl"))
    admitted = {skew: lesson.skewed_pair(log, f"skew-{skew}", skew) for skew in (0, 200, 300, 400)}
    assert admitted == {0: 10, 200: 10, 300: 16, 400: 20}


def test_bursty_arrivals_are_seeded():
    assert lesson.bursty_arrivals() == lesson.bursty_arrivals() != lesson.bursty_arrivals(seed=5)


# -- fail open, fail closed ------------------------------------------------------------------------------
def test_a_paused_server_fails_open_or_closed_within_the_timeout():
    with spawn(modules=False) as srv:
        client = srv.client(socket_timeout=0.1, socket_connect_timeout=0.1)
        limiter = SlidingLog(client, 3, 60, prefix="rl")
        assert [lesson.guarded_allow(limiter, "u", fail_open=False)[0] for _ in range(4)] == [True] * 3 + [False]
        srv.pause()
        try:
            opened = lesson.during_outage(limiter, "w", 4, fail_open=True)
            closed = lesson.during_outage(limiter, "v", 4, fail_open=False)
        finally:
            srv.resume()
        assert (opened.admitted, opened.errors, closed.admitted, closed.errors) == (4, 4, 0, 4)
        assert all(0.05 <= o.median_s < 0.18 for o in (opened, closed))  # one 0.1 s timeout each: no retry
        # the first timed-out request was on the wire: it ran when the server resumed; the rest were never sent
        assert (client.zcard(limiter.keys("w")[0]), client.zcard(limiter.keys("v")[0])) == (1, 0)
        assert lesson.guarded_allow(limiter, "v", fail_open=False) == (True, None)  # back once it resumes
        client.close()


def test_a_replay_stalled_every_time_gives_up_instead_of_reading_expired_state(r, ns, monkeypatch):
    monkeypatch.setattr(lesson, "STALL_S", -1)  # every pause counts as a stall
    with pytest.raises(RuntimeError, match="stalled every replay"):
        lesson.replay(SlidingLog(r, 10, 1.0, prefix=ns.key("rl")), "u", [0, 10, 20])
