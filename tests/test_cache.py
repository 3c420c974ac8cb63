"""labkit.cache against a real server: cache-aside, one round trip per hit, keys, the hit-rate widget."""

import threading
import time
import uuid

import pytest
import redis

import labkit
from labkit import cache as cache_module
from labkit import scripts
from labkit.cache import STRATEGIES, cached
from labkit.server import spawn
from labkit.widgets import HitRateMonitor

from .waiting import eventually


def test_hit_after_miss_and_invalidate(r, ns):
    calls = []

    @cached(r, prefix=ns.key("cache"), ttl=30, strategy="none")
    def product(pid, currency="EUR"):
        calls.append(pid)
        return {"id": pid, "price": 10 * pid, "currency": currency}

    assert product(3) == product(3) == {"id": 3, "price": 30, "currency": "EUR"}
    assert calls == [3] and product.stats.hits == 1 and product.stats.misses == 1
    assert product(3, currency="USD")["currency"] == "USD" and calls == [3, 3]
    assert product.invalidate(3) is True and product.invalidate(3) is False
    product(3)
    assert calls == [3, 3, 3]
    assert 20_000 < r.pttl(product.key(3)) <= 30_000  # the 30 s TTL, less the time since (a stall or two)


def test_missing_rows_are_cached_too(r, ns):
    calls = []

    @cached(r, prefix=ns.key("cache"), ttl=30)
    def lookup(pid):
        calls.append(pid)
        return None

    assert lookup(404) is None and lookup(404) is None and calls == [404]


def test_keys_use_the_full_digest(r, ns):
    @cached(r, prefix=ns.key("cache"), ttl=30)
    def f(x):
        return x

    digest = f.key(1).rsplit(":", 1)[1]
    assert len(digest) == 64 and f.key(1) != f.key("1") and f.key(1) != f.key(2)


def test_positional_keyword_and_default_arguments_are_one_entry(r, ns):
    calls = []

    @cached(r, prefix=ns.key("cache"), ttl=30)
    def price(pid, currency="EUR", *, rounded=True):
        calls.append(pid)
        return [pid, currency, rounded]

    answers = [price(1), price(pid=1), price(1, "EUR"), price(currency="EUR", pid=1), price(1, rounded=True)]
    assert answers == [[1, "EUR", True]] * 5 and calls == [1]
    assert price.key(1) == price.key(pid=1) != price.key(1, "USD")
    assert price(1, "USD") == [1, "USD", True] and calls == [1, 1]


def test_remembered_keys_keep_arguments_that_python_finds_equal_apart(r, ns):
    """Keys of plain str/int calls are remembered, but 1, True and 1.0 (equal in Python, not in JSON) and
    the same call bound another way still get the keys their JSON gives."""
    @cached(r, prefix=ns.key("cache"), ttl=30)
    def echo(x, y=0):
        return [x, y]

    assert [echo(1), echo(True), echo(1.0), echo("1")] == [[1, 0], [True, 0], [1.0, 0], ["1", 0]]
    keys = [echo.key(1), echo.key(True), echo.key(1.0), echo.key("1")]
    assert len(set(keys)) == 4
    fresh = [cache_module.cache_key(echo.prefix, echo.name, (), {"x": x, "y": 0}) for x in (1, True, 1.0, "1")]
    assert keys == fresh  # the remembered key is the one computed from scratch
    assert echo.key(1) == echo.key(x=1) == echo.key(1, 0) == keys[0]
    assert [echo(1), echo(True)] == [[1, 0], [True, 0]] and echo.stats.hits == 2


def test_a_hit_on_a_key_of_the_wrong_type_raises_and_the_next_call_still_works(r, ns):
    @cached(r, prefix=ns.key("cache"), ttl=30)
    def f(x):
        return x

    r.set(f.key(1), "not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        f(1)
    assert f(2) == 2 and f(2) == 2 and f.stats.hits == 1  # both replies of the failed read were consumed


def test_two_functions_of_one_name_in_two_modules_keep_separate_entries(r, ns):
    def lookup(x):
        return "here"

    def elsewhere(x):
        return "there"

    elsewhere.__qualname__, elsewhere.__module__ = lookup.__qualname__, "another.module"
    here = cached(r, prefix=ns.key("cache"), ttl=30)(lookup)
    there = cached(r, prefix=ns.key("cache"), ttl=30)(elsewhere)
    assert (here(1), there(1)) == ("here", "there")


def test_a_lambda_needs_a_name_and_two_named_lambdas_keep_separate_entries(r, ns):
    with pytest.raises(labkit.ConfigError, match="pass name="):
        cached(r, prefix=ns.key("cache"), ttl=30)(lambda x: "f")
    f = cached(r, prefix=ns.key("cache"), ttl=30, name="f")(lambda x: "f")
    g = cached(r, prefix=ns.key("cache"), ttl=30, name="g")(lambda x: "g")
    assert (f(1), g(1), f(1)) == ("f", "g", "f") and f.stats.hits == 1


def test_a_stuck_lock_holder_is_replaced_by_one_waiter_not_all_of_them(r, ns):
    """A holder took the lock and hangs (its lock stays until lock_ttl). Eight callers miss together:
    once the stuck lock expires, ONE of them takes over and recomputes (which takes 0.1 s); the others
    wait for its value, however long they have waited already."""
    calls, start = [], threading.Barrier(8)

    @cached(r, prefix=ns.key("cache"), ttl=30, strategy="lock", lock_ttl=0.5)
    def report(x):
        calls.append(x)
        time.sleep(0.1)  # the work a recompute does
        return {"report": x}

    r.set(report.key(1) + ":lock", "a-holder-that-hangs", px=500)
    answers = []

    def caller():
        start.wait(30)
        answers.append(report(1))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [{"report": 1}] * 8 and calls == [1]


def test_a_hit_is_one_round_trip():
    with spawn(modules=False) as srv:
        r = srv.client()

        @cached(r, prefix="c", ttl=30, strategy="xfetch")
        def f(x):
            return x

        f(1)
        before = r.info("stats")["total_reads_processed"]
        for _ in range(20):
            f(1)
        assert r.info("stats")["total_reads_processed"] - before - 1 == 20


def test_a_hit_sends_hmget_and_pttl_in_one_round_trip(r, ns):
    @cached(r, prefix=ns.key("cache"), ttl=30, strategy="xfetch")
    def f(x):
        return x

    f(1)
    with labkit.trace(r, show=False) as t:
        assert f(1) == 1
    assert t.names() == ["HMGET", "PTTL"] and t.round_trips == 1 and f.stats.hits == 1


def test_not_found_is_kept_for_negative_ttl_and_found_for_ttl(r, ns):
    @cached(r, prefix=ns.key("cache"), ttl=300, negative_ttl=5, strategy="none")
    def lookup(pid):
        return None if pid < 0 else {"id": pid}

    assert lookup(-1) is None and lookup(1) == {"id": 1}
    assert 0 < r.pttl(lookup.key(-1)) <= 5_000 and 200_000 < r.pttl(lookup.key(1)) <= 300_000
    assert lookup(-1) is None and lookup.stats.hits == 1  # still cached: not found is not recomputed


def test_freshness_is_read_from_the_server_clock_not_the_clients(r, ns, monkeypatch):
    """A client whose clock runs an hour fast (or slow) still hits, and the time left that XFetch weighs is
    the key's PTTL: the cache never reads the client's wall clock."""
    seen = []

    @cached(r, prefix=ns.key("cache"), ttl=60, strategy="xfetch")
    def f(x):
        return x

    f.should_refresh = lambda delta_ms, remaining_ms: seen.append(remaining_ms) or False
    f(1)
    for skew in (3600, -3600):
        monkeypatch.setattr(cache_module.time, "time", lambda skew=skew, real=time.time: real() + skew)
        assert f(1) == 1
    monkeypatch.undo()
    r.pexpire(f.key(1), 400)
    f(1)
    assert f.stats.hits == 3 and f.stats.recomputes == 1
    assert 50_000 < seen[0] <= 60_000 and 0 < seen[-1] <= 400


def test_jitter_spreads_expiries(r, ns):
    @cached(r, prefix=ns.key("cache"), ttl=100, jitter=0.2)
    def f(x):
        return x

    ttls = []
    for i in range(40):
        f(i)
        ttls.append(r.pttl(f.key(i)))
    # within 100 s +/- 20 % (less the moment between the write and the PTTL), and spread
    assert 79_000 <= min(ttls) < max(ttls) <= 120_000 and max(ttls) - min(ttls) > 10_000


def test_bad_input_is_a_clear_error(r, ns):
    for kwargs, says in (({"ttl": 0}, "ttl is a number of seconds"), ({"ttl": -1}, "ttl is a number of seconds"),
                         ({"ttl": 0.0004}, r"at least 0\.001"), ({"ttl": "5"}, "ttl is a number of seconds"),
                         ({"ttl": 1, "strategy": "magic"}, "strategy must be one of"),
                         ({"ttl": 1, "jitter": 1.5}, "jitter"), ({"ttl": 1, "beta": 0}, "beta"),
                         ({"ttl": 1, "prefix": ""}, "prefix"), ({"ttl": 1, "name": ""}, "name"),
                         ({"ttl": 1, "strategy": "swr", "stale_ttl": -1}, "stale_ttl is a number of seconds")):
        with pytest.raises(labkit.ConfigError, match=says):
            cached(r, **({"prefix": ns.key("cache")} | kwargs))

    @cached(r, prefix=ns.key("cache"), ttl=30)
    def bad(x):
        return {1, 2}

    with pytest.raises(labkit.ConfigError, match="not JSON-serialisable"):
        bad(1)
    with pytest.raises(labkit.ConfigError, match="arguments must be JSON-serialisable"):
        bad(object())


def test_lock_release_never_frees_someone_elses_lock(r, ns):
    release = scripts.register(r, "locks/release")
    r.set(ns.key("lock"), "their-token", px=5000)
    assert release(keys=[ns.key("lock")], args=["my-token"]) == 0 and r.get(ns.key("lock")) == "their-token"
    assert release(keys=[ns.key("lock")], args=["their-token"]) == 1 and not r.exists(ns.key("lock"))


def test_hit_rate_monitor_reads_server_and_cache(r, ns, label_only):
    latencies = []

    @cached(r, prefix=ns.key("cache"), ttl=30)
    def item(i):
        return i

    def workload(stop):
        i = 0
        while not stop.is_set():
            started = time.perf_counter()
            item(i % 10)
            latencies.append((time.perf_counter() - started) * 1000)
            i += 1

    result = HitRateMonitor(r, stats=item.stats, latencies_ms=latencies, duration=1.0, interval=0.2).run(workload)
    assert result.series["cache hit rate %"][-1] > 90
    assert result.series["server hits/s"][-1] > 0 and result.series["p50 latency ms"]
    assert "cache hit rate" in result.summary and result.png.startswith(b"\x89PNG")


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_on_a_cluster_every_strategy_misses_hits_and_spreads_its_entries(rc, strategy):
    calls = []

    @cached(rc, prefix=f"lab:cluster:{uuid.uuid4().hex[:8]}", ttl=30, strategy=strategy)
    def item(i):
        calls.append(i)
        return {"item": i}

    assert [item(i) for i in range(30)] == [item(i) for i in range(30)] == [{"item": i} for i in range(30)]
    assert calls == list(range(30)) and item.stats.hits == 30 and item.stats.misses == 30
    assert len({rc.get_node_from_key(item.key(i)).name for i in range(30)}) == 3
    assert item.invalidate(3) and item(3) == {"item": 3} and calls[-1] == 3


def test_on_a_cluster_single_flight_recomputes_once_for_many_callers(rc):
    calls, start, answers = [], threading.Barrier(8), []

    @cached(rc, prefix=f"lab:cluster:{uuid.uuid4().hex[:8]}", ttl=30, strategy="lock")
    def report(x):
        calls.append(x)
        time.sleep(0.1)  # the work a recompute does: every caller misses meanwhile
        return {"report": x}

    def caller():
        start.wait(30)
        answers.append(report(1))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [{"report": 1}] * 8 and calls == [1] and not rc.exists(report.key(1) + ":lock")


def test_on_a_cluster_xfetch_refreshes_early_and_swr_serves_stale_while_refreshing(rc):
    prefix, versions = f"lab:cluster:{uuid.uuid4().hex[:8]}", iter(range(1, 100))

    @cached(rc, prefix=prefix, ttl=30, strategy="xfetch")
    def early(x):
        return next(versions)

    early.should_refresh = lambda delta_ms, remaining_ms: True  # as if the entry were about to expire
    assert early(1) == 1 and early(1) == 2 and early.stats.early_refreshes == 1

    @cached(rc, prefix=prefix, ttl=0.2, strategy="swr", stale_ttl=30)
    def stale(x):
        return next(versions)

    first = stale(1)
    assert eventually(lambda: stale._read(stale.key(1))[3] <= 0)  # past its TTL, still stored
    assert stale(1) == first and stale.stats.stale_served == 1  # served stale at once...
    assert eventually(lambda: stale._read(stale.key(1))[1] > first)  # ...and refreshed behind it
