"""What every suite shares: the typed row, side-by-side timing, one printer and the results file."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from labkit.errors import LabkitError
from labkit.server import find_engine
from labkit.server.lab import home

RESULTS_FORMAT = 1
RESULTS_PATH = Path("build") / "bench" / "results.json"
CEILING_SUITE = "ceiling"  # the suite that measures the server's own single-client rate


@dataclasses.dataclass(frozen=True)
class Row:
    """One measured number: `contender`'s `value` (in `unit`) for `metric` of `suite`.

    Rows of one suite and metric share a unit; at most one of them is the `baseline` that the others'
    ratios are computed against. `rounds`, when given, holds the value measured in each round of a
    comparison whose contenders took turns (round k of every row of the metric ran at the same time): the
    ratio's spread is computed round by round.

    Example:
        >>> Row("cache", "hits per second", "raw GET", 41_000.0, "hits/s", baseline=True).value
        41000.0
    """

    suite: str
    metric: str
    contender: str
    value: float
    unit: str
    baseline: bool = False
    rounds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", float(self.value))  # counts and numpy scalars become plain floats
        object.__setattr__(self, "rounds", tuple(float(v) for v in self.rounds))  # a JSON list becomes a tuple

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def median_of(runs: int, measure: Callable[[], float]) -> float:
    """The median of `runs` calls of `measure`."""
    return statistics.median(measure() for _ in range(runs))


def cycling(call: Callable[[Any], object], items: Iterable[Any]) -> Callable[[], object]:
    """A contender for `side_by_side` that calls `call` on the next of `items` each time, round and round:
    give each contender its own, so that each is asked the same inputs in the same order (one shared
    counter, with two contenders alternating, gives one the even inputs and the other the odd ones)."""
    turn = itertools.cycle(items)
    return lambda: call(next(turn))


def side_by_side(calls: dict[str, Callable[[], object]], reps: int = 300) -> dict[str, float]:
    """Median microseconds per call of each entry, timed in turns so that a busy machine slows every entry
    alike (compare the results as ratios, never as absolute times). The calls follow a balanced order (see
    `call_order`): an entry that leaves work behind (threads winding down, buffers to free) slows every
    other entry equally often, not always the same neighbour."""
    return {name: statistics.median(values) for name, values in _turns(calls, reps).items()}


def side_by_side_rounds(calls: dict[str, Callable[[], object]], reps: int = 300, rounds: int = 5,
                        settle: int = 0) -> dict[str, tuple[float, list[float]]]:
    """`side_by_side`, with the spread: for each entry, the median microseconds per call over all `reps`
    turns and the median of each of `rounds` consecutive blocks of turns (a busy spell of the machine moves
    one block, so the blocks' ratios show how far one comparison can be trusted). With `settle`, each turn
    of an entry begins with that many untimed calls: they pay for what the entry before left behind (a
    peer's threads winding down), so that less of it falls on the timed call (one such call absorbed most
    of what pottery's Redlock leaves behind, not all). With two entries the balanced order is plain
    alternation: each one's leftovers fall on the other in every turn, which is what `settle` is for."""
    rounds = max(1, min(rounds, reps))
    size = reps // rounds
    return {name: (statistics.median(values), [statistics.median(values[k * size:(k + 1) * size])
                                               for k in range(rounds)])
            for name, values in _turns(calls, reps, settle).items()}


def rate_row(suite: str, metric: str, contender: str, timed: tuple[float, list[float]], unit: str,
             baseline: bool = False) -> Row:
    """A row of calls per second from `side_by_side_rounds`' (median us, per-round median us)."""
    us, rounds = timed
    return Row(suite, metric, contender, 1e6 / us, unit, baseline, tuple(1e6 / v for v in rounds))


def call_order(n: int) -> list[int]:
    """One cycle of calls to `n` entries in which each entry directly follows every other exactly once (an
    Eulerian circuit of the complete directed graph, found by Hierholzer's algorithm), so that repeated, it
    keeps every entry following every other equally often (within one, once each entry has had n - 1
    calls). A plain rotation has each entry follow the same neighbour in all but one turn of n."""
    if n < 2:
        return list(range(n))
    unused = {entry: [other for other in range(n) if other != entry] for entry in range(n)}
    stack, circuit = [0], []
    while stack:
        if unused[stack[-1]]:
            stack.append(unused[stack[-1]].pop())
        else:
            circuit.append(stack.pop())
    return circuit[::-1][:-1]  # the circuit ends where it began: the next cycle makes that step


def _turns(calls: dict[str, Callable[[], object]], reps: int, settle: int = 0) -> dict[str, list[float]]:
    """Microseconds of each timed call of each entry, in order, `reps` each, in the balanced order of
    `call_order` (see `side_by_side`), each turn after `settle` untimed calls."""
    samples: dict[str, list[float]] = {name: [] for name in calls}
    entries, left = list(calls.items()), len(calls) * reps
    for i in itertools.cycle(call_order(len(entries))):
        if left <= 0:
            break
        name, call = entries[i]
        if len(samples[name]) < reps:
            for _ in range(settle):
                call()
            started = time.perf_counter_ns()
            call()
            samples[name].append((time.perf_counter_ns() - started) / 1000)
            left -= 1
    return samples


def by_metric(rows: Iterable[Row]) -> dict[tuple[str, str], list[Row]]:
    """Rows grouped by (suite, metric), groups and rows in the order they were measured."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.suite, row.metric), []).append(row)
    return groups


def baseline_of(group: list[Row]) -> Row | None:
    """The baseline row of one metric's rows, or None when the metric has none.

    Raises:
        ValueError: more than one row of the metric is marked as its baseline.
    """
    baselines = [row for row in group if row.baseline]
    if len(baselines) > 1:
        names = ", ".join(row.contender for row in baselines)
        raise ValueError(f"{group[0].suite} / {group[0].metric}: one baseline expected, got {names}")
    return baselines[0] if baselines else None


def ratio(row: Row, baseline: Row | None) -> float | None:
    """`row`'s value divided by its baseline's (None without a baseline or when the baseline is 0)."""
    if baseline is None or baseline.value == 0:
        return None
    return row.value / baseline.value


def ratio_spread(row: Row, baseline: Row | None) -> tuple[float, float] | None:
    """The lowest and highest of `row`'s ratios to its baseline round by round (None without rounds on both,
    or with a baseline round of 0)."""
    if baseline is None or not row.rounds or len(row.rounds) != len(baseline.rounds) or 0 in baseline.rounds:
        return None
    ratios = [ours / theirs for ours, theirs in zip(row.rounds, baseline.rounds, strict=True)]
    return min(ratios), max(ratios)


def _number(value: float) -> str:
    """Whole numbers and large values without decimals, small ones with two or three."""
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def _ratio_note(row: Row, baseline: Row | None) -> str:
    if baseline is None:
        return ""
    if row is baseline:
        return "baseline"
    factor = ratio(row, baseline)
    if factor is None:
        return "n/a (baseline is 0)"
    spread = ratio_spread(row, baseline)
    return f"{factor:.2f}x" + (f" ({spread[0]:.2f}-{spread[1]:.2f} over {len(row.rounds)} rounds)" if spread else "")


def of_ceiling(row: Row, ceiling: Row | None) -> float | None:
    """A rate's fraction of the server's single-client `ceiling` (None for other units or no ceiling)."""
    if ceiling is None or row.suite == ceiling.suite or not row.unit.endswith("/s") or ceiling.value == 0:
        return None
    return row.value / ceiling.value


def _ceiling_note(row: Row, ceiling: Row | None) -> str:
    share = of_ceiling(row, ceiling)
    return "" if share is None else f"[{share:.1%} of the server's ceiling]"


def format_rows(rows: Iterable[Row], ceiling: Row | None = None) -> str:
    """Every row as a table grouped by metric, each value followed by its ratio to the metric's baseline
    (with the ratio's lowest and highest round when the row has rounds) and, given the server's `ceiling`
    row, each rate as a fraction of it."""
    lines: list[str] = []
    for (suite, metric), group in by_metric(rows).items():
        baseline = baseline_of(group)
        against = f", ratio to {baseline.contender}" if baseline else ""
        lines.append(f"{suite}: {metric} ({group[0].unit}{against})")
        width = max(len(row.contender) for row in group)
        lines += [f"  {row.contender:{width}}  {_number(row.value):>14}  {_ratio_note(row, baseline)}  "
                  f"{_ceiling_note(row, ceiling)}".rstrip() for row in group]
    return "\n".join(lines)


def print_rows(rows: Iterable[Row], ceiling: Row | None = None) -> None:
    """Print `format_rows(rows, ceiling)`."""
    print(format_rows(rows, ceiling))


def ceiling_of(rows: Iterable[Row]) -> Row | None:
    """The server's own single-client ceiling among `rows` (the `ceiling` suite's GET row), if measured."""
    return next((row for row in rows if row.suite == CEILING_SUITE and row.baseline), None)


def comparisons(rows: Iterable[Row]) -> list[dict[str, Any]]:
    """Each row that has a baseline: the peer it is compared to, the ratio and its spread over rounds (None
    without rounds), and, for a rate, its fraction of the server's single-client ceiling (None unmeasured)."""
    rows = list(rows)
    ceiling, found = ceiling_of(rows), []
    for group in by_metric(rows).values():
        baseline = baseline_of(group)
        for row in group:
            if baseline is None or row is baseline:
                continue
            spread = ratio_spread(row, baseline)
            found.append({"suite": row.suite, "metric": row.metric, "contender": row.contender,
                          "peer": baseline.contender, "ratio": ratio(row, baseline),
                          "ratio_low": spread[0] if spread else None, "ratio_high": spread[1] if spread else None,
                          "of_ceiling": of_ceiling(row, ceiling)})
    return found


def results_path() -> Path:
    """`build/bench/results.json` under the checkout's root."""
    return home() / RESULTS_PATH


def _engine() -> dict[str, str | None]:
    """The default engine, which every suite but `server` runs on (None when none is installed)."""
    try:
        engine = find_engine()
    except LabkitError:
        return {"engine": None, "engine_version": None}
    return {"engine": engine.name, "engine_version": engine.version}


def metadata() -> dict[str, Any]:
    """Where and when the rows were measured."""
    return {
        "format": RESULTS_FORMAT,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        **_engine(),
    }


def write_results(rows: Iterable[Row], path: Path | None = None) -> Path:
    """Write the rows and `metadata()` as JSON to `path` (default: `results_path()`); return the path.

    The file holds one object: the metadata's keys, `suites` (their names, in order), `rows` (a list of
    `Row.as_dict()`) and `comparisons` (see `comparisons`).
    """
    rows = list(rows)
    path = path or results_path()
    document = {**metadata(), "suites": list(dict.fromkeys(row.suite for row in rows)),
                "rows": [row.as_dict() for row in rows], "comparisons": comparisons(rows)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=1, allow_nan=False) + "\n")
    return path
