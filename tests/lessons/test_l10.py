"""The lesson 10 module (`labkit.lessons.l10_persistence`): its experiments on real servers, and each check
accepting the reference answer and rejecting the plausible wrong ones."""

import pytest
import redis

from labkit.lessons import l10_persistence as lesson
from labkit.server.process import temp_root


@pytest.fixture
def root():
    path = lesson.data_root()
    yield path
    lesson.remove_data_root(path)


# -- where the data lives -------------------------------------------------------------------------------
def test_filesystem_type_knows_memory_from_disk(tmp_path):
    assert lesson.filesystem_type("/proc/self") == "proc"
    if lesson.filesystem_type("/dev/shm") is not None:
        assert lesson.filesystem_type("/dev/shm") in lesson.MEMORY_FILESYSTEMS


def test_data_root_is_fresh_and_removed_with_a_count_of_leftovers():
    first, second = lesson.data_root(), lesson.data_root()
    assert first != second and first.parent in (temp_root(), lesson.CHECKOUT_BUILD)
    (first / "labkit-interrupted").mkdir()
    assert lesson.remove_data_root(first) == 1 and lesson.remove_data_root(second) == 0
    assert not first.exists() and not second.exists()


def test_data_root_sweeps_what_a_killed_run_left():
    probe = lesson.data_root()
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not lesson._alive(pid))
    stale = probe.parent / f"l10-{dead}-interrupted"
    (stale / "labkit-server").mkdir(parents=True)
    mine = lesson.data_root()
    assert not stale.exists() and probe.exists() and mine.exists()
    lesson.remove_data_root(probe)
    lesson.remove_data_root(mine)


def test_fsync_costs_more_than_a_write_on_a_disk(root):
    cost = lesson.fsync_cost(root)
    if lesson.filesystem_type(root) not in lesson.MEMORY_FILESYSTEMS:
        assert cost.fsync_us > 5 * cost.write_us
    assert list(root.iterdir()) == []


# -- snapshots, crashes, the AOF --------------------------------------------------------------------------
@pytest.mark.parametrize(("stop", "save", "save_after", "recovered"), [
    ("kill", lesson.REAL_DEFAULT_SAVE, 100, 100),
    ("term", lesson.REAL_DEFAULT_SAVE, 100, 200),
    ("term", "", 100, 100),
    ("term", "", None, 0),
])
def test_crash_loss_counts_what_came_back(root, stop, save, save_after, recovered):
    loss = lesson.crash_loss(root, stop=stop, writes=200, save_after=save_after, save=save)
    assert (loss.written, loss.recovered, loss.lost) == (200, recovered, 200 - recovered)


def test_crash_loss_with_an_aof_keeps_what_was_written_to_the_file(root):
    for policy in ("always", "no"):
        loss = lesson.crash_loss(root, stop="kill", writes=300, save_after=None, appendonly=True, appendfsync=policy)
        assert loss.recovered == 300 and loss.unwritten_bytes == 0


def test_fork_slope_is_a_least_squares_fit():
    samples = [lesson.ForkSample(mb, 0, mb * 10**6, 500 + 20 * mb) for mb in (10, 20, 40)]
    assert lesson.fork_ms_per_gb(samples) == pytest.approx(20.0)


def test_fork_times_grow_with_memory(root):
    samples = lesson.fork_times(root, megabytes=(16, 128), repeats=3)
    assert [s.megabytes for s in samples] == [16, 128] and samples[1].used_memory > 4 * samples[0].used_memory
    assert samples[1].fork_usec > samples[0].fork_usec


def test_aof_files_name_each_part(root):
    with lesson._server(root, appendonly=True) as srv:
        srv.client().set("k", "v")
        kinds = [kind for _, _, kind in lesson.aof_files(srv.dir / "appendonlydir")]
    assert kinds == ["base, RDB format", "incremental: commands since the base",
                     "manifest: the list of files, in order"]


def test_restart_times_grow_and_an_aof_of_commands_is_bigger(root):
    samples = lesson.restart_times(root, sizes=(20_000, 80_000), repeats=2)
    rdb, commands = ([s for s in samples if s.fmt == fmt] for fmt in ("RDB", "AOF, commands"))
    assert rdb[1].load_seconds > rdb[0].load_seconds and commands[1].file_bytes > 3 * rdb[1].file_bytes


@pytest.mark.parametrize(("save", "per_minute", "minutes"), [
    (lesson.COPIED_SAVE, 1, 10), (lesson.REAL_DEFAULT_SAVE, 1, 60),
    (lesson.COPIED_SAVE, 10, 5), (lesson.REAL_DEFAULT_SAVE, 10, 10),
    (lesson.REAL_DEFAULT_SAVE, 20_000, 1), ("", 10, float("inf")),
])
def test_loss_window_is_the_first_rule_to_fire(save, per_minute, minutes):
    assert lesson.loss_window_s(save, per_minute / 60) == minutes * 60


def test_the_scaled_save_rule_fires_only_with_enough_changes(root):
    assert lesson.snapshots_after(root, {"10": "1 10", "100": "1 100"}, writes=50) == {"10": 1, "100": 0}


def test_a_failed_snapshot_refuses_writes_unless_told_not_to(root):
    strict, lenient = lesson.failed_snapshot(root), lesson.failed_snapshot(root, stop_writes=False)
    assert strict.status == "err" and strict.write_error.startswith("MISCONF") and "Is a directory" in strict.log_line
    assert strict.status_after_fix == "ok" and strict.write_after_fix
    assert lenient.status == "err" and lenient.write_error is None


def test_turning_the_aof_on_in_the_config_file_starts_empty(root):
    before, after, files = lesson.aof_switched_on_by_config_file(root, keys=100)
    assert (before, after) == (100, 0) and "dump.rdb" in files
    assert lesson.aof_switched_on_at_runtime(root, keys=100, rewrite_config=False) == (100, 0)
    assert lesson.aof_switched_on_at_runtime(root, keys=100, rewrite_config=True) == (100, 100)


def test_sessions_survive_a_restart_only_with_persistence(root):
    assert lesson.sessions_after_restart(root, users=20) == 0
    assert lesson.sessions_after_restart(root, users=20, **lesson.PROFILES["session store"]) == 20


# -- exercise 1: persistence for three services ---------------------------------------------------------
REFERENCE = {
    "leaderboard": {"save": "", "appendonly": "no"},
    "carts": {"save": "", "appendonly": "yes", "appendfsync": "everysec"},
    "ledger": {"save": "", "appendonly": True, "appendfsync": "always"},
}


def test_persistence_choices_accept_the_reference(root):
    assert lesson.check_persistence_choices(root, REFERENCE)


@pytest.mark.parametrize(("service", "choice", "says"), [
    ("leaderboard", {}, "engine's default"),
    ("leaderboard", {"save": "", "appendonly": "yes"}, "the AOF writes every change"),
    ("carts", {"save": "60 1000"}, "only the AOF keeps every write through a crash"),
    ("carts", {"save": "", "appendonly": "yes", "appendfsync": "always"}, "three times slower"),
    ("carts", {"save": "", "appendonly": "yes", "appendfsync": "no"}, "leaves fsync to the kernel"),
    ("ledger", {"save": "", "appendonly": "yes"}, "Use always"),
    ("ledger", {"appendonly": "yes", "fsync": "always"}, "not fsync"),
    ("ledger", "always", "give a dict of directives"),
])
def test_persistence_choices_reject_the_plausible_mistakes(root, service, choice, says):
    result = lesson.check_persistence_choices(root, REFERENCE | {service: choice})
    assert not result and says in result.message
    assert all(other not in result.message for other in REFERENCE if other != service)


# -- exercise 2: a durable write --------------------------------------------------------------------------
def _waitaof_both(r, key, value):
    r.set(key, value)
    try:
        local, replicas = r.execute_command("WAITAOF", 1, 1, 500)
    except redis.ResponseError:
        return False
    return local >= 1 and replicas >= 1


@pytest.mark.needs("waitaof")
def test_durable_write_accepts_the_reference():
    assert lesson.check_durable_write(_waitaof_both)


def _set_only(r, key, value):
    return bool(r.set(key, value))


def _wait(r, key, value):
    r.set(key, value)
    return r.wait(1, 500) >= 1


def _ignores_the_reply(r, key, value):
    r.set(key, value)
    r.execute_command("WAITAOF", 1, 1, 500)
    return True


def _replicas_only(r, key, value):
    r.set(key, value)
    return r.execute_command("WAITAOF", 0, 1, 500)[1] >= 1


def _either(r, key, value):
    r.set(key, value)
    local, replicas = r.execute_command("WAITAOF", 1, 1, 500)
    return local >= 1 or replicas >= 1


def _two_replicas(r, key, value):
    r.set(key, value)
    local, replicas = r.execute_command("WAITAOF", 1, 2, 500)
    return local >= 1 and replicas >= 2


@pytest.mark.parametrize(("write", "says"), [
    (_two_replicas, "returned False 3 times in a row: a write fsynced here and on the replica is safe"),
    (_set_only, "check WAITAOF's reply"),
    (_wait, "WAIT counts replicas that received the write"),
    (_ignores_the_reply, "check WAITAOF's reply"),
    (_replicas_only, "numlocal 1"),
    (_either, "check WAITAOF's reply"),
])
@pytest.mark.needs("waitaof")
def test_durable_write_rejects_the_plausible_mistakes(write, says):
    result = lesson.check_durable_write(write)
    assert not result and says in result.message


@pytest.mark.needs("waitaof")
def test_durable_write_rejects_a_write_that_never_returns():
    def forever(r, key, value):
        r.set(key, value)
        local, replicas = r.execute_command("WAITAOF", 1, 1, 0)  # 0: no timeout
        return local >= 1 and replicas >= 1

    result = lesson.check_durable_write(forever, deadline_s=1.0)
    assert not result and "give WAITAOF a timeout" in result.message
