"""The lesson 08 module (`labkit.lessons.l08_locks`): experiments with real processes and servers, their
pictures, and each check accepting the reference answer and rejecting the known-wrong ones."""

import dataclasses
import time

import pytest

from labkit import ConfigError
from labkit.errors import LockNotHeld
from labkit.lessons import l08_locks as lesson
from labkit.server import nodes


@pytest.fixture
def shown(monkeypatch):
    """The figures the lesson's plotting helpers show, drawn without a display."""
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "show", lambda: figures.append(plt.gcf()))
    yield figures
    for figure in figures:
        plt.close(figure)


def annotations(figure) -> list[str]:
    return [t.get_text() for ax in figure.axes for t in ax.texts]


# -- lost updates, with real processes ------------------------------------------------------------------
def test_processes_lose_updates_without_the_lock_and_none_with_it(r, ns):
    counted = lesson.mutual_exclusion(r, ns.key("mx"), processes=3, increments=300)
    assert counted.without_lock < counted.expected == counted.with_lock == 900


def test_mutual_exclusion_rejects_no_processes(r, ns):
    with pytest.raises(ConfigError, match="processes must be an integer of at least 1"):
        lesson.mutual_exclusion(r, ns.key("mx"), processes=0)


# -- the paused holder, on a timeline -------------------------------------------------------------------
@pytest.fixture(scope="module")
def paused_runs():
    import labkit

    r = labkit.connect()
    space = labkit.Namespace("test-l08-paused")
    space.cleanup(r)
    runs = {fenced: lesson.paused_holder(r, space.key(str(fenced)), fenced=fenced) for fenced in (False, True)}
    space.cleanup(r)
    r.close()
    return runs


def test_fencing_rejects_the_paused_holders_stale_write(paused_runs):
    plain, fenced = paused_runs[False], paused_runs[True]
    assert plain.first_lock_lost and plain.final_value == "written by the paused holder"
    assert fenced.first_lock_lost and not fenced.stale_write_accepted
    assert fenced.final_value == "written by the second holder" and fenced.second_fence > fenced.first_fence


def test_the_paused_holders_timeline_is_in_order(paused_runs):
    for run in paused_runs.values():
        assert list(run.events) == list(lesson.EVENTS) and run.in_order()
        assert run.events["holder 1 frozen"] < run.lease_ends <= run.events["holder 2 acquires"] + 1


def test_the_order_check_fails_for_a_second_holder_inside_the_first_lease(paused_runs):
    run = paused_runs[True]
    early = dict(run.events, **{"holder 2 acquires": run.lease_ends / 2})
    assert not dataclasses.replace(run, events=early).in_order()
    swapped = dict(run.events, **{"holder 1 writes": run.events["holder 2 writes"] - 1})
    assert not dataclasses.replace(run, events=swapped).in_order()


def test_the_timeline_draws_both_runs(paused_runs, shown):
    lesson.plot_paused_holders(paused_runs[False], paused_runs[True])
    plain, fenced = (annotations(shown[0])[i:i + 2] for i in (0, 2))
    assert len(shown[0].axes) == 2
    assert plain == ["holder 2 writes", "holder 1 writes, accepted: holder 2's write is lost"]
    assert fenced == ["holder 2 writes", "holder 1 writes, refused: stale token"]


# -- a long job under a lease, with a rival waiting -------------------------------------------------------
def _job(keep_alive, pause_at=None, steps=20):
    def job(lock, done):
        for step in range(steps):
            if step == pause_at:
                time.sleep(0.8)
            if keep_alive and lock.remaining_ms() < 400:
                lock.extend()
            done.append(time.monotonic())
            time.sleep(0.04)

    return job


def test_a_job_without_extend_runs_on_after_the_rival_took_its_lock(r, ns):
    race = lesson.race_a_rival(r, ns.key("job"), _job(keep_alive=False), ttl_ms=500)
    assert race.overlapped and not race.stopped and race.side_effects == 20


def test_a_job_that_extends_in_time_keeps_the_rival_out(r, ns):
    race = lesson.race_a_rival(r, ns.key("job"), _job(keep_alive=True), ttl_ms=600)
    assert not race.overlapped and race.side_effects == 20 and race.rival_waited_ms > 20 * 40


def test_a_job_frozen_past_its_lease_stops_at_its_next_check(r, ns):
    race = lesson.race_a_rival(r, ns.key("job"), _job(keep_alive=True, pause_at=3), ttl_ms=600)
    assert race.stopped and race.side_effects == 3 and not race.overlapped


def test_a_rival_race_reports_a_job_error_other_than_a_lost_lock(r, ns):
    def broken(lock, done):
        raise RuntimeError("the job failed")

    with pytest.raises(RuntimeError, match="the job failed"):
        lesson.race_a_rival(r, ns.key("job"), broken)


# -- where a fencing token comes from ---------------------------------------------------------------------
def test_a_failover_hands_out_a_token_again_and_the_lock_to_a_second_holder(ns):
    failover = lesson.failover_token(ns.key("fo"), lost=2)
    assert failover.before == [1, 2, 3] and failover.confirmed == [1, 0, 0] and failover.replica_had == 1
    assert failover.granted_while_held and failover.after == 2


def test_a_failover_that_lost_nothing_goes_on_counting(ns):
    """The control: the replica paused only after the last token reached it; promoted, it issues the next."""
    failover = lesson.failover_token(ns.key("fo"), lost=0)
    assert failover.before == [1] and failover.confirmed == [1] and failover.replica_had == 1
    assert failover.after == 2


def test_a_token_starts_over_after_a_restart_without_persistence_and_goes_on_with_aof(ns):
    assert lesson.restart_tokens(ns.key("rs"), appendonly=False) == ([1, 2, 3], 1)
    assert lesson.restart_tokens(ns.key("rs"), appendonly=True) == ([1, 2, 3], 4)


def test_the_invoice_table_starts_open_unfenced_at_version_0():
    db = lesson.invoices()
    assert db.execute("SELECT id, status, fence, version FROM invoice").fetchall() == [(42, "open", 0, 0)]
    db.close()


# -- Redlock under contention -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def five():
    with nodes(5) as servers:
        yield [s.client() for s in servers]


@pytest.mark.parametrize("seed", range(5))
def test_fixed_retry_delays_keep_splitting_the_vote_and_random_ones_end_it(five, seed):
    fixed = lesson.contention(five, "lab:test:contended", retry="fixed", seed=seed)
    randomised = lesson.contention(five, "lab:test:contended", retry="random", seed=seed)
    assert all(0 < a.won < 3 for run in (fixed, randomised) for a in run.attempts if a.number == 0)
    assert fixed.holders <= 1 and fixed.split_votes >= 0.8 * len(fixed.attempts)
    assert randomised.holders == 5 and randomised.split_votes < fixed.split_votes / 2
    assert all(not c.exists("lab:test:contended") for c in five), "no lock is left on any node"


def test_a_lone_contender_wins_every_node_at_its_first_attempt(five):
    alone = lesson.contention(five, "lab:test:alone", retry="fixed", contenders=1)
    assert [(a.won, a.held) for a in alone.attempts] == [(5, True)] and alone.split_votes == 0


def test_contention_wants_a_known_retry_policy(five):
    with pytest.raises(ConfigError, match="'fixed' or 'random'"):
        lesson.contention(five, "lab:test:x", retry="sometimes")
    with pytest.raises(ConfigError, match="contenders must be an integer"):
        lesson.contention(five, "lab:test:x", retry="fixed", contenders=0)


def test_the_contention_picture_draws_both_runs(five, shown):
    runs = [lesson.contention(five, "lab:test:drawn", retry=retry) for retry in ("fixed", "random")]
    lesson.plot_contention(*runs)
    titles = [ax.get_title() for ax in shown[0].axes]
    assert titles[0].startswith("fixed retry delay: 0 of 5") and titles[1].startswith("random retry delay: 5 of 5")


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


def test_lock_not_held_is_what_a_lost_extend_raises(r, ns):
    """The job pattern of 8.4 relies on it: extend() after the lease ran out raises, it does not revive."""
    from labkit.locks import Lock

    lock = Lock(r, "job", ttl_ms=60_000, prefix=ns.key("lk"))
    lock.acquire()
    r.delete(lock.key)
    with pytest.raises(LockNotHeld):
        lock.extend()
    assert lock.remaining_ms() == 0.0
