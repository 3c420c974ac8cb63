"""labkit.ops, persistence and durability: status, save points, WAITAOF, runtime changes; on real servers."""

import shutil
import time

import pytest
import redis

from labkit import ConfigError, LabkitError
from labkit.ops import (
    FsyncAck,
    configure_persistence,
    parse_save_points,
    persistence_status,
    wait_for_aof_rewrite,
    wait_fsynced,
)
from labkit.server import replicated, spawn
from labkit.server.topology import wait_until

DEFAULT_SAVE = "3600 1 300 100 60 10000"


# -- save points ----------------------------------------------------------------------------------------
def test_parse_save_points_reads_pairs_and_nothing():
    assert parse_save_points(DEFAULT_SAVE) == ((3600, 1), (300, 100), (60, 10000))
    assert parse_save_points("") == ()


@pytest.mark.parametrize("bad", ["3600", "3600 1 300", "1h 1", "-1 5", None, 3600])
def test_parse_save_points_refuses_what_is_not_pairs_of_numbers(bad):
    with pytest.raises(ConfigError, match="pairs of whole numbers"):
        parse_save_points(bad)


# -- status ---------------------------------------------------------------------------------------------
def test_status_of_a_server_with_the_engine_defaults():
    with spawn(modules=False, save=None) as srv:
        r = srv.client()
        r.set("k", "v")
        status = persistence_status(r)
    assert status.save_points == ((3600, 1), (300, 100), (60, 10000))
    assert not status.aof_enabled and status.appendfsync == "everysec" and status.persists
    assert status.changes_since_last_save == 1 and status.last_bgsave_ok and not status.refusing_writes
    assert status.stop_writes_on_bgsave_error and not status.loading


def test_status_reads_a_client_without_decoding():
    with spawn(modules=False, appendonly=True, appendfsync="always") as srv:
        status = persistence_status(srv.client(decode_responses=False))
    assert status.aof_enabled and status.appendfsync == "always" and status.save_points == ()


def test_status_sees_a_failed_snapshot_and_the_writes_it_refuses():
    with spawn(modules=False, save=DEFAULT_SAVE) as srv:
        r = srv.client()
        (srv.dir / "dump.rdb").mkdir()  # the snapshot cannot be renamed into place
        (srv.dir / "dump.rdb" / "obstacle").touch()
        r.bgsave()
        _wait_bgsave(r)
        failed = persistence_status(r)
        with pytest.raises(redis.ResponseError, match="MISCONF"):
            r.set("k", "v")
        shutil.rmtree(srv.dir / "dump.rdb")
        r.bgsave()
        _wait_bgsave(r)
        healed = persistence_status(r)
        assert r.set("k", "v")
    assert not failed.last_bgsave_ok and failed.refusing_writes
    assert healed.last_bgsave_ok and not healed.refusing_writes and healed.latest_fork_usec > 0


def test_a_failed_snapshot_without_save_points_refuses_nothing():
    """stop-writes-on-bgsave-error only acts on a server with save points: a failed manual BGSAVE on a server
    with `save ""` leaves writes flowing, and the status says so."""
    with spawn(modules=False, save="") as srv:
        r = srv.client()
        (srv.dir / "dump.rdb").mkdir()
        (srv.dir / "dump.rdb" / "obstacle").touch()
        r.bgsave()
        _wait_bgsave(r)
        failed = persistence_status(r)
        accepted = r.set("k", "v")
        shutil.rmtree(srv.dir / "dump.rdb")
    assert not failed.last_bgsave_ok and failed.stop_writes_on_bgsave_error and failed.save_points == ()
    assert not failed.refusing_writes and accepted


def _wait_bgsave(r):
    wait_until(lambda: not r.info("persistence")["rdb_bgsave_in_progress"], 10, "BGSAVE to finish")


# -- WAITAOF --------------------------------------------------------------------------------------------
def test_wait_fsynced_under_always_confirms_at_once():
    with spawn(modules=False, appendonly=True, appendfsync="always") as srv:
        r = srv.client()
        r.set("k", "v")
        ack = wait_fsynced(r, timeout_ms=100)
        pipe = r.pipeline(transaction=False)
        pipe.set("k", "w")
        pipe.execute_command("WAITAOF", 1, 0, 100)
        piped = FsyncAck.from_reply(pipe.execute()[-1])
    assert ack and ack == FsyncAck(1, 0, 1, 0) and piped


def _first_confirmed(r, timeout_s=60):
    """Write and WAITAOF until the replica confirms: after its first full sync a replica rewrites its AOF
    and confirms no fsync until that is done."""
    deadline = time.monotonic() + timeout_s
    while True:
        r.set("k", "v")
        ack = wait_fsynced(r, replicas=1, timeout_ms=200)
        if ack or time.monotonic() > deadline:
            return ack


def test_wait_fsynced_counts_replicas_and_is_falsy_when_one_is_frozen():
    with replicated(replicas=1, appendonly=True, appendfsync="always") as topo:
        r = topo.primary.client()
        healthy = _first_confirmed(r)
        topo.replicas[0].pause()
        try:
            r.set("k", "w")
            frozen = wait_fsynced(r, replicas=1, timeout_ms=100)
        finally:
            topo.replicas[0].resume()
        with pytest.raises(ConfigError, match="goes to the primary"):
            wait_fsynced(topo.replicas[0].client(), timeout_ms=100)
    assert healthy and (healthy.local, healthy.replicas) == (1, 1)
    assert not frozen and (frozen.local, frozen.replicas) == (1, 0)


def test_wait_fsynced_without_an_aof_says_what_to_do():
    with spawn(modules=False) as srv, pytest.raises(ConfigError, match=r"appendonly is off.*local=False"):
        wait_fsynced(srv.client(), timeout_ms=100)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"replicas": -1}, "replicas must be an integer of at least 0"),
    ({"replicas": 1.0}, "replicas must be an integer"),
    ({"timeout_ms": 0}, "timeout_ms is a whole number of milliseconds"),
    ({"local": 1}, "local must be True or False"),
    ({"local": False}, "Nothing to wait for"),
])
def test_wait_fsynced_refuses_bad_arguments(r, kwargs, says):
    with pytest.raises(ConfigError, match=says):
        wait_fsynced(r, **kwargs)


# -- changing persistence at runtime --------------------------------------------------------------------
def test_configure_persistence_turns_the_aof_on_with_the_data_in_it_and_keeps_it_over_a_restart():
    with spawn(modules=False) as srv:
        r = srv.client()
        r.mset({f"k{i}": i for i in range(500)})
        status = configure_persistence(r, appendonly=True, appendfsync="always", save=[(900, 1)])
        srv.kill()
        srv.start(keep_config=True)
        after = srv.client()
        assert after.dbsize() == 500 and persistence_status(after).aof_enabled
    assert status.aof_enabled and not status.aof_rewrite_in_progress and status.save_points == ((900, 1),)


def test_wait_for_aof_rewrite_returns_once_the_aof_holds_the_data():
    with spawn(modules=False) as srv:
        r = srv.client()
        r.mset({f"k{i}": i for i in range(500)})
        r.config_set("appendonly", "yes")
        started = r.info("persistence")
        wait_for_aof_rewrite(r)
        done = r.info("persistence")
        srv.kill()
        srv.start(extra_lines=["appendonly yes"])
        wait_until(lambda: not srv.client().info("persistence")["loading"], 30, "the restarted server to load")
        back = srv.client().dbsize()
    assert started["aof_rewrite_in_progress"] or started["aof_rewrite_scheduled"] or started["aof_rewrites"]
    assert not (done["aof_rewrite_in_progress"] or done["aof_rewrite_scheduled"]) and done["aof_rewrites"] >= 1
    assert back == 500


def test_wait_for_aof_rewrite_raises_when_the_rewrite_failed():
    with spawn(modules=False) as srv:
        r = srv.client()
        r.set("k", "v")
        obstacle = srv.dir / "appendonlydir" / "appendonly.aof.1.base.rdb"  # the rewrite cannot rename into it
        (obstacle / "keep").mkdir(parents=True)
        r.config_set("appendonly", "yes")
        started = time.monotonic()
        with pytest.raises(LabkitError, match="rewrite failed"):
            wait_for_aof_rewrite(r, timeout_s=30)
        assert time.monotonic() - started < 20, "a failed rewrite is reported, not waited out"
        shutil.rmtree(obstacle)


def test_configure_persistence_without_rewrite_config_is_forgotten_at_restart():
    with spawn(modules=False) as srv:
        configure_persistence(srv.client(), appendonly=True, rewrite_config=False)
        srv.restart(keep_config=True)
        assert not persistence_status(srv.client()).aof_enabled


@pytest.mark.parametrize(("kwargs", "says"), [
    ({}, "Nothing to change"),
    ({"appendfsync": "sometimes"}, "appendfsync must be one of always, everysec, no"),
    ({"appendonly": "yes"}, "appendonly must be True or False"),
    ({"save": "900"}, "pairs of whole numbers"),
    ({"save": [(0, 1)]}, "save seconds must be an integer of at least 1"),
    ({"appendonly": False, "timeout_s": 0}, "timeout_s is a number of seconds"),
])
def test_configure_persistence_refuses_bad_arguments_and_changes_nothing(r, kwargs, says):
    before = r.config_get("appendonly", "appendfsync", "save")
    with pytest.raises(ConfigError, match=says):
        configure_persistence(r, **kwargs)
    assert r.config_get("appendonly", "appendfsync", "save") == before
