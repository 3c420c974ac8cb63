from labkit.bench import ratelimit

from . import assert_spread_printed, baselines, values


def test_compares_each_limiter_with_its_nearest_limits_strategy_in_one_round_trip():
    rows = ratelimit.run(seconds=0.05)
    table = values(rows)
    expected = {"round trips per decision": ratelimit.BASELINE}
    for per_minute in ratelimit.PER_MINUTE:
        for ours, theirs in ratelimit.NEAREST.items():
            metric = f"decisions, {per_minute:,}/min, 50 users: {ours}"
            assert table[(metric, f"labkit {ours}")] > 0 and table[(metric, f"limits {theirs}")] > 0
            expected[metric] = f"limits {theirs}"
            assert_spread_printed(rows, metric)
    labkit_rtts = [v for (metric, who), v in table.items() if who.startswith("labkit") and metric.startswith("round")]
    assert len(labkit_rtts) == 5 and all(v == 1.0 for v in labkit_rtts)
    assert baselines(rows) == expected
