"""Lesson 01, data structures (`notebooks/01_data_structures.ipynb`): the exercise checks."""

from __future__ import annotations

from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, check, delete_keys, verdict

LEADERBOARD = {"ada": 310, "bob": 120, "cy": 990, "dee": 450, "eve": 45, "fay": 700, "gus": 450.5}


@check
def check_leaderboard(r: redis.Redis, ns: Namespace, top_n: Callable) -> Result:
    """`top_n(r, key, n)` returns [(rank, member, score)], rank 1 = highest score, n entries."""
    key = ns.key("check", "leaderboard")
    r.delete(key)
    r.zadd(key, LEADERBOARD)
    try:
        answer = [tuple(row) for row in top_n(r, key, 3)]
    finally:
        delete_keys(r, [key])
    ranked = sorted(LEADERBOARD.items(), key=lambda kv: -kv[1])
    expected = [(i + 1, m, float(s)) for i, (m, s) in enumerate(ranked[:3])]
    problems = []
    if len(answer) != 3:
        problems.append(f"asked for 3 entries, got {len(answer)} (ZRANGE's stop index is inclusive: 0..n-1).")
    elif [m for _, m, _ in answer] != [m for _, m, _ in expected]:
        problems.append(f"members {[m for _, m, _ in answer]}, expected {[m for _, m, _ in expected]}: "
                        "highest score first (ZRANGE ... REV, or ZREVRANGE).")
    elif [rank for rank, _, _ in answer] != [1, 2, 3]:
        problems.append(f"ranks {[rank for rank, _, _ in answer]}: people count from 1, ZRANK from 0.")
    elif [float(s) for _, _, s in answer] != [s for _, _, s in expected]:
        problems.append("the scores do not match: ask for WITHSCORES.")
    return verdict(problems, f"top 3: {answer}")


VISITS_DAYS = {"2026-11-25": 1500, "2026-11-26": 2500}
VISITS_PER_USER = 2
HLL_TOLERANCE = 0.03  # more than 3 standard errors (0.81% each) for HyperLogLog


@check
def check_daily_visitors(r: redis.Redis, ns: Namespace, record_visit: Callable, unique_visitors: Callable) -> Result:
    """`record_visit(r, ns, day, user)` and `unique_visitors(r, ns, day)` count distinct users per
    day with HyperLogLog: within 3% of the truth, about 12 KB per day at most."""
    before = set(ns.keys(r))
    for day, users in VISITS_DAYS.items():
        for _ in range(VISITS_PER_USER):
            for user in range(users):
                record_visit(r, ns, day, f"user{user}")
    try:
        counts = {day: unique_visitors(r, ns, day) for day in VISITS_DAYS}
        new_keys = sorted(set(ns.keys(r)) - before)
        sizes = {k: (r.type(k), r.memory_usage(k, samples=0) or 0) for k in new_keys}
    finally:
        delete_keys(r, sorted(set(ns.keys(r)) - before))
    problems = []
    for day, truth in VISITS_DAYS.items():
        got = counts[day]
        if got >= truth * VISITS_PER_USER * (1 - HLL_TOLERANCE):
            problems.append(f"{day}: {got} counts visits, not visitors: each of {truth} users came "
                            f"{VISITS_PER_USER} times; count distinct users (PFADD/PFCOUNT).")
        elif abs(got - truth) > truth * HLL_TOLERANCE:
            everyone = max(VISITS_DAYS.values())
            mixed = abs(got - everyone) <= everyone * HLL_TOLERANCE
            hint = "add users with PFADD, count with PFCOUNT"
            if mixed:
                hint = "the days are mixed: keep one counter per day"
            problems.append(f"{day}: {got} is off by more than 3% from {truth}: {hint}.")
    if not problems and any(kind != "string" or size > 16 * 1024 for kind, size in sizes.values()):
        problems.append(f"the counts are right but the keys are {sizes}: a HyperLogLog is a string of at most "
                        "12 KB, whatever the number of users; a Set grows with every user.")
    return verdict(problems, f"distinct visitors {counts}, true {VISITS_DAYS}, in keys {sorted(sizes)}.")


TAGGED = {"redis": {"a1", "a2", "a3", "a5"}, "python": {"a2", "a3", "a4"}, "caching": {"a3", "a5", "a2"}}


@check
def check_tag_query(r: redis.Redis, ns: Namespace, with_all_tags: Callable) -> Result:
    """`with_all_tags(r, ns, tags)` returns the set of article ids that carry every tag in `tags`,
    with tag sets stored at `ns.key("tag", name)`."""
    keys = [ns.key("tag", tag) for tag in TAGGED]
    for tag, ids in TAGGED.items():
        r.delete(ns.key("tag", tag))
        r.sadd(ns.key("tag", tag), *ids)
    cases = [["redis", "python"], ["redis", "python", "caching"], ["python"]]
    try:
        answers = [set(with_all_tags(r, ns, tags)) for tags in cases]
    finally:
        delete_keys(r, keys)
    problems = []
    for tags, got in zip(cases, answers, strict=True):
        want = set.intersection(*(TAGGED[t] for t in tags))
        if got == set.union(*(TAGGED[t] for t in tags)) and got != want:
            problems.append(f"{tags}: {sorted(got)} has articles with ANY of the tags (SUNION); "
                            "ask for ALL of them (SINTER).")
            break
        if got != want:
            problems.append(f"{tags}: got {sorted(got)}, expected {sorted(want)}.")
            break
    return verdict(problems, f"{len(cases)} queries answered with set intersections.")
