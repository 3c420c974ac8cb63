"""labkit.locks against real servers: exclusion, tokens, fencing, Redlock's majority."""

import threading
import time

import pytest
import redis

from labkit import ConfigError
from labkit.errors import LockNotHeld
from labkit.locks import FencedStore, Lock, Redlock
from labkit.server import nodes


def test_a_lock_excludes_a_second_client_until_released(r, ns):
    first, second = Lock(r, "job", prefix=ns.key("lk")), Lock(r, "job", prefix=ns.key("lk"), blocking_timeout=0)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire() and second.fence == first.fence + 1
    second.release()


def test_releasing_a_foreign_lock_is_refused_and_leaves_it_alone(r, ns):
    mine = Lock(r, "job", ttl_ms=50, prefix=ns.key("lk"))
    mine.acquire()
    time.sleep(0.08)  # expired
    theirs = Lock(r, "job", ttl_ms=5000, prefix=ns.key("lk"))
    assert theirs.acquire(blocking=False)
    with pytest.raises(LockNotHeld, match="expired"):
        mine.release()
    assert theirs.owned()
    with pytest.raises(LockNotHeld, match="acquire"):
        Lock(r, "other", prefix=ns.key("lk")).release()


def test_extend_keeps_our_lock_and_refuses_a_lost_one(r, ns):
    lock = Lock(r, "job", ttl_ms=100, prefix=ns.key("lk"))
    lock.acquire()
    lock.extend(5000)
    assert r.pttl(lock.key) > 1000
    r.delete(lock.key)
    with pytest.raises(LockNotHeld):
        lock.extend()


def test_the_context_manager_reports_a_lock_lost_during_the_block(r, ns):
    with pytest.raises(LockNotHeld, match="not protected"), Lock(r, "job", ttl_ms=30, prefix=ns.key("lk")):
        time.sleep(0.06)


def test_a_body_error_is_kept_and_the_lost_lock_noted(r, ns):
    with pytest.raises(KeyError) as caught, Lock(r, "job", ttl_ms=30, prefix=ns.key("lk")):
        time.sleep(0.06)
        raise KeyError("boom")
    assert any("expired" in note for note in caught.value.__notes__)


def test_acquire_gives_up_after_the_blocking_timeout(r, ns):
    holder = Lock(r, "job", prefix=ns.key("lk"))
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.1 s"), Lock(r, "job", prefix=ns.key("lk"), blocking_timeout=0.1):
        pass
    assert 0.09 < time.monotonic() - started < 1
    holder.release()


@pytest.mark.parametrize(("kwargs", "says"), [({"ttl_ms": 0}, "ttl_ms is a whole number of milliseconds"),
                                              ({"ttl_ms": 2.5}, "ttl_ms is a whole number of milliseconds"),
                                              ({"blocking_timeout": -1}, "blocking_timeout")])
def test_lock_rejects_bad_settings(r, kwargs, says):
    with pytest.raises(ConfigError, match=says):
        Lock(r, "x", **kwargs)


def test_fenced_store_accepts_only_increasing_tokens(r, ns):
    store = FencedStore(r, "doc", prefix=ns.key("fs"))
    assert store.write(5, "a") and not store.write(5, "b") and not store.write(3, "c") and store.write(6, "d")
    assert store.read() == "d"


@pytest.fixture(scope="module")
def three():
    with nodes(3) as servers:
        yield servers


def test_redlock_holds_with_one_node_down_and_refuses_with_two(three):
    clients = [s.client() for s in three]
    lock = Redlock(clients, "job", ttl_ms=1000, retries=0)
    assert 900 < lock.acquire() < 1000 and lock.acquired_on == 3
    assert lock.release() == 3
    three[0].pause()
    try:
        started = time.monotonic()
        assert lock.acquire() > 0 and lock.acquired_on == 2
        assert time.monotonic() - started < 0.5  # the paused node cost one node timeout, not a hang
        assert lock.release() == 2
        three[1].pause()
        assert lock.acquire() == 0.0 and lock.acquired_on == 1
        assert all(not c.exists(lock.key) for c in clients[2:])  # what it took was given back
    finally:
        three[0].resume()
        three[1].resume()


def test_redlock_excludes_a_second_holder(three):
    clients = [s.client() for s in three]
    first, second = Redlock(clients, "x", ttl_ms=2000, retries=0), Redlock(clients, "x", ttl_ms=2000, retries=0)
    assert first.acquire() > 0 and second.acquire() == 0.0
    first.release()
    assert second.acquire() > 0
    second.release()
    with pytest.raises(LockNotHeld):
        second.release()


def test_redlock_retries_let_contenders_take_turns(three):
    clients = [s.client() for s in three]
    wins = []

    def contender():
        lock = Redlock(clients, "turns", ttl_ms=2000, retries=40, retry_delay_ms=30)
        if lock.acquire():
            wins.append(1)
            time.sleep(0.005)
            lock.release()

    threads = [threading.Thread(target=contender) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 5


@pytest.mark.parametrize(("count", "kwargs", "says"), [
    (0, {}, "got none"), (2, {}, "odd number"), (4, {}, "odd number"),
    (3, {"ttl_ms": 0}, "ttl_ms is a whole number of milliseconds"),
    (3, {"node_timeout_ms": 2000, "ttl_ms": 1000}, "far below"),
    (3, {"retries": -1}, "retries must be an integer of at least 0"),
])
def test_redlock_rejects_bad_settings(count, kwargs, says):
    clients = [redis.Redis(port=1) for _ in range(count)]
    with pytest.raises(ConfigError, match=says):
        Redlock(clients, "x", **kwargs)
