"""Tests of labkit.bench, one module per suite, against real servers with small parameters."""

from labkit.bench import Row


def values(rows: list[Row]) -> dict[tuple[str, str], float]:
    """Each row's value by (metric, contender), failing on a duplicate."""
    table = {(row.metric, row.contender): row.value for row in rows}
    assert len(table) == len(rows), "two rows share a metric and a contender"
    return table


def baselines(rows: list[Row]) -> dict[str, str]:
    """The baseline contender of each metric that has one."""
    marked = [(row.metric, row.contender) for row in rows if row.baseline]
    assert len(dict(marked)) == len(marked), "a metric has two baselines"
    return dict(marked)


def assert_spread_printed(rows: list[Row], metric: str) -> None:
    """Every row of `metric` kept its rounds (as many as its baseline's, two or more), and the printed table
    shows each non-baseline row's ratio with its lowest and highest round."""
    from labkit.bench import format_rows

    group = [row for row in rows if row.metric == metric]
    assert group and len({len(row.rounds) for row in group}) == 1 and len(group[0].rounds) >= 2, metric
    lines = format_rows(group).splitlines()[1:]
    for row, line in zip(group, lines, strict=True):
        assert line.endswith("baseline") if row.baseline else f"over {len(row.rounds)} rounds)" in line, line
