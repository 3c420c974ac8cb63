"""Bad input, everywhere: each public entry point of each pattern module, fed garbage for one argument at a
time (the others valid), must raise `ConfigError` (a ValueError) whose message names that argument, before
it writes anything. One table; rows of the other half of issue 27 that still fail are marked xfail(strict)."""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import labkit
from labkit import (
    ConfigError,
    cache,
    keys,
    locks,
    ops,
    pubsub,
    ratelimit,
    replication,
    sessions,
    streams,
    vectors,
    widgets,
    workshop,
)
from labkit.lessons import l11_connections_and_operations as l11
from labkit.server import Server, capabilities, cluster, nodes, replicated, spawn
from labkit.server.topology import Cluster

# -- garbage, by what the argument should be ------------------------------------------------------------
NAME = [None, "", 5, ["a"], b"raw"]  # a non-empty string
PREFIX = [None, "", "ends:", 5]  # a key prefix, labkit adds the ':'
COUNT = [None, "", "5", -1, 0, 0.5, math.nan, [5], True]  # an integer of at least 1
COUNT0 = [None, "5", -1, 0.5, math.nan, [5], True]  # an integer of at least 0
SECONDS = [None, "", "5", -1, 0, 0.0001, math.nan, math.inf, [5]]  # a duration of at least 1 ms
SECONDS0 = ["5", -1, 0.0001, math.nan, math.inf, [5]]  # the same, or 0
MS = [None, "5", -1, 0, 0.5, math.nan, [5]]  # whole milliseconds, at least 1
NUMBER = [None, "", "5", math.nan, math.inf, [5]]  # a finite number (each row adds its out-of-range values)
CALLABLE = [None, "print", 5]
TEXT_LIST = ["a sentence, not a list", [None], [5]]

LEARNER = ["", "a:b", "a*b", "Ada", "l01", "9lives", "x" * 33, 5]  # a learner's name (lowercase, no ':' or '*')
LEARNERS = [None, 0, -1, 501, True, 2.5, "", "ada", [], ["ada", "ada"]]  # a count, or a list of names

PROMPT = "How do I reset my password?"  # in the shipped corpus: no model needed
SEAT = workshop.Seat("ada", "pw", "redis://ada:pw@127.0.0.1:6379/0")


@dataclass
class World:
    """Valid things to call entry points with, on the shared server, under one namespace."""

    r: Any
    ns: labkit.Namespace
    index: str
    store: sessions.SessionStore
    worker: streams.Worker
    semantic: vectors.SemanticCache
    limiter: ratelimit.Limiter
    lock: locks.Lock
    fenced: locks.FencedStore
    feed: pubsub.PresenceFeed
    topo: Cluster  # one primary serving every slot: for the cluster helpers
    rc: Any


@pytest.fixture(scope="module")
def world():
    r = labkit.connect()
    ns = labkit.Namespace(f"test-{uuid.uuid4().hex[:10]}")
    index = ns.key("idx")
    search = capabilities(r).search  # without it (Redis 7.0) the rows that need an index are skipped, saying why
    if search:
        vectors.create_index(r, index, prefix=ns.key("doc") + ":", dim=4, algorithm="FLAT")
    streams.ensure_group(r, ns.key("{s}"), "g")
    semantic = vectors.SemanticCache(r, name=ns.key("sc"), embedder=vectors.Embedder(precomputed=True),
                                     prefix=ns.key("sc") + ":") if search else None
    topo = cluster(primaries=1, replicas=0, node_timeout_ms=5000)
    rc = topo.client()
    yield World(r, ns, index, sessions.SessionStore(r, prefix=ns.key("session")),
                streams.Worker(r, ns.key("{s}"), "g", "c", print), semantic,
                ratelimit.FixedWindow(r, 10, 1, prefix=ns.key("rl")), locks.Lock(r, "job", prefix=ns.key("lock")),
                locks.FencedStore(r, "job", prefix=ns.key("fenced")),
                pubsub.PresenceFeed(r, "room", prefix=ns.key("p")), topo, rc)
    rc.close()
    topo.stop()
    if search:
        semantic.drop()
        vectors.drop_indexes(r, ns.prefix)
    ns.cleanup(r)
    r.close()


Call = Callable[[World, Any], object]
UNREACHABLE_TRIO = [redis.Redis(port=port) for port in (1, 2, 3)]  # three servers; the checks run before any call
NOT_A_CLUSTER = [None, "redis://127.0.0.1:6379", 5, redis.Redis(port=1)]  # a plain client is not a RedisCluster
NOT_A_SERVER = [None, "redis://127.0.0.1:6379", 5, redis.Redis(port=1)]  # a client is not a labkit Server
SLOT = [None, "0", -1, 16384, 1.5, True]  # a hash slot: an integer from 0 to 16383


@dataclass
class Row:
    """One entry point and one of its arguments: `call(world, value)` passes `value` as that argument."""

    entry: str
    arg: str
    call: Call
    garbage: list
    marks: tuple = ()


def _subscriber(**kwargs: Any) -> Call:
    def call(w: World, v: Any) -> None:
        options = {"name": w.ns.key("sub")} | {k: (v if f is None else f(v)) for k, f in kwargs.items()}
        channels = options.pop("channels", (w.ns.key("ch"),))
        pubsub.Subscriber(w.r, *channels, **options).close()
    return call


def _listen(**kwargs: Any) -> Call:
    def call(w: World, v: Any) -> None:
        stop = asyncio.Event()
        stop.set()  # checked arguments are refused at once; unchecked ones must not leave it listening
        options = {"url": "redis://127.0.0.1:1", "channel": "c", "handler": print, "stop": stop} | {
            k: v for k in kwargs}
        asyncio.run(pubsub.listen(**options))
    return call


ROWS = [
    # -- cache --------------------------------------------------------------------------------------------
    Row("cached", "prefix", lambda w, v: cache.cached(w.r, prefix=v, ttl=60), PREFIX),
    Row("cached", "ttl", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=v), SECONDS),
    Row("cached", "strategy", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=60, strategy=v),
        [None, "", "fast", 5]),
    Row("cached", "beta", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=60, beta=v), [*NUMBER, 0, -1]),
    Row("cached", "stale_ttl", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=60, strategy="swr",
                                                         stale_ttl=v), SECONDS0),
    Row("cached", "lock_ttl", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=60, lock_ttl=v), SECONDS),
    Row("cached", "jitter", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=60, jitter=v), [*NUMBER, -0.1, 1]),
    Row("cached", "negative_ttl", lambda w, v: cache.cached(w.r, prefix=w.ns.key("c"), ttl=60, negative_ttl=v),
        [v for v in SECONDS if v is not None]),  # None: the default, as long as ttl
    # -- sessions -----------------------------------------------------------------------------------------
    Row("SessionStore", "ttl", lambda w, v: sessions.SessionStore(w.r, ttl=v, prefix=w.ns.key("s")),
        [*SECONDS, 0.0015]),
    Row("SessionStore", "absolute_ttl", lambda w, v: sessions.SessionStore(w.r, ttl=1, absolute_ttl=v,
                                                                           prefix=w.ns.key("s")), [*SECONDS, 0.5]),
    Row("SessionStore", "prefix", lambda w, v: sessions.SessionStore(w.r, prefix=v), PREFIX),
    Row("SessionStore", "touch_every", lambda w, v: sessions.SessionStore(w.r, ttl=60, touch_every=v,
                                                                          prefix=w.ns.key("s")), [*SECONDS0, 60, 90]),
    Row("SessionStore", "functions", lambda w, v: sessions.SessionStore(w.r, functions=v, prefix=w.ns.key("s")),
        [None, "yes", 1, 0]),
    Row("SessionStore", "tag_secret", lambda w, v: sessions.SessionStore(w.r, tag_secret=v, prefix=w.ns.key("s")),
        [None, 5, ["k"]]),
    Row("SessionStore.create_anonymous", "theme", lambda w, v: w.store.create_anonymous(theme=v),
        [None, {"a": 1}, [1], True]),
    Row("SessionStore.create_anonymous", "user_id", lambda w, v: w.store.create_anonymous(user_id=v), ["admin", ""]),
    Row("SessionStore.login", "user_id", lambda w, v: w.store.login(w.store.create_anonymous(), v), NAME),
    Row("SessionStore.login", "session_id", lambda w, v: w.store.login(v, "grace"), [None, "", 5]),
    Row("SessionStore.create", "user_id", lambda w, v: w.store.create(v), NAME),
    Row("SessionStore.create", "theme", lambda w, v: w.store.create("u", theme=v), [None, {"a": 1}, [1], True, b"x"]),
    Row("SessionStore.update", "theme", lambda w, v: w.store.update(w.store.create("u"), theme=v), [None, {"a": 1}]),
    *[Row(f"SessionStore.{m}", "session_id", lambda w, v, m=m: getattr(w.store, m)(v), [None, "", 5])
      for m in ("get", "touch", "invalidate", "rotate", "key")],
    Row("SessionStore.update", "session_id", lambda w, v: w.store.update(v, theme="x"), [None, "", 5]),
    *[Row(f"SessionStore.{m}", "user_id", lambda w, v, m=m: getattr(w.store, m)(v), NAME)
      for m in ("sessions_of", "invalidate_user", "user_key", "new_id", "tag")],
    # -- ratelimit ----------------------------------------------------------------------------------------
    *[Row(f"{cls.__name__}", "limit", lambda w, v, cls=cls: cls(w.r, v, 1, prefix=w.ns.key("rl")), COUNT)
      for cls in (ratelimit.FixedWindow, ratelimit.SlidingLog, ratelimit.SlidingWindowCounter)],
    *[Row(f"{cls.__name__}", "window", lambda w, v, cls=cls: cls(w.r, 10, v, prefix=w.ns.key("rl")),
          [*SECONDS, 0.0015]) for cls in (ratelimit.FixedWindow, ratelimit.SlidingLog, ratelimit.SlidingWindowCounter)],
    *[Row(f"{cls.__name__}", "rate", lambda w, v, cls=cls: cls(w.r, v, 10, prefix=w.ns.key("rl")), [*NUMBER, 0, -1])
      for cls in (ratelimit.TokenBucket, ratelimit.GCRA)],
    *[Row(f"{cls.__name__}", "burst", lambda w, v, cls=cls: cls(w.r, 1, v, prefix=w.ns.key("rl")), COUNT)
      for cls in (ratelimit.TokenBucket, ratelimit.GCRA)],
    Row("FixedWindow", "prefix", lambda w, v: ratelimit.FixedWindow(w.r, 10, 1, prefix=v), PREFIX),
    Row("Limiter.allow", "key", lambda w, v: w.limiter.allow(v), NAME),
    Row("Limiter.allow", "cost", lambda w, v: w.limiter.allow("k", v), [*COUNT, 11]),
    Row("Limiter.allow_at", "now_ms", lambda w, v: w.limiter.allow_at("k", v),
        [None, "", "5", -1, 0.5, math.nan, True]),
    Row("Limiter.allow_at", "key", lambda w, v: w.limiter.allow_at(v, 1_795_000_000_000), NAME),
    Row("Decision.headers", "style", lambda w, v: ratelimit.Decision(True, 1, 0, 1, 2).headers(v),
        [None, "", "ietf", 5]),
    # -- pubsub -------------------------------------------------------------------------------------------
    Row("Subscriber", "channel", _subscriber(channels=lambda v: (v,)), NAME),
    Row("Subscriber", "pattern", _subscriber(patterns=lambda v: [v]), NAME),
    Row("Subscriber", "shard channel", _subscriber(shard_channels=lambda v: [v]), NAME),
    Row("Subscriber", "name", _subscriber(name=None), NAME[1:]),  # None: a unique name of its own
    Row("Subscriber", "on_message", _subscriber(on_message=None), ["print", 5]),
    Row("Subscriber", "on_connect", _subscriber(on_connect=None), ["print", 5]),
    Row("backoff_delays", "base", lambda w, v: pubsub.backoff_delays(base=v), [*NUMBER, 0, -1]),
    Row("backoff_delays", "cap", lambda w, v: pubsub.backoff_delays(base=0.5, cap=v), [*NUMBER, 0.1]),
    Row("PresenceFeed", "room", lambda w, v: pubsub.PresenceFeed(w.r, v, prefix=w.ns.key("p")), NAME),
    Row("PresenceFeed", "prefix", lambda w, v: pubsub.PresenceFeed(w.r, "room", prefix=v), PREFIX),
    Row("PresenceFeed", "r", lambda w, v: pubsub.PresenceFeed(v, "room", prefix=w.ns.key("p")),
        [None, "redis://127.0.0.1:6379", 5]),
    Row("PresenceFeed.join", "user", lambda w, v: w.feed.join(v), NAME),
    Row("PresenceFeed.leave", "user", lambda w, v: w.feed.leave(v), NAME),
    Row("PresenceFeed.heartbeat", "user", lambda w, v: w.feed.heartbeat(v), NAME),
    Row("PresenceFeed.heartbeat", "now", lambda w, v: w.feed.heartbeat("ada", now=v), [*NUMBER[1:], -1]),
    Row("PresenceFeed.sweep", "max_age", lambda w, v: w.feed.sweep(v), SECONDS),
    Row("PresenceFeed.sweep", "now", lambda w, v: w.feed.sweep(5, now=v), [*NUMBER[1:], -1]),
    Row("InvalidatedCache", "channel", lambda w, v: pubsub.InvalidatedCache(w.r, v, ttl=1).close(), NAME),
    Row("InvalidatedCache", "ttl", lambda w, v: pubsub.InvalidatedCache(w.r, w.ns.key("inv"), ttl=v).close(),
        SECONDS[1:]),  # None: entries never age out
    Row("InvalidatedCache.write", "key", lambda w, v: pubsub.InvalidatedCache.write(w.r, w.ns.key("inv"), v, "x"),
        NAME),
    Row("Subscriber", "health_check", _subscriber(health_check=None), SECONDS[1:]),  # None: no health check
    Row("listen", "channel", _listen(channel=None), NAME),
    Row("listen", "handler", _listen(handler=None), CALLABLE),
    Row("listen", "url", _listen(url=None), [None, "", 5]),
    # -- streams ------------------------------------------------------------------------------------------
    Row("ensure_group", "stream", lambda w, v: streams.ensure_group(w.r, v, "g"), NAME),
    Row("ensure_group", "group", lambda w, v: streams.ensure_group(w.r, w.ns.key("s2"), v), NAME),
    Row("ensure_group", "start", lambda w, v: streams.ensure_group(w.r, w.ns.key("s2"), "g", v), NAME),
    *[Row("Worker", arg, lambda w, v, arg=arg: streams.Worker(
        w.r, **({"stream": w.ns.key("{s}"), "group": "g", "consumer": "c", "handler": print} | {arg: v})), NAME)
      for arg in ("stream", "group", "consumer", "dead_letter") if arg != "dead_letter"],
    Row("Worker", "dead_letter", lambda w, v: streams.Worker(w.r, w.ns.key("{s}"), "g", "c", print, dead_letter=v),
        ["", 5, ["a"]]),
    Row("Worker", "handler", lambda w, v: streams.Worker(w.r, w.ns.key("{s}"), "g", "c", v), CALLABLE),
    Row("partition", "stream", lambda w, v: streams.partition(v, "acct-1", 4), NAME),
    Row("partition", "key", lambda w, v: streams.partition(w.ns.key("s"), v, 4), NAME),
    Row("partition", "partitions", lambda w, v: streams.partition(w.ns.key("s"), "acct-1", v), COUNT),
    *[Row("Worker", arg, lambda w, v, arg=arg: streams.Worker(w.r, w.ns.key("{s}"), "g", "c", print, **{arg: v}),
          COUNT) for arg in ("batch", "max_deliveries")],
    Row("Worker", "block_ms", lambda w, v: streams.Worker(w.r, w.ns.key("{s}"), "g", "c", print, block_ms=v), COUNT0),
    Row("Worker", "claim_idle_ms", lambda w, v: streams.Worker(w.r, w.ns.key("{s}"), "g", "c", print,
                                                               claim_idle_ms=v), MS),
    Row("Worker.reclaim", "max_pages", lambda w, v: w.worker.reclaim(v), COUNT),
    Row("Worker.run", "max_messages", lambda w, v: w.worker.run(max_messages=v), [*COUNT[1:], 2.5]),
    Row("Worker.run", "until", lambda w, v: w.worker.run(max_messages=1, until=v), ["soon", 5]),
    Row("Worker.run", "group", lambda w, v: streams.Worker(w.r, w.ns.key("{s}"), v, "c", print).run(1), ["nogroup"]),
    Row("Worker.run", "stream", lambda w, v: streams.Worker(w.r, w.ns.key(v), "g", "c", print).run(1), ["{nostream}"]),
    Row("lag", "stream", lambda w, v: streams.lag(w.r, v, "g"), NAME),
    Row("lag", "group", lambda w, v: streams.lag(w.r, w.ns.key("{s}"), v), NAME),
    Row("group_info", "stream", lambda w, v: streams.group_info(w.r, v, "g"), NAME),
    Row("group_info", "group", lambda w, v: streams.group_info(w.r, w.ns.key("{s}"), v), NAME),
    # -- vectors ------------------------------------------------------------------------------------------
    Row("create_index", "name", lambda w, v: vectors.create_index(w.r, v, prefix=w.ns.key("d2") + ":"), NAME),
    Row("create_index", "prefix", lambda w, v: vectors.create_index(w.r, w.ns.key("i2"), prefix=v), NAME),
    Row("create_index", "dim", lambda w, v: vectors.create_index(w.r, w.ns.key("i2"), prefix="p:", dim=v), COUNT),
    *[Row("create_index", arg, lambda w, v, arg=arg: vectors.create_index(w.r, w.ns.key("i2"), prefix="p:", **{arg: v}),
          [None, "", "IVF", 5]) for arg in ("algorithm", "metric", "storage")],
    Row("create_index", "fields", lambda w, v: vectors.create_index(w.r, w.ns.key("i2"), prefix="p:", fields=v),
        ["tenant", ["tenant"], {"tenant": "GEO"}, {"tenant": None}, {"": "TAG"}]),
    Row("create_index", "M", lambda w, v: vectors.create_index(w.r, w.ns.key("i2"), prefix="p:", M=v), COUNT),
    Row("knn", "index", lambda w, v: vectors.knn(w.r, v, [1, 0, 0, 0]), NAME),
    Row("knn", "vector", lambda w, v: vectors.knn(w.r, w.index, v), [None, "text", [1, 0], [math.nan] * 4, [[1] * 4]]),
    Row("knn", "k", lambda w, v: vectors.knn(w.r, w.index, [1, 0, 0, 0], k=v), COUNT),
    Row("knn", "filter", lambda w, v: vectors.knn(w.r, w.index, [1, 0, 0, 0], filter=v), NAME),
    Row("knn", "ef_runtime", lambda w, v: vectors.knn(w.r, w.index, [1, 0, 0, 0], ef_runtime=v), COUNT[1:]),
    Row("knn", "return_fields", lambda w, v: vectors.knn(w.r, w.index, [1, 0, 0, 0], return_fields=v),
        ["text", [""], [5]]),
    Row("knn", "timeout_ms", lambda w, v: vectors.knn(w.r, w.index, [1, 0, 0, 0], timeout_ms=v), COUNT0[1:]),
    Row("vector_range", "index", lambda w, v: vectors.vector_range(w.r, v, [1, 0, 0, 0], 0.5), NAME),
    Row("vector_range", "radius", lambda w, v: vectors.vector_range(w.r, w.index, [1, 0, 0, 0], v), [*NUMBER, 0, -1]),
    Row("vector_range", "limit", lambda w, v: vectors.vector_range(w.r, w.index, [1, 0, 0, 0], 0.5, limit=v), COUNT),
    Row("vector_range", "vector", lambda w, v: vectors.vector_range(w.r, w.index, v, 0.5), [None, "text", [1, 0]]),
    Row("to_bytes", "vector", lambda w, v: vectors.to_bytes(v, 4), [None, "text", [1, 0], [math.inf] * 4]),
    Row("Embedder.embed", "texts", lambda w, v: vectors.Embedder(precomputed=True).embed(v), TEXT_LIST),
    Row("Embedder", "text", lambda w, v: vectors.Embedder(precomputed=True)(v), [None, 5, [PROMPT]]),
    Row("SemanticCache", "threshold", lambda w, v: vectors.SemanticCache(w.r, name=w.ns.key("sc2"), threshold=v),
        [*NUMBER, 0, 2, 0.95 + 1.1]),
    Row("SemanticCache", "ttl", lambda w, v: vectors.SemanticCache(w.r, name=w.ns.key("sc2"), ttl=v),
        [*SECONDS[1:], 0.0015]),
    Row("SemanticCache", "name", lambda w, v: vectors.SemanticCache(w.r, name=v), NAME),
    Row("SemanticCache", "embedder", lambda w, v: vectors.SemanticCache(w.r, name=w.ns.key("sc2"), embedder=v),
        ["model", 5, print]),
    Row("SemanticCache.get", "prompt", lambda w, v: w.semantic.get(v), NAME),
    Row("SemanticCache.get", "tenant", lambda w, v: w.semantic.get(PROMPT, tenant=v), [*NAME, " acme", "a\nb"]),
    Row("SemanticCache.put", "prompt", lambda w, v: w.semantic.put(v, "answer"), NAME),
    Row("SemanticCache.put", "response", lambda w, v: w.semantic.put(PROMPT, v), NAME),
    Row("SemanticCache.put", "tenant", lambda w, v: w.semantic.put(PROMPT, "answer", tenant=v), [*NAME, "acme "]),
    Row("drop_indexes", "prefix", lambda w, v: vectors.drop_indexes(w.r, v), NAME),
    Row("index_info", "index", lambda w, v: vectors.index_info(w.r, v), NAME),
    Row("wait_indexed", "timeout", lambda w, v: vectors.wait_indexed(w.r, w.index, timeout=v), SECONDS),
    # -- locks --------------------------------------------------------------------------------------------
    Row("Lock", "name", lambda w, v: locks.Lock(w.r, v, prefix=w.ns.key("l")), NAME),
    Row("Lock", "ttl_ms", lambda w, v: locks.Lock(w.r, "job", ttl_ms=v, prefix=w.ns.key("l")), MS),
    Row("Lock", "blocking_timeout", lambda w, v: locks.Lock(w.r, "job", blocking_timeout=v, prefix=w.ns.key("l")),
        SECONDS0),
    Row("Lock", "prefix", lambda w, v: locks.Lock(w.r, "job", prefix=v), PREFIX),
    Row("Lock.extend", "ttl_ms", lambda w, v: w.lock.extend(v), MS[1:]),
    Row("Redlock", "name", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, v), NAME),
    Row("Redlock", "ttl_ms", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, "job", ttl_ms=v), MS),
    Row("Redlock", "retries", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, "job", retries=v), COUNT0),
    Row("Redlock", "retry_delay_ms", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, "job", retry_delay_ms=v), COUNT0),
    Row("Redlock", "node_timeout_ms", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, "job", node_timeout_ms=v), MS),
    Row("Redlock", "drift_factor", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, "job", drift_factor=v),
        [*NUMBER, -1, 1]),
    Row("Redlock", "prefix", lambda w, v: locks.Redlock(UNREACHABLE_TRIO, "job", prefix=v), PREFIX),
    Row("FencedStore", "name", lambda w, v: locks.FencedStore(w.r, v, prefix=w.ns.key("f")), NAME),
    Row("FencedStore", "prefix", lambda w, v: locks.FencedStore(w.r, "job", prefix=v), PREFIX),
    Row("FencedStore.write", "token", lambda w, v: w.fenced.write(v, "x"), [None, "", "5", 0.5, math.nan, [5], True]),
    Row("FencedStore.write", "value", lambda w, v: w.fenced.write(1, v), [None, True, ["a"], {"a": 1}]),
    # -- ops (cluster) and the cluster topology ------------------------------------------------------------
    *[Row(name, "rc", lambda w, v, f=f: f(v), NOT_A_CLUSTER)
      for name, f in (("keys_per_node", ops.keys_per_node), ("cluster_errors", ops.cluster_errors),
                      ("hot_slots", ops.hot_slots))],
    Row("hot_slots", "by", lambda w, v: ops.hot_slots(w.rc, by=v), [None, "", "cpu", "requests", 5]),
    Row("hot_slots", "limit", lambda w, v: ops.hot_slots(w.rc, limit=v), COUNT),
    Row("Cluster.migrate_slots", "first", lambda w, v: w.topo.migrate_slots(v, 10, w.topo.primaries[0]), SLOT),
    Row("Cluster.migrate_slots", "last", lambda w, v: w.topo.migrate_slots(0, v, w.topo.primaries[0]), SLOT),
    Row("Cluster.migrate_slots", "target", lambda w, v: w.topo.migrate_slots(0, 10, v), [None, "node", 5]),
    Row("Cluster.migrate_slots", "timeout", lambda w, v: w.topo.migrate_slots(0, 10, w.topo.primaries[0],
                                                                              timeout=v), SECONDS),
    Row("Cluster.add_node", "replica_of", lambda w, v: w.topo.add_node(replica_of=v), ["node", 5]),
    Row("Cluster.remove_node", "node", lambda w, v: w.topo.remove_node(v), [None, "node", 5]),
    Row("Cluster.rebalance", "among", lambda w, v: w.topo.rebalance(among=v), [[], ["node"], [None]]),
    Row("Cluster.config_set", "directive", lambda w, v: w.topo.config_set(**v), [{}]),
    Row("Cluster.wait_healthy", "timeout", lambda w, v: w.topo.wait_healthy(v), SECONDS),
    # -- topologies and spawn: counts, and the directives labkit sets itself (refused before a server starts) -
    Row("replicated", "replicas", lambda w, v: replicated(v), COUNT),
    Row("nodes", "n", lambda w, v: nodes(v), COUNT),
    Row("cluster", "primaries", lambda w, v: cluster(v), COUNT),
    Row("cluster", "replicas", lambda w, v: cluster(1, v), COUNT0),
    *[Row("replicated", name, lambda w, v, name=name: replicated(1, **{name: v}), [value])
      for name, value in (("requirepass", "x"), ("requirepass", ""), ("replicaof", "127.0.0.1 1"), ("PORT", 7000),
                          ("dir", "/tmp/elsewhere"), ("masterauth", "x"), ("SlaveOf", "127.0.0.1 1"))],
    *[Row("nodes", name, lambda w, v, name=name: nodes(1, **{name: v}), [value])
      for name, value in (("port", 7000), ("Requirepass", "x"), ("logfile", ""))],
    *[Row("spawn", name, lambda w, v, name=name: spawn(modules=False, **{name: v}), [value])
      for name, value in (("port", 7005), ("requirepass", "x"), ("dir", "/tmp/elsewhere"), ("Dir", "/tmp/x"),
                          ("loadmodule", "/x.so"), ("daemonize", True), ("replicaof", "127.0.0.1 1"))],
    Row("Server", "config", lambda w, v: Server(modules=False, config=v), [{5: "x"}, {None: 1}]),
    Row("Server", "Port", lambda w, v: Server(modules=False, config={"Port": v}), [7000]),
    # -- replication --------------------------------------------------------------------------------------
    Row("retry", "call", lambda w, v: replication.retry(v, deadline_s=1), CALLABLE),
    Row("retry", "deadline_s", lambda w, v: replication.retry(lambda: 1, deadline_s=v), SECONDS),
    Row("retry", "base_s", lambda w, v: replication.retry(lambda: 1, deadline_s=1, base_s=v), SECONDS),
    Row("retry", "cap_s", lambda w, v: replication.retry(lambda: 1, deadline_s=1, base_s=0.05, cap_s=v),
        [*SECONDS, 0.01]),
    Row("retry", "retry_on", lambda w, v: replication.retry(lambda: 1, deadline_s=1, retry_on=v),
        [None, (), "ConnectionError", redis.ConnectionError, (5,), (redis.ConnectionError, int)]),
    # -- keys ---------------------------------------------------------------------------------------------
    Row("key", "parts", lambda w, v: keys.key("user", v), [None, "", "a:b", ["x"], b"raw", True]),
    Row("Namespace", "name", lambda w, v: keys.Namespace(v), [None, "", "Has Caps", "a:b", 5]),
    Row("Namespace.key", "parts", lambda w, v: w.ns.key("user", v), [None, "", "a:b", ["x"]]),
    Row("Namespace.keys", "count", lambda w, v: w.ns.keys(w.r, count=v), COUNT),
    Row("scan_unlink", "pattern", lambda w, v: keys.scan_unlink(w.r, v), NAME),
    Row("scan_unlink", "batch", lambda w, v: keys.scan_unlink(w.r, w.ns.key("none") + "*", batch=v), COUNT),
    Row("Namespace", "learner", lambda w, v: keys.Namespace("l00", learner=v), LEARNER),
    # -- workshop (refused before anything is written: no workshop opens on this shared server) -----------
    Row("create", "learners", lambda w, v: workshop.create(w.r, v), [*LEARNERS, *([n] for n in LEARNER)]),
    Row("create", "host", lambda w, v: workshop.create(w.r, 2, host=v), ["", "a b", "user@host", "h/0", 5]),
    Row("write_sheet", "seats", lambda w, v: workshop.write_sheet(v, "/nonexistent/sheet", "id"),
        [None, [], "ada", [5], (SEAT,)]),
    Row("write_sheet", "workshop_id", lambda w, v: workshop.write_sheet([SEAT], "/nonexistent/sheet", v), NAME),
    Row("reset", "learner", lambda w, v: workshop.reset(w.r, v), LEARNER),
    Row("as_learner", "name", lambda w, v: workshop.as_learner(v, "redis://ada:pw@127.0.0.1:1/0").__enter__(),
        LEARNER),
    Row("as_learner", "url", lambda w, v: workshop.as_learner("ada", v).__enter__(), [None, "", 5]),
    Row("record", "lesson", lambda w, v: workshop.record(v, "check_greeting", True, "fine"), NAME),
    Row("record", "check", lambda w, v: workshop.record("l00", v, True, "fine"), NAME),
    Row("record", "passed", lambda w, v: workshop.record("l00", "check_greeting", v, "fine"), [None, 1, "yes"]),
    Row("record", "message", lambda w, v: workshop.record("l00", "check_greeting", True, v), [None, 5, b"fine"]),
    # -- ops (persistence) --------------------------------------------------------------------------------
    Row("wait_for_aof_rewrite", "timeout_s", lambda w, v: ops.wait_for_aof_rewrite(w.r, timeout_s=v), SECONDS),
    # -- ops: connections, command logs, ACL (lesson 11) ----------------------------------------------------
    Row("connections", "name_prefix", lambda w, v: ops.connections(w.r, name_prefix=v), NAME[1:]),  # None: all
    Row("slow_commands", "count", lambda w, v: ops.slow_commands(w.r, v), COUNT),
    Row("slow_commands", "log", lambda w, v: ops.slow_commands(w.r, log=v), [None, "", "fast", 5]),
    Row("acl_dryrun", "user", lambda w, v: ops.acl_dryrun(w.r, v, "GET", "k"), NAME),
    Row("acl_dryrun", "command", lambda w, v: ops.acl_dryrun(w.r, "default", *v), [[], [None], [b"GET"], [True]]),
    Row("acl_failures", "count", lambda w, v: ops.acl_failures(w.r, v), COUNT),
    # -- lesson 11: refused before it resets the server's ACL LOG (a cluster node stands in for a Server) -------
    Row("password_guessing", "srv", lambda w, v: l11.password_guessing(v), NOT_A_SERVER),
    Row("password_guessing", "guesses", lambda w, v: l11.password_guessing(w.topo.primaries[0], guesses=v),
        [*COUNT, 10]),  # 10: fewer than the 40 rounds
    Row("password_guessing", "rounds", lambda w, v: l11.password_guessing(w.topo.primaries[0], rounds=v),
        [*COUNT, 3000]),  # 3000: more than the 2000 guesses
    Row("password_guessing", "depth", lambda w, v: l11.password_guessing(w.topo.primaries[0], depth=v), COUNT),
    Row("password_guessing", "flood", lambda w, v: l11.password_guessing(w.topo.primaries[0], flood=v), COUNT0),
    # -- widgets: refused before the first sample --------------------------------------------------------------
    Row("LiveMonitor", "sample", lambda w, v: widgets.LiveMonitor(v), [None, "INFO", 5]),
    Row("LiveMonitor", "duration", lambda w, v: widgets.LiveMonitor(dict, duration=v), SECONDS),
    Row("LiveMonitor", "interval", lambda w, v: widgets.LiveMonitor(dict, interval=v), SECONDS),
    Row("ProgressBoard", "interval", lambda w, v: widgets.ProgressBoard(w.r, interval=v), SECONDS),
]


# The vectors entry points that read an index (or make one) before they can judge an argument.
NEED_SEARCH = {"create_index", "knn", "vector_range", "SemanticCache", "SemanticCache.get", "SemanticCache.put",
               "drop_indexes", "index_info"}


def _cases() -> list:
    cases = []
    for row in ROWS:
        marks = [*row.marks, pytest.mark.needs("search")] if row.entry in NEED_SEARCH else row.marks
        for value in row.garbage:
            cases.append(pytest.param(row, value, id=f"{row.entry}-{row.arg}={value!r:.24}", marks=marks))
    return cases


@pytest.mark.parametrize(("row", "value"), _cases())
def test_garbage_is_a_config_error_naming_the_argument(world, row, value):
    with pytest.raises(ConfigError) as raised:
        row.call(world, value)
    assert row.arg in str(raised.value), f"{row.entry}({row.arg}={value!r}): the message does not name {row.arg!r}"
    assert isinstance(raised.value, ValueError)


def test_the_table_covers_every_pattern_module():
    covered = {row.call.__module__ for row in ROWS}
    assert covered == {__name__}
    entries = {row.entry.split(".")[0] for row in ROWS}
    for module, names in {cache: ["cached"], sessions: ["SessionStore"], streams: ["Worker", "lag", "ensure_group"],
                          ratelimit: ["FixedWindow", "TokenBucket", "GCRA", "SlidingLog", "SlidingWindowCounter"],
                          pubsub: ["Subscriber", "PresenceFeed", "listen"], locks: ["Lock", "Redlock", "FencedStore"],
                          vectors: ["knn", "SemanticCache", "create_index", "Embedder"], keys: ["key", "Namespace"],
                          workshop: ["create", "write_sheet", "reset", "as_learner", "record"],
                          ops: ["keys_per_node", "cluster_errors", "hot_slots", "connections", "slow_commands",
                                "acl_dryrun", "acl_failures"], cluster: ["Cluster"], replication: ["retry"]}.items():
        assert set(names) <= entries, f"{module.__name__}: no rows for {set(names) - entries}"


def written(world) -> list[str]:
    """Keys under the world's namespace other than its own fixtures'."""
    ours = tuple(world.ns.key(part) for part in ("doc", "sc", "{s}", "session"))
    return sorted(k for k in world.ns.keys(world.r) if not k.startswith(ours))


def test_nothing_was_written_by_refused_calls(world):
    left = [k for k in written(world) if not k.startswith(world.ns.key("fenced"))]  # FencedStore: the next test
    assert left == [], f"refused calls wrote {left}"


def test_nothing_was_written_by_refused_fenced_writes(world):
    assert written(world) == [], f"refused calls wrote {written(world)}"


def test_no_refused_call_opened_a_workshop(world):
    assert not world.r.exists(workshop.WORKSHOP) and not world.r.exists(workshop.LEARNERS)
    assert not set(world.r.acl_users()) & {"ada", "learner01", "learner1"}
