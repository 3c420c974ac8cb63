"""The lesson 02 module (`labkit.lessons.l02_caching`): the slow database, the stampede experiment, and each
check accepting the reference answer and rejecting the known-wrong ones."""

import math
import statistics
import time

import pytest

import labkit
from labkit.lessons import l02_caching as lesson


# -- the slow database ----------------------------------------------------------------------------------
def test_slow_database_counts_queries_and_adds_its_latency():
    db = lesson.SlowDatabase(rows=100, latency_ms=20)
    started = time.perf_counter()
    row = db.product(7)
    assert time.perf_counter() - started >= 0.02 and row["id"] == 7 and db.product(101) is None
    db.update_price(7, 1.5)
    assert db.product(7)["price"] == 1.5 and db.queries == 4
    with pytest.raises(labkit.ConfigError):
        lesson.SlowDatabase(rows=0)


# -- the stampede experiment ----------------------------------------------------------------------------
@pytest.mark.slow
def test_stampede_strategies(r, ns):
    clients = 20

    def run(strategy):
        return lesson.stampede(r, ns.key("stampede"), strategy, clients=clients, ttl=0.6, run_s=1.0)

    # no protection and XFetch, interleaved over three expiries: a busy spell of the machine hits both alike,
    # and the medians ignore the one round it may have hit at the worst moment
    rounds = [(run("none"), run("xfetch")) for _ in range(3)]
    results = {"lock": run("lock"), "swr": run("swr")}
    none = {what: statistics.median(getattr(n, what) for n, _ in rounds) for what in ("recomputes", "misses")}
    xfetch = {what: statistics.median(getattr(x, what) for _, x in rounds)
              for what in ("recomputes", "misses", "early_refreshes")}
    assert none["recomputes"] >= clients // 2 and none["misses"] >= clients // 2  # a stampede
    assert results["lock"].recomputes == 1
    # XFetch refreshes before the expiry, so that few clients (none when the machine is idle) see it: at
    # most a quarter of the misses of no protection, and fewer recomputes. A busy CPU stretches the
    # recompute, so that more clients refresh early meanwhile and an odd one can miss: never most of them.
    assert xfetch["early_refreshes"] >= 1 and 4 * xfetch["misses"] <= none["misses"]
    assert xfetch["recomputes"] < none["recomputes"]
    assert results["swr"].misses == 0 and 1 <= results["swr"].recomputes <= 2  # one per expiry the run crosses
    assert all(len(res.latencies_ms) > clients for res in [*results.values(), *(x for pair in rounds for x in pair)])
    assert ns.keys(r) == []


def test_stampede_rejects_a_run_shorter_than_the_ttl(r, ns):
    with pytest.raises(labkit.ConfigError, match="run_s > ttl"):
        lesson.stampede(r, ns.key("s"), "none", ttl=2, run_s=1)


# -- exercise checks ------------------------------------------------------------------------------------
def test_xfetch_accepts_the_reference():
    result = lesson.check_xfetch(lambda now, expiry, delta, beta, rand: now - delta * beta * math.log(rand) >= expiry)
    assert result, result.message


def test_xfetch_rejects_the_version_that_never_fires():
    result = lesson.check_xfetch(lambda now, expiry, delta, beta, rand: now + delta * beta * math.log(rand) >= expiry)
    assert not result and "never refreshes early" in result.message


def test_xfetch_rejects_a_constant_early_window():
    result = lesson.check_xfetch(lambda now, expiry, delta, beta, rand: now >= expiry - delta * beta * 0.1)
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
    result = lesson.check_single_flight(r, ns, reference_get_or_compute)
    assert result, result.message
    assert ns.keys(r) == []


def test_single_flight_rejects_the_starter_that_always_computes(r, ns):
    def always(r, key, compute, lock_ttl_ms):
        value = compute()
        r.set(key, value, ex=60)
        return value

    result = lesson.check_single_flight(r, ns, always)
    assert not result and "20 computes for 20 concurrent callers" in result.message


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

    result = lesson.check_single_flight(r, ns, plain_delete)
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

    result = lesson.check_single_flight(r, ns, no_reread)
    assert not result and "read the cache again" in result.message
