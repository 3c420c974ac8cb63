"""Replication, Sentinel, Cluster and independent nodes, as real processes, with real failovers."""

import time

import pytest
import redis
from redis.crc import key_slot

import labkit
from labkit.server import available_engines, capabilities, cluster, nodes, replicated, sentinel
from labkit.server.process import ping_raw
from labkit.server.topology import _known_ports, wait_until

pytestmark = pytest.mark.slow
ENGINES = sorted(available_engines())  # each topology is run on every engine installed here


def _mode(info: dict) -> str:
    return info.get("server_mode") or info["redis_mode"]  # Valkey's name, else Redis's


@pytest.mark.parametrize("engine", ENGINES)
def test_replicated_copies_writes(engine):
    with replicated(replicas=2, engine=engine) as topo:
        assert all(s.engine.name == engine for s in topo.servers)
        primary = topo.primary.client()
        primary.set("k", "v")
        assert primary.wait(2, 30_000) == 2  # as soon as both replicas have it (this connection's writes)
        assert [r.client().get("k") for r in topo.replicas] == ["v", "v"]
        assert all(r.client().info("replication")["role"] == "slave" for r in topo.replicas)


@pytest.mark.parametrize("engine", ENGINES)
def test_sentinel_fails_over_after_the_primary_is_killed(engine):
    """The sentinels are the engine's own binary in sentinel mode."""
    with sentinel(replicas=1, sentinels=3, down_after_ms=1000, engine=engine) as topo:
        assert {s.engine.name for s in topo.servers} == {engine}
        assert all(_mode(s.info("server")) == "sentinel" for s in topo.sentinels)
        assert topo.master_address() == ("127.0.0.1", topo.primary.port)
        client = topo.master_for(socket_timeout=1)
        with client.pipeline(transaction=False) as pipe:  # one connection: WAIT counts its writes
            assert pipe.set("before", "1").wait(1, 30_000).execute() == [True, 1]
        topo.primary.kill()
        assert topo.wait_for_new_primary(topo.primary, timeout=30) is topo.replicas[0]
        assert topo.master_for().get("before") == "1"


@pytest.mark.parametrize("engine", ENGINES)
def test_cluster_serves_keys_and_fails_over_after_a_kill(engine):
    with cluster(primaries=3, replicas=1, node_timeout_ms=1000, engine=engine) as topo:
        assert capabilities(topo.primaries[0].client()).version == available_engines()[engine].version
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
        lines = topo.sentinel_config()
        assert f"sentinel monitor labmaster 127.0.0.1 {topo.primary.port} 1" in lines
        assert "sentinel auth-pass labmaster <password>" in lines and topo.primary.password not in "\n".join(lines)
        assert not any("down-after-milliseconds" in line for line in lines)  # None: the engine's default
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


def test_a_server_option_given_as_a_directive_is_a_config_error_that_says_what_to_pass():
    for build in (lambda: replicated(1, modules=False), lambda: nodes(2, port=7000), lambda: sentinel(password="x")):
        with pytest.raises(labkit.ConfigError, match=r"not a server directive.*pass directives only"):
            build()


# -- growing, shrinking and resharding a cluster ------------------------------------------------------------------
def _values(rc, keys):
    return rc.mget_nonatomic(keys)


def test_migrate_slots_moves_keys_step_by_step_and_every_primary_agrees():
    with cluster(primaries=3, replicas=1, node_timeout_ms=5000) as topo:
        rc = topo.client()
        keys = [f"key{i}" for i in range(2000)]
        rc.mset_nonatomic({k: k for k in keys})
        source, target = topo.owner(0), topo.owner(16383)
        moved = topo.migrate_slots(0, 1499, target, atomic=False)
        assert (moved.first, moved.last, moved.slots, moved.sources, moved.target) == (
            0, 1499, 1500, (source.port,), target.port)
        assert moved.keys == sum(1 for k in keys if key_slot(k.encode()) < 1500) and not moved.atomic
        assert all(topo.owner(s) is target for s in (0, 750, 1499)) and topo.owner(1500) is source
        assert sum(topo.slot_counts().values()) == 16384 and _values(rc, keys) == keys
        for replica in topo.replicas_of(target):  # replicas learn the new owner too
            wait_until(lambda r=replica: r.probe().execute_command("CLUSTER", "COUNTKEYSINSLOT", 0) ==
                       target.probe().execute_command("CLUSTER", "COUNTKEYSINSLOT", 0), 10, "the replica")
        rc.close()


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_atomic_migration_is_used_where_the_engine_has_it(engine):
    with cluster(primaries=2, replicas=0, node_timeout_ms=5000, engine=engine) as topo:
        caps = capabilities(topo.primaries[0].client())
        rc = topo.client()
        rc.mset_nonatomic({f"key{i}": i for i in range(300)})
        target = topo.owner(16383)
        if caps.atomic_slot_migration:
            assert topo.migrate_slots(0, 99, target, atomic=True).atomic
        else:
            with pytest.raises(labkit.ConfigError, match="MIGRATESLOTS"):
                topo.migrate_slots(0, 99, target, atomic=True)
        assert topo.migrate_slots(0, 199, target).atomic is caps.atomic_slot_migration
        assert topo.owner(199) is target and rc.get("key7") == "7"
        rc.close()


def test_add_rebalance_drain_and_remove_a_node_keep_every_key():
    with cluster(primaries=3, replicas=0, node_timeout_ms=5000) as topo:
        rc = topo.client()
        keys = [f"key{i}" for i in range(3000)]
        rc.mset_nonatomic({k: k for k in keys})
        fourth = topo.add_node()
        assert topo.slot_counts()[fourth] == 0 and fourth in topo.primaries and len(topo.servers) == 4
        topo.rebalance()
        assert sorted(topo.slot_counts().values()) == [4096] * 4 and _values(rc, keys) == keys
        with pytest.raises(labkit.ConfigError, match="still serves 4096 slots"):
            topo.remove_node(fourth)
        topo.rebalance(among=[n for n in topo.serving_primaries() if n is not fourth])
        assert fourth not in topo.serving_primaries()  # left without slots, it follows the node that took its last
        topo.remove_node(fourth)
        assert fourth not in topo.servers and not fourth.is_running() and len(topo.serving_primaries()) == 3
        rc.close()  # it knew the fourth node: its first command for a slot it had there would meet a closed port
        with topo.client() as fresh:
            assert sorted(topo.slot_counts().values()) == [5461, 5461, 5462] and _values(fresh, keys) == keys
        assert all(fourth.port not in _known_ports(n) for n in topo.servers)


def test_add_a_replica_and_remove_it():
    with cluster(primaries=2, replicas=0, node_timeout_ms=5000) as topo:
        primary = topo.primaries[0]
        extra = topo.add_node(replica_of=primary)
        assert topo.replicas_of(primary) == [extra] and extra in topo.replicas
        topo.remove_node(extra)
        assert topo.replicas_of(primary) == [] and topo.replicas == []


def test_config_set_reaches_every_member_and_survives_a_restart():
    with cluster(primaries=1, replicas=1, node_timeout_ms=5000) as topo:
        topo.config_set(cluster_node_timeout=4321, cluster_require_full_coverage=False)
        replica = topo.replicas[0]
        replica.restart()
        for node in topo.servers:
            got = node.client().config_get("cluster-node-timeout", "cluster-require-full-coverage")
            assert got == {"cluster-node-timeout": "4321", "cluster-require-full-coverage": "no"}
        topo.wait_healthy()


def test_roles_are_asked_now_not_remembered():
    with cluster(primaries=3, replicas=1, node_timeout_ms=500) as topo:
        victim = topo.primaries[0]
        replica = topo.replicas_of(victim)[0]
        victim.kill()
        wait_until(lambda: replica in topo.serving_primaries(), 30, "the replica to take over")
        assert victim not in topo.serving_primaries() and victim in topo.primaries  # the list keeps creation roles
        victim.restart()
        topo.wait_healthy()
        assert topo.replicas_of(replica) == [victim]


def test_cluster_helpers_refuse_bad_arguments_before_touching_anything():
    with cluster(primaries=2, replicas=0, node_timeout_ms=5000) as topo:
        target = topo.primaries[1]
        for first, last in ((-1, 5), (0, 16384), (10, 5), (1.5, 3), (True, 3)):
            with pytest.raises(labkit.ConfigError):
                topo.migrate_slots(first, last, target)
        with pytest.raises(labkit.ConfigError, match="member of this cluster"):
            topo.migrate_slots(0, 5, "node")
        with pytest.raises(labkit.ConfigError, match="member of this cluster"):
            topo.remove_node(topo.primaries[0].port)
        with pytest.raises(labkit.ConfigError, match="at least one directive"):
            topo.config_set()
        assert sorted(topo.slot_counts().values()) == [8192, 8192]


@pytest.mark.parametrize(("kwargs", "named"), [
    ({"sentinels": "3"}, "sentinels"), ({"quorum": 0}, "quorum"), ({"sentinels": 2, "quorum": 3}, "quorum"),
    ({"quorum": "2"}, "quorum"), ({"quorum": True}, "quorum"), ({"down_after_ms": 0}, "down_after_ms"),
    ({"down_after_ms": 0.5}, "down_after_ms"), ({"failover_timeout_ms": "10s"}, "failover_timeout_ms"),
])
def test_bad_sentinel_settings_are_config_errors_before_anything_starts(kwargs, named):
    with pytest.raises(labkit.ConfigError, match=named):
        sentinel(**kwargs)
