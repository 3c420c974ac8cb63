"""The lesson 10 module (`labkit.lessons.l10_persistence`): its experiments on real servers, and each check
accepting the reference answer and rejecting the plausible wrong ones."""

import pytest
import redis

from labkit.lessons import l10_persistence as lesson
from labkit.server.process import OWNER_MARKER, temp_root


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


def test_restart_times_grow_and_an_aof_of_commands_is_bigger_and_slower(root):
    samples = lesson.restart_times(root)
    rdb, base, commands = ([s for s in samples if s.fmt == fmt] for fmt in lesson.RESTART_FORMATS)
    assert [s.keys for s in rdb] == [40_000, 160_000]
    assert all(rows[1].cpu_seconds > 2 * rows[0].cpu_seconds for rows in (rdb, base, commands))
    assert 1.1 < commands[1].file_bytes / rdb[1].file_bytes < 2, "random values dominate either format"
    assert commands[1].cpu_seconds > 1.1 * rdb[1].cpu_seconds, "replaying commands costs more than loading an RDB"
    assert abs(base[1].file_bytes / rdb[1].file_bytes - 1) < 0.01
    assert sum(s.loading_replies for s in samples) > 0, "PING gets LOADING while the data loads"


def test_random_values_do_not_compress_but_populated_ones_do(root):
    with lesson._server(root, enable_debug_command="local") as populated, lesson._server(root) as random_:
        populated.client().execute_command("DEBUG", "POPULATE", 20_000, "order", 100)
        lesson.fill_random(random_.client(), 20_000)
        for srv in (populated, random_):
            srv.client().save()
        sizes = [(srv.dir / "dump.rdb").stat().st_size for srv in (populated, random_)]
    assert sizes[1] > 2 * sizes[0] and sizes[1] > 20_000 * 100


def test_aof_commands_decodes_an_incremental_file(root):
    with lesson._server(root, appendonly=True, appendfsync="always") as srv:
        r = srv.client()
        r.set("session:ada", "logged-in", ex=1800)
        r.expire("session:ada", 600)
        commands = lesson.aof_commands(next((srv.dir / "appendonlydir").glob("*.incr.aof")))
    assert [c[:3] for c in commands] == [["SELECT", "0"], ["SET", "session:ada", "logged-in"],
                                         ["PEXPIREAT", "session:ada", commands[2][2]]]
    assert commands[1][3] == "PXAT" and abs(int(commands[1][4]) - int(commands[2][2]) - 1_200_000) < 10_000


@pytest.mark.parametrize(("save", "per_minute", "minutes"), [
    (lesson.COPIED_SAVE, 1, 10), (lesson.REAL_DEFAULT_SAVE, 1, 60),
    (lesson.COPIED_SAVE, 10, 5), (lesson.REAL_DEFAULT_SAVE, 10, 10),
    (lesson.REAL_DEFAULT_SAVE, 20_000, 1), ("", 10, float("inf")),
])
def test_loss_window_is_the_first_rule_to_fire(save, per_minute, minutes):
    assert lesson.loss_window_s(save, per_minute / 60) == minutes * 60


def test_the_scaled_save_rule_fires_only_with_enough_changes(root):
    assert lesson.snapshots_after(root, {"10": "1 10", "100": "1 100"}, writes=50) == {"10": 1, "100": 0}


def test_a_failed_snapshot_refuses_writes_unless_told_not_to_and_blocks_a_clean_shutdown(root):
    strict, lenient = lesson.failed_snapshot(root), lesson.failed_snapshot(root, stop_writes=False)
    assert strict.status == "err" and strict.write_error.startswith("MISCONF") and "Is a directory" in strict.log_line
    assert "root dir" not in strict.log_line and str(root) not in strict.log_line
    assert lesson.first_sentence(strict.write_error).endswith("unable to persist to disk.")
    assert strict.persistence.refusing_writes and not strict.persistence.last_bgsave_ok
    assert strict.running_after_sigterm and "can't exit" in strict.shutdown_log_line
    assert strict.status_after_fix == "ok" and strict.write_after_fix
    assert lenient.status == "err" and lenient.write_error is None and lenient.running_after_sigterm
    assert not lenient.persistence.last_bgsave_ok and not lenient.persistence.refusing_writes


def test_a_crashed_primary_without_persistence_empties_its_replica(root):
    wiped = lesson.replica_after_primary_restarts(root, {"none": {}, "aof": {"appendonly": True}}, keys=200)
    assert (wiped["none"].before, wiped["none"].after) == (200, 0)
    aof = wiped["aof"]
    assert aof.before == 200 and (aof.after == 200 or (aof.after > 0 and aof.unwritten_bytes > 0))


def test_profiles_print_as_config_lines_and_a_table_of_measurements(root):
    assert lesson.conf_lines(lesson.PROFILES["cache"]) == ['save ""', "appendonly no"]
    assert lesson.conf_lines({"aof_use_rdb_preamble": False, "save": "3600 1"}) == [
        "aof-use-rdb-preamble no", "save 3600 1"]
    tested = {"cache": lesson.ProfileTest(lesson.Loss(10, 0), lesson.Loss(10, 0)),
              "session store": lesson.ProfileTest(lesson.Loss(10, 10), lesson.Loss(10, 9, 45)),
              "queue on streams": lesson.ProfileTest(lesson.Loss(10, 10), lesson.Loss(10, 10))}
    rates = lesson.Throughput(1, {"AOF off": 9000.0, "appendfsync no": 8800.0, "appendfsync everysec": 8500.0,
                                  "appendfsync always": 1234.0}, 300.0)
    table = lesson.profiles_table(tested, rates).splitlines()
    assert len(table) == 5 and "| 10 of 10 back | 9 of 10 back |" in table[3]
    assert "1,234 (appendfsync always)" in table[4]


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
    "analytics": {"save": "3600 1", "appendonly": "no"},
    "carts": {"save": "", "appendonly": "yes", "appendfsync": "everysec"},
    "ledger": {"save": "", "appendonly": True, "appendfsync": "always"},
}


def test_persistence_choices_accept_the_reference(root):
    assert lesson.check_persistence_choices(root, REFERENCE)


def test_persistence_choices_read_values_as_the_server_does(root):
    """The server reads yes/no and the fsync policies in any case: so does the check."""
    spelt = REFERENCE | {"analytics": {"save": "3600 1"}, "ledger": {"save": "", "APPENDONLY": "YES",
                                                                     "appendfsync": "Always"}}
    assert lesson.check_persistence_choices(root, spelt)


@pytest.mark.parametrize(("service", "choice", "says"), [
    ("leaderboard", {}, "engine's default"),
    ("leaderboard", {"save": "", "appendonly": "yes"}, "the AOF writes every change"),
    ("leaderboard", {"save": "", "appendonly": "YES"}, "the AOF writes every change"),
    ("analytics", {"appendonly": "yes"}, "one snapshot an hour is all the disk work needed"),
    ("analytics", {"save": ""}, "nothing is snapshotted, not even at a clean restart"),
    ("analytics", {}, "more often than once an hour"),
    ("analytics", {"save": "300 1"}, "more often than once an hour"),
    ("analytics", {"save": "3600 100"}, "no save point fires within the hour after a single change"),
    ("analytics", {"save": "7200 1"}, "no save point fires within the hour after a single change"),
    ("carts", {"save": "60 1000"}, "only the AOF keeps every write through a crash"),
    ("carts", {"save": "", "appendonly": "yes", "appendfsync": "always"}, "10.4 measured how much slower"),
    ("carts", {"save": "", "appendonly": "yes", "appendfsync": "no"}, "leaves fsync to the kernel"),
    ("carts", {"save": "60", "appendonly": "yes"}, "save: save points are pairs of whole numbers"),
    ("carts", {"appendonly": "maybe"}, "appendonly is 'yes' or 'no'"),
    ("carts", {"appendonly": 1}, "is a string"),
    ("ledger", {"save": "", "appendonly": "yes"}, "Use always"),
    ("ledger", {"save": "", "appendonly": "yes", "appendfsync": "sometimes"}, "appendfsync is one of always"),
    ("ledger", {"appendonly": "yes", "fsync": "always"}, "not fsync"),
    ("ledger", "always", "give a dict of directives"),
])
def test_persistence_choices_reject_the_plausible_mistakes(root, service, choice, says):
    result = lesson.check_persistence_choices(root, REFERENCE | {service: choice})
    assert not result and says in result.message
    assert all(other not in result.message for other in REFERENCE if other != service)


def test_persistence_choices_list_each_problem_on_a_line(root):
    result = lesson.check_persistence_choices(root, {service: {} for service in REFERENCE})
    lines = [line for line in result.message.splitlines() if line]
    assert not result and [line.split(":")[0] for line in lines] == [f"- {s}" for s in REFERENCE]


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


def _replica_count_only(r, key, value):
    r.set(key, value)
    return r.execute_command("WAITAOF", 1, 1, 500)[1] >= 1


def _waits_too_long(r, key, value):
    r.set(key, value)
    try:
        local, replicas = r.execute_command("WAITAOF", 1, 1, 4500)
    except redis.ResponseError:
        return False
    return local >= 1 and replicas >= 1


@pytest.mark.parametrize(("write", "says"), [
    (_two_replicas, "returned False 3 times in a row: a write fsynced here and on the replica is safe"),
    (_set_only, "check WAITAOF's reply"),
    (_wait, "WAIT counts replicas that received the write"),
    (_ignores_the_reply, "check WAITAOF's reply"),
    (_replicas_only, "numlocal"),  # either scenario that catches it names numlocal
    (_either, "check WAITAOF's reply"),
    (_replica_count_only, "when the primary is still writing its first AOF, it returned True: check numlocal too"),
    (_waits_too_long, "had not answered after 1.5 s"),
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


def test_server_files_are_what_the_server_wrote_without_labkits_marker(root):
    with lesson.spawn(modules=False, root=root) as srv:
        srv.client().save()
        files = lesson.server_files(srv.dir)
        assert "dump.rdb" in files and OWNER_MARKER not in files
        assert (srv.dir / OWNER_MARKER).exists()
