"""The lesson 04 module (`labkit.lessons.l04_rate_limiting`): each check accepts the reference answer and rejects the
known-wrong ones."""

import time

from labkit.lessons import l04_rate_limiting as lesson

SLIDING_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
local seq = redis.call('HINCRBY', KEYS[1] .. ':seq', 'n', 1)
redis.call('ZADD', KEYS[1], now, now .. ':' .. seq)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1] .. ':seq', ARGV[2])
return 1
"""


def test_sliding_log_accepts_the_atomic_script(r, ns):
    script = r.register_script(SLIDING_LUA)
    result = lesson.check_sliding_log(r, ns, lambda r, key, limit, ms: bool(script(keys=[key], args=[limit, ms])))
    assert result, result.message
    assert ns.keys(r) == []


def test_sliding_log_rejects_count_then_add_across_round_trips(r, ns):
    import uuid

    def count_then_add(r, key, limit, ms):
        now = time.time() * 1000
        r.zremrangebyscore(key, "-inf", now - ms)
        if r.zcard(key) < limit:
            r.zadd(key, {uuid.uuid4().hex: now})
            r.pexpire(key, ms)
            return True
        return False

    result = lesson.check_sliding_log(r, ns, count_then_add)
    assert not result and "one atomic step" in result.message
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
    result = lesson.check_sliding_log(r, ns, lambda r, key, limit, ms: bool(script(keys=[key], args=[limit, ms])))
    assert not result and "no expiry" in result.message


def test_sliding_log_reports_an_error_without_hanging_the_other_threads(r, ns):
    def broken(r, key, limit, ms):
        raise ValueError("typo in the script")

    result = lesson.check_sliding_log(r, ns, broken)
    assert not result and "typo in the script" in result.message
