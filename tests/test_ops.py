"""labkit.ops against real servers: the shared session server, and a spawned cluster for the prefix delete."""

import pytest
import redis

from labkit import ops
from labkit.errors import ConfigError, LabkitError
from labkit.server import capabilities, cluster


def test_scan_delete_takes_the_prefix_and_nothing_that_merely_starts_like_it(r, ns):
    users, archive = ns.key("users"), ns.key("users-archive")
    r.mset({f"{users}:{i}": i for i in range(1234)})
    r.mset({f"{archive}:{i}": i for i in range(10)} | {users: "the prefix itself"})
    seen = []
    assert ops.scan_delete(r, users, batch=500, progress=seen.append) == 1234
    assert seen == [500, 1000, 1234]
    assert sorted(ns.keys(r)) == sorted([users] + [f"{archive}:{i}" for i in range(10)])


def test_scan_delete_reads_glob_characters_literally(r, ns):
    tenant = ns.key("tenant-[eu]")
    r.mset({f"{tenant}:a": 1, f"{tenant}:b": 2, ns.key("tenant-e") + ":a": 3, ns.key("tenant-u") + ":a": 4})
    assert ops.scan_delete(r, tenant) == 2
    assert sorted(ns.keys(r)) == sorted([ns.key("tenant-e") + ":a", ns.key("tenant-u") + ":a"])


def test_scan_delete_finds_keys_on_every_node_of_a_cluster():
    with cluster(primaries=3, replicas=0) as c:
        rc = c.client()
        keys = [f"app:cache:{i}" for i in range(300)]
        for key in keys:
            rc.set(key, 1)
        rc.set("app:other", 1)
        assert len({rc.keyslot(k) for k in keys}) > 100  # spread over every node
        assert ops.scan_delete(rc, "app:cache", batch=50) == 300
        assert list(rc.scan_iter(count=1000)) == ["app:other"]  # SCAN on a cluster client visits every primary
        rc.close()


def test_memory_by_prefix_and_big_keys_compare_bytes_across_types(r, ns):
    r.rpush(ns.key("stats", "events"), *range(20_000))  # many small items: a compact list
    r.hset(ns.key("report", "export"), mapping={f"row{i}": "y" * 500 for i in range(1000)})  # fewer, bigger
    r.mset({ns.key("cache", i): "x" * 100 for i in range(50)})
    by_prefix = ops.memory_by_prefix(r, ns.pattern, depth=3)
    assert [row.prefix for row in by_prefix] == [ns.key("report"), ns.key("stats"), ns.key("cache")]
    assert [row.keys for row in by_prefix] == [1, 1, 50]
    report_bytes = r.memory_usage(ns.key("report", "export"))
    assert by_prefix[0].bytes == report_bytes > 500_000
    top = ops.big_keys(r, ns.pattern, top=2)
    assert top == [ops.BigKey(ns.key("report", "export"), "hash", report_bytes),
                   ops.BigKey(ns.key("stats", "events"), "list", r.memory_usage(ns.key("stats", "events")))]
    assert len(ops.big_keys(r, ns.pattern, top=100, count=7)) == 52


def test_ttl_report_counts_keys_that_never_expire_by_prefix(r, ns):
    r.mset({ns.key("session", i): i for i in range(30)})
    for i in range(10):
        r.set(ns.key("cache", i), i, ex=600)
    r.set(ns.key("cache", "forgotten"), 1)
    assert ops.ttl_report(r, ns.pattern, depth=3) == [
        ops.PrefixTTL(ns.key("session"), 30, 30), ops.PrefixTTL(ns.key("cache"), 11, 1)]


def test_prefix_of_and_escape_glob():
    assert ops.prefix_of("cache:user:42", 2) == "cache:user" and ops.prefix_of("flag", 2) == "flag"
    assert ops.escape_glob("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


@pytest.mark.parametrize(("call", "message"), [
    (lambda r: ops.scan_delete(r, "cache:"), "prefix must be a non-empty string not ending with ':'"),
    (lambda r: ops.scan_delete(r, ""), "prefix must be a non-empty string"),
    (lambda r: ops.scan_delete(r, "cache", batch=0), "batch must be an integer of at least 1"),
    (lambda r: ops.scan_delete(r, "cache", count=2.5), "count must be an integer of at least 1"),
    (lambda r: ops.memory_by_prefix(r, depth=0), "depth must be an integer of at least 1"),
    (lambda r: ops.memory_by_prefix(r, samples=-1), "samples must be an integer of at least 0"),
    (lambda r: ops.big_keys(r, "", top=3), "match must be a non-empty string"),
    (lambda r: ops.big_keys(r, top=0), "top must be an integer of at least 1"),
    (lambda r: ops.ttl_report(r, count=0), "count must be an integer of at least 1"),
])
def test_bad_arguments_say_what_to_pass(r, call, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        call(r)


# -- cluster (lesson 13) ---------------------------------------------------------------------------------------
def test_keys_per_node_counts_every_primary(rc):
    keys = [f"lab:test:per-node:{i}" for i in range(300)]
    before = ops.keys_per_node(rc)
    rc.mset_nonatomic(dict.fromkeys(keys, 1))
    after = ops.keys_per_node(rc)
    rc.delete(*keys)
    assert len(after) == 3 and sum(after.values()) - sum(before.values()) == 300
    assert all(after[node] > before[node] for node in after)


def test_cluster_errors_counts_the_redirects_the_nodes_sent(rc):
    key = "lab:test:redirect"
    owner = rc.get_node_from_key(key)
    other = next(node for node in rc.get_primaries() if node.name != owner.name)
    before = ops.cluster_errors(rc)
    with pytest.raises(redis.exceptions.MovedError):
        rc.get_redis_connection(other).get(key)
    with pytest.raises(redis.exceptions.ResponseError, match=r"hash to the same slot"):
        rc.get_redis_connection(owner).mget(key, key + "x{other}")
    after = ops.cluster_errors(rc)
    assert set(after) == set(ops.CLUSTER_ERRORS)
    assert after["MOVED"] - before["MOVED"] == 1 and after["CROSSSLOT"] - before["CROSSSLOT"] == 1
    assert after["ASK"] == before["ASK"] and after["TRYAGAIN"] == before["TRYAGAIN"]


def test_hot_slots_finds_the_slot_that_gets_the_traffic(rc):
    hot, cold = "lab:test:{hot-slot}:k", [f"lab:test:cold:{i}" for i in range(50)]
    rc.mset_nonatomic(dict.fromkeys([hot, *cold], 1))
    if not capabilities(rc.get_redis_connection(rc.get_default_node())).slot_stats:  # Redis 7.0
        with pytest.raises(LabkitError, match=r"cannot report slot statistics.*Valkey 8\.0 or Redis 8\.0"):
            ops.hot_slots(rc, by="network-bytes-in")
        return
    with pytest.raises(LabkitError, match="cluster-slot-stats-enabled"):  # off by default: nothing was counted
        ops.hot_slots(rc, by="network-bytes-in")
    rc.config_set("cluster-slot-stats-enabled", "yes", target_nodes=rc.PRIMARIES)
    try:
        with rc.pipeline() as pipe:
            for _ in range(2000):
                pipe.get(hot)
            pipe.execute()
        top = ops.hot_slots(rc, by="network-bytes-in", limit=2)
    finally:
        rc.config_set("cluster-slot-stats-enabled", "no", target_nodes=rc.PRIMARIES)
    rc.delete(hot, *cold)
    assert len(top) == 2 and top[0].slot == rc.keyslot(hot) and top[0].node == rc.get_node_from_key(hot).name
    assert top[0].network_bytes_in > 10 * top[1].network_bytes_in
    by_keys = ops.hot_slots(rc, by="key-count", limit=5)
    assert [s.key_count for s in by_keys] == sorted((s.key_count for s in by_keys), reverse=True)


def test_cluster_helpers_want_a_cluster_client_and_known_metrics(rc, r):
    for helper in (ops.keys_per_node, ops.cluster_errors, ops.hot_slots):
        with pytest.raises(ConfigError, match="RedisCluster"):
            helper(r)
    with pytest.raises(ConfigError, match="by must be one of"):
        ops.hot_slots(rc, by="requests")
    with pytest.raises(ConfigError, match="limit"):
        ops.hot_slots(rc, limit=0)
