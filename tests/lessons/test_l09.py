"""The lesson 09 module (`labkit.lessons.l09_memory_and_eviction`): each check accepts the reference answer and
rejects the known-wrong ones; the experiments the checks rest on measure what the lesson says."""

import time

import pytest
import redis

from labkit import ops
from labkit.lessons import l09_memory_and_eviction as lesson
from labkit.lessons import on_each_engine_named
from labkit.server import available_engines, spawn


# -- exercise 1: choose a policy ---------------------------------------------------------------------------
def test_policy_choice_accepts_volatile_lfu_with_its_measured_hit_rate():
    measured = lesson.run_mix("volatile-lfu")
    assert measured.flags_lost == 0 and measured.refused == 0
    result = lesson.check_policy_choice("volatile-lfu", measured.hit_rate)
    assert result, result.message


@pytest.mark.parametrize(("policy", "hint"), [
    ("allkeys-lfu", "feature flags"),  # the best hit rate, but the flags go
    ("allkeys-lru", "feature flags"),
    ("noeviction", "refused"),  # keeps the flags, refuses cache writes
    ("volatile-lru", "another safe policy"),  # keeps the flags, loses to the crawler
])
def test_policy_choice_rejects_policies_that_lose_flags_refuse_writes_or_fall_to_the_crawler(policy, hint):
    result = lesson.check_policy_choice(policy, lesson.run_mix(policy).hit_rate)
    assert not result and hint in result.message


def test_policy_choice_wants_the_hit_rate_that_was_measured():
    result = lesson.check_policy_choice("volatile-lfu", 0.99)
    assert not result and "you reported a hit rate of 0.990" in result.message
    assert not lesson.check_policy_choice("lru", 0.7) and not lesson.check_policy_choice("volatile-lfu", "high")


# -- exercise 2: delete a prefix -----------------------------------------------------------------------------
def batched(r, keys, size=500):
    deleted, batch = 0, []
    for key in keys:
        batch.append(key)
        if len(batch) == size:
            deleted += r.unlink(*batch)
            batch = []
    return deleted + (r.unlink(*batch) if batch else 0)


def test_prefix_delete_accepts_scan_and_batched_unlink_and_labkit_ops():
    reference = lesson.check_prefix_delete(lambda r, prefix: batched(r, r.scan_iter(match=prefix + ":*", count=1000)))
    assert reference, reference.message
    assert lesson.check_prefix_delete(ops.scan_delete)


@pytest.mark.parametrize(("name", "delete_prefix", "hint"), [
    ("KEYS", lambda r, p: batched(r, r.keys(p + ":*")), "it called KEYS"),
    ("prefix + '*'", lambda r, p: batched(r, r.scan_iter(match=p + "*", count=1000)), "outside the prefix"),
    ("one UNLINK per key", lambda r, p: sum(r.unlink(k) for k in r.scan_iter(match=p + ":*", count=1000)),
     "batch them"),
    ("one UNLINK for all", lambda r, p: r.unlink(*r.scan_iter(match=p + ":*", count=1000)), "at once"),
    ("SCAN's default COUNT", lambda r, p: batched(r, r.scan_iter(match=p + ":*")), "COUNT is 10"),
])
def test_prefix_delete_rejects_keys_overreach_and_unbatched_versions(name, delete_prefix, hint):
    result = lesson.check_prefix_delete(delete_prefix)
    assert not result and hint in result.message, (name, result.message)


# -- exercise 3: the key that breaks the budget -----------------------------------------------------------
def test_budget_culprit_accepts_the_largest_memory_usage():
    result = lesson.check_budget_culprit(lambda r: ops.big_keys(r, top=1)[0].key)
    assert result, result.message


def most_elements(r):
    length = {"string": r.strlen, "hash": r.hlen, "list": r.llen, "set": r.scard, "zset": r.zcard}
    return max(r.scan_iter(count=1000), key=lambda key: length[r.type(key)](key))


def biggest_string(r):
    return max((key for key in r.scan_iter(count=1000) if r.type(key) == "string"), key=r.strlen)


@pytest.mark.parametrize(("name", "find_culprit", "hint"), [
    ("most elements (what --bigkeys ranks by)", most_elements, "compare MEMORY USAGE, not element counts"),
    ("biggest string", biggest_string, "a string is not the only type"),
    ("KEYS", lambda r: max(r.keys("*"), key=r.memory_usage), "it called KEYS"),
])
def test_budget_culprit_rejects_element_counts_strings_only_and_keys(name, find_culprit, hint):
    result = lesson.check_budget_culprit(find_culprit)
    assert not result and hint in result.message, (name, result.message)


def test_the_budget_instance_is_over_its_budget_until_the_culprit_goes():
    from labkit.server import spawn

    with spawn(modules=False) as server:
        c = server.client()
        culprit = lesson.budget_instance(c)
        limit = int(c.config_get("maxmemory")["maxmemory"])
        assert lesson.used_memory(c) > limit
        c.delete(culprit)  # freed by a background thread (lazyfree-lazy-user-del): poll with a deadline
        deadline = time.monotonic() + 10
        while lesson.used_memory(c) >= limit and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lesson.used_memory(c) < limit


# -- the experiments the lesson's claims rest on ---------------------------------------------------------
def test_read_through_counts_hits_misses_and_refused_writes():
    server, c = lesson.cache_server("noeviction", 400_000)  # room for about half of 5,000 items
    try:
        outcomes = lesson.read_through(c, [f"k:{i % 5000}" for i in range(12_000)])
    finally:
        server.stop()
    assert set(outcomes) == {lesson.HIT, lesson.MISS, lesson.REFUSED}
    assert outcomes[0] == lesson.MISS and outcomes[-1] in (lesson.HIT, lesson.REFUSED)


def test_exact_lru_keeps_the_most_recent_writes():
    assert lesson.exact_lru_kept(["a", "b", "c", "a", "d"], 2) == {"a", "d"}


def test_ideal_hit_rate_counts_repeats_of_the_most_requested_items():
    import numpy as np

    assert lesson.ideal_hit_rate(np.array([0, 0, 0, 1, 1, 2]), capacity=1) == pytest.approx(2 / 6)


def test_measure_stalls_sees_the_server_busy_and_the_other_client_wait():
    from labkit.server import spawn

    with spawn(modules=False) as server:
        lesson.fill_keyspace(server.client(), 100_000)
        run = lesson.measure_stalls(server, {"KEYS": lambda c: c.keys("user:*"), "PING": lambda c: c.ping()})
    keys_cpu = run.best("KEYS", "server_cpu_ms")  # 2.2-3.0 ms measured, once 1.7 on a busy machine; PING 0.02
    assert [s.calls for s in run.stalls["KEYS"]] == [1, 1, 1] and keys_cpu > 20 * run.worst("PING", "server_cpu_ms")
    assert run.worst("KEYS", "other_client_ms") > 0.5 * keys_cpu > run.worst("PING", "server_cpu_ms")
    assert len(run.windows) == 6 and len(run.timeline) > 50


def test_the_budget_culprit_has_a_fresh_name_each_run():
    result = lesson.check_budget_culprit(lambda r: "app:report:export")  # the name printed in section 9.7
    assert not result and "is not it" in result.message, result.message


def test_exact_lru_hit_rate_counts_hits_of_a_true_lru():
    # capacity 2: 1 2 1 3 (evicts 2) 2 (miss, evicts 1) 1 (miss) -> one hit in six
    assert lesson.exact_lru_hit_rate([1, 2, 1, 3, 2, 1], 2) == 1 / 6
    assert lesson.exact_lru_hit_rate([5, 5, 5, 5], 1) == 3 / 4


def test_expiry_race_counts_every_server_before_the_common_expiry_time():
    runs = lesson.expiry_race({"a": None, "b": 3600}, short=500, others=1000, ttl_ms=1500, watch_s=0.5)
    for run in runs.values():
        assert run.times[0] < 0 and run.present[0] == 500, (run.label, run.times[0], run.present[0])
        assert run.times[-1] >= 0.4 and run.times == sorted(run.times)


def test_the_cli_is_one_that_takes_the_lessons_options_on_every_engine():
    """Each engine's server gets a client that accepts `--bigkeys --count` (older clients refuse the option)."""
    for engine in available_engines():
        with spawn(engine, modules=False) as server:
            server.client().set("k", "v")
            done = lesson.cli(server, "--bigkeys", "--count", "10")
            assert done.returncode == 0 and "Unrecognized option" not in done.stderr, (engine, done.stderr)
            assert str(lesson.cli_binary(server)) in lesson.cli_command(server)


def test_field_expiry_reclaims_every_field_unread_where_the_engine_has_it(fresh):
    r, caps = fresh
    row = lesson.field_expiry(r, caps, sessions=200, ttl_ms=300)
    assert row.server == f"{caps.engine} {caps.version}"
    if row.supported:
        assert row.keyspace_before > 0 and row.keyspace_after == 0 and row.reclaimed == 200 and row.fields_left == {2}
        assert row.keyspace_name in lesson.VOLATILE_KEYS_FIELDS and row.stats_name in lesson.EXPIRED_FIELDS_STATS
    else:
        with pytest.raises(redis.ResponseError, match="unknown command"):  # the server really lacks them
            r.hpexpire("probe", 1000, "field")
        assert "unknown command" in row.reason


def test_every_engine_starts_without_a_memory_limit_and_with_noeviction(fresh):
    """What the lesson's common mistake shows: no engine defaults to volatile-lru (nor to any limit)."""
    r, caps = fresh
    server, settings = lesson.default_eviction_settings(r, caps)
    assert server == f"{caps.engine} {caps.version}"
    assert settings == {"maxmemory": "0", "maxmemory-policy": "noeviction"}
    r.config_set("maxmemory-policy", "volatile-lru")  # the function reports what the server says, not a constant
    assert lesson.default_eviction_settings(r, caps)[1]["maxmemory-policy"] == "volatile-lru"




def test_the_defaults_cell_has_a_row_per_installed_engine_named_as_labkit_names_it():
    """The common mistake's cell: one row per engine (no dict() to merge two of the same name and version)."""
    defaults = on_each_engine_named(lesson.default_eviction_settings)
    assert [engine for engine, _ in defaults] == list(available_engines())
    assert all(settings == {"maxmemory": "0", "maxmemory-policy": "noeviction"} for _, (_, settings) in defaults)
