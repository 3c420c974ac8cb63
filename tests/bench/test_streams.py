from labkit.bench import streams

from . import baselines, values


def test_compares_the_worker_with_a_raw_loop_and_workers_with_one():
    rows = streams.run(messages=2000, rounds=1, io_ms=0.5)
    table = values(rows)
    raw, worker = (table[("messages, empty handler", name)] for name in (streams.RAW, streams.WORKER))
    assert raw > 0 and worker > 0.3 * raw  # the 0.8x goal is for the quiet-machine benchmark, not a busy suite
    io_bound = "messages, 0.5 ms handler"
    assert table[(io_bound, "4 labkit Worker(s)")] > 1.5 * table[(io_bound, "1 labkit Worker(s)")]
    assert baselines(rows) == {"messages, empty handler": streams.RAW, io_bound: "1 labkit Worker(s)"}
