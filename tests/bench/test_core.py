"""The row type, the timing helpers, the one printer, the results file and the runner."""

import dataclasses
import json
import os
import time

import pytest

from labkit import bench
from labkit.bench.core import baseline_of, by_metric, ratio
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
                             "unit": "recomputes", "baseline": False}


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
