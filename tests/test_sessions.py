"""labkit.sessions against a real server: expiry, the absolute cap, touch, rotation, log out everywhere."""

import hashlib
import threading
import time

import pytest
import redis
from redis.crc import key_slot

import labkit
from labkit.server import spawn
from labkit.sessions import SessionStore, load_library, new_id, user_tag

from .faults import crash_before, hooked_client


@pytest.fixture
def store(r, ns):
    return SessionStore(r, ttl=60, absolute_ttl=3600, prefix=ns.key("session"))


def test_create_and_get(store, r):
    sid = store.create("user42", theme="dark", cart=3)
    session = store.get(sid)
    assert session.user_id == "user42" and session.data == {"theme": "dark", "cart": "3"}
    assert session.created == session.last_seen and session.deadline - session.created == 3_600_000
    assert 50_000 < r.pttl(store.key(sid)) <= 60_000  # the idle minute (less any stall), not the hour
    assert r.sismember(store.user_key("user42"), sid)


def test_touch_refreshes_an_existing_session_and_says_so(store, r):
    sid = store.create("u")
    r.pexpire(store.key(sid), 1000)
    assert store.touch(sid) is True
    assert r.pttl(store.key(sid)) > 50_000  # the idle minute again, not the second it had


def test_touch_on_a_missing_session_returns_false_and_creates_nothing(store, r):
    ghost = store.new_id("u")
    assert store.touch(ghost) is False
    assert r.exists(store.key(ghost)) == 0


def server_ms(r) -> int:
    seconds, micros = r.time()
    return seconds * 1000 + micros // 1000


def test_idle_expiry_ends_an_untouched_session(r, ns):
    store = SessionStore(r, ttl=0.3, absolute_ttl=60, prefix=ns.key("session"))
    idle = store.create("u")
    left = r.pttl(store.key(idle))
    assert 0 < left <= 300 or left == -2  # the idle TTL (or past it already, after a stall), not the minute
    deadline = time.monotonic() + 10
    while store.get(idle) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.get(idle) is None and r.exists(store.key(idle)) == 0


def near_its_cap(r, store, sid, left_ms):
    """Move the session's absolute deadline (a field of its hash) to `left_ms` from now on the server clock,
    as if it had been created `absolute_ttl` ago less that: no waiting out a real lifetime. Returns it."""
    deadline = server_ms(r) + left_ms
    r.hset(store.key(sid), "deadline", deadline)
    return deadline


def test_the_absolute_cap_ends_a_session_touched_all_the_time(r, ns):
    """Touched every 50 ms with an idle TTL of a minute, only the cap can end it (no stall can)."""
    store = SessionStore(r, ttl=60, absolute_ttl=3600, prefix=ns.key("session"))
    busy = store.create("u")
    deadline, give_up = near_its_cap(r, store, busy, 1000), time.monotonic() + 30
    while store.touch(busy) and time.monotonic() < give_up:
        time.sleep(0.05)
    assert server_ms(r) >= deadline  # it ended at its deadline, not before
    assert store.get(busy) is None and r.exists(store.key(busy)) == 0


def test_the_cap_bounds_the_ttl_a_touch_gives(r, ns):
    store = SessionStore(r, ttl=60, absolute_ttl=3600, prefix=ns.key("session"))
    sid = store.create("u")
    near_its_cap(r, store, sid, 10_000)
    assert store.touch(sid)
    assert 0 < r.pttl(store.key(sid)) <= 10_000  # what is left before the cap, not the idle minute


def test_update_existing_only_and_never_the_managed_fields(store, r):
    sid = store.create("u")
    assert store.update(sid, theme="light") is True and store.get(sid).data["theme"] == "light"
    ghost = store.new_id("u")
    assert store.update(ghost, theme="x") is False and r.exists(store.key(ghost)) == 0
    with pytest.raises(labkit.ConfigError, match="managed by the store"):
        store.update(sid, user_id="admin")


def test_rotate_moves_the_session_and_kills_the_old_id(store, r):
    sid = store.create("u", theme="dark")
    fresh = store.rotate(sid)
    assert fresh != sid and store.get(sid) is None and store.get(fresh).data == {"theme": "dark"}
    assert store.sessions_of("u") == [fresh]
    assert store.rotate(store.new_id("u")) is None and store.rotate(new_id()) is None


def test_invalidate_and_log_out_everywhere(store):
    ids = [store.create("alice") for _ in range(3)]
    other = store.create("bob")
    assert store.invalidate(ids[0]) is True and store.invalidate(ids[0]) is False
    assert store.invalidate_user("alice") == 2
    assert all(store.get(i) is None for i in ids) and store.get(other) is not None
    assert store.invalidate_user("nobody") == 0


def test_a_session_rotated_during_log_out_everywhere_is_logged_out_too(r, store):
    """A rotation between the index read and the delete moves a session to an id the delete was not given:
    `invalidate_user` reads again and deletes it."""
    ids = [store.create("alice") for _ in range(2)]
    rotated = []

    def rotate_between(n):
        if n == 2:  # after the index read (SMEMBERS), before the delete script
            rotated.append(store.rotate(ids[0]))

    racing = SessionStore(hooked_client(r, rotate_between), ttl=60, absolute_ttl=3600, prefix=store.prefix)
    try:
        assert racing.invalidate_user("alice") == 2
    finally:
        racing.r.close()
    assert rotated[0] is not None and store.get(rotated[0]) is None
    assert all(store.get(i) is None for i in ids) and store.sessions_of("alice") == []


def test_the_tag_is_keyed_so_a_cookie_cannot_be_tested_against_a_user_id(r, ns):
    """The tag is an HMAC of the user id: stores sharing a secret agree on it (so they share the index), and
    without the secret it is not the user id's plain hash."""
    users = [f"user{i}" for i in range(20)]
    a, b = (SessionStore(r, prefix=ns.key("s"), tag_secret=secret) for secret in ("one", "one"))
    other = SessionStore(r, prefix=ns.key("s"), tag_secret=b"two")
    assert [a.tag(u) for u in users] == [b.tag(u) for u in users] != [other.tag(u) for u in users]
    assert [a.tag(u) for u in users] != [hashlib.sha256(u.encode()).hexdigest()[:4] for u in users]
    assert [SessionStore(r, prefix=ns.key("s")).tag(u) for u in users] == [user_tag(u) for u in users]
    sid = a.create("alice")
    assert b.sessions_of("alice") == [sid] and sid.startswith(a.tag("alice") + ".")


def test_index_forgets_expired_sessions(store, r):
    sid, gone = store.create("u"), store.create("u")
    r.delete(store.key(gone))  # as if it had expired
    assert store.sessions_of("u") == [sid]
    assert r.smembers(store.user_key("u")) == {sid}


def test_ids_are_random_and_client_data_is_not_trusted(store, r):
    assert len({new_id() for _ in range(1000)}) == 1000 and len(new_id()) == 43
    ids = {store.new_id("u") for _ in range(1000)}
    assert len(ids) == 1000 and {i[:5] for i in ids} == {store.new_id("u")[:5]} and {len(i) for i in ids} == {48}
    for forged in ["admin", "lab:*", "x" * 200, "../../etc", new_id(), "abcd." + "x" * 43 + "}"]:
        assert store.get(forged) is None and store.touch(forged) is False
        with pytest.raises(labkit.ConfigError, match="not a session id of this store"):
            store.key(forged)


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ttl": -5}, {"absolute_ttl": 0}, {"ttl": 10, "absolute_ttl": 5},
                                    {"prefix": ""}, {"prefix": "session:"}])
def test_bad_settings_are_config_errors(r, kwargs):
    with pytest.raises(labkit.ConfigError):
        SessionStore(r, **kwargs)


def test_bad_input_is_a_clear_error(store):
    for call in (lambda: store.get(""), lambda: store.touch(None), lambda: store.create(""),
                 lambda: store.create("u", **{"": 1}), lambda: store.update(new_id())):
        with pytest.raises(labkit.ConfigError):
            call()


def test_each_hot_path_call_is_one_round_trip():
    with spawn(modules=False) as srv:
        r = srv.client()
        store = SessionStore(r, prefix="session")
        sid = store.create("warm-up")  # loads the scripts
        store.touch(sid)
        store.update(sid, a=1)

        def reads(call) -> int:
            before = r.info("stats")["total_reads_processed"]
            call()
            return r.info("stats")["total_reads_processed"] - before - 1

        for call in (lambda: store.create("u"), lambda: store.create_anonymous(), lambda: store.get(sid),
                     lambda: store.touch(sid),
                     lambda: store.update(sid, theme="x"), lambda: store.invalidate(store.new_id("u"))):
            assert reads(call) == 1


def test_a_users_sessions_and_index_share_one_slot(store):
    ids = [store.create("alice") for _ in range(3)]
    slots = {key_slot(store.key(i).encode()) for i in ids} | {key_slot(store.user_key("alice").encode())}
    assert len(slots) == 1  # one hash tag: a cluster can run every multi-key step in one script


def indexed_everywhere(r, store, user_id) -> bool:
    """Every live session hash of `user_id` under the store's prefix is in the user's index."""
    live = {k for k in r.scan_iter(match=f"{store.prefix}:*") if r.type(k) == "hash"
            and r.hget(k, "user_id") == user_id}
    indexed = {store.key(i) for i in r.smembers(store.user_key(user_id))}
    return live <= indexed


def test_a_crash_anywhere_in_rotate_leaves_the_session_indexed(r, store):
    """Crash the client before each of its commands in turn: whatever ran, the session is whole and indexed."""
    for n in range(1, 6):
        sid = store.create("u")
        crashing = SessionStore(hooked_client(r, crash_before(n)), ttl=60, absolute_ttl=3600, prefix=store.prefix)
        try:
            finished = crashing.rotate(sid) is not None
        except redis.ConnectionError:
            finished = False
        finally:
            crashing.r.close()
        assert indexed_everywhere(r, store, "u"), f"crash before command {n} left a session out of the index"
        if finished:
            break
    assert finished  # the last round had no crash left to hit


def test_a_session_created_during_invalidate_user_is_not_left_unindexed(r, store):
    """A login that lands between the steps of `invalidate_user` either dies with the rest or stays indexed."""
    created = []

    def login_between(n):
        if n == 2:  # after the first command of invalidate_user, before the second
            created.append(store.create("alice"))

    for _ in range(3):
        store.create("alice")
    racing = SessionStore(hooked_client(r, login_between), ttl=60, absolute_ttl=3600, prefix=store.prefix)
    try:
        racing.invalidate_user("alice")
    finally:
        racing.r.close()
    assert created and indexed_everywhere(r, store, "alice")
    store.invalidate_user("alice")
    assert store.sessions_of("alice") == [] and store.get(created[0]) is None  # log out everywhere still reaches it


def test_concurrent_logins_and_log_outs_never_leave_a_session_unindexed(r, store):
    stop = threading.Event()

    def log_in():
        while not stop.is_set():
            store.create("bob")

    threads = [threading.Thread(target=log_in) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(50):
            store.invalidate_user("bob")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert indexed_everywhere(r, store, "bob")


@pytest.mark.parametrize(("kwargs", "says"), [({"ttl": 0.0001}, "ttl is a number of seconds, at least 0.001"),
                                              ({"ttl": 0.0015}, "ttl must be a whole number of milliseconds"),
                                              ({"absolute_ttl": "5"}, "absolute_ttl is a number of seconds")])
def test_durations_are_whole_milliseconds(r, kwargs, says):
    with pytest.raises(labkit.ConfigError, match=says):
        SessionStore(r, **kwargs)


def test_durations_are_not_rounded_down(r, ns):
    store = SessionStore(r, ttl=1.001, absolute_ttl=1.001, prefix=ns.key("session"))
    session = store.get(store.create("u"))
    assert session.deadline - session.created == 1001  # not int(1.001 * 1000) = int(1000.99...) = 1000


@pytest.mark.parametrize("value", [{"a": 1}, ["x"], None, True, b"raw", float("nan")])
def test_meta_values_are_strings_or_numbers(store, value):
    sid = store.create("u")
    with pytest.raises(labkit.ConfigError, match=r"prefs.*string or a number.*json\.dumps"):
        store.create("u", prefs=value)
    with pytest.raises(labkit.ConfigError, match=r"prefs.*string or a number"):
        store.update(sid, prefs=value)
    assert store.get(sid).data == {}  # nothing was written


def test_numbers_are_stored_as_their_text(store):
    sid = store.create("u", cart=3, ratio=0.5, name="Ada")
    assert store.get(sid).data == {"cart": "3", "ratio": "0.5", "name": "Ada"}


def test_every_call_works_on_a_cluster(rc):
    store = SessionStore(rc, ttl=60, absolute_ttl=3600, prefix="lab:test:session")
    ids = [store.create(f"user{i}", theme="dark") for i in range(6)]
    assert len({key_slot(store.key(i).encode()) for i in ids}) > 1  # spread over the cluster's slots
    sid = ids[0]
    assert store.touch(sid) and store.update(sid, theme="light") and store.get(sid).data == {"theme": "light"}
    fresh = store.rotate(sid)
    assert store.get(sid) is None and store.get(fresh).user_id == "user0" and store.sessions_of("user0") == [fresh]
    second = store.create("user0")
    assert sorted(store.sessions_of("user0")) == sorted([fresh, second])
    assert store.invalidate_user("user0") == 2 and store.sessions_of("user0") == []
    assert store.invalidate(ids[1]) and store.get(ids[1]) is None
    for i in range(2, 6):
        store.invalidate_user(f"user{i}")


# --- anonymous sessions and login ----------------------------------------------------------------------
def test_an_anonymous_session_has_no_user_and_no_index(store, r):
    sid = store.create_anonymous(cart=2)
    session = store.get(sid)
    assert session.anonymous and session.user_id == "" and session.data == {"cart": "2"}
    assert store.touch(sid) and store.update(sid, cart=3)
    assert [k for k in r.scan_iter(match=f"{store.prefix}:*")] == [store.key(sid)]  # no index anywhere
    assert len({store.create_anonymous()[:4] for _ in range(50)}) > 1  # random tags: spread over a cluster


def test_login_moves_an_anonymous_session_to_the_user_and_kills_the_planted_id(store, r):
    planted = store.create_anonymous(cart=2)
    before = store.get(planted)
    logged_in = store.login(planted, "grace")
    session = store.get(logged_in)
    assert store.get(planted) is None and r.exists(store.key(planted)) == 0  # the planted id is dead
    assert session.user_id == "grace" and not session.anonymous and session.data == {"cart": "2"}
    assert logged_in.startswith(store.tag("grace")) and store.sessions_of("grace") == [logged_in]
    assert session.created >= before.created and session.deadline - session.created == 3_600_000  # a fresh lifetime
    assert store.login(planted, "grace") is None  # a second login with the old id gets nothing


def test_login_rotates_the_users_own_session_and_refuses_another_users(store):
    mine = store.create("grace", theme="dark")
    again = store.login(mine, "grace")
    assert again != mine and store.get(mine) is None and store.get(again).data == {"theme": "dark"}
    assert store.sessions_of("grace") == [again]
    assert store.login(again, "mallory") is None and store.get(again).user_id == "grace"  # left as it was
    assert store.login(store.new_id("x"), "grace") is None and store.login(new_id(), "grace") is None


def test_two_logins_racing_on_one_anonymous_id_log_in_once(r, store):
    planted = store.create_anonymous()
    results, start = [], threading.Barrier(4)

    def log_in(user):
        start.wait(10)
        results.append(store.login(planted, user))

    threads = [threading.Thread(target=log_in, args=(f"u{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(result is not None for result in results) == 1


def test_a_crash_in_login_never_logs_the_old_id_in(r, store):
    for n in range(1, 4):
        planted = store.create_anonymous(cart=1)
        crashing = SessionStore(hooked_client(r, crash_before(n)), ttl=60, absolute_ttl=3600, prefix=store.prefix)
        try:
            fresh = crashing.login(planted, "victim")
        except redis.ConnectionError:
            fresh = None
        finally:
            crashing.r.close()
        old = store.get(planted)
        assert old is None or old.anonymous, f"crash before command {n}: the planted id is logged in"
        if fresh is not None:
            break
    assert fresh is not None and store.get(fresh).user_id == "victim"


def test_rotating_an_anonymous_session_keeps_its_slot(store):
    sid = store.create_anonymous(cart=1)
    fresh = store.rotate(sid)
    assert fresh[:4] == sid[:4] and store.get(sid) is None and store.get(fresh).data == {"cart": "1"}
    assert store.rotate(sid) is None


# --- touch: units, laziness, half sessions ---------------------------------------------------------------
def test_last_seen_is_milliseconds_on_the_server_clock(store, r):
    before = server_ms(r)
    sid = store.create("u")
    created = store.get(sid).last_seen
    r.hset(store.key(sid), "last_seen", 0)
    assert store.touch(sid)
    after = server_ms(r)
    assert before <= created <= store.get(sid).last_seen <= after  # bracketed by TIME: ms, not seconds


def test_a_lazy_touch_writes_once_per_interval(r, ns):
    """Injected clock: a request every 100 ms for 10 s, writes at most once a second."""
    store = SessionStore(r, ttl=60, absolute_ttl=3600, prefix=ns.key("session"), touch_every=1)
    sid = store.create("u")
    start = store.get(sid).last_seen
    seen = set()
    for step in range(1, 101):
        assert store._touch(keys=[store.key(sid)], args=[store.ttl_ms, store.touch_every_ms, start + step * 100])
        seen.add(store.get(sid).last_seen)
    assert seen == {start + s * 1000 for s in range(0, 11)}  # 100 requests, 10 writes: at 1 s, 2 s, ... 10 s


def test_a_lazy_touch_leaves_the_ttl_alone_between_writes(r, ns):
    store = SessionStore(r, ttl=120, absolute_ttl=3600, prefix=ns.key("session"), touch_every=60)
    sid = store.create("u")
    seen = store.get(sid).last_seen
    r.pexpire(store.key(sid), 5000)
    assert store.touch(sid) is True  # alive, but written less than 60 s ago: nothing is written
    assert store.get(sid).last_seen == seen and 0 < r.pttl(store.key(sid)) <= 5000
    eager = SessionStore(r, ttl=120, absolute_ttl=3600, prefix=ns.key("session"))
    assert eager.touch(sid) and r.pttl(store.key(sid)) > 100_000


@pytest.mark.parametrize(("kwargs", "says"), [({"touch_every": 60}, "shorter than the idle ttl"),
                                              ({"touch_every": -1}, "touch_every is a number of seconds"),
                                              ({"touch_every": 0.0015}, "whole number of milliseconds"),
                                              ({"functions": "yes"}, "functions must be True")])
def test_bad_lazy_touch_and_mode_settings(r, kwargs, says):
    with pytest.raises(labkit.ConfigError, match=says):
        SessionStore(r, ttl=60, **kwargs)


def test_touching_a_half_session_reports_it_missing(store, r):
    half = store.new_id("u")
    r.hset(store.key(half), "last_seen", 1)  # what a broken touch leaves: no user, no deadline
    assert store.touch(half) is False and store.get(half) is None
    r.delete(store.key(half))


def test_the_index_is_pruned_where_it_is_read(store, r):
    live, short = store.create("u"), store.create("u")
    r.pexpire(store.key(short), 1)
    deadline = time.monotonic() + 10
    while r.exists(store.key(short)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert r.scard(store.user_key("u")) == 2  # expiry does not touch the index...
    assert store.sessions_of("u") == [live] and r.smembers(store.user_key("u")) == {live}  # ...reading it prunes


# --- the function library ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fn_server():
    with spawn(modules=False) as srv:
        yield srv


def test_function_mode_needs_the_library_and_says_how_to_load_it(fn_server):
    r = fn_server.client()
    r.function_flush()
    store = SessionStore(r, prefix="fn", functions=True)
    with pytest.raises(labkit.errors.MissingLibrary, match=r"load_library\(admin, 'sessions'\)"):
        store.create("u")
    r.close()


def test_function_mode_does_everything_with_fcall(fn_server):
    r = fn_server.client()
    assert load_library(r) == "labkit_sessions"
    store = SessionStore(r, ttl=60, absolute_ttl=3600, prefix="fn", functions=True)
    sid = store.create("u", theme="dark")
    with labkit.trace(r, show=False) as t:
        assert store.touch(sid) and store.update(sid, theme="light")
    assert t.names() == ["FCALL", "FCALL"] and t.round_trips == 2
    anonymous = store.create_anonymous(cart=1)
    user, rotated = store.login(anonymous, "u"), store.rotate(sid)
    assert store.get(user).data == {"cart": "1"} and sorted(store.sessions_of("u")) == sorted([rotated, user])
    assert store.invalidate_user("u") == 2 and store.sessions_of("u") == []
    r.close()


def test_function_mode_works_on_a_cluster(rc):
    load_library(rc)
    store = SessionStore(rc, ttl=60, absolute_ttl=3600, prefix="lab:test:fn-session", functions=True)
    ids = [store.create(f"user{i}") for i in range(6)]
    assert all(store.touch(i) for i in ids)
    anonymous = store.create_anonymous(cart=5)
    logged_in = store.login(anonymous, "user0")  # from a random slot to user0's
    assert store.get(logged_in).data == {"cart": "5"} and store.get(anonymous) is None
    assert sorted(store.sessions_of("user0")) == sorted([ids[0], logged_in])
    for i in range(6):
        store.invalidate_user(f"user{i}")
