"""labkit.cache against a real server: cache-aside, one round trip per hit, keys, the hit-rate widget."""

import time

import pytest

import labkit
from labkit import scripts
from labkit.cache import cached
from labkit.server import spawn
from labkit.widgets import HitRateMonitor


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
    assert len(digest) == 64 and f.key(1) != f.key("1") and f.key(1) != f.key(x=1)


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
    for kwargs in ({"ttl": 0}, {"ttl": -1}, {"ttl": 1, "strategy": "magic"}, {"ttl": 1, "jitter": 1.5},
                   {"ttl": 1, "beta": 0}, {"ttl": 1, "prefix": ""}):
        with pytest.raises(labkit.ConfigError):
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
