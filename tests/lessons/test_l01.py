"""The lesson 01 module (`labkit.lessons.l01_data_structures`): each check accepts the reference answer and rejects the
known-wrong ones."""

import pytest

from labkit.lessons import l01_data_structures as lesson
from labkit.lessons import on_each_engine
from labkit.server import available_engines, spawn


# -- leaderboard ----------------------------------------------------------------------------------------
def top_n_reference(r, key, n):
    rows = r.zrange(key, 0, n - 1, desc=True, withscores=True)
    return [(i + 1, member, score) for i, (member, score) in enumerate(rows)]


def test_leaderboard_accepts_the_reference(r, ns):
    assert lesson.check_leaderboard(r, ns, top_n_reference)
    assert ns.keys(r) == []


def test_leaderboard_rejects_ascending_order(r, ns):
    def ascending(r, key, n):
        return [(i + 1, m, s) for i, (m, s) in enumerate(r.zrange(key, 0, n - 1, withscores=True))]

    result = lesson.check_leaderboard(r, ns, ascending)
    assert not result and "highest score first" in result.message


def test_leaderboard_rejects_inclusive_stop_off_by_one(r, ns):
    def one_too_many(r, key, n):
        return [(i + 1, m, s) for i, (m, s) in enumerate(r.zrevrange(key, 0, n, withscores=True))]

    result = lesson.check_leaderboard(r, ns, one_too_many)
    assert not result and "inclusive" in result.message


def test_leaderboard_rejects_zero_based_ranks(r, ns):
    def zero_based(r, key, n):
        return [(i, m, s) for i, (m, s) in enumerate(r.zrevrange(key, 0, n - 1, withscores=True))]

    result = lesson.check_leaderboard(r, ns, zero_based)
    assert not result and "count from 1" in result.message


def test_leaderboard_rejects_a_top_n_that_ignores_n(r, ns):
    def always_three(r, key, n):
        return [(i + 1, m, s) for i, (m, s) in enumerate(r.zrange(key, 0, 2, desc=True, withscores=True))]

    result = lesson.check_leaderboard(r, ns, always_three)
    assert not result and "asked for 1 entries, got 3" in result.message
    assert ns.keys(r) == []


# -- daily visitors -------------------------------------------------------------------------------------
def record_visit_hll(r, ns, day, user):
    r.pfadd(ns.key("visitors", day), user)


def unique_visitors_hll(r, ns, day):
    return r.pfcount(ns.key("visitors", day))


def test_daily_visitors_accepts_hyperloglog(r, ns):
    result = lesson.check_daily_visitors(r, ns, record_visit_hll, unique_visitors_hll)
    assert result, result.message
    assert ns.keys(r) == []


def test_daily_visitors_rejects_counting_visits(r, ns):
    result = lesson.check_daily_visitors(r, ns, lambda r, ns, day, user: r.incr(ns.key("visits", day)),
                                  lambda r, ns, day: int(r.get(ns.key("visits", day))))
    assert not result and "counts visits, not visitors" in result.message


def test_daily_visitors_rejects_one_counter_for_all_days(r, ns):
    result = lesson.check_daily_visitors(r, ns, lambda r, ns, day, user: r.pfadd(ns.key("visitors"), user),
                                  lambda r, ns, day: r.pfcount(ns.key("visitors")))
    assert not result and "keep one counter per day" in result.message


def test_daily_visitors_rejects_an_exact_set(r, ns):
    result = lesson.check_daily_visitors(r, ns, lambda r, ns, day, user: r.sadd(ns.key("visitors", day), user),
                                  lambda r, ns, day: r.scard(ns.key("visitors", day)))
    assert not result and "a Set grows" in result.message
    assert ns.keys(r) == []


def test_daily_visitors_rejects_counts_kept_in_python(r, ns):
    seen = {}
    result = lesson.check_daily_visitors(r, ns, lambda r, ns, day, user: seen.setdefault(day, set()).add(user),
                                         lambda r, ns, day: len(seen[day]))
    assert not result and "no keys under ns were written" in result.message


def test_daily_visitors_rejects_counters_outside_the_prefix_and_removes_them(r, ns):
    # outside the lesson's prefix, but where its user may write (a workshop learner only under lab:<learner>:)
    outside = f"lab:{ns.learner}:elsewhere:visitors:" if ns.learner else "lab:elsewhere:visitors:"
    result = lesson.check_daily_visitors(r, ns, lambda r, ns, day, user: r.pfadd(outside + day, user),
                                         lambda r, ns, day: r.pfcount(outside + day))
    assert not result and "outside this lesson's prefix" in result.message
    assert [k for day in lesson.VISITS_DAYS for k in r.scan_iter(match=outside + day)] == []


def test_daily_visitors_rejects_one_key_per_visitor(r, ns):
    def record(r, ns, day, user):
        r.set(ns.key("seen", day, user), 1)

    def count(r, ns, day):
        return sum(1 for _ in r.scan_iter(match=ns.key("seen", day, "*"), count=1000))

    result = lesson.check_daily_visitors(r, ns, record, count)
    assert not result and "4,000 keys were written under ns, expected one counter per day" in result.message
    assert ns.keys(r) == []


def test_daily_visitors_rejects_strings_that_are_not_hyperloglogs(r, ns):
    def record(r, ns, day, user):
        r.append(ns.key("visitors", day), "")
        r.setrange(ns.key("visitors", day), 0, "x")

    def count(r, ns, day):
        return lesson.VISITS_DAYS[day]  # the truth, as if read from elsewhere

    result = lesson.check_daily_visitors(r, ns, record, count)
    assert not result and "not HyperLogLogs" in result.message


# -- tag query ------------------------------------------------------------------------------------------
def test_tag_query_accepts_sinter(r, ns):
    assert lesson.check_tag_query(r, ns, lambda r, ns, tags: r.sinter([ns.key("tag", t) for t in tags]))
    assert ns.keys(r) == []


def test_tag_query_rejects_sunion(r, ns):
    result = lesson.check_tag_query(r, ns, lambda r, ns, tags: r.sunion([ns.key("tag", t) for t in tags]))
    assert not result and "ANY of the tags" in result.message


def test_tag_query_rejects_only_the_first_tag(r, ns):
    result = lesson.check_tag_query(r, ns, lambda r, ns, tags: r.smembers(ns.key("tag", tags[0])))
    assert not result and "expected" in result.message


def test_tag_query_rejects_wrong_key_names(r, ns):
    result = lesson.check_tag_query(r, ns, lambda r, ns, tags: r.sinter([f"tag:{t}" for t in tags]))
    assert not result


def test_daily_visitors_says_what_to_do_when_nothing_is_recorded(r, ns):
    result = lesson.check_daily_visitors(r, ns, lambda *a: None, lambda r, ns, day: 0)
    assert not result and "add users with PFADD" in result.message


# -- the measurements the notebook runs -----------------------------------------------------------------
def test_encoding_limits_are_read_by_name_without_the_ziplist_aliases(r):
    limits = lesson.encoding_limits(r.config_get("*-max-*"))
    assert limits["hash-max-listpack-entries"] > 0 and limits["hash-max-listpack-value"] > 0
    assert "list-max-listpack-size" in limits and not any("ziplist" in name for name in limits)
    assert "maxmemory" not in limits and "proto-max-bulk-len" not in limits
    assert lesson.encoding_limits({"hash-max-ziplist-entries": "1", "set-max-intset-entries": "7"}) == {
        "set-max-intset-entries": 7}


def test_encoding_limits_on_a_server_without_set_listpacks():
    """Redis 7.0 has no set-max-listpack-*: the names are read from the server, never assumed."""
    if "redis" not in available_engines():
        pytest.skip("no redis-server on PATH")
    with spawn("redis", modules=False) as old:
        c = old.client()
        limits = lesson.encoding_limits(c.config_get("*-max-*"))
        version = tuple(int(p) for p in c.info("server")["redis_version"].split(".")[:2])
    assert ("set-max-listpack-entries" in limits) == (version >= (7, 2))
    assert "hash-max-listpack-entries" in limits


def test_grow_one_by_one_finds_the_switch(r, ns):
    limit = lesson.encoding_limits(r.config_get("*-max-*"))["zset-max-listpack-entries"]
    growth = lesson.grow_one_by_one(r, ns.key("z"), lambda p, key, i: p.zadd(key, {f"m{i}": i}), limit + 3)
    assert growth.switch == limit + 1 and growth.encodings[0] == "listpack" and len(growth.usage) == limit + 3
    assert lesson.Growth([1, 2], ["listpack", "listpack"]).switch is None


def test_server_usec_per_call_reads_the_servers_own_time():
    with spawn(modules=False) as quiet:
        q = quiet.client()
        lesson.grow_structures(q, 2000, "x" * 10)
        assert (q.hlen("h"), q.llen("l"), q.scard("s"), q.zcard("z")) == (2000,) * 4
        one = lesson.server_usec_per_call(q, "hget", lambda p: p.hget("h", "f1"), 100, batches=3)
        everything = lesson.server_usec_per_call(q, "hgetall", lambda p: p.hgetall("h"), 3, batches=3)
    assert 0 < one < everything


def test_ping_while_sees_a_long_script_block_the_other_client_then_busy():
    slow = "local x = 0 for i = 1, tonumber(ARGV[1]) do x = x + i end return x"
    with spawn(modules=False) as busy:
        b, other = busy.client(), busy.client()
        within = lesson.ping_while(other, lambda: b.eval(slow, 0, 10_000_000))
        script_ms = b.slowlog_get(1)[0]["duration"] / 1000
        b.config_set("busy-reply-threshold", 20)
        past = lesson.ping_while(other, lambda: b.eval(slow, 0, 10_000_000))
        quick = lesson.ping_while(other, lambda: b.eval("return 1", 0))
    assert within.errors == [] and within.longest_ms > 0.5 * script_ms and within.result == past.result
    assert past.errors and past.errors[0].startswith("BUSY") and quick.errors == [] and quick.result == 1
    assert quick.longest_ms < script_ms


def test_libraries_reads_function_list_under_resp2_and_resp3():
    library = "#!lua name=lab_test\nredis.register_function('one', function(keys, args) return 1 end)"
    with spawn(modules=False) as srv:
        resp3, resp2 = srv.client(protocol=3), srv.client(protocol=2)
        resp3.function_load(library)
        assert lesson.libraries(resp3) == lesson.libraries(resp2) == {"lab_test": ["one"]}


# -- 1.9 the thresholds of every installed engine ---------------------------------------------------------
@pytest.fixture(scope="module")
def encodings():
    """`encodings_here` on a fresh server of each installed engine, with what each server can do."""
    return on_each_engine(lambda r, caps: (lesson.encodings_here(r, caps), caps))


def test_each_engine_switches_one_step_past_every_threshold_it_has(encodings):
    for row, caps in encodings:
        assert row.server == f"{caps.engine} {caps.version}"
        assert set(row.limits) == {name for name in caps.config_names if lesson.ENCODING_LIMIT.search(name)
                                   and "ziplist" not in name}
        assert set(row.switches) == set(row.limits) - {"list-max-listpack-size"}
        assert all(row.switches[setting] == row.limits[setting] + 1 for setting in row.switches), row


def test_small_sets_and_lists_are_listpacks_exactly_where_sets_have_listpack_settings(encodings):
    for row, caps in encodings:
        assert (row.small_set == "listpack") is caps.set_listpack is ("set-max-listpack-entries" in row.limits)
        assert row.small_set in ("listpack", "hashtable") and row.small_list in ("listpack", "quicklist")
        assert (row.small_list == "listpack") is caps.set_listpack  # both came with Redis 7.2
        assert (row.list_switch is None) is (row.small_list == "quicklist")


def test_the_longest_embstr_is_44_bytes_or_shrinks_with_the_key_name_and_a_ttl(encodings):
    for row, _ in encodings:  # decided from the measurement: Redis moved the key into the value's allocation in 8.0
        name_8, name_16, name_16_ex, name_48 = row.embstr_longest
        fixed = name_8 == name_16 == name_16_ex == name_48 == 44
        shared = name_8 - name_16 == 8 and name_16 - name_16_ex == 8 and 0 <= name_48 <= max(0, name_16 - 32)
        assert fixed != shared and name_16_ex > 0, row


def test_longest_embstr_measures_with_a_ttl_when_given_one():
    with spawn(modules=False) as srv:
        c = srv.client()
        plain, with_ttl = lesson.longest_embstr(c, "k" * 16), lesson.longest_embstr(c, "k" * 16, ex=100)
        c.set("k" * 16, "x" * with_ttl, ex=100)
        inside = c.object("encoding", "k" * 16)
        c.set("k" * 16, "x" * (with_ttl + 1), ex=100)
        outside = c.object("encoding", "k" * 16)
        c.delete("k" * 16)
    assert (inside, outside) == ("embstr", "raw") and with_ttl in (plain, plain - 8)


def test_longest_embstr_is_the_last_length_set_keeps_embedded():
    with spawn(modules=False) as srv:
        c = srv.client()
        longest = lesson.longest_embstr(c, "k" * 8)
        c.set("k" * 8, "x" * longest)
        inside = c.object("encoding", "k" * 8)
        c.set("k" * 8, "x" * (longest + 1))
        outside = c.object("encoding", "k" * 8)
        assert lesson.longest_embstr(c, "k" * 8, top=5) == 5 and c.dbsize() == 0  # it removes its key
    assert longest > 0 and (inside, outside) == ("embstr", "raw")


def test_differing_defaults_names_each_setting_whose_values_differ():
    def row(**limits):
        return lesson.EngineEncodings("x 1", limits, {}, "listpack", "listpack", 80, (44, 44, 44, 44))

    same = [row(a=1, b=2), row(a=1), row(a=1, b=2)]
    assert lesson.differing_defaults(same) == {}
    assert lesson.differing_defaults([*same, row(a=3)]) == {"a": {1, 3}}


def test_print_encodings_shows_a_dash_for_what_a_server_lacks_and_a_legend(encodings, capsys):
    old = lesson.EngineEncodings("redis 7.0.15", {"hash-max-listpack-entries": 512, "hash-max-listpack-value": 64,
                                                  "list-max-listpack-size": -2},
                                 {"hash-max-listpack-entries": 513, "hash-max-listpack-value": 66}, "hashtable",
                                 "quicklist", None, (44, 44, 44, 44))
    assert old.switched_one_past == 1
    lesson.print_encodings([old])
    header, line, *legend = capsys.readouterr().out.splitlines()
    assert header.split()[:5] == ["server", "hash", "e/v", "set", "e/v"] and "switched" in header
    assert "(name 8/16/16+EX/48)" in header
    assert line.split() == ["redis", "7.0.15", "512/64", "-", "-", "-", "-2", "1/2", "hashtable", "quicklist",
                            "44/44/44/44"]
    assert legend and all(word in " ".join(legend) for word in ("e/v", "intset", "list", "switched", "embstr"))
    lesson.print_encodings([row for row, _ in encodings])
    assert len(capsys.readouterr().out.splitlines()) == 1 + len(available_engines()) + len(legend)
