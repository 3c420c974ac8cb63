"""The row type, the timing helpers, the one printer, the results file and the runner."""

import collections
import dataclasses
import json
import os
import time

import pytest

from labkit import bench
from labkit.bench.core import baseline_of, by_metric, ceiling_of, ratio, ratio_spread
from labkit.server import find_engine

ROWS = [
    bench.Row("demo", "throughput", "theirs", 200.0, "ops/s", baseline=True),
    bench.Row("demo", "latency", "theirs", 40.0, "us", baseline=True),
    bench.Row("demo", "throughput", "ours", 500.0, "ops/s"),
    bench.Row("demo", "latency", "ours", 10.0, "us"),
    bench.Row("demo", "round trips", "ours", 1, "round trips"),
]


def test_a_row_is_frozen_and_holds_a_float():
    row = bench.Row("demo", "recomputes", "none", 3, "recomputes")
    assert row.value == 3.0 and isinstance(row.value, float) and row.baseline is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.value = 4.0
    assert row.as_dict() == {"suite": "demo", "metric": "recomputes", "contender": "none", "value": 3.0,
                             "unit": "recomputes", "baseline": False, "rounds": ()}
    assert bench.Row("demo", "rate", "x", 2, "ops/s", rounds=[1, 3]).rounds == (1.0, 3.0)  # from a JSON list


def test_rows_group_by_metric_in_the_order_measured():
    groups = by_metric(ROWS)
    assert list(groups) == [("demo", "throughput"), ("demo", "latency"), ("demo", "round trips")]
    assert [row.contender for row in groups[("demo", "latency")]] == ["theirs", "ours"]


def test_ratios_are_against_the_baseline_of_the_same_metric():
    groups = by_metric(ROWS)
    throughput, latency = groups[("demo", "throughput")], groups[("demo", "latency")]
    assert ratio(throughput[1], baseline_of(throughput)) == 2.5
    assert ratio(latency[1], baseline_of(latency)) == 0.25
    assert ratio(ROWS[4], baseline_of(groups[("demo", "round trips")])) is None


def test_a_baseline_of_zero_gives_no_ratio_and_two_baselines_are_refused():
    zero = bench.Row("demo", "misses", "none", 0, "misses", baseline=True)
    assert ratio(bench.Row("demo", "misses", "lock", 5, "misses"), zero) is None
    with pytest.raises(ValueError, match="one baseline expected"):
        baseline_of([zero, dataclasses.replace(zero, contender="lock")])


def test_the_printer_shows_each_metric_with_its_ratios():
    lines = bench.format_rows(ROWS).splitlines()
    assert lines[0] == "demo: throughput (ops/s, ratio to theirs)"
    assert lines[1].split() == ["theirs", "200", "baseline"]
    assert lines[2].split() == ["ours", "500", "2.50x"]
    assert lines[3] == "demo: latency (us, ratio to theirs)"
    assert lines[5].split() == ["ours", "10", "0.25x"]
    assert lines[6:] == ["demo: round trips (round trips)", "  ours  " + " " * 13 + "1"]


def test_the_printer_says_when_the_baseline_is_zero():
    rows = [bench.Row("demo", "misses", "none", 0, "misses", baseline=True),
            bench.Row("demo", "misses", "lock", 2.5, "misses")]
    assert bench.format_rows(rows).splitlines()[2].split() == ["lock", "2.50", "n/a", "(baseline", "is", "0)"]


def test_results_are_written_under_the_checkout_and_round_trip(lab_home):
    path = bench.write_results(ROWS)
    assert path == lab_home / "build" / "bench" / "results.json" == bench.results_path()
    document = json.loads(path.read_text())
    assert [bench.Row(**row) for row in document["rows"]] == ROWS
    assert document["suites"] == ["demo"] and document["format"] == 1
    assert document["cpu_count"] == os.cpu_count() and document["python"].startswith("3.")
    assert (document["engine"], document["engine_version"]) == (find_engine().name, find_engine().version)
    assert abs(time.time() - _timestamp(document["created"])) < 60


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_results_refuse_values_that_are_not_json(tmp_path):
    with pytest.raises(ValueError):
        bench.write_results([bench.Row("demo", "rate", "x", float("nan"), "ops/s")], tmp_path / "r.json")


def test_side_by_side_times_every_call_the_same_number_of_times():
    calls = []
    medians = bench.side_by_side({"fast": lambda: calls.append("f"),
                                  "slow": lambda: (time.sleep(0.001), calls.append("s"))}, reps=20)
    assert calls.count("f") == calls.count("s") == 20 and calls[:2] == ["f", "s"]
    assert medians["slow"] > 10 * medians["fast"]


@pytest.mark.parametrize("n", range(8))
def test_call_order_has_each_entry_follow_every_other_exactly_once_per_cycle(n):
    order = bench.core.call_order(n)
    assert sorted(collections.Counter(order).values()) == [max(1, n - 1)] * n  # every entry equally often
    follows = collections.Counter(zip(order, order[1:] + order[:1], strict=True))  # the cycle closes on itself
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b} or n == 1
    assert set(follows.values()) <= {1}


@pytest.mark.parametrize("n", [3, 4, 6])
def test_side_by_side_spreads_what_an_entry_leaves_behind_over_the_others(n):
    """An entry that slows the next call (leaves work behind) slows each other entry alike, where a rotation
    slowed its fixed neighbour in all but one turn."""
    previous, slowed = [None], collections.Counter()

    def entry(i):
        def call():
            slowed[i] += previous[0] == 0
            previous[0] = i
        return call
    bench.side_by_side({f"entry {i}": entry(i) for i in range(n)}, reps=60)
    assert slowed[0] == 0 and max(slowed.values()) - min(slowed[i] for i in range(1, n)) <= 1


def test_settle_makes_untimed_calls_at_the_start_of_each_turn():
    calls = []

    def entry(name):
        def call():
            first_of_its_turn = not calls or calls[-1] != name
            calls.append(name)
            if first_of_its_turn:
                time.sleep(0.005)  # what the entry before left behind, paid by the first call only
        return call
    settled = bench.side_by_side_rounds({"a": entry("a"), "b": entry("b")}, reps=3, rounds=1, settle=1)
    assert "".join(calls) == "aabb" * 3
    unsettled = bench.side_by_side_rounds({"a": entry("a"), "b": entry("b")}, reps=3, rounds=1)
    assert all(settled[name][0] * 10 < unsettled[name][0] for name in "ab")  # only the settled skip the wait


def test_no_repetitions_time_nothing_and_return():
    assert bench.core._turns({"a": lambda: None}, 0) == bench.core._turns({"a": lambda: None}, -1) == {"a": []}


def test_cycling_asks_each_contender_every_input_in_the_same_order():
    seen: dict[str, list[int]] = {"a": [], "b": []}
    bench.side_by_side({name: bench.cycling(seen[name].append, [1, 2, 3]) for name in seen}, reps=4)
    assert seen["a"] == seen["b"] == [1, 2, 3, 1]  # a shared counter would have given a 1, 3, 2 and b 2, 1, 3


def test_median_of_takes_the_middle_run():
    runs = iter([5.0, 1.0, 9.0])
    assert bench.median_of(3, lambda: next(runs)) == 5.0


def test_run_prints_each_suite_and_writes_the_rows_so_far(monkeypatch, tmp_path, capsys):
    """The runner, with two stand-in suites (canned rows: the suites themselves are tested against servers)."""
    written = []

    def second() -> list[bench.Row]:
        written.append(json.loads(path.read_text())["suites"])
        return ROWS[2:]

    path = tmp_path / "results.json"
    monkeypatch.setattr(bench.runner, "SUITES", {"first": lambda: ROWS[:2], "second": second})
    assert bench.run(results=path) == ROWS[:2] + ROWS[2:]
    assert written == [["demo"]] and len(json.loads(path.read_text())["rows"]) == len(ROWS)
    out = capsys.readouterr().out
    assert out.index("== bench first ==") < out.index("== bench second ==") < out.index(f"results: {path}")
    assert bench.run(["second", "second"], results=path) == ROWS[2:]
    with pytest.raises(KeyError, match="unknown suite"):
        bench.run(["third"], results=path)


TURNS = [
    bench.Row("demo", "rate", "theirs", 100, "ops/s", baseline=True, rounds=(100, 50, 100)),
    bench.Row("demo", "rate", "ours", 120, "ops/s", rounds=(110, 60, 130)),
]


def test_the_ratio_spread_is_taken_round_by_round_and_printed():
    # round by round: 1.1, 1.2, 1.3 (a slow second round slowed both: it does not widen the spread)
    low, high = ratio_spread(TURNS[1], TURNS[0])
    assert (round(low, 6), round(high, 6)) == (1.1, 1.3)
    assert ratio_spread(TURNS[1], dataclasses.replace(TURNS[0], rounds=())) is None
    assert ratio_spread(TURNS[1], dataclasses.replace(TURNS[0], rounds=(100, 0, 100))) is None
    assert bench.format_rows(TURNS).splitlines()[2].split()[2:] == ["1.20x", "(1.10-1.30", "over", "3", "rounds)"]


def test_side_by_side_rounds_gives_the_median_and_one_median_per_block_of_turns():
    ticks = iter(range(10**6))
    timed = bench.side_by_side_rounds({"a": lambda: next(ticks), "b": lambda: None}, reps=20, rounds=4)
    assert set(timed) == {"a", "b"} and all(len(rounds) == 4 for _, rounds in timed.values())
    assert next(ticks) == 20  # every entry called reps times
    assert bench.side_by_side_rounds({"a": lambda: None}, reps=2, rounds=5)["a"][1].__len__() == 2
    row = bench.rate_row("demo", "rate", "a", (10.0, [5.0, 20.0]), "calls/s")
    assert (row.value, row.rounds) == (100_000.0, (200_000.0, 50_000.0))


CEILING = bench.Row("ceiling", "one client", "GET, valkey9 9.1.2 (redis-benchmark 7.0.15)", 50_000, "requests/s",
                    baseline=True)


def test_rates_are_read_as_a_fraction_of_the_ceiling_in_the_table_and_the_results(tmp_path):
    assert ceiling_of(TURNS) is None and ceiling_of([*TURNS, CEILING]) is CEILING
    lines = bench.format_rows(TURNS + ROWS[:2], ceiling=CEILING).splitlines()
    assert lines[2].endswith("[0.2% of the server's ceiling]") and lines[4].endswith("[0.4% of the server's ceiling]")
    assert lines[5].startswith("demo: latency (us") and "ceiling" not in lines[6]  # a time is not a rate
    document = json.loads(bench.write_results([*TURNS, CEILING, *ROWS], tmp_path / "r.json").read_text())
    ours = next(c for c in document["comparisons"] if c["metric"] == "rate")
    assert ours == {"suite": "demo", "metric": "rate", "contender": "ours", "peer": "theirs", "ratio": 1.2,
                    "ratio_low": pytest.approx(1.1), "ratio_high": pytest.approx(1.3), "of_ceiling": 120 / 50_000}
    latency = next(c for c in document["comparisons"] if c["metric"] == "latency")
    assert latency["of_ceiling"] is None and latency["ratio_low"] is None and latency["ratio"] == 0.25
