from labkit.bench import ratelimit

from . import baselines, values

METRICS = ("decisions, 1 client", "decisions, 4 clients", "round trips per decision")


def test_compares_with_the_limits_library_in_one_round_trip():
    rows = ratelimit.run(seconds=0.2)
    table = values(rows)
    for name in ["limits moving window", "labkit sliding log", "labkit GCRA"]:
        assert table[("decisions, 1 client", name)] > 0 and table[("decisions, 4 clients", name)] > 0
    labkit_rtts = [v for (metric, who), v in table.items() if who.startswith("labkit") and metric == METRICS[2]]
    assert len(labkit_rtts) == 5 and all(v == 1.0 for v in labkit_rtts)
    assert baselines(rows) == dict.fromkeys(METRICS, "limits moving window")
