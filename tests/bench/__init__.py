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
