from labkit.bench import server
from labkit.server import available_engines

from . import assert_spread_printed, baselines, values


def test_measures_every_engine_against_the_first():
    rows = server.run(runs=3)
    table = values(rows)
    assert {row.suite for row in rows} == {"server"} and {row.unit for row in rows} == {"ms"}
    assert all(table[(server.METRIC, name)] > 0 for name in available_engines())
    assert (server.METRIC, "valkey9 + search/JSON modules") in table
    assert_spread_printed(rows, server.METRIC)
    assert baselines(rows) == {server.METRIC: next(iter(available_engines()))}
