"""labkit.sessions against a real server: expiry, the absolute cap, touch, rotation, log out everywhere."""

import time

import pytest

import labkit
from labkit.server import spawn
from labkit.sessions import SessionStore, new_id


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
    ghost = new_id()
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
    ghost = new_id()
    assert store.update(ghost, theme="x") is False and r.exists(store.key(ghost)) == 0
    with pytest.raises(labkit.ConfigError, match="managed by the store"):
        store.update(sid, user_id="admin")


def test_rotate_moves_the_session_and_kills_the_old_id(store, r):
    sid = store.create("u", theme="dark")
    fresh = store.rotate(sid)
    assert fresh != sid and store.get(sid) is None and store.get(fresh).data == {"theme": "dark"}
    assert store.sessions_of("u") == [fresh]
    assert store.rotate(new_id()) is None


def test_invalidate_and_log_out_everywhere(store):
    ids = [store.create("alice") for _ in range(3)]
    other = store.create("bob")
    assert store.invalidate(ids[0]) is True and store.invalidate(ids[0]) is False
    assert store.invalidate_user("alice") == 2
    assert all(store.get(i) is None for i in ids) and store.get(other) is not None
    assert store.invalidate_user("nobody") == 0


def test_index_forgets_expired_sessions(store, r):
    sid, gone = store.create("u"), store.create("u")
    r.delete(store.key(gone))  # as if it had expired
    assert store.sessions_of("u") == [sid]
    assert r.smembers(store.user_key("u")) == {sid}


def test_ids_are_random_and_client_data_is_not_trusted(store, r):
    assert len({new_id() for _ in range(1000)}) == 1000 and len(new_id()) == 43
    for forged in ["admin", "lab:*", "x" * 200, "../../etc"]:
        assert store.get(forged) is None and store.touch(forged) is False


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

        for call in (lambda: store.create("u"), lambda: store.get(sid), lambda: store.touch(sid),
                     lambda: store.update(sid, theme="x"), lambda: store.invalidate(new_id())):
            assert reads(call) == 1
