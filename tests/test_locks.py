"""labkit.locks against real servers: exclusion, tokens, fencing, Redlock's majority."""

import threading
import time
import uuid

import pytest
import redis
from redis.cluster import RedisCluster

from labkit import ConfigError, scripts
from labkit.bench import side_by_side
from labkit.errors import LabkitError, LockNotAcquired, LockNotHeld
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


def test_remaining_ms_counts_the_lease_down_and_extend_renews_it(r, ns):
    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    assert lock.remaining_ms() == 0.0, "not held: nothing left"
    lock.acquire()
    assert 50_000 < lock.remaining_ms() <= 60_000
    lock.extend(5000)
    assert 1000 < lock.remaining_ms() <= 5000, "extend() starts a new lease of the given length"
    lock.release()
    assert lock.remaining_ms() == 0.0


def test_remaining_ms_never_exceeds_what_the_server_has_left(r, ns):
    """The lease lasts at least remaining_ms(): read the server's PTTL first, then ours (later, so smaller);
    1 ms of slack for the server's whole milliseconds."""
    lock = Lock(r, "job", ttl_ms=2000, prefix=ns.key("lk"))
    for _ in range(20):
        lock.acquire()
        server_left = r.pttl(lock.key)
        assert lock.remaining_ms() <= server_left + 1
        lock.release()


def test_a_lost_lock_has_no_time_left_and_cannot_be_extended(r, ns):
    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    lock.acquire()
    r.delete(lock.key)
    with pytest.raises(LockNotHeld, match="expired or another client took it"):
        lock.extend()
    assert lock.remaining_ms() == 0.0
    with pytest.raises(LockNotHeld, match="acquire"):
        Lock(r, "other", prefix=ns.key("lk")).extend()


def test_an_expired_lock_is_not_revived_by_extend_even_when_nobody_took_it(r, ns):
    lock = Lock(r, "job", ttl_ms=50, prefix=ns.key("lk"))
    assert lock.acquire() and gone(r, lock.key)
    with pytest.raises(LockNotHeld):
        lock.extend(60_000)
    assert not r.exists(lock.key)


@pytest.mark.parametrize("ttl_ms", [-5, 0, 2.5, True, "100"])
def test_extend_refuses_a_ttl_that_is_not_whole_positive_milliseconds_and_keeps_the_lock(r, ns, ttl_ms):
    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    lock.acquire()
    with pytest.raises(ConfigError, match="ttl_ms is a whole number of milliseconds"):
        lock.extend(ttl_ms)
    assert lock.owned() and r.pttl(lock.key) > 50_000
    lock.release()


def test_one_lock_shared_by_two_threads_cannot_release_the_others_acquisition(r, ns):
    """A thread's acquisition is its own: another thread using the same Lock object holds nothing."""
    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    assert lock.acquire()
    outcome = {}

    def other_thread():
        outcome["token"], outcome["owned"] = lock.token, lock.owned()
        try:
            lock.release()
            outcome["release"] = "released"
        except LockNotHeld as err:
            outcome["release"] = str(err)

    worker = threading.Thread(target=other_thread)
    worker.start()
    worker.join()
    assert outcome["token"] is None and outcome["owned"] is False and "acquire() it first" in outcome["release"]
    assert lock.owned() and r.get(lock.key) == lock.token  # this thread's lock is untouched
    lock.release()


def test_two_threads_take_turns_with_one_lock_object(r, ns):
    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    inside, overlaps, fences = [], [], []

    def worker():
        for _ in range(20):
            with lock:
                inside.append(1)
                overlaps.append(len(inside))
                fences.append(lock.fence)
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert max(overlaps) == 1 and len(set(fences)) == 40  # one at a time, each turn its own fencing token


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
    with pytest.raises(LockNotAcquired, match=r"within 0\.1 s") as caught, \
            Lock(r, "job", prefix=ns.key("lk"), blocking_timeout=0.1):
        pass
    assert isinstance(caught.value, LabkitError) and isinstance(caught.value, TimeoutError)
    # it tried for the whole 0.1 s, and gave up long before the default blocking_timeout (10 s)
    assert 0.09 < time.monotonic() - started < 5
    holder.release()


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"ttl_ms": 0}, "ttl_ms is a whole number of milliseconds"), ({"ttl_ms": 2.5}, "ttl_ms is a whole number"),
    ({"ttl_ms": 0.5}, "ttl_ms is a whole number of milliseconds"), ({"blocking_timeout": -1}, "blocking_timeout"),
    ({"name": None}, "name must be a non-empty string"), ({"name": ""}, "name must be a non-empty string"),
    ({"name": 42}, "name must be a non-empty string"), ({"prefix": "lab:"}, "not ending with ':'"),
])
def test_lock_rejects_bad_settings(r, kwargs, says):
    with pytest.raises(ConfigError, match=says):
        Lock(r, **({"name": "x"} | kwargs))


def test_fenced_store_refuses_only_tokens_below_the_highest_accepted(r, ns):
    store = FencedStore(r, "doc", prefix=ns.key("fs"))
    assert store.write(5, "a") and not store.write(3, "b") and store.write(6, "c")
    assert store.read() == "c" and not store.write(5, "d")


def test_fenced_store_accepts_the_holders_second_write_with_its_own_token(r, ns):
    store = FencedStore(r, "doc", prefix=ns.key("fs"))
    assert store.write(5, "first") and store.write(5, "second")
    assert store.read() == "second"


@pytest.mark.parametrize("token", [0, -1, 2.5, "7", None, True])
def test_fenced_store_wants_a_fencing_token(r, ns, token):
    with pytest.raises(ConfigError, match=r"token \(a lock.s fence\) must be an integer of at least 1"):
        FencedStore(r, "doc", prefix=ns.key("fs")).write(token, "x")


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
        with pytest.raises(LockNotAcquired, match="set on 1 of 3 servers; a majority is 2"):
            lock.acquire()
        assert lock.acquired_on == 1 and lock.remaining_ms() == 0
        assert all(not c.exists(lock.key) for c in clients[2:])  # what it took was given back
    finally:
        three[0].resume()
        three[1].resume()


def test_redlock_is_a_context_manager_that_raises_without_a_majority(three):
    clients = [s.client() for s in three]
    first, second = (Redlock(clients, "x", ttl_ms=TTL_MS, retries=0, node_timeout_ms=NODE_TIMEOUT_MS)
                     for _ in range(2))
    with first as held:
        assert held is first and all(c.get(first.key) == first.token for c in clients)
        with pytest.raises(LockNotAcquired) as refused, second:
            pytest.fail("the second holder entered the block")
        assert isinstance(refused.value, LabkitError) and "a majority is 2" in str(refused.value)
    assert not any(c.exists(first.key) for c in clients)  # released on every node at the end of the block
    with second:
        assert second.acquired_on == 3


def test_redlock_remaining_ms_counts_down_from_the_validity(three):
    lock = Redlock([s.client() for s in three], "countdown", ttl_ms=500, retries=0, node_timeout_ms=100)
    assert lock.remaining_ms() == 0  # not held
    validity = lock.acquire()
    first = lock.remaining_ms()
    assert 0 < first <= validity and lock.remaining_ms() <= first
    assert eventually(lambda: lock.remaining_ms() == 0)  # the validity runs out with the TTL
    lock.release()
    assert lock.remaining_ms() == 0


def test_the_context_manager_reports_a_redlock_that_ran_out_during_the_block(three):
    lock = Redlock([s.client() for s in three], "brief", ttl_ms=300, retries=0, node_timeout_ms=100)
    with pytest.raises(LockNotHeld, match="not protected"), lock:
        assert eventually(lambda: lock.remaining_ms() == 0)


def test_redlock_excludes_a_second_holder(three):
    clients = [s.client() for s in three]
    first, second = (Redlock(clients, "x", ttl_ms=TTL_MS, retries=0, node_timeout_ms=NODE_TIMEOUT_MS)
                     for _ in range(2))
    assert first.acquire() > 0
    with pytest.raises(LockNotAcquired):
        second.acquire()
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



class SequentialRedlock(Redlock):
    """The same algorithm asking one node after another: what the parallel fan-out is timed against."""

    def _on_every_node(self, *command):
        return [self._ask_one(node, command) for node in self._nodes]

    @staticmethod
    def _ask_one(node, command):
        try:
            return node.client.execute_command(*command)
        except (redis.RedisError, OSError) as err:
            return err


def test_redlock_asks_every_node_at_once_not_one_after_another(three):
    """Two of three nodes frozen: each costs a node timeout to acquire and again to give back. Asked in
    turn, that is four timeouts; asked at once, two (one for the acquisition, one for the release)."""
    timeout_ms = 300
    locks = {kind: cls([s.client() for s in three], f"fanout-{kind}", ttl_ms=5000, retries=0,
                       node_timeout_ms=timeout_ms) for kind, cls in (("parallel", Redlock),
                                                                     ("sequential", SequentialRedlock))}

    def refused(lock):
        with pytest.raises(LockNotAcquired):
            lock.acquire()

    three[0].pause()
    three[1].pause()
    try:
        medians = side_by_side({kind: lambda lock=lock: refused(lock) for kind, lock in locks.items()}, reps=3)
    finally:
        three[0].resume()
        three[1].resume()
    assert medians["sequential"] >= 3.6 * timeout_ms * 1000  # four node timeouts, one after another
    assert medians["parallel"] / medians["sequential"] < 0.75  # two of them: 0.5 expected


def _calls(client, command):
    return int(client.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_redlocks_made_per_resource_share_connections_and_release_by_sha(three):
    """A service makes one Redlock per resource name: they share the connections of the clients they were
    made with (no new connection after the first), and release with EVALSHA, never EVAL."""
    clients = [s.client() for s in three]
    warm = Redlock(clients, "warm", ttl_ms=TTL_MS, node_timeout_ms=NODE_TIMEOUT_MS)
    warm.acquire()
    warm.release()
    before = [(c.info("stats")["total_connections_received"], _calls(c, "evalsha"), _calls(c, "eval"))
              for c in clients]
    for i in range(20):
        lock = Redlock(clients, f"order-{i}", ttl_ms=TTL_MS, node_timeout_ms=NODE_TIMEOUT_MS)
        lock.acquire()
        assert lock.release() == 3
    for c, (connections, evalshas, evals) in zip(clients, before, strict=True):
        assert c.info("stats")["total_connections_received"] == connections
        assert (_calls(c, "evalsha") - evalshas, _calls(c, "eval") - evals) == (20, 0)
    assert Redlock(clients, "other", node_timeout_ms=NODE_TIMEOUT_MS).nodes == warm.nodes  # one set per client, timeout


def test_redlock_loads_its_release_script_again_after_a_flush(three):
    clients = [s.client() for s in three]
    lock = Redlock(clients, "flushed", ttl_ms=TTL_MS, node_timeout_ms=NODE_TIMEOUT_MS)
    lock.acquire()
    clients[1].script_flush()
    assert lock.release() == 3 and not any(c.exists(lock.key) for c in clients)


def test_a_shared_connection_closed_by_a_restart_connects_again_before_use(three):
    clients = [s.client() for s in three]
    first = Redlock(clients, "before-restart", ttl_ms=TTL_MS, node_timeout_ms=NODE_TIMEOUT_MS)
    first.acquire()
    first.release()  # its connections now wait, idle, for the next Redlock of these clients
    three[2].restart()
    second = Redlock(clients, "after-restart", ttl_ms=TTL_MS, retries=0, node_timeout_ms=NODE_TIMEOUT_MS)
    second.acquire()
    assert second.acquired_on == 3 and second.release() == 3


def _lock_in_child(clients, done):
    lock = Redlock(clients, "in-child", ttl_ms=TTL_MS, node_timeout_ms=NODE_TIMEOUT_MS)
    lock.acquire()
    done.put((lock.acquired_on, lock.release()))


def test_a_forked_child_opens_its_own_connections_and_never_uses_the_parents(three):
    import multiprocessing

    clients = [s.client() for s in three]
    parent = Redlock(clients, "in-parent", ttl_ms=TTL_MS, node_timeout_ms=NODE_TIMEOUT_MS)
    parent.acquire()
    parent.release()
    before = [c.info("stats")["total_connections_received"] for c in clients]
    fork = multiprocessing.get_context("fork")
    done = fork.Queue()
    child = fork.Process(target=_lock_in_child, args=(clients, done))
    child.start()
    assert done.get(timeout=30) == (3, 3)
    child.join(30)
    assert child.exitcode == 0
    # the client's own connection (for INFO) was opened before the fork; the child's Redlock opened one each
    assert [c.info("stats")["total_connections_received"] - b for c, b in zip(clients, before, strict=True)] == [1] * 3
    parent.acquire()  # and the parent's connections still answer in step
    assert parent.acquired_on == 3 and parent.release() == 3


@pytest.mark.parametrize(("count", "kwargs", "says"), [
    (0, {}, "got none"), (2, {}, "a majority of 2 is 2"), (4, {}, "a majority of 4 is 3"),
    (3, {"ttl_ms": 0}, "ttl_ms is a whole number of milliseconds"),
    (3, {"node_timeout_ms": 2000, "ttl_ms": 1000}, "far below"),
    (3, {"retries": -1}, "retries must be an integer of at least 0"),
    (3, {"drift_factor": -1}, "drift_factor must be a number >= 0"),
])
def test_redlock_rejects_bad_settings(count, kwargs, says):
    clients = [redis.Redis(port=1 + i) for i in range(count)]
    with pytest.raises(ConfigError, match=says):
        Redlock(clients, "x", **kwargs)


def test_redlock_refuses_the_same_server_twice(three):
    a, b = three[0].client(), three[1].client()
    same_as_a = redis.Redis(host="localhost", port=three[0].port, password=three[0].password, db=1)
    with pytest.raises(ConfigError, match=rf"clients 0 and 2 are the same server \(127\.0\.0\.1:{three[0].port}\)"):
        Redlock([a, b, same_as_a], "x")


def test_redlock_refuses_cluster_clients_and_says_what_to_use(rc):
    """Three clients of one cluster are one primary's vote three times: refused before anything is sent."""
    with pytest.raises(ConfigError, match=r"not a RedisCluster.*Lock\(cluster_client"):
        Redlock([rc, rc, rc], "x")


def test_on_a_cluster_a_lock_excludes_fences_extends_and_releases(rc):
    prefix = f"lab:cluster:{uuid.uuid4().hex[:8]}"
    first, second = Lock(rc, "job", prefix=prefix), Lock(rc, "job", prefix=prefix, blocking_timeout=0)
    assert rc.keyslot(first.key) == rc.keyslot(first.fence_key)  # the acquire script's two keys: one slot
    assert first.acquire() and not second.acquire()
    first.extend(60_000)
    assert rc.pttl(first.key) > 50_000 and first.owned()
    first.release()
    with second:
        assert second.fence == first.fence + 1
    names = [f"job-{i}" for i in range(30)]
    for name in names:  # locks of many names spread over the primaries
        with Lock(rc, name, prefix=prefix):
            pass
    assert len({rc.get_node_from_key(Lock(rc, n, prefix=prefix).key).name for n in names}) == 3


def test_on_a_cluster_the_fenced_store_refuses_only_older_tokens(rc):
    store = FencedStore(rc, "doc", prefix=f"lab:cluster:{uuid.uuid4().hex[:8]}")
    assert rc.keyslot(store.key) == rc.keyslot(store.highest_key)
    assert store.write(5, "a") and store.write(5, "b") and not store.write(4, "c") and store.read() == "b"


def test_on_a_cluster_scripts_load_again_after_a_flush(rc):
    """Registered once per client, a script still runs on a node that lost its script cache (EVALSHA
    answers NOSCRIPT, the script is sent again)."""
    lock = Lock(rc, "flushed", prefix=f"lab:cluster:{uuid.uuid4().hex[:8]}")
    assert lock.acquire()
    rc.execute_command("SCRIPT", "FLUSH", target_nodes=RedisCluster.PRIMARIES)
    lock.release()
    assert lock.acquire() and scripts.register(rc, "locks/acquire") is lock._acquire
    lock.release()
