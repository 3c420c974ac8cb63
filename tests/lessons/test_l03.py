"""The lesson 03 module (`labkit.lessons.l03_sessions`): each check accepts the reference answer and rejects the
known-wrong ones; the ACL rules let the store do its work and nothing else, on every engine installed."""

import pytest
import redis

from labkit.lessons import l03_sessions as lesson
from labkit.server import available_engines, capabilities, spawn
from labkit.sessions import SessionStore, load_library

TOUCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'last_seen', t[1] * 1000 + math.floor(t[2] / 1000))
return redis.call('PEXPIRE', KEYS[1], ARGV[1])
"""


def test_touch_accepts_the_reference_script(r, ns):
    script = r.register_script(TOUCH_LUA)
    result = lesson.check_touch_session(r, ns, lambda r, key, ms: bool(script(keys=[key], args=[ms])))
    assert result, result.message
    assert ns.keys(r) == []


def test_touch_accepts_expire_reply_without_writing_missing(r, ns):
    def touch(r, key, ms):
        return bool(r.pexpire(key, ms))  # PEXPIRE on a missing key writes nothing and returns False

    assert lesson.check_touch_session(r, ns, touch)


def test_touch_rejects_last_seen_in_seconds(r, ns):
    script = r.register_script(TOUCH_LUA.replace("t[1] * 1000 + math.floor(t[2] / 1000)", "t[1]"))
    result = lesson.check_touch_session(r, ns, lambda r, key, ms: bool(script(keys=[key], args=[ms])))
    assert not result and "store milliseconds since the epoch" in result.message
    assert ns.keys(r) == []


def test_touch_rejects_trusting_hset_reply(r, ns):
    def touch(r, key, ms):
        new_fields = r.hset(key, "last_seen", "1")
        r.pexpire(key, ms)
        return new_fields == 1

    result = lesson.check_touch_session(r, ns, touch)
    assert not result and "HSET returns how many fields are NEW" in result.message
    assert "half session" in result.message


def test_touch_rejects_the_half_session_writer(r, ns):
    def touch(r, key, ms):
        r.hset(key, "last_seen", "1")
        r.pexpire(key, ms)
        return True

    result = lesson.check_touch_session(r, ns, touch)
    assert not result and "half session" in result.message and "returned True, expected False" in result.message
    assert ns.keys(r) == []


def test_touch_rejects_a_check_then_write_in_two_round_trips(r, ns):
    def exists_then_write(r, key, ms):
        if not r.exists(key):
            return False
        r.hset(key, "last_seen", lesson.server_ms(r))
        return bool(r.pexpire(key, ms))

    result = lesson.check_touch_session(r, ns, exists_then_write)
    assert not result and "round trips" in result.message and "half session" in result.message
    assert ns.keys(r) == []


def test_touch_rejects_pexpire_then_hset_in_two_round_trips(r, ns):
    def pexpire_then_hset(r, key, ms):
        ok = r.pexpire(key, ms)
        if ok:
            r.hset(key, "last_seen", lesson.server_ms(r))
        return bool(ok)

    result = lesson.check_touch_session(r, ns, pexpire_then_hset)
    assert not result and "round trips" in result.message
    assert ns.keys(r) == []


# -- 3.6: the session service's ACL user -----------------------------------------------------------------
def every_store_call(store: SessionStore) -> None:
    """Each public call of the store, as the service makes them."""
    sid = store.login(store.create_anonymous(cart=1), "alice")
    assert store.touch(sid) and store.update(sid, theme="dark") and store.get(sid).data["theme"] == "dark"
    other = store.create("alice")
    assert store.invalidate(store.rotate(other)) and store.login(sid, "alice") is not None
    assert len(store.sessions_of("alice")) == 1 and store.invalidate_user("alice") == 1


ENGINES = [e for e in ("valkey9", "valkey8", "redis8", "redis") if e in available_engines()]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("code", ["functions", "scripts"])
def test_the_service_user_runs_every_store_call_and_nothing_else(engine, code):
    with spawn(engine, modules=False) as srv:
        admin = srv.client()
        admin.set("billing:1", "x")
        load_library(admin)
        rules = lesson.session_service_rules(capabilities(admin), code=code)
        admin.execute_command("ACL", "SETUSER", "svc", *rules, ">pw")
        svc = lesson.client_as(srv, "svc", "pw")
        every_store_call(SessionStore(svc, prefix="session", functions=code == "functions"))
        for refused in (lambda: svc.get("billing:1"), lambda: svc.keys("*"), lambda: svc.function_flush(),
                        lambda: svc.config_get("maxmemory"), lambda: svc.set("session:x", 1)):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()
        if code == "functions":
            with pytest.raises(redis.exceptions.NoPermissionError):
                svc.eval("return 1", 0)
        assert ("command", "toplevel", "client|setinfo") not in lesson.acl_log_rows(admin, "svc")
        svc.close()
        admin.close()


def test_rules_name_the_code_they_run_and_only_commands_the_server_knows():
    with spawn(modules=False) as srv:
        caps = capabilities(srv.client())
    functions, scripts = (lesson.session_service_rules(caps, code=c) for c in ("functions", "scripts"))
    assert "+fcall" in functions and "+eval" not in functions and "+eval" in scripts and "+fcall" not in scripts
    assert all(caps.has(rule[1:]) for rule in functions + scripts if rule.startswith("+"))
    with pytest.raises(ValueError, match="functions"):
        lesson.session_service_rules(caps, code="lua")


def test_the_rules_cover_every_command_the_session_lua_calls():
    import re

    from labkit import scripts

    called = {c.lower() for name in scripts.names() if name.startswith("sessions/")
              for c in re.findall(r"redis\.call\('(\w+)'", scripts.source(name))}
    assert called <= set(lesson.SESSION_DATA_COMMANDS), called - set(lesson.SESSION_DATA_COMMANDS)


def test_a_lua_loop_blocks_every_client():
    with spawn(modules=False) as srv:
        took, longest_ping = lesson.blocking_script(srv.client(), srv.client(), seconds=0.3)
    assert took > 0.3 / 5 and longest_ping > 0.25 * took  # sized to last 0.3 s; a 5x faster run is not load


def test_sessions_live_exactly_until_their_idle_timeout_and_their_cap(r, ns):
    store = SessionStore(r, ttl=0.6, absolute_ttl=1.5, prefix=ns.key("short"))
    created, samples = lesson.watch_expiry(store, every_s=0.1)
    assert lesson.alive_exactly_until(samples["idle"], created["idle"].created + 600)
    assert lesson.alive_exactly_until(samples["busy"], created["busy"].deadline)
    assert not lesson.alive_exactly_until(samples["idle"], created["idle"].created + 300)  # a wrong claim fails
    assert not lesson.alive_exactly_until(samples["busy"], created["busy"].deadline + 300)


def test_alive_exactly_until_reads_the_server_clock_around_each_look():
    looks = [lesson.Sample(0, 2, 500), lesson.Sample(100, 102, 400), lesson.Sample(200, 201, -2)]
    assert lesson.alive_exactly_until(looks, 150) and lesson.alive_exactly_until(looks, 198)
    assert not lesson.alive_exactly_until(looks, 50) and not lesson.alive_exactly_until(looks, 300)
    assert lesson.ended_ms(looks) == 200
