"""The lesson 03 module (`labkit.lessons.l03_sessions`): each check accepts the reference answer and rejects the
known-wrong ones."""

import redis

from labkit.lessons import l03_sessions as lesson
from labkit.server import spawn

TOUCH_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_seen', redis.call('TIME')[1])
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


def test_known_commands_are_those_an_acl_rule_may_name():
    """The oracle is ACL SETUSER itself: it accepts a rule naming each command kept, refuses each dropped."""
    candidates = ["hget", "client|setinfo", "hgetex", "nosuchcommand"]
    with spawn(modules=False) as srv:
        admin = srv.client()
        kept = lesson.known_commands(admin, candidates)
        for command in candidates:
            try:
                admin.acl_setuser("probe", commands=[f"+{command}"])
                accepted = True
            except redis.ResponseError:
                accepted = False
            assert accepted is (command in kept), command
    assert "hget" in kept and "nosuchcommand" not in kept
