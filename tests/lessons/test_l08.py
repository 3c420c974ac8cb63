"""The lesson 08 module (`labkit.lessons.l08_locks`): experiments with real processes, and each check accepting
the reference answer and rejecting the known-wrong ones."""

import pytest

from labkit import ConfigError
from labkit.lessons import l08_locks as lesson


# -- experiments with real processes --------------------------------------------------------------------
def test_processes_under_the_lock_lose_no_update(r, ns):
    expected, counted = lesson.mutual_exclusion(r, ns.key("mx"), processes=3, increments=100, use_lock=True)
    assert counted == expected == 300


def test_processes_without_the_lock_lose_updates(r, ns):
    expected, counted = lesson.mutual_exclusion(r, ns.key("mx"), processes=3, increments=300, use_lock=False)
    assert counted < expected


def test_fencing_rejects_the_paused_holders_stale_write(r, ns):
    plain = lesson.paused_holder(r, ns.key("plain"), fenced=False)
    fenced = lesson.paused_holder(r, ns.key("fenced"), fenced=True)
    assert plain.first_lock_lost and plain.final_value == "written by the paused holder"
    assert fenced.first_lock_lost and not fenced.stale_write_accepted
    assert fenced.final_value == "written by the second holder" and fenced.second_fence > fenced.first_fence


def test_mutual_exclusion_rejects_no_processes(r, ns):
    with pytest.raises(ConfigError, match="processes must be an integer of at least 1"):
        lesson.mutual_exclusion(r, ns.key("mx"), processes=0)


# -- exercise checks ------------------------------------------------------------------------------------
def _release_right(r, key, token):
    return bool(r.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end "
                       "return 0", 1, key, token))


def test_safe_release_accepts_a_script(r, ns):
    assert lesson.check_safe_release(r, ns, _release_right)


def test_safe_release_rejects_a_plain_delete(r, ns):
    result = lesson.check_safe_release(r, ns, lambda r, key, token: bool(r.delete(key)))
    assert not result and "held by someone else" in result.message


def test_safe_release_rejects_get_then_delete(r, ns):
    def two_steps(r, key, token):
        if r.get(key) == token:
            return bool(r.delete(key))
        return False

    result = lesson.check_safe_release(r, ns, two_steps)
    assert not result and "Lua script" in result.message


def _validity_right(acquired, nodes, elapsed_ms, ttl_ms):
    left = ttl_ms - elapsed_ms - (ttl_ms * 0.01 + 2)
    return left if acquired >= nodes // 2 + 1 and left > 0 else 0


def test_redlock_validity_accepts_the_reference():
    assert lesson.check_redlock_validity(_validity_right)


@pytest.mark.parametrize(("wrong", "says"), [
    (lambda a, n, e, t: max(0, t - e - (t * 0.01 + 2)) if a >= 2 else 0, "hard-coded"),
    (lambda a, n, e, t: max(0, t - e - (t * 0.01 + 2)) if a >= n / 2 else 0, "strict majority"),
    (lambda a, n, e, t: t - (t * 0.01 + 2) if a >= n // 2 + 1 else 0, "time spent acquiring"),
    (lambda a, n, e, t: t - e - (t * 0.01 + 2) if a >= n // 2 + 1 else 0, "never a negative"),
    (lambda a, n, e, t: t - e if a >= n // 2 + 1 else 0, "drift"),
])
def test_redlock_validity_rejects_the_usual_mistakes(wrong, says):
    result = lesson.check_redlock_validity(wrong)
    assert not result and says in result.message
