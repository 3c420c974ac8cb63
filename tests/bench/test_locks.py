from labkit.bench import locks

from . import baselines, values


def test_compares_with_redis_py_and_pottery_in_one_round_trip_per_node():
    rows = locks.run(reps=30)
    table = values(rows)
    assert table[("round trips per acquire, 1 server", "labkit Lock")] == 1
    assert table[("round trips per acquire, 3 servers", "labkit Redlock")] == 3
    for metric, name in (("1 server", "redis-py Lock"), ("1 server", "labkit Lock"),
                         ("3 servers", "pottery Redlock"), ("3 servers", "labkit Redlock")):
        assert table[(f"acquire+release, {metric}", name)] > 0
    assert baselines(rows) == {
        "acquire+release, 1 server": "redis-py Lock", "round trips per acquire, 1 server": "redis-py Lock",
        "acquire+release, 3 servers": "pottery Redlock", "round trips per acquire, 3 servers": "pottery Redlock",
    }
