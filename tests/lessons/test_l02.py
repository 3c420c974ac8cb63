"""The lesson 02 module (`labkit.lessons.l02_caching`): the slow database, the stampede experiment, and each
check accepting the reference answer and rejecting the known-wrong ones."""

import contextlib
import math
import statistics
import threading
import time

import pytest
import redis

import labkit
from labkit.cache import cached
from labkit.lessons import l02_caching as lesson
from labkit.server import available_engines, capabilities, spawn


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


def test_stampede_measures_who_waited_and_what_came_before_the_expiry(r, ns):
    """XFetch's early refreshers ran the recompute themselves (and waited for it), before the expiry;
    stale-while-revalidate's reads never ran it; a decorator passed in is run as it is."""
    xfetch = lesson.stampede(r, ns.key("stampede"), "xfetch", clients=20, ttl=0.6, run_s=1.0)
    swr = lesson.stampede(r, ns.key("stampede"), "swr", clients=20, ttl=0.6, run_s=1.0)
    assert xfetch.before_expiry >= 1 and len(xfetch.refresher_latencies_ms) == xfetch.recomputes
    assert min(xfetch.refresher_latencies_ms) >= 50 and xfetch.episodes >= 1 and xfetch.arrival_rate > 0
    assert swr.recomputes >= 1 and swr.refresher_latencies_ms == []

    def never_refreshes(source):  # a decorator without any early refresh: recomputes only after a miss
        def wrapper(item):
            value = r.get(f"{ns.key('stampede')}:plain")
            if value is None:
                value = str(source(item))
                r.set(f"{ns.key('stampede')}:plain", value, px=600)
            return value
        return wrapper

    plain = lesson.stampede(r, ns.key("stampede"), "plain", clients=20, ttl=0.6, run_s=1.0, decorate=never_refreshes)
    assert plain.recomputes >= 2 and plain.before_expiry == 0 and plain.misses == plain.recomputes
    assert ns.keys(r) == []


def test_episodes_group_recomputes_by_expiry():
    result = lesson.StampedeResult("x", 1, 5, 0, 5, [1.0], recompute_starts_s=[1.0, 1.05, 2.0, 2.02, 3.1], ttl_s=1.0,
                                   early_refreshes_s=[0.999, 1.04, 1.99, 2.0, 2.01, 3.09])
    assert result.episodes == 3
    assert result.early_refreshes_per_episode == [2, 3, 1] and result.median_early_per_episode == 2


def test_stampede_counts_only_what_began_before_the_end_of_the_run(r, ns):
    """A client that passed its loop test in time but ran only after the end (starved of the CPU) reads a later
    moment of the cache: its recompute is not counted, nor its call."""
    def late(source):
        warmed = []

        def wrapper(item):
            if warmed:
                time.sleep(1.3)  # this call gets the CPU back only after the run's end (1.0 s)
            warmed.append(item)
            return source(item)
        return wrapper

    result = lesson.stampede(r, ns.key("stampede"), "late", clients=3, ttl=0.6, run_s=1.0, decorate=late)
    assert result.calls == 0 and result.recomputes == 0 and result.misses == 0 and result.latencies_ms == []
    assert ns.keys(r) == []


def test_reads_together_holds_each_threads_first_read_until_all_have_read(r, ns):
    together, order = lesson.ReadsTogether(r, 3), []

    def client(i):
        together.get(ns.key("k"))
        order.append(("read", i))
        together.get(ns.key("k"))  # a second read does not wait
        order.append(("again", i))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    threads[0].start(), threads[1].start()
    time.sleep(0.3)
    assert order == []  # two have read; they wait for the third
    threads[2].start()
    for t in threads:
        t.join(10)
    assert len(order) == 6 and together.ping()


# -- invalidation ---------------------------------------------------------------------------------------
def test_two_writers_leave_the_cache_stale_with_update_never_with_delete(r, ns):
    db = lesson.SlowDatabase(rows=20, latency_ms=30)
    product = cached(r, prefix=ns.key("cache"), ttl=300, strategy="none")(db.product)
    assert lesson.two_writers(r, db, product, "update", rounds=100) > 0
    assert lesson.two_writers(r, db, product, "delete", rounds=100) == 0
    assert db.latency_ms == 30
    with pytest.raises(labkit.ConfigError, match="update"):
        lesson.two_writers(r, db, product, "ignore")


def test_the_delete_race_each_way(r, ns):
    db = lesson.SlowDatabase(rows=20, latency_ms=0)
    served = {how: lesson.invalidation_race(r, db, ns.key("race"), how) for how in lesson.INVALIDATIONS}
    assert served == {"delete": 10.0, "delete, and again once the read has ended": 99.0,
                      "delete, and again while the read is on": 10.0, "lease": 99.0}
    assert ns.keys(r) == []
    with pytest.raises(labkit.ConfigError, match="how is one of"):
        lesson.invalidation_race(r, db, ns.key("race"), "delete thrice")


def test_a_leased_fill_is_refused_after_an_invalidation_and_kept_otherwise(r, ns):
    loads, writes_during_read = [], []

    def load(item):
        loads.append(item)
        for write in writes_during_read:
            write(item)
        return {"item": item}

    cache = lesson.LeasedCache(r, ns.key("leased"), load, ttl_s=60)
    assert cache.get(1) == cache.get(1) == {"item": 1} and loads == [1] and cache.refused == 0
    entry, lease = cache.keys(1)
    assert 0 < r.pttl(entry) <= 60_000 and not r.exists(lease) and entry.endswith(":{1}")
    cache.invalidate(1)
    writes_during_read.append(cache.invalidate)  # a writer invalidates while the read is on
    assert cache.get(1) == {"item": 1} and not r.exists(entry) and cache.refused == 1
    writes_during_read.clear()
    r.set(lease, "another-readers-token", px=60_000)  # another reader holds the lease: read, but do not fill
    assert cache.get(1) == {"item": 1} and not r.exists(entry) and r.get(lease) == "another-readers-token"
    cache.invalidate(1)
    assert ns.keys(r) == []


def test_zipf_top_share_is_one_over_zeta():
    assert abs(lesson.zipf_top_share(1.2) - 1 / 5.591582441) < 1e-5  # zeta(1.2) = 5.5915824...
    assert abs(lesson.zipf_top_share(2.0) - 6 / math.pi**2) < 1e-6
    with pytest.raises(labkit.ConfigError, match="above 1"):
        lesson.zipf_top_share(1.0)


def test_zipf_readers_note_every_read():
    reads, requested, latencies, stop = [], [], [], threading.Event()
    workload = lesson.zipf_readers(reads.append, 100, requested, latencies, threads=2)
    runner = threading.Thread(target=workload, args=(stop,))
    runner.start()
    time.sleep(0.2)
    stop.set()
    runner.join(10)
    assert requested and len(requested) == len(latencies) and sorted(reads) == sorted(requested)
    assert max(requested) <= 100 and requested.count(1) > len(requested) / 10  # skewed: pid 1 is the most read


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


def test_xfetch_rejects_beta_squared():
    result = lesson.check_xfetch(
        lambda now, expiry, delta, beta, rand: now - delta * beta**2 * math.log(rand) >= expiry)
    assert not result and "beta multiplies delta once" in result.message


def test_xfetch_rejects_an_answer_that_draws_its_own_random_number():
    import random

    result = lesson.check_xfetch(
        lambda now, expiry, delta, beta, rand: now - delta * beta * math.log(1 - random.random()) >= expiry)
    assert not result and "do not draw your own" in result.message


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


def test_single_flight_rejects_a_release_by_get_then_del(r, ns):
    def get_then_del(r, key, compute, lock_ttl_ms):
        import secrets

        token = secrets.token_hex(8)
        while True:
            value = r.get(key)
            if value is not None:
                return value
            if r.set(key + ":lock", token, nx=True, px=lock_ttl_ms):
                try:
                    value = r.get(key)
                    if value is None:
                        value = compute()
                        r.set(key, value, ex=60)
                    return value
                finally:
                    if r.get(key + ":lock") == token:  # two commands: the lock may change hands in between
                        r.delete(key + ":lock")
            time.sleep(0.005)

    result = lesson.check_single_flight(r, ns, get_then_del)
    assert not result and "between your GET of the lock and your DEL" in result.message
    assert ns.keys(r) == []


def test_single_flight_does_not_hang_on_waiters_that_never_see_a_value(r, ns, monkeypatch):
    monkeypatch.setattr(lesson, "SINGLE_FLIGHT_WAIT_S", 3)

    def never_stores(r, key, compute, lock_ttl_ms):
        if r.set(key + ":lock", "1", nx=True):  # no TTL, never released, the value never stored
            return compute()
        while r.get(key) is None:
            time.sleep(0.01)
        return r.get(key)

    started = time.monotonic()
    result = lesson.check_single_flight(r, ns, never_stores)
    assert not result and "still waiting after 3 s" in result.message and time.monotonic() - started < 15
    key = ns.key("check", "single-flight")
    r.set(key, "x")  # lets the waiters that the check left behind return
    deadline = time.monotonic() + 10
    while any(t.name.endswith("(caller)") for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    r.delete(key, key + ":lock")


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


# -- client-side caching (2.6) ----------------------------------------------------------------------------
@pytest.fixture
def own():
    """A server of the test's own: tracking and CONFIG SET on it touch no one else."""
    with spawn(modules=False) as server, contextlib.closing(server.client()) as client:
        yield server, client


def test_a_near_cache_serves_hits_locally_and_sees_another_clients_write(own):
    _, s = own
    s.set("price", "100")
    connecting = lesson.commands_served(s, "hello", "client|tracking", "get")
    with contextlib.closing(lesson.near_cache(s)) as near:
        assert near.get("price") == "100" and lesson.tracking(s)["clients"] == 1
        assert lesson.served_since(s, connecting) == {"hello": 1, "client|tracking": 1, "get": 1}
        before = lesson.gets_served(s)
        assert [near.get("price") for _ in range(50)] == ["100"] * 50 and lesson.gets_served(s) == before
        s.set("price", "120")
        assert lesson.push_arrived(near) and near.get("price") == "120" and lesson.gets_served(s) == before + 1
        assert lesson.tracking_flags(near) == ["on"] and lesson.tracking_flags(s) == ["off"]
    assert lesson.tracking_clients(s, 0) == 0


def test_commands_served_counts_what_the_server_executed(own):
    _, s = own
    before = lesson.gets_served(s)
    counted = lesson.commands_served(s, "get", "mget", "hmget")
    s.get("a"), s.get("b"), s.mget("a", "b")  # MGET is not GET
    assert lesson.gets_served(s) == before + 2
    assert lesson.served_since(s, counted) == {"get": 2, "mget": 1, "hmget": 0}


def test_a_near_cache_keeps_allow_listed_replies_only_and_the_server_tracks_every_key_read(own):
    _, s = own
    s.hset("h", "f", "1")
    with contextlib.closing(lesson.near_cache(s)) as near:
        sent_before = lesson.commands_served(s, "hmget", "pttl", "get")
        for _ in range(5):
            near.hmget("h", "f"), near.pttl("h"), near.get("missing")
        assert lesson.served_since(s, sent_before) == {"hmget": 1, "pttl": 5, "get": 5}
        assert lesson.tracking(s)["total_keys"] == 2  # kept or not, both keys are tracked


def test_the_tracking_table_keeps_a_closed_connections_keys_until_they_are_written(own):
    _, s = own
    keys = [f"k{i}" for i in range(20)]
    s.mset({k: "x" for k in keys})
    with contextlib.closing(lesson.near_cache(s)) as reader:
        for k in keys:
            reader.get(k)
    assert lesson.tracking_clients(s, 0) == 0 and lesson.tracking(s)["total_keys"] == 20
    s.set(keys[0], "y")
    assert lesson.tracking(s)["total_keys"] == 19


def test_a_near_cache_flushes_and_tracks_again_after_a_kill(own):
    _, s = own
    s.set("price", "1")
    with contextlib.closing(lesson.near_cache(s)) as near:
        near.get("price")
        s.client_kill_filter(_id=near.client_id())
        assert lesson.tracking_clients(s, 0) == 0
        s.set("price", "2")  # pushed to nobody
        before = lesson.gets_served(s)
        assert near.get("price") == "2" and lesson.gets_served(s) == before + 1
        assert lesson.tracking_flags(near) == ["on"]


def test_a_held_link_holds_the_push_and_the_near_cache_serves_stale_meanwhile(own):
    server, s = own
    s.set("price", "1")
    with lesson.HeldLink(server.host, server.port) as link, \
            contextlib.closing(lesson.near_cache(s, port=link.port)) as far:
        assert far.get("price") == "1"
        with link.holding():
            s.set("price", "2")
            assert link.wait_held() and link.held == len(link.held_data) > 0
            assert link.held_data == b">2\r\n$10\r\ninvalidate\r\n*1\r\n$5\r\nprice\r\n"  # one RESP3 push
            assert far.get("price") == "1"  # stale: the invalidation is held in the network
        assert link.held_data == b"" and lesson.push_arrived(far) and far.get("price") == "2"
    assert lesson.tracking_clients(s, 0) == 0  # closing the link closed the relayed connection on the server


def test_a_held_link_reports_nothing_held_when_the_server_sent_nothing(own):
    server, s = own
    s.set("price", "1")
    with lesson.HeldLink(server.host, server.port) as link, \
            contextlib.closing(lesson.near_cache(s, port=link.port)) as far:
        far.get("price")
        with link.holding():
            s.set("other", "2")  # a key the near cache never read: nothing is pushed
            assert not link.wait_held(timeout=0.2) and far.get("price") == "1" and link.held == 0


def test_a_local_ttl_bounds_the_staleness_of_a_silent_connection_and_a_health_check_does_not(own):
    """On a link that delivers nothing, a near cache with a local TTL goes to the server once the TTL has run
    out (its health-check PING first); without one it keeps serving the old value and sends nothing."""
    server, s = own
    s.set("price", "1")
    with lesson.HeldLink(server.host, server.port) as link, \
            contextlib.closing(lesson.near_cache(s, port=link.port, ttl=0.3, health_check_interval=0.05)) as far:
        run = lesson.reads_through_a_silent_link(link, far, "price", lambda: s.set("price", "2"), s)
    stale = run.values[:run.before_any_sent]
    assert stale and stale == ["1"] * len(stale) and run.values[-1] == "2"
    assert run.first_sent == {"ping": 1, "get": 0} and run.sent_in_all == {"ping": 1, "get": 1}

    with lesson.HeldLink(server.host, server.port) as link, \
            contextlib.closing(lesson.near_cache(s, port=link.port, health_check_interval=0.05)) as far:
        run = lesson.reads_through_a_silent_link(link, far, "price", lambda: s.set("price", "3"), s, timeout=1.0)
    assert run.first_sent == {"ping": 0, "get": 0} and run.before_any_sent > 10  # silent for 1 s: nothing sent
    assert set(run.values[:run.before_any_sent]) == {"2"} and run.values[-1] == "3"  # new once the push arrived


def test_near_cache_rejects_a_negative_ttl_or_interval(own):
    _, s = own
    with pytest.raises(labkit.ConfigError, match="ttl"):
        lesson.near_cache(s, ttl=-1)
    with pytest.raises(labkit.ConfigError, match="health_check_interval"):
        lesson.near_cache(s, health_check_interval="often")


def test_tracking_table_is_bounded_by_tracking_table_max_keys(own):
    _, s = own
    keys = [f"k{i}" for i in range(150)]
    s.mset({k: "x" for k in keys})
    s.config_set("tracking-table-max-keys", 50)
    with contextlib.closing(lesson.near_cache(s)) as near:
        for k in keys:
            near.get(k)
        assert lesson.tracking(s)["total_keys"] <= 50
        before = lesson.gets_served(s)
        for k in keys:
            near.get(k)
        assert lesson.gets_served(s) - before >= 100  # the copies of evicted entries were invalidated


def test_broadcast_mode_adds_a_prefix_not_keys_and_pushes_writes_never_read(own):
    """The control the notebook runs: 50 reads of keys the table does not hold add 50 entries in the default
    mode, none in broadcast mode (only its prefix), and a write to a key never read is pushed in broadcast."""
    _, s = own
    s.mset({f"b{i}": "x" for i in range(100)})
    with contextlib.closing(lesson.near_cache(s)):  # another tracking client, as in the notebook
        added = {}
        for mode, options in (("default", ()), ("bcast", ("BCAST", "PREFIX", "b"))):
            with contextlib.closing(redis.Redis(**labkit.clients.connection_spec(s), protocol=3)) as watcher:
                before = lesson.tracking(s)
                watcher.execute_command("CLIENT", "TRACKING", "ON", *options)
                for i in range(50) if mode == "default" else range(50, 100):
                    watcher.get(f"b{i}")
                after = lesson.tracking(s)
                added[mode] = tuple(after[name] - before[name] for name in ("total_keys", "total_prefixes"))
                if mode == "bcast":
                    s.set("b-never-read", "y")
                    assert lesson.push_arrived(watcher)
    assert added == {"default": (50, 0), "bcast": (0, 1)}


def test_redis_py_accepts_by_its_own_rule():
    assert lesson.redis_py_accepts({"server": "redis", "version": "8.2.3"})
    assert lesson.redis_py_accepts({"server": b"redis", "version": b"7.4.0"})
    assert not lesson.redis_py_accepts({"server": "redis", "version": "7.0.15"})
    assert not lesson.redis_py_accepts({"server": "valkey", "version": "9.1.2"})


@pytest.mark.parametrize("engine", list(available_engines()))
def test_each_engine_row(engine):
    """valkey-py's cache works on every engine, a copy per connection; redis-py's where its rule accepts the
    server, one cache for the pool, else it refuses at the first command with its ConnectionError."""
    with spawn(engine, modules=False) as server, contextlib.closing(server.client()) as r:
        row = lesson.client_side_caching(r, capabilities(r))
        assert r.dbsize() == 0 and lesson.tracking(r)["clients"] == 0
    assert row.refusals["valkey-py"] is None and row.gets_during_hits["valkey-py"] == 0
    assert row.sees_the_write["valkey-py"]
    connections, gets = row.threads["valkey-py"]
    assert 1 <= connections <= lesson.THREADS and gets == connections
    if lesson.redis_py_accepts(row.hello):
        assert row.refusals["redis-py"] is None and row.gets_during_hits["redis-py"] == 0
        assert row.sees_the_write["redis-py"]
        assert 1 <= row.threads["redis-py"][0] <= lesson.THREADS and row.threads["redis-py"][1] == 1
    else:
        assert row.refusals["redis-py"] == ("ConnectionError: To maximize compatibility with all Redis products, "
                                            "client-side caching is supported by Redis 7.4 or later")
        assert row.gets_during_hits["redis-py"] is None and row.sees_the_write["redis-py"] is None
        assert row.threads["redis-py"] is None
    table = lesson.cache_table([row])
    assert table.count("\n") == 2 and row.version in table and f"{gets} GETs" in table
