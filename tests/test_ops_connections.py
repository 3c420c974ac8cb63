"""labkit.ops, connections, observability and security: CLIENT LIST, the command logs, LATENCY, ACL DRYRUN and
ACL LOG, and what exposes a server; on real servers."""

import socket
import threading

import pytest
import redis

from labkit import ConfigError, LabkitError, ops
from labkit.clients import options
from labkit.server import capabilities, spawn

from .waiting import eventually


@pytest.fixture(scope="module")
def srv():
    with spawn(modules=False, enable_debug_command="local", slowlog_log_slower_than=40_000,
               latency_monitor_threshold=40) as server:  # thresholds a descheduled fast command rarely reaches
        yield server


# -- who is connected -------------------------------------------------------------------------------------
def test_connections_are_named_blocked_and_sized(srv):
    admin = srv.client()
    idle = srv.client(client_name="svc-idle")
    idle.ping()
    blocked = srv.client(client_name="svc-blocked")
    waiter = threading.Thread(target=blocked.blpop, args=(["empty"], 5))
    waiter.start()
    try:
        seen = eventually(lambda: [c for c in ops.connections(admin, name_prefix="svc-") if c.blocked])
        mine = {c.name: c for c in ops.connections(admin, name_prefix="svc-")}
        assert [c.name for c in seen] == ["svc-blocked"] and seen[0].cmd == "blpop"
        assert set(mine) == {"svc-idle", "svc-blocked"} and not mine["svc-idle"].blocked
        assert mine["svc-idle"].total_memory > 0
        assert mine["svc-idle"].library.startswith("redis-py") or not capabilities(admin).client_setinfo
        assert len(ops.connections(admin)) >= 3  # and the admin's own
    finally:
        admin.lpush("empty", "wake")
        waiter.join(10)
        admin.delete("empty")
        for c in (admin, idle, blocked):
            c.close()


def test_a_reply_the_client_does_not_read_is_output_memory(srv):
    admin = srv.client(decode_responses=False)
    admin.set("big", "x" * 8_000_000)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        s.connect((srv.host, srv.port))
        s.sendall(f"AUTH {srv.password}\r\nCLIENT SETNAME slow-reader\r\nGET big\r\n".encode())
        slow = eventually(lambda: [c for c in ops.connections(admin, name_prefix="slow-reader")
                                   if c.output_memory > 1_000_000])  # queued as fast as the server can
        assert slow and slow[0].total_memory >= slow[0].output_memory
    admin.delete("big")
    admin.close()


# -- what was slow, what was big ------------------------------------------------------------------------------
def test_slow_commands_lists_a_slow_command_and_not_a_fast_one(srv):
    c = srv.client(client_name="sleeper")
    c.slowlog_reset()
    c.execute_command("DEBUG", "SLEEP", "0.05")
    c.get("fast")
    entries = ops.slow_commands(c, 10)
    assert [e.command for e in entries] == [("DEBUG", "SLEEP", "0.05")]
    assert entries[0].value >= 50_000 and entries[0].client_name == "sleeper"
    assert ops.slow_commands(srv.client(decode_responses=False), 1) == entries[:1]
    c.close()


def test_large_replies_are_in_the_commandlog_where_the_engine_has_one(srv):
    c = srv.client()
    if not capabilities(c).has("commandlog"):
        with pytest.raises(ConfigError, match="needs COMMANDLOG"):
            ops.slow_commands(c, log="large-reply")
        return
    c.execute_command("COMMANDLOG", "RESET", "large-reply")
    c.set("big", "x" * 2_000_000)
    c.get("big")
    entries = ops.slow_commands(c, 5, log="large-reply")
    assert [e.command for e in entries] == [("GET", "big")] and entries[0].value >= 2_000_000
    c.delete("big")
    c.close()


def test_a_user_refused_the_commandlog_gets_a_config_error(srv):
    admin = srv.client()
    if not capabilities(admin).has("commandlog"):
        pytest.skip("no COMMANDLOG on this engine: the test above checks its ConfigError")
    admin.acl_setuser("no-log", enabled=True, passwords=["+pw"], commands=["+@all", "-commandlog"], keys=["*"],
                      reset=True)
    user = redis.Redis(host=srv.host, port=srv.port, username="no-log", password="pw", **options())
    with pytest.raises(ConfigError, match="log='slow'"):
        ops.slow_commands(user, log="large-request")
    user.close()
    admin.acl_deluser("no-log")
    admin.close()


def test_latency_events_record_a_spike(srv):
    c = srv.client()
    c.execute_command("LATENCY", "RESET")
    assert ops.latency_events(c) == []
    c.execute_command("DEBUG", "SLEEP", "0.05")
    event = {e.event: e for e in ops.latency_events(c)}["command"]
    assert event.max_ms >= 50 and event.latest_ms <= event.max_ms
    assert (event.count, event.total_ms) == (None, None) or (event.count >= 1 and event.total_ms >= event.max_ms)
    c.close()


# -- ACL ----------------------------------------------------------------------------------------------------
def test_acl_dryrun_says_what_a_user_may_run_and_why_not(srv):
    admin = srv.client()
    admin.execute_command("ACL", "SETUSER", "cache", "reset", "on", ">pw", "~cache:*", "-@all", "+get", "+set")
    assert ops.acl_dryrun(admin, "cache", "GET", "cache:1") is None
    assert ops.acl_dryrun(admin, "cache", "SET", "cache:1", 5) is None
    assert "flushall" in ops.acl_dryrun(admin, "cache", "FLUSHALL")
    assert "key" in ops.acl_dryrun(admin, "cache", "GET", "session:1").lower()
    with pytest.raises(redis.ResponseError):
        ops.acl_dryrun(admin, "nobody", "GET", "k")
    admin.acl_deluser("cache")
    admin.close()


def test_acl_failures_count_wrong_passwords_and_refused_keys(srv):
    admin = srv.client()
    admin.acl_log_reset()
    admin.execute_command("ACL", "SETUSER", "cache", "reset", "on", ">pw", "~cache:*", "+@all")
    for _ in range(3):
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=srv.host, port=srv.port, username="cache", password="wrong", **options()).ping()
    with redis.Redis(host=srv.host, port=srv.port, username="cache", password="pw", **options()) as user, \
            pytest.raises(redis.ResponseError):
        user.get("session:1")
    failures = {f.reason: f for f in ops.acl_failures(admin)}
    assert failures["auth"].count == 3 and failures["auth"].username == "cache"
    assert failures["key"].object == "session:1" and failures["key"].client_addr.startswith("127.0.0.1:")
    admin.acl_deluser("cache")
    admin.close()


# -- what exposes a server ----------------------------------------------------------------------------------------
def test_a_labkit_server_has_no_findings(srv):
    with spawn(modules=False) as plain:
        assert ops.security_findings(plain.client()) == []


def test_findings_name_each_exposure():
    with spawn(modules=False, requirepass="", protected_mode=False, enable_protected_configs="local",
               enable_debug_command="local", enable_module_command="local") as open_server:
        findings = {f.setting: f for f in ops.security_findings(open_server.client())}
    assert set(findings) == {"default user", "protected-mode", "enable-protected-configs", "enable-debug-command",
                             "enable-module-command"}
    assert "password" in findings["default user"].risk and "dir" in findings["enable-protected-configs"].risk


def test_only_non_loopback_addresses_are_exposed():
    assert ops._exposed("127.0.0.1 -::1") == []
    assert ops._exposed("* -::*") == ["*", "-::*"]
    assert ops._exposed("127.0.0.1 10.0.0.5") == ["10.0.0.5"]


def test_findings_need_an_admin_connection(srv):
    admin = srv.client()
    admin.acl_setuser("reader", enabled=True, passwords=["+pw"], commands=["+get"], keys=["*"], reset=True)
    with redis.Redis(host=srv.host, port=srv.port, username="reader", password="pw", **options()) as reader, \
            pytest.raises(LabkitError, match="admin connection"):
        ops.security_findings(reader)
    admin.acl_deluser("reader")
    admin.close()


@pytest.mark.parametrize(("call", "message"), [
    (lambda r: ops.connections(r, name_prefix=""), "name_prefix must be a non-empty string"),
    (lambda r: ops.slow_commands(r, 0), "count must be an integer of at least 1"),
    (lambda r: ops.slow_commands(r, log="fast"), "log must be one of slow, large-request, large-reply"),
    (lambda r: ops.acl_dryrun(r, "", "GET", "k"), "user must be a non-empty string"),
    (lambda r: ops.acl_dryrun(r, "default"), "command must be the command and its arguments"),
    (lambda r: ops.acl_failures(r, count=-1), "count must be an integer of at least 1"),
])
def test_bad_arguments_say_what_to_pass(srv, call, message):
    with pytest.raises(ConfigError, match=message):
        call(srv.client())


def test_slow_commands_keep_an_argument_with_spaces_whole():
    with spawn(modules=False, slowlog_log_slower_than=0) as server:  # every command is logged
        c = server.client()
        c.echo("two words")
        assert ("ECHO", "two words") in [e.command for e in ops.slow_commands(c, 5)]
        c.close()


def test_a_plain_text_port_beside_a_tls_port_is_a_finding(tmp_path):
    from labkit.lessons import l11_connections_and_operations as lesson
    from labkit.server.process import free_port

    engine, address = lesson.tls_engine(), lesson.non_loopback_address()
    if engine is None or address is None:
        pytest.skip("needs an engine built with TLS and a network address besides loopback")
    certs = lesson.make_certificates(tmp_path)
    with spawn(engine, modules=False, bind=f"127.0.0.1 {address}", tls_port=free_port(), tls_cert_file=certs["cert"],
               tls_key_file=certs["key"], tls_ca_cert_file=certs["ca"]) as both:
        findings = {f.setting: f for f in ops.security_findings(both.client())}
    assert "bind" in findings and "plain-text port" in findings["bind"].risk and "TLS port" in findings["bind"].risk
