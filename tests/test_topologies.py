"""Replication, Sentinel, Cluster and independent nodes, as real processes, with real failovers."""

import time

import pytest
import redis

import labkit
from labkit.server import cluster, nodes, replicated, sentinel
from labkit.server.process import ping_raw
from labkit.server.topology import wait_until

pytestmark = pytest.mark.slow


def test_replicated_copies_writes():
    with replicated(replicas=2) as topo:
        primary = topo.primary.client()
        primary.set("k", "v")
        assert primary.wait(2, 30_000) == 2  # as soon as both replicas have it (this connection's writes)
        assert [r.client().get("k") for r in topo.replicas] == ["v", "v"]
        assert all(r.client().info("replication")["role"] == "slave" for r in topo.replicas)


def test_sentinel_fails_over_after_the_primary_is_killed():
    with sentinel(replicas=1, sentinels=3, down_after_ms=1000) as topo:
        assert topo.master_address() == ("127.0.0.1", topo.primary.port)
        client = topo.master_for(socket_timeout=1)
        with client.pipeline(transaction=False) as pipe:  # one connection: WAIT counts its writes
            assert pipe.set("before", "1").wait(1, 30_000).execute() == [True, 1]
        topo.primary.kill()
        assert topo.wait_for_new_primary(topo.primary, timeout=30) is topo.replicas[0]
        assert topo.master_for().get("before") == "1"


def test_cluster_serves_keys_and_fails_over_after_a_kill():
    with cluster(primaries=3, replicas=1, node_timeout_ms=1000) as topo:
        rc = topo.client()
        rc.mset_nonatomic({f"key{i}": i for i in range(100)})
        victim = topo.primary_for("key7")
        direct = victim.client()  # WAIT counts the writes of the connection that sends it
        direct.set("key7", "7")
        assert direct.wait(1, 30_000) == 1
        victim.kill()
        wait_until(lambda: topo.primary_for("key7") is not victim, 30, "a replica to take over")
        topo.wait_healthy()
        assert topo.client().get("key7") == "7"


# A helper that probes a paused member answers within about a second (the probe's timeout, once); a
# default client would wait 11 attempts x 5 s. The bound is far from both.
ANSWERS_WITHIN_S = 8.0


def timed(call):
    """(what `call()` returned or raised, seconds it took)."""
    started = time.monotonic()
    try:
        outcome = call()
    except Exception as err:  # the outcome is the error
        outcome = err
    return outcome, time.monotonic() - started


def test_cluster_helpers_answer_within_seconds_with_a_member_paused():
    with cluster(primaries=3, replicas=1, node_timeout_ms=60_000) as topo:  # no failover during the test
        owner = topo.primary_for("key7")
        replica = next(n for n in topo.replicas if n is not owner)
        replica.pause()
        try:
            found, took = timed(lambda: topo.primary_for("key7"))
            assert found is owner and took < ANSWERS_WITHIN_S
            health, took = timed(lambda: topo.wait_healthy(timeout=1))
            assert isinstance(health, labkit.ServerUnavailable) and took < ANSWERS_WITHIN_S
            info, took = timed(replica.info)
            assert isinstance(info, redis.TimeoutError) and took < ANSWERS_WITHIN_S
            owner.pause()
            found, took = timed(lambda: topo.primary_for("key7"))
            assert isinstance(found, labkit.ServerUnavailable) and took < ANSWERS_WITHIN_S
        finally:
            owner.resume()
            replica.resume()


def test_sentinel_helpers_answer_within_seconds_with_a_sentinel_paused():
    with sentinel(replicas=1, sentinels=3, down_after_ms=60_000) as topo:  # no failover during the test
        topo.sentinels[0].pause()
        try:
            address, took = timed(topo.master_address)
            assert address == ("127.0.0.1", topo.primary.port) and took < ANSWERS_WITHIN_S
            promoted, took = timed(lambda: topo.wait_for_new_primary(topo.primary, timeout=1))
            assert isinstance(promoted, labkit.ServerUnavailable) and took < ANSWERS_WITHIN_S
        finally:
            topo.sentinels[0].resume()


def test_sentinels_know_each_other_from_the_start_and_take_the_settings_given():
    started = time.monotonic()
    with sentinel(replicas=2, sentinels=2, quorum=1, down_after_ms=None, failover_timeout_ms=None) as topo:
        took = time.monotonic() - started
        for member in topo.sentinels:
            state = member.probe().sentinel_master(topo.master_name)
            assert (state["num-other-sentinels"], state["num-slaves"], state["quorum"]) == (1, 2, 1)
            assert (state["down-after-milliseconds"], state["failover-timeout"]) == (30_000, 180_000)  # the defaults
        assert topo.majority == 2
    # without the known-sentinel lines the sentinels find each other through hello messages sent every 2 s
    # on the primary's __sentinel__:hello channel: at least 2 s; connecting takes them about 1 s
    assert took < 10


def test_nodes_are_independent():
    with nodes(3) as servers:
        assert len(servers) == 3 and len({s.port for s in servers}) == 3
        servers[0].client().set("only-here", 1)
        assert [s.client().exists("only-here") for s in servers] == [1, 0, 0]


def test_replicated_makes_its_data_directories_under_root(tmp_path):
    with replicated(replicas=1, root=tmp_path) as topo:
        assert {s.dir.parent for s in topo.servers} == {tmp_path}
    assert list(tmp_path.iterdir()) == []


def test_topology_cleans_up_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"), replicated(replicas=1) as topo:
        members = list(topo.servers)
        raise RuntimeError("boom")
    assert not any(ping_raw(s.host, s.port) for s in members)
    assert not any(s.dir.exists() for s in members)


def test_bad_sizes_are_config_errors():
    for build in (lambda: replicated(0), lambda: cluster(0), lambda: nodes(0), lambda: sentinel(sentinels=0)):
        with pytest.raises(labkit.ConfigError):
            build()


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"sentinels": "3"}, "sentinels"), ({"quorum": 0}, "quorum"), ({"sentinels": 2, "quorum": 3}, "quorum"),
    ({"quorum": "2"}, "quorum"), ({"quorum": True}, "quorum"), ({"down_after_ms": 0}, "down_after_ms"),
    ({"down_after_ms": 0.5}, "down_after_ms"), ({"failover_timeout_ms": "10s"}, "failover_timeout_ms"),
])
def test_bad_sentinel_settings_are_config_errors_before_anything_starts(kwargs, named):
    with pytest.raises(labkit.ConfigError, match=named):
        sentinel(**kwargs)
