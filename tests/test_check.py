"""Each exercise check accepts the reference answer and rejects the known-wrong ones."""

import contextlib
import time

import pytest

from labkit import check
from labkit.vectors import knn


def test_greeting_accepts_the_reference_answer(r, ns):
    r.set(ns.key("greeting"), "hello", ex=60)
    result = check.greeting(r, ns.key("greeting"))
    assert result and "expiring in" in str(result)


def test_greeting_rejects_missing_key(r, ns):
    result = check.greeting(r, ns.key("greeting"))
    assert not result and "there is no key" in result.message


def test_greeting_rejects_no_ttl(r, ns):
    r.set(ns.key("greeting"), "hello")
    result = check.greeting(r, ns.key("greeting"))
    assert not result and "never expires" in result.message


def test_greeting_rejects_milliseconds_given_as_seconds(r, ns):
    r.set(ns.key("greeting"), "hello", ex=60_000)
    result = check.greeting(r, ns.key("greeting"))
    assert not result and "EX takes seconds" in result.message


def test_greeting_rejects_wrong_value_and_says_both_problems(r, ns):
    r.set(ns.key("greeting"), "Hello!")
    result = check.greeting(r, ns.key("greeting"))
    assert not result and "expected 'hello'" in result.message and "never expires" in result.message


def test_result_renders_for_notebooks():
    assert check.Result(True, "fine")._repr_markdown_().startswith("**✅ Correct**")
    assert str(check.Result(False, "no")).startswith("❌ not yet")


# --- lesson 01: leaderboard ---------------------------------------------------------------------------
def top_n_reference(r, key, n):
    rows = r.zrange(key, 0, n - 1, desc=True, withscores=True)
    return [(i + 1, member, score) for i, (member, score) in enumerate(rows)]


def test_leaderboard_accepts_the_reference(r, ns):
    assert check.leaderboard(r, ns, top_n_reference)
    assert ns.keys(r) == []


def test_leaderboard_rejects_ascending_order(r, ns):
    def ascending(r, key, n):
        return [(i + 1, m, s) for i, (m, s) in enumerate(r.zrange(key, 0, n - 1, withscores=True))]

    result = check.leaderboard(r, ns, ascending)
    assert not result and "highest score first" in result.message


def test_leaderboard_rejects_inclusive_stop_off_by_one(r, ns):
    def one_too_many(r, key, n):
        return [(i + 1, m, s) for i, (m, s) in enumerate(r.zrevrange(key, 0, n, withscores=True))]

    result = check.leaderboard(r, ns, one_too_many)
    assert not result and "inclusive" in result.message


def test_leaderboard_rejects_zero_based_ranks(r, ns):
    def zero_based(r, key, n):
        return [(i, m, s) for i, (m, s) in enumerate(r.zrevrange(key, 0, n - 1, withscores=True))]

    result = check.leaderboard(r, ns, zero_based)
    assert not result and "count from 1" in result.message


# --- lesson 01: daily visitors ------------------------------------------------------------------------
def record_visit_hll(r, ns, day, user):
    r.pfadd(ns.key("visitors", day), user)


def unique_visitors_hll(r, ns, day):
    return r.pfcount(ns.key("visitors", day))


def test_daily_visitors_accepts_hyperloglog(r, ns):
    result = check.daily_visitors(r, ns, record_visit_hll, unique_visitors_hll)
    assert result, result.message
    assert ns.keys(r) == []


def test_daily_visitors_rejects_counting_visits(r, ns):
    result = check.daily_visitors(r, ns, lambda r, ns, day, user: r.incr(ns.key("visits", day)),
                                  lambda r, ns, day: int(r.get(ns.key("visits", day))))
    assert not result and "counts visits, not visitors" in result.message


def test_daily_visitors_rejects_one_counter_for_all_days(r, ns):
    result = check.daily_visitors(r, ns, lambda r, ns, day, user: r.pfadd(ns.key("visitors"), user),
                                  lambda r, ns, day: r.pfcount(ns.key("visitors")))
    assert not result and "keep one counter per day" in result.message


def test_daily_visitors_rejects_an_exact_set(r, ns):
    result = check.daily_visitors(r, ns, lambda r, ns, day, user: r.sadd(ns.key("visitors", day), user),
                                  lambda r, ns, day: r.scard(ns.key("visitors", day)))
    assert not result and "a Set grows" in result.message
    assert ns.keys(r) == []


# --- lesson 01: tag query -----------------------------------------------------------------------------
def test_tag_query_accepts_sinter(r, ns):
    assert check.tag_query(r, ns, lambda r, ns, tags: r.sinter([ns.key("tag", t) for t in tags]))
    assert ns.keys(r) == []


def test_tag_query_rejects_sunion(r, ns):
    result = check.tag_query(r, ns, lambda r, ns, tags: r.sunion([ns.key("tag", t) for t in tags]))
    assert not result and "ANY of the tags" in result.message


def test_tag_query_rejects_only_the_first_tag(r, ns):
    result = check.tag_query(r, ns, lambda r, ns, tags: r.smembers(ns.key("tag", tags[0])))
    assert not result and "expected" in result.message


def test_tag_query_rejects_wrong_key_names(r, ns):
    result = check.tag_query(r, ns, lambda r, ns, tags: r.sinter([f"tag:{t}" for t in tags]))
    assert not result


def test_daily_visitors_says_what_to_do_when_nothing_is_recorded(r, ns):
    result = check.daily_visitors(r, ns, lambda *a: None, lambda r, ns, day: 0)
    assert not result and "add users with PFADD" in result.message


# --- lesson 03: touch -----------------------------------------------------------------------------
TOUCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', redis.call('TIME')[1])
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""


def test_touch_accepts_the_reference_script(r, ns):
    script = r.register_script(TOUCH_LUA)
    result = check.touch_session(r, ns, lambda r, key, ms: bool(script(keys=[key], args=[ms])))
    assert result, result.message
    assert ns.keys(r) == []


def test_touch_accepts_expire_reply_without_writing_missing(r, ns):
    def touch(r, key, ms):
        return bool(r.pexpire(key, ms))  # PEXPIRE on a missing key writes nothing and returns False

    assert check.touch_session(r, ns, touch)


def test_touch_rejects_trusting_hset_reply(r, ns):
    def touch(r, key, ms):
        new_fields = r.hset(key, "last_seen", "1")
        r.pexpire(key, ms)
        return new_fields == 1

    result = check.touch_session(r, ns, touch)
    assert not result and "HSET returns how many fields are NEW" in result.message
    assert "half session" in result.message


def test_touch_rejects_the_half_session_writer(r, ns):
    def touch(r, key, ms):
        r.hset(key, "last_seen", "1")
        r.pexpire(key, ms)
        return True

    result = check.touch_session(r, ns, touch)
    assert not result and "half session" in result.message and "returned True, expected False" in result.message
    assert ns.keys(r) == []


# --- lesson 04: the sliding-log script ---------------------------------------------------------------
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
    result = check.sliding_log(r, ns, lambda r, key, limit, ms: bool(script(keys=[key], args=[limit, ms])))
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

    result = check.sliding_log(r, ns, count_then_add)
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

    result = check.sliding_log(r, ns, str_time_members)
    assert not result and "got more than 4 requests through" in result.message


def test_sliding_log_rejects_a_key_without_expiry(r, ns):
    script = r.register_script(SLIDING_LUA.replace("redis.call('PEXPIRE', KEYS[1], ARGV[2])", ""))
    result = check.sliding_log(r, ns, lambda r, key, limit, ms: bool(script(keys=[key], args=[limit, ms])))
    assert not result and "no expiry" in result.message


# --- lesson 02: XFetch and single flight ------------------------------------------------------------
def test_xfetch_accepts_the_reference():
    import math

    result = check.xfetch(lambda now, expiry, delta, beta, rand: now - delta * beta * math.log(rand) >= expiry)
    assert result, result.message


def test_xfetch_rejects_the_version_that_never_fires():
    import math

    result = check.xfetch(lambda now, expiry, delta, beta, rand: now + delta * beta * math.log(rand) >= expiry)
    assert not result and "never refreshes early" in result.message


def test_xfetch_rejects_a_constant_early_window():
    result = check.xfetch(lambda now, expiry, delta, beta, rand: now >= expiry - delta * beta * 0.1)
    assert not result


def reference_get_or_compute(r, key, compute, lock_ttl_ms):
    import secrets

    release = r.register_script(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")
    token = secrets.token_hex(8)
    while True:
        value = r.get(key)
        if value is not None:
            return value
        if r.set(key + ":lock", token, nx=True, px=lock_ttl_ms):
            try:
                value = r.get(key)  # filled while we waited for the lock?
                if value is None:
                    value = compute()
                    r.set(key, value, ex=60)
                return value
            finally:
                release(keys=[key + ":lock"], args=[token])
        time.sleep(0.005)


def test_single_flight_accepts_the_reference(r, ns):
    result = check.single_flight(r, ns, reference_get_or_compute)
    assert result, result.message
    assert ns.keys(r) == []


def test_single_flight_rejects_a_lock_without_a_token(r, ns):
    def plain_delete(r, key, compute, lock_ttl_ms):
        while True:
            value = r.get(key)
            if value is not None:
                return value
            if r.set(key + ":lock", "1", nx=True, px=lock_ttl_ms):
                try:
                    value = r.get(key)
                    if value is None:
                        value = compute()
                        r.set(key, value, ex=60)
                    return value
                finally:
                    r.delete(key + ":lock")  # whoever holds it now
            time.sleep(0.005)

    result = check.single_flight(r, ns, plain_delete)
    assert not result and "deleted a lock another client held" in result.message


def test_single_flight_rejects_no_reread_after_the_lock(r, ns):
    def no_reread(r, key, compute, lock_ttl_ms):
        import secrets

        token = secrets.token_hex(8)
        value = r.get(key)
        if value is not None:
            return value
        while not r.set(key + ":lock", token, nx=True, px=lock_ttl_ms):
            time.sleep(0.005)
        try:
            value = compute()  # computes again even if a previous holder already filled the cache
            r.set(key, value, ex=60)
            return value
        finally:
            if r.get(key + ":lock") == token:
                r.delete(key + ":lock")

    result = check.single_flight(r, ns, no_reread)
    assert not result and "read the cache again" in result.message


# --- lesson 05 -------------------------------------------------------------------------------------
def _resync_right(feed, seen):
    snapshot = feed.online()
    seen.clear()
    seen.update(snapshot)


def test_presence_accepts_a_replacing_resync(r, ns):
    assert check.presence(r, ns, _resync_right)


def test_presence_rejects_no_resync(r, ns):
    result = check.presence(r, ns, lambda feed, seen: None)
    assert not result and "missed erin" in result.message


def test_presence_rejects_an_add_only_resync(r, ns):
    result = check.presence(r, ns, lambda feed, seen: seen.update(feed.online()))
    assert not result and "still shows bob" in result.message and "missed erin" not in result.message


@pytest.fixture(scope="module")
def own_server():
    from labkit.server import spawn

    with spawn() as srv:
        yield srv.client()


@pytest.mark.parametrize("flags", ["Ex", "xE"])
def test_expired_events_accepts_keyevent_expired_only(own_server, flags):
    assert check.expired_events(own_server, flags)
    assert own_server.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""


@pytest.mark.parametrize(("flags", "says"), [
    ("KEA", "also published"),  # everything: works, but floods
    ("Kx", "no expired event"),  # keyspace channels only
    ("x", "no expired event"),  # no channel class at all
    ("", "no expired event"),
    ("Eg", "no expired event"),
    ("Z", "refused"),
])
def test_expired_events_rejects_the_wrong_flags(own_server, flags, says):
    result = check.expired_events(own_server, flags)
    assert not result and says in result.message


# --- lesson 06 -------------------------------------------------------------------------------------
def _consume_right(r, stream, group, consumer, handle):
    done = []
    for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
        try:
            handle(entry_id, fields)
            done.append(entry_id)
        except Exception:
            pass
    if done:
        r.xack(stream, group, *done)


def test_ack_after_success_accepts_the_reference(r, ns):
    assert check.ack_after_success(r, ns, _consume_right)


def test_ack_after_success_rejects_acking_first(r, ns):
    def ack_first(r, stream, group, consumer, handle):
        for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
            r.xack(stream, group, entry_id)
            with contextlib.suppress(Exception):
                handle(entry_id, fields)

    result = check.ack_after_success(r, ns, ack_first)
    assert not result and "was acknowledged: it is lost" in result.message


def test_ack_after_success_rejects_never_acking(r, ns):
    def never_ack(r, stream, group, consumer, handle):
        for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
            with contextlib.suppress(Exception):
                handle(entry_id, fields)

    result = check.ack_after_success(r, ns, never_ack)
    assert not result and "still pending" in result.message


def test_ack_after_success_rejects_letting_the_error_escape(r, ns):
    def no_catch(r, stream, group, consumer, handle):
        for entry_id, fields in r.xreadgroup(group, consumer, {stream: ">"}, count=10)[0][1]:
            handle(entry_id, fields)
            r.xack(stream, group, entry_id)

    result = check.ack_after_success(r, ns, no_catch)
    assert not result and "raised ValueError" in result.message


def _reclaim_right(r, stream, group, consumer, min_idle_ms):
    cursor, ids = "0-0", []
    while True:
        cursor, entries, _ = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms, start_id=cursor)
        ids += [entry_id for entry_id, _ in entries]
        if cursor == "0-0":
            return ids


def test_reclaim_all_accepts_following_the_cursor(r, ns):
    assert check.reclaim_all(r, ns, _reclaim_right)


def test_reclaim_all_rejects_a_single_call(r, ns):
    def once(r, stream, group, consumer, min_idle_ms):
        return [i for i, _ in r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms)[1]]

    result = check.reclaim_all(r, ns, once)
    assert not result and "at most COUNT" in result.message


def test_reclaim_all_rejects_unpacking_two_elements(r, ns):
    def two(r, stream, group, consumer, min_idle_ms):
        _cursor, entries = r.xautoclaim(stream, group, consumer, min_idle_time=min_idle_ms)
        return [i for i, _ in entries]

    result = check.reclaim_all(r, ns, two)
    assert not result and "three elements" in result.message


# --- lesson 08 -------------------------------------------------------------------------------------
def _release_right(r, key, token):
    return bool(r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                       "return 0", 1, key, token))


def test_safe_release_accepts_a_script(r, ns):
    assert check.safe_release(r, ns, _release_right)


def test_safe_release_rejects_a_plain_delete(r, ns):
    result = check.safe_release(r, ns, lambda r, key, token: bool(r.delete(key)))
    assert not result and "held by someone else" in result.message


def test_safe_release_rejects_get_then_delete(r, ns):
    def two_steps(r, key, token):
        if r.get(key) == token:
            return bool(r.delete(key))
        return False

    result = check.safe_release(r, ns, two_steps)
    assert not result and "Lua script" in result.message


def _validity_right(acquired, nodes, elapsed_ms, ttl_ms):
    left = ttl_ms - elapsed_ms - (ttl_ms * 0.01 + 2)
    return left if acquired >= nodes // 2 + 1 and left > 0 else 0


def test_redlock_validity_accepts_the_reference():
    assert check.redlock_validity(_validity_right)


@pytest.mark.parametrize(("wrong", "says"), [
    (lambda a, n, e, t: max(0, t - e - (t * 0.01 + 2)) if a >= 2 else 0, "hard-coded"),
    (lambda a, n, e, t: max(0, t - e - (t * 0.01 + 2)) if a >= n / 2 else 0, "strict majority"),
    (lambda a, n, e, t: t - (t * 0.01 + 2) if a >= n // 2 + 1 else 0, "time spent acquiring"),
    (lambda a, n, e, t: t - e - (t * 0.01 + 2) if a >= n // 2 + 1 else 0, "never a negative"),
    (lambda a, n, e, t: t - e if a >= n // 2 + 1 else 0, "drift"),
])
def test_redlock_validity_rejects_the_usual_mistakes(wrong, says):
    result = check.redlock_validity(wrong)
    assert not result and says in result.message


# --- lesson 07 -------------------------------------------------------------------------------------
def _topic_right(r, index, vector, topic, k):
    return [h.key for h in knn(r, index, vector, k=k, filter=f"@topic:{{{topic}}}")]


def test_topic_knn_accepts_a_prefiltered_knn(r, ns):
    assert check.topic_knn(r, ns, _topic_right)


def test_topic_knn_rejects_filtering_after_the_knn(r, ns):
    def post_filter(r, index, vector, topic, k):
        hits = knn(r, index, vector, k=k, return_fields=("topic",))
        return [h.key for h in hits if h.fields["topic"] == topic]

    result = check.topic_knn(r, ns, post_filter)
    assert not result and "instead of 5" in result.message


def test_topic_knn_rejects_farthest_first(r, ns):
    result = check.topic_knn(r, ns, lambda *a: _topic_right(*a)[::-1])
    assert not result and "wrong order" in result.message


def test_topic_knn_explains_a_query_without_dialect_2(r, ns):
    def dialect_1(r, index, vector, topic, k):
        reply = r.execute_command("FT.SEARCH", index, f"(@topic:{{{topic}}})=>[KNN {k} @embedding $vec]",
                                  "PARAMS", 2, "vec", vector.tobytes())
        return [row["id"] for row in reply["results"]] if isinstance(reply, dict) else reply[1::2]

    result = check.topic_knn(r, ns, dialect_1)
    assert not result and "DIALECT 2" in result.message


def _lookup(r, index, vector, min_similarity, accept):
    hits = knn(r, index, vector, k=1, return_fields=("text",))
    return hits[0].fields["text"] if hits and accept(hits[0].distance, min_similarity) else None


def test_similarity_lookup_accepts_distance_below_one_minus_similarity(r, ns):
    assert check.similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d <= 1 - s))


def test_similarity_lookup_rejects_the_score_taken_as_a_similarity(r, ns):
    result = check.similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d >= s))
    assert not result and "orthogonal" in result.message


def test_similarity_lookup_rejects_the_similarity_used_as_the_distance_cut(r, ns):
    result = check.similarity_lookup(r, ns, lambda r, i, v, s: _lookup(r, i, v, s, lambda d, s: d <= s))
    assert not result and "paraphrases got a different answer" in result.message
