"""labkit.locks against real servers: exclusion, tokens, fencing, Redlock's majority."""

import threading
import time

import pytest
import redis

from labkit import ConfigError
from labkit.errors import LockNotHeld
from labkit.locks import FencedStore, Lock, Redlock
from labkit.server import nodes

from .waiting import eventually


def test_a_lock_excludes_a_second_client_until_released(r, ns):
    first, second = Lock(r, "job", prefix=ns.key("lk")), Lock(r, "job", prefix=ns.key("lk"), blocking_timeout=0)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire() and second.fence == first.fence + 1
    second.release()


def gone(r, key) -> bool:
    """Whether `key` has expired (polled until it has, for up to 10 s: a stall only makes it later)."""
    return eventually(lambda: not r.exists(key))


def test_releasing_a_foreign_lock_is_refused_and_leaves_it_alone(r, ns):
    mine = Lock(r, "job", ttl_ms=50, prefix=ns.key("lk"))
    assert mine.acquire() and gone(r, mine.key)  # expired
    theirs = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    assert theirs.acquire(blocking=False)
    with pytest.raises(LockNotHeld, match="expired"):
        mine.release()
    assert theirs.owned()
    with pytest.raises(LockNotHeld, match="acquire"):
        Lock(r, "other", prefix=ns.key("lk")).release()


def test_extend_keeps_our_lock_and_refuses_a_lost_one(r, ns):
    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    lock.acquire()
    lock.extend(5000)
    assert 1000 < r.pttl(lock.key) <= 5000  # the new TTL replaced the minute it had
    r.delete(lock.key)
    with pytest.raises(LockNotHeld):
        lock.extend()


def test_the_context_manager_reports_a_lock_lost_during_the_block(r, ns):
    with pytest.raises(LockNotHeld, match="not protected"), Lock(r, "job", ttl_ms=30, prefix=ns.key("lk")) as lock:
        assert gone(r, lock.key)


def test_a_body_error_is_kept_and_the_lost_lock_noted(r, ns):
    with pytest.raises(KeyError) as caught, Lock(r, "job", ttl_ms=30, prefix=ns.key("lk")) as lock:
        assert gone(r, lock.key)
        raise KeyError("boom")
    assert any("expired" in note for note in caught.value.__notes__)


def test_acquire_gives_up_after_the_blocking_timeout(r, ns):
    holder = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    holder.acquire()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.1 s"), Lock(r, "job", prefix=ns.key("lk"), blocking_timeout=0.1):
        pass
    # it tried for the whole 0.1 s, and gave up long before the default blocking_timeout (10 s)
    assert 0.09 < time.monotonic() - started < 5
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


# Node timeouts far above a stall of a busy machine (a healthy node that answers late counts as down);
# TTLs far above the time to reach every node, so an acquisition never runs out of validity by load alone.
NODE_TIMEOUT_MS, TTL_MS = 1000, 20_000


def timed_acquire(lock: Redlock) -> tuple[float, float]:
    """(validity returned, ms the whole call took, as seen from outside)."""
    started = time.monotonic()
    validity = lock.acquire()
    return validity, (time.monotonic() - started) * 1000


def test_redlock_holds_with_one_node_down_and_refuses_with_two(three):
    clients = [s.client() for s in three]
    lock = Redlock(clients, "job", ttl_ms=TTL_MS, retries=0, node_timeout_ms=NODE_TIMEOUT_MS)
    best = TTL_MS - (TTL_MS * 0.01 + 2)  # the TTL less the drift allowance
    validity, took_ms = timed_acquire(lock)
    # validity = ttl - drift - the time the SETs took: never more, and less by at most the whole call
    assert best - took_ms <= validity < best and lock.acquired_on == 3
    assert lock.release() == 3
    three[0].pause()
    try:
        validity, took_ms = timed_acquire(lock)
        assert best - took_ms <= validity < best and lock.acquired_on == 2
        # the frozen node cost one node timeout (it was waited for), not a hang
        assert 0.9 * NODE_TIMEOUT_MS <= took_ms < NODE_TIMEOUT_MS + 4000
        assert validity <= best - 0.9 * NODE_TIMEOUT_MS  # ... and the validity counts that wait
        assert lock.release() == 2
        three[1].pause()
        assert lock.acquire() == 0.0 and lock.acquired_on == 1
        assert all(not c.exists(lock.key) for c in clients[2:])  # what it took was given back
    finally:
        three[0].resume()
        three[1].resume()


def test_redlock_excludes_a_second_holder(three):
    clients = [s.client() for s in three]
    first, second = (Redlock(clients, "x", ttl_ms=TTL_MS, retries=0, node_timeout_ms=NODE_TIMEOUT_MS)
                     for _ in range(2))
    assert first.acquire() > 0 and second.acquire() == 0.0
    first.release()
    assert second.acquire() > 0
    second.release()
    with pytest.raises(LockNotHeld):
        second.release()


def test_redlock_retries_let_contenders_take_turns(three):
    """Five contenders start together (a barrier): without retries, those that lose the first round would
    give up. With retries every one of them gets its turn."""
    clients = [s.client() for s in three]
    wins, start = [], threading.Barrier(5)

    def contender():
        lock = Redlock(clients, "turns", ttl_ms=TTL_MS, retries=200, retry_delay_ms=50,
                       node_timeout_ms=NODE_TIMEOUT_MS)
        start.wait(30)
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
