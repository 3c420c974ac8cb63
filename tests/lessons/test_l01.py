"""The lesson 01 module (`labkit.lessons.l01_data_structures`): each check accepts the reference answer and rejects the
known-wrong ones."""

from labkit.lessons import l01_data_structures as lesson


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
