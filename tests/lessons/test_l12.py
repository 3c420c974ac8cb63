"""The lesson 12 module (`labkit.lessons.l12_replication_and_sentinel`): its experiments on real replicated sets
and Sentinel topologies, and each check accepting the reference answer and rejecting the plausible wrong ones."""

import threading
import time

import pytest
import redis

from labkit.lessons import l12_replication_and_sentinel as lesson
from labkit.replication import retry
from labkit.server import capabilities, sentinel, spawn

pytestmark = pytest.mark.slow


# -- 12.1 to 12.4 ---------------------------------------------------------------------------------------
def test_a_paused_replica_falls_behind_by_what_is_written_and_catches_up():
    trace = lesson.offsets_while_writing(duration_s=1.2, pause_at_s=0.4, pause_ms=400)
    before, during = trace.typical_behind(0, trace.paused[0]), trace.max_behind(*trace.paused)
    assert during > 10 * max(before, 100) and trace.behind[-1] == 0
    assert trace.primary == sorted(trace.primary) and trace.replica == sorted(trace.replica)


def test_writes_the_replica_had_not_applied_are_lost_at_failover_exactly():
    loss = lesson.writes_lost_at_failover("client-pause", 200, healthy=50)
    assert (loss.healthy_kept, loss.frozen_kept, loss.lost) == (50, 0, 200)


def test_a_stopped_replica_still_gets_what_its_kernel_received():
    loss = lesson.writes_lost_at_failover("sigstop", 200, healthy=50)
    assert loss.healthy_kept == 50 and loss.frozen_kept > 100


def test_a_stopped_replica_loses_a_burst_bigger_than_the_kernels_hold():
    loss = lesson.writes_lost_at_failover("sigstop", 30_000, healthy=10, value_size=1024)
    assert loss.frozen_stream_bytes > 30_000 * 1024 and loss.frozen_kept < loss.frozen / 2 and loss.lost > 0
    assert 0 < loss.frozen_kept_bytes < loss.frozen_stream_bytes / 2


def test_socket_buffer_limits_are_three_numbers_each():
    limits = lesson.socket_buffer_limits()
    assert set(limits) == {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"}
    assert all(len(value.split()) == 3 and value.replace(" ", "").isdigit() for value in limits.values())


def test_wait_confirms_exactly_the_writes_that_survive():
    loss = lesson.writes_lost_at_failover("client-pause", 3, healthy=20, wait_ms=20)
    assert (loss.confirmed, loss.confirmed_kept, loss.frozen_kept) == (20, 20, 0)
    assert loss.unconfirmed_wait_ms >= 20


def test_an_unknown_freeze_is_refused():
    with pytest.raises(ValueError, match="freeze"):
        lesson.writes_lost_at_failover("sigkill", 1)


def test_without_pauses_a_run_makes_exactly_the_pairs_asked():
    run = lesson.read_your_writes(200)
    assert (run.pairs, run.pauses, run.in_pauses, run.after_pauses_stale) == (200, 0, 0, 0)


def test_wait_costs_a_round_trip_through_the_replica():
    cost = lesson.wait_cost(rounds=7, batch=100)
    assert cost.wait_us > cost.ping_us  # (SET + PING against SET alone is printed, not asserted: medians of
    # round trips this close swap on a busy machine)
    assert cost.waits == 700 and cost.getacks >= 0.95 * cost.waits


def test_waitaof_counts_only_a_replica_that_fsyncs():
    with spawn(modules=False) as server:
        caps = capabilities(server.probe())
    if not caps.waitaof:
        pytest.skip(f"{caps} has no WAITAOF (Redis before 7.2)")
    compared = lesson.wait_versus_waitaof(writes=3)
    assert compared.without_aof == (1, [0, 0]) and compared.with_aof == (1, [0, 1]) and compared.waitaof_ms > 0


def test_reads_inside_a_replica_pause_are_stale_and_wait_makes_them_fresh():
    stalled = lesson.read_your_writes(400, load=True, pause_every_s=0.2, min_pauses=5)
    assert stalled.in_pauses > 0 and stalled.in_pauses_stale == stalled.in_pauses
    assert stalled.pauses >= 5 and stalled.pairs >= 400 and stalled.after_pauses_stale > 0
    waited = lesson.read_your_writes(300, pause_every_s=0.2, wait_ms=10, min_pauses=3)  # some WAITs meet a pause
    assert waited.stale == 0 and waited.from_primary > 0


# -- 12.5 Sentinel --------------------------------------------------------------------------------------
def test_a_drill_counts_errors_without_retry_and_none_with_a_deadline():
    with sentinel(replicas=1, sentinels=3, down_after_ms=500) as topo, lesson.SentinelEvents(*topo.sentinels) as seen:
        client = topo.master_for(socket_timeout=0.5)
        drill = lesson.FailoverDrill(topo, {
            "plain": lambda key: client.set(key, 1),
            "deadline": lambda key: retry(lambda: client.set(key, 1), deadline_s=10),
        }, before_s=0.5, after_s=0.5, watched=seen)
        drill(threading.Event())
        steps = seen.steps(since=drill.killed_at)
    assert [name for _, name, _ in steps] == list(lesson.FAILOVER_STEPS)
    assert [at for at, _, _ in steps] == sorted(at for at, _, _ in steps) and steps[0][0] >= 0.5
    assert drill.counts["plain"]["errors"] > 0 and drill.counts["deadline"]["errors"] == 0
    assert all(drill.ok_after(name, drill.switched_at) > 0 for name in drill.writers)
    assert drill.longest_gap("deadline") >= 0.5 and [label for _, label in drill.events] == [
        "primary killed", "all sentinels name the new primary", "+sdown", "+promoted-slave"]
    marks = dict((label, at) for at, label in drill.events)
    assert marks["primary killed"] < marks["+sdown"] < marks["+promoted-slave"]


def test_failover_time_grows_with_down_after_milliseconds():
    times = lesson.failover_times((500, 2500))
    assert times[500] >= 0.5 and times[2500] >= 2.5 and times[500] < times[2500]


def test_redis_py_retry_budget_is_the_sum_of_its_capped_steps():
    assert lesson.redis_py_retry_budget_s() == pytest.approx(0.02 + 0.04 + 0.08 + 0.16 + 0.32 + 0.64 + 4 * 1.0)
    assert lesson.redis_py_retry_budget_s(base=0.1, cap=0.1, retries=3) == pytest.approx(0.3)


def test_two_sentinels_cannot_elect_a_leader_after_losing_one():
    two = lesson.primary_and_a_sentinel_lost(sentinels=2, quorum=1)
    assert two.saw("+odown") and two.saw("-failover-abort-not-elected") and not two.failed_over
    assert two.ckquorum.startswith("NOQUORUM") and "+sdown master" in two.events


def test_with_two_of_three_sentinels_lost_the_primary_is_never_objectively_down():
    one_left = lesson.primary_and_a_sentinel_lost(sentinels=3, quorum=2, lost=2, watch_s=2.0)
    assert "+sdown master" in one_left.events and not one_left.saw("+odown") and not one_left.failed_over
    assert "s_down" in one_left.flags and "o_down" not in one_left.flags and one_left.ckquorum.startswith("NOQUORUM")


def test_the_default_timers_leave_a_dead_primary_alone_for_longer_than_a_failover():
    defaults = lesson.default_timers(watched_s=3.0)
    assert (defaults.down_after_ms, defaults.failover_timeout_ms) == (30_000, 180_000)
    assert "s_down" not in defaults.flags_after_kill
    assert defaults.watched_s > defaults.set_ms / 1000 + defaults.failover_s


# -- 12.6 and 12.7 --------------------------------------------------------------------------------------
def test_an_isolated_primary_refuses_writes_after_about_max_lag():
    run = lesson.isolated_primary({"min-replicas-to-write": 1, "min-replicas-max-lag": 2}, healthy_s=0.5)
    assert run.refused_healthy == 0 and 2 - 1 < run.refused_after_s < 2 + 2 and run.acknowledged_alone > 0


def test_without_min_replicas_an_isolated_primary_accepts_everything():
    run = lesson.isolated_primary({}, healthy_s=0.3, limit_s=1.5)
    assert run.refused_healthy == 0 and run.refused_after_s is None and run.acknowledged_alone > 50


@pytest.mark.parametrize(("persistence", "missed", "kind"), [(False, 50, "full"), (True, 50, "partial"),
                                                              (True, 2000, "full")])
def test_a_restarted_replica_resyncs_partially_only_from_its_snapshot_and_the_backlog(persistence, missed, kind):
    run = lesson.replica_restart(persistence=persistence, missed_keys=missed, keys=100)
    assert (run.kind, run.keys) == (kind, 100 + missed)


def test_the_default_backlog_is_at_least_a_megabyte():
    assert lesson.default_backlog() >= 2**20


# -- common mistakes -------------------------------------------------------------------------------------
def test_wait_one_does_not_survive_losing_the_replica_that_had_it():
    trusted, checked = lesson.wait_then_failover(1), lesson.wait_then_failover(2)
    assert trusted.confirmed and not trusted.survived
    assert checked.wait_reply == 1 and not checked.confirmed


def test_a_write_wait_confirmed_is_lost_when_both_crash_and_one_waitaof_confirmed_is_not():
    crashed = lesson.wait_then_crash(aof=False)
    assert crashed.wait_reply == 1 and crashed.waitaof_reply is None and not crashed.survived
    with spawn(modules=False) as server:
        caps = capabilities(server.probe())
    if caps.waitaof:
        fsynced = lesson.wait_then_crash(aof=True)
        assert fsynced.wait_reply == 1 and fsynced.waitaof_reply == [1, 1] and fsynced.survived


def test_a_cached_address_fails_after_a_failover_and_master_for_does_not():
    outcome = lesson.cached_address(writes=10)
    assert outcome.cached_ok == 0 and outcome.sentinel_ok == 10 and "ConnectionError" in outcome.cached_error


# -- exercise 1: bound what a split brain can lose --------------------------------------------------------
def test_split_brain_bound_accepts_the_reference():
    result = lesson.check_split_brain_bound({"min-replicas-to-write": 1, "min-replicas-max-lag": 2})
    assert result, result.message
    assert lesson.check_split_brain_bound({"min_replicas_to_write": "1", "min_replicas_max_lag": 2})


def test_split_brain_bound_accepts_the_old_names():
    result = lesson.check_split_brain_bound({"min-slaves-to-write": 1, "min-slaves-max-lag": 2})
    assert result, result.message


@pytest.mark.parametrize(("config", "says"), [
    ({}, "switches the check off"),
    ({"min-replicas-to-write": 1}, "min-replicas-max-lag 10 lets it go on"),
    ({"min-replicas-max-lag": 1}, "switches the check off"),
    ({"min-replicas-to-write": 1, "min-replicas-max-lag": 0}, "switches the check off"),
    ({"min-replicas-to-write": 2, "min-replicas-max-lag": 2}, "more replicas than the one it has"),
    ({"min-replicas-to-write": 1, "min-replicas-max-lag": 3}, "starts up to 5 s after the freeze"),
    ({"min-replicas-to-write": 1, "min-replicas-max-lag": 1}, "no room for one late acknowledgement"),
    ({"min-slaves-to-write": 1, "min-slaves-max-lag": 1}, "no room for one late acknowledgement"),
    ({"min-replicas-to-write": 1, "min-replicas-max-lag": 2, "maxmemory": "1mb"}, "not maxmemory"),
    ({"min-replicas-to-write": -1, "min-replicas-max-lag": 2}, "whole numbers of at least 0"),
    ({"min-replicas-to-write": "one"}, "whole numbers"),
    ("min-replicas-to-write 1", "give a dict"),
])
def test_split_brain_bound_rejects_the_plausible_mistakes(config, says):
    result = lesson.check_split_brain_bound(config)
    assert not result and says in result.message


# -- exercise 2: a retry that survives a failover without counting twice ----------------------------------
APPLY_ONCE = """
if redis.call('SET', KEYS[1], 1, 'NX', 'EX', 86400) then
  return redis.call('INCRBY', KEYS[2], ARGV[1])
end
return false
"""


def reference(r, op_id, key, amount, deadline_s):
    return retry(lambda: r.eval(APPLY_ONCE, 2, f"applied:{op_id}", key, amount), deadline_s=deadline_s)


def test_failover_retry_accepts_the_reference():
    result = lesson.check_failover_retry(reference)
    assert result, result.message


def _plain(r, op_id, key, amount, deadline_s):
    return r.incrby(key, amount)


def _blind_retry(r, op_id, key, amount, deadline_s):
    return retry(lambda: r.incrby(key, amount), deadline_s=deadline_s)


def _marker_then_add(r, op_id, key, amount, deadline_s):
    def once():
        if r.set(f"applied:{op_id}", 1, nx=True, ex=86400):
            r.incrby(key, amount)

    return retry(once, deadline_s=deadline_s)


def _transaction(r, op_id, key, amount, deadline_s):
    def once():
        with r.pipeline() as pipe:  # MULTI/EXEC: the INCRBY runs whatever the SET NX answered
            return pipe.set(f"applied:{op_id}", 1, nx=True).incrby(key, amount).execute()

    return retry(once, deadline_s=deadline_s)


def _redis_py_retry(r, op_id, key, amount, deadline_s):
    from redis.backoff import ExponentialWithJitterBackoff
    from redis.retry import Retry

    policy = Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.01), 10)  # redis-py's default, used as a loop
    return policy.call_with_retry(lambda: r.incrby(key, amount), lambda error: None)


def _ping_first(r, op_id, key, amount, deadline_s):  # the senior review's: a harmless command first
    retry(r.ping, deadline_s=deadline_s)
    return retry(lambda: r.incrby(key, amount), deadline_s=deadline_s)


def _read_modify_write(r, op_id, key, amount, deadline_s):
    return retry(lambda: r.set(key, int(r.get(key) or 0) + amount), deadline_s=deadline_s)


def _exists_then_add(r, op_id, key, amount, deadline_s):  # both reviews': check, act, then mark
    marker = f"applied:{op_id}"

    def once():
        if r.exists(marker):
            return None
        value = r.incrby(key, amount)
        r.set(marker, 1, ex=86400)
        return value

    return retry(once, deadline_s=deadline_s)


def _watched_transaction(r, op_id, key, amount, deadline_s):  # a correct alternative to the Lua script
    marker = f"applied:{op_id}"

    def once():
        with r.pipeline() as pipe:
            try:
                pipe.watch(marker)
                if pipe.exists(marker):
                    return None
                pipe.multi()
                pipe.incrby(key, amount).set(marker, 1, ex=86400)
                return pipe.execute()[0]
            except redis.WatchError as err:  # redis-py's word for a connection lost while watching
                raise redis.ConnectionError(str(err)) from err

    return retry(once, deadline_s=deadline_s)


def test_failover_retry_accepts_a_watched_transaction():
    result = lesson.check_failover_retry(_watched_transaction)
    assert result, result.message


def _swallows_the_failure(r, op_id, key, amount, deadline_s):
    try:
        return reference(r, op_id, key, amount, deadline_s)
    except redis.RedisError:
        return None


@pytest.mark.parametrize(("apply_once", "says"), [
    (_plain, "raised ConnectionError"),
    (_blind_retry, "first command was lost (the command ran), an operation of 10 added 20: it was counted twice"),
    (_marker_then_add, "first command was lost (the command ran), an operation of 10 added 0: it was counted 0 times"),
    (_transaction, "counted twice"),
    (_redis_py_retry, "counted twice"),
    (_ping_first, "changed the counter was lost (the command ran), an operation of 10 added 20"),
    (_read_modify_write, "changed the counter was lost (the command ran), an operation of 10 added 20"),
    (_exists_then_add, "changed the counter was lost (the command ran), an operation of 10 added 20"),
    (_swallows_the_failure, "returned None instead of raising"),
    ("apply_once", "give a function"),
])
def test_failover_retry_rejects_the_plausible_mistakes(apply_once, says):
    result = lesson.check_failover_retry(apply_once)
    assert not result and says in result.message


def test_failover_retry_rejects_a_retry_that_ignores_its_deadline():
    def forever(r, op_id, key, amount, deadline_s):
        return reference(r, op_id, key, amount, 30)

    started = time.monotonic()
    result = lesson.check_failover_retry(forever)
    assert not result and "stop retrying at the deadline" in result.message
    assert time.monotonic() - started < 60
