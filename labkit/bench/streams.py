"""Suite `streams`: labkit's Worker next to a raw pipelined loop, then Workers sharing a group."""

from __future__ import annotations

import statistics
import threading
import time

import redis

from labkit.bench.core import Row
from labkit.server.process import Server

SUITE = "streams"
STREAM = "bench"
RAW = "raw pipelined XREADGROUP+XACK"
WORKER = "labkit Worker"


def _fill(r: redis.Redis, messages: int) -> None:
    """XADD `messages` entries of ~100 bytes, 1,000 per round trip."""
    for first in range(0, messages, 1000):
        pipe = r.pipeline(transaction=False)
        for i in range(first, min(first + 1000, messages)):
            pipe.xadd(STREAM, {"n": i, "payload": "x" * 100})
        pipe.execute()


def _drain_raw(r: redis.Redis, stream: str, group: str, batch: int) -> int:
    """The ceiling: XACK of one batch pipelined with the XREADGROUP of the next, one round trip per batch."""
    handled, acks = 0, []
    while True:
        pipe = r.pipeline(transaction=False)
        if acks:
            pipe.xack(stream, group, *acks)
        pipe.xreadgroup(group, "raw", {stream: ">"}, count=batch)
        reply = pipe.execute()[-1]
        entries = reply[0][1] if reply else []
        if not entries:
            return handled
        acks = [entry_id for entry_id, _ in entries]
        handled += len(entries)


def _drain_rates(r: redis.Redis, messages: int, batch: int, rounds: int) -> dict[str, list[float]]:
    """Messages/s of the raw loop and of labkit's Worker in each round, alternating (the one that goes first
    changes each round), each on fresh groups."""
    from labkit.streams import Worker, ensure_group

    rates: dict[str, list[float]] = {RAW: [], WORKER: []}
    for k in range(rounds):
        for name in (RAW, WORKER) if k % 2 == 0 else (WORKER, RAW):
            group = f"{name}-{k}"
            ensure_group(r, STREAM, group)
            started = time.perf_counter()
            if name == RAW:
                handled = _drain_raw(r, STREAM, group, batch)
            else:
                handled = Worker(r, STREAM, group, "w", lambda i, f: None, batch=batch,
                                 block_ms=0).run(max_messages=messages)
            rates[name].append(handled / (time.perf_counter() - started))
    return rates


def _consumers_rate(r: redis.Redis, group: str, consumers: int, jobs: int, io_ms: float) -> float:
    """Messages/s for `consumers` Workers in threads sharing `group`, together handling `jobs` messages."""
    from labkit.streams import Worker, ensure_group

    ensure_group(r, STREAM, group)
    handled = [0] * consumers

    def consume(i: int) -> None:
        worker = Worker(r, STREAM, group, f"w{i}", lambda _id, _f: time.sleep(io_ms / 1000), batch=10, block_ms=0)
        while sum(handled) < jobs:
            handled[i] += worker.process_once()

    started = time.perf_counter()
    threads = [threading.Thread(target=consume, args=(i,)) for i in range(consumers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(handled) / (time.perf_counter() - started)


def _consumers_rates(r: redis.Redis, jobs: int, io_ms: float, rounds: int) -> dict[int, list[float]]:
    """Messages/s of 1, 2 and 4 Workers in each round, the three alternating, each on fresh groups."""
    rates: dict[int, list[float]] = {1: [], 2: [], 4: []}
    for k in range(rounds):
        for consumers in rates:
            rates[consumers].append(_consumers_rate(r, f"io-{consumers}-{k}", consumers, jobs, io_ms))
    return rates


def run(messages: int = 20_000, batch: int = 100, rounds: int = 3, io_ms: float = 0.5,
        drain_rounds: int = 21) -> list[Row]:
    """Messages/s processed and acknowledged: labkit's Worker next to a raw pipelined XREADGROUP+XACK loop
    (the baseline), `drain_rounds` times (a drain of 20,000 takes ~60 ms, and beside other work one round
    read 0.6x and another 1.4x: medians of 9 rounds still moved from 0.79x to 1.07x between runs, of 20
    rounds 1.01x and 1.03x), then 1 (the baseline), 2 and 4 Workers in
    threads sharing a group with a handler that waits `io_ms` per message (an I/O-bound job), `rounds`
    times. The contenders of each metric alternate and each row is their median: a busy spell of the
    machine slows one measurement, not one contender."""
    with Server(modules=False) as server:
        r = server.client()
        _fill(r, messages)
        rows = [Row(SUITE, "messages, empty handler", name, statistics.median(rates), "messages/s", name == RAW,
                    tuple(rates)) for name, rates in _drain_rates(r, messages, batch, drain_rounds).items()]
        for consumers, rates in _consumers_rates(r, min(messages, 2000), io_ms, rounds).items():
            rows.append(Row(SUITE, f"messages, {io_ms} ms handler", f"{consumers} labkit Worker(s)",
                            statistics.median(rates), "messages/s", consumers == 1, tuple(rates)))
    return rows
