"""labkit.streams against a real server: groups, the worker's acknowledgements, reclaim, dead letters, lag."""

import json
import threading
import time
from collections import Counter

import pytest
import redis
from redis.crc import key_slot

import labkit
from labkit import ConfigError, streams
from labkit.clients import derive
from labkit.server import spawn
from labkit.streams import Worker, ensure_group, lag

from .waiting import eventually


def fill(r, stream, n):
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(stream, {"n": i})
    return pipe.execute()


def age(r, stream, ids, consumer="dead"):
    """Make pending entries idle for a minute at once, as if their consumer had died that long ago: XCLAIM
    with IDLE sets the idle time, JUSTID leaves the delivery count alone. No sleeping for real idle time."""
    r.xclaim(stream, "g", consumer, 0, ids, idle=60_000, justid=True)


def test_ensure_group_is_idempotent(r, ns):
    stream = ns.key("s")
    assert ensure_group(r, stream, "g") is True
    assert ensure_group(r, stream, "g") is False
    assert [g["name"] for g in r.xinfo_groups(stream)] == ["g"]


def test_ensure_group_errors_say_what_to_do(r, ns):
    with pytest.raises(ConfigError, match=r"does not exist.*mkstream=True"):
        ensure_group(r, ns.key("missing"), "g", mkstream=False)
    r.set(ns.key("string"), "x")
    with pytest.raises(ConfigError, match="holds a string, not a stream"):
        ensure_group(r, ns.key("string"), "g")


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"handler": "not callable"}, "handler must be callable"),
    ({"batch": 0}, "batch must be an integer of at least 1"),
    ({"max_deliveries": -1}, "max_deliveries must be an integer of at least 1"),
    ({"claim_idle_ms": 0}, "claim_idle_ms is a whole number of milliseconds"),
    ({"max_deliveries": 2.5}, "max_deliveries must be an integer of at least 1"),
    ({"block_ms": 0.5}, "block_ms must be an integer of at least 0"),
    ({"batch": "5"}, "batch must be an integer of at least 1"),
])
def test_worker_rejects_bad_settings(r, ns, kwargs, says):
    with pytest.raises(ConfigError, match=says):
        Worker(r, ns.key("s"), "g", "c", **({"handler": print} | kwargs))


def test_worker_acknowledges_only_what_succeeded(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    fill(r, stream, 10)

    def handler(entry_id, fields):
        if fields["n"] == "3":
            raise ValueError("bad order")

    worker = Worker(r, stream, "g", "c", handler, batch=10, block_ms=10)
    assert worker.process_once() == 9
    pending = r.xpending_range(stream, "g", "-", "+", 10)
    assert len(pending) == 1 and worker.stats.failed == 1 and "ValueError: bad order" in worker.stats.errors[0]
    assert lag(r, stream, "g").pending == 1


def test_a_poison_message_is_dead_lettered_after_exactly_max_deliveries(r, ns):
    stream, dead = ns.key("s"), ns.key("s-dead")
    ensure_group(r, stream, "g")
    [poison] = fill(r, stream, 1)
    calls = []

    def handler(entry_id, fields):
        calls.append(entry_id)
        raise RuntimeError("cannot parse")

    worker = Worker(r, stream, "g", "c", handler, block_ms=5, claim_idle_ms=20, max_deliveries=3, dead_letter=dead)
    deadline = time.monotonic() + 5
    while not r.xlen(dead) and time.monotonic() < deadline:
        worker.process_once()
    [(_, buried)] = r.xrange(dead)
    assert calls == [poison] * 3 and buried["deliveries"] == "3" and "cannot parse" in buried["error"]
    assert buried["id"] == poison and lag(r, stream, "g").pending == 0 and worker.stats.dead_lettered == 1


def test_entries_of_a_dead_consumer_are_reclaimed_after_idle_beyond_the_first_100(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 250)
    r.xreadgroup("g", "dead", {stream: ">"}, count=250)  # read, never acknowledged: the consumer died
    seen = []
    worker = Worker(r, stream, "g", "alive", lambda i, f: seen.append(i), batch=100, block_ms=5,
                    claim_idle_ms=10_000)
    assert worker.process_once() == 0 and worker.stats.claimed == 0  # not idle for 10 s yet
    age(r, stream, ids)  # now they are
    worker._next_claim = 0  # a reclaim is due now
    steps = [worker.process_once() for _ in range(3)]  # one page of `batch` per step; a full page: more at once
    assert steps == [100, 100, 50] and len(set(seen)) == 250 and worker.stats.claimed == 250
    assert lag(r, stream, "g").consumers["dead"]["pending"] == 0


def test_entries_deleted_while_pending_leave_the_pel(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 5)
    r.xreadgroup("g", "dead", {stream: ">"}, count=5)
    r.xdel(stream, *ids[:2])
    worker = Worker(r, stream, "g", "alive", lambda i, f: None, block_ms=5, claim_idle_ms=50)
    handled = []
    assert eventually(lambda: handled.append(worker.process_once()) or sum(handled) >= 3)  # once 50 ms idle
    assert sum(handled) == 3 and worker.stats.deleted_while_pending == 2 and worker.stats.claimed == 3
    assert lag(r, stream, "g").pending == 0


def test_a_restarted_worker_first_finishes_its_own_pending_entries(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    fill(r, stream, 4)
    r.xreadgroup("g", "w1", {stream: ">"}, count=2)  # w1 read two, then crashed
    seen = []
    Worker(r, stream, "g", "w1", lambda i, f: seen.append(f["n"]), block_ms=5).run(max_messages=4)
    assert seen == ["0", "1", "2", "3"]


def test_run_stops_on_an_event(r, ns):
    stream, stop = ns.key("s"), threading.Event()
    ensure_group(r, stream, "g")
    runner = threading.Thread(target=Worker(r, stream, "g", "c", print, block_ms=20).run, kwargs={"until": stop})
    runner.start()
    runner.join(0.1)
    assert runner.is_alive()  # nothing to do, no limit: it keeps waiting for entries...
    stop.set()
    runner.join(10)
    assert not runner.is_alive()  # ...until the event is set (then within one 20 ms read)


def test_lag_reports_the_group_and_its_consumers(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    fill(r, stream, 30)
    r.xreadgroup("g", "c1", {stream: ">"}, count=10)
    report = lag(r, stream, "g")
    assert (report.lag, report.pending, report.entries_read) == (20, 10, 10)
    assert report.consumers["c1"]["pending"] == 10
    with pytest.raises(ConfigError, match="No group 'nope'"):
        lag(r, stream, "nope")


def test_lag_is_none_not_zero_after_a_delete_in_the_unread_range(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 10)
    r.xreadgroup("g", "c1", {stream: ">"}, count=2)
    r.xdel(stream, ids[5])  # a hole the group has not reached: the server cannot count past it
    assert lag(r, stream, "g").lag is None and lag(r, stream, "g").pending == 2
    r.xreadgroup("g", "c1", {stream: ">"})  # read past the hole: known again
    assert lag(r, stream, "g").lag == 0


def test_a_huge_backlog_is_reclaimed_in_pages_that_resume_at_the_cursor(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 450)
    r.xreadgroup("g", "dead", {stream: ">"}, count=450)
    worker = Worker(r, stream, "g", "alive", lambda i, f: None, batch=100, claim_idle_ms=30_000)
    pages = []
    for _ in range(3):
        age(r, stream, ids)  # every entry claimable before each call, those taken earlier too:
        pages.append([i for i, _ in worker.reclaim(max_pages=2)])  # only the cursor says where to go on
    assert pages == [ids[:200], ids[200:400], ids[400:]] and worker.stats.claimed == 450


def test_two_workers_with_a_slow_handler_share_a_backlog_without_stealing_it(r, ns):
    """A dead consumer left 60 entries; two workers reclaim them with a 50 ms handler. Holding only one page of
    `batch` at a time, neither sits on entries long enough (2 s idle) for the other to reclaim them again, so
    every entry runs once and none reaches max_deliveries. Reclaiming the whole backlog at once would keep
    entries waiting in one worker's hands for 3 s: the other steals them and buries healthy entries."""
    stream, dead = ns.key("{s}"), ns.key("{s}", "dead")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 60)
    r.xreadgroup("g", "dead", {stream: ">"}, count=60)
    age(r, stream, ids)
    runs, lock = [], threading.Lock()

    def slow(entry_id, fields):
        time.sleep(0.05)  # the work itself, not a wait for something
        with lock:
            runs.append(entry_id)

    deadline = time.monotonic() + 30
    workers = [Worker(r, stream, "g", f"w{i}", slow, batch=1, block_ms=5, claim_idle_ms=2000, max_deliveries=2)
               for i in range(2)]
    threads = [threading.Thread(target=w.run, kwargs={"until": lambda: len(set(runs)) + r.xlen(dead) >= 60
                                                      or time.monotonic() > deadline}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert r.xlen(dead) == 0 and sum(w.stats.dead_lettered for w in workers) == 0
    assert sorted(runs) == sorted(ids) and lag(r, stream, "g").pending == 0  # each entry ran exactly once
    assert min(w.stats.processed for w in workers) > 0  # and the two shared the work


def test_dead_letters_on_a_client_without_decode_responses(r, ns):
    raw = derive(r, decode_responses=False)
    stream = ns.key("{raw}")
    ensure_group(raw, stream, "g")
    [poison] = [raw.xadd(stream, {"order": b"\xff\xfe not utf-8", "n": "1"})]

    def handler(entry_id, fields):
        raise ValueError("cannot parse")

    worker = Worker(raw, stream, "g", "c", handler, block_ms=5, claim_idle_ms=10, max_deliveries=1)
    assert eventually(lambda: worker.process_once() is not None and worker.stats.dead_lettered == 1)
    [(_, buried)] = r.xrange(f"{stream}:dead")
    fields = json.loads(buried["fields"])
    assert buried["id"] == poison.decode() and fields["n"] == "1" and "cannot parse" in buried["error"]
    assert fields["order"].encode("utf-8", "surrogateescape") == b"\xff\xfe not utf-8"  # nothing lost
    assert worker.stats.errors[-1].startswith(poison.decode())
    raw.close()


def test_the_default_dead_letter_stream_shares_the_streams_hash_tag(r, ns):
    worker = Worker(r, ns.key("{orders}"), "g", "c", print)
    assert worker.dead_letter == ns.key("{orders}", "dead")
    assert key_slot(worker.dead_letter.encode()) == key_slot(worker.stream.encode())


def test_on_a_cluster_a_dead_letter_stream_in_another_slot_is_refused_with_what_to_pass(rc):
    with pytest.raises(ConfigError, match=r"hash slot.*lab:test:\{orders\}"):
        Worker(rc, "lab:test:orders", "g", "c", print)
    with pytest.raises(ConfigError, match="hash slot"):
        Worker(rc, "lab:test:{orders}", "g", "c", print, dead_letter="lab:test:dead")


def test_a_worker_with_dead_letters_on_a_cluster(rc):
    streams = [f"lab:test:{{orders-{i}}}" for i in range(3)]  # three tags: more than one node
    assert len({key_slot(s.encode()) for s in streams}) == 3
    for stream in streams:
        rc.delete(stream, f"{stream}:dead")
        ensure_group(rc, stream, "g")
        fill(rc, stream, 5)
        rc.xadd(stream, {"n": "poison"})

    def handler(entry_id, fields):
        if fields["n"] == "poison":
            raise ValueError("cannot parse")

    workers = [Worker(rc, s, "g", "c", handler, block_ms=5, claim_idle_ms=10, max_deliveries=2) for s in streams]
    for worker in workers:
        assert eventually(lambda w=worker: w.process_once() is not None and w.stats.dead_lettered == 1)
        assert worker.stats.processed == 5 and lag(rc, worker.stream, "g").pending == 0
        [(_, buried)] = rc.xrange(worker.dead_letter)
        assert json.loads(buried["fields"]) == {"n": "poison"} and buried["deliveries"] == "2"
    rc.delete(*streams, *[w.dead_letter for w in workers])


def test_lag_of_a_missing_stream_or_another_type_says_what_to_do(r, ns):
    with pytest.raises(ConfigError, match=r"No stream 'lab:.*ensure_group"):
        lag(r, ns.key("missing"), "g")
    r.set(ns.key("string"), "x")
    with pytest.raises(ConfigError, match="holds a string, not a stream"):
        lag(r, ns.key("string"), "g")


def test_partition_keeps_one_key_in_one_stream_and_spreads_keys():
    chosen = {f"acct-{n}": streams.partition("orders", f"acct-{n}", 4) for n in range(200)}
    assert all(streams.partition("orders", key, 4) == stream for key, stream in chosen.items())
    per_stream = Counter(chosen.values())
    assert set(per_stream) == {f"orders:p{n}" for n in range(4)} and min(per_stream.values()) > 25
    assert streams.partition("orders", "acct-1", 1) == "orders:p0"


# --- run(): a batch's XACK travels with the next read ---------------------------------------------------
def reads_during(server, call) -> int:
    """Requests the server read while `call()` ran (each INFO that measures counts itself once, subtracted)."""
    probe = server.client()
    before = probe.info("stats")["total_reads_processed"]
    call()
    reads = probe.info("stats")["total_reads_processed"] - before - 1
    probe.close()
    return reads


def test_run_costs_one_round_trip_per_batch_and_leaves_nothing_pending():
    """Counted on a server of our own: 10 batches more cost 10 requests more, so one round trip per batch
    (XACK of one batch pipelined with the next read; acknowledged one by one it would be 20), and when run()
    returns every entry is acknowledged."""
    with spawn(modules=False) as server:
        r = server.client()
        fill(r, "s", 3000)
        reads = {}
        for batches in (10, 20):
            ensure_group(r, "s", f"g{batches}")
            worker = Worker(r, "s", f"g{batches}", "c", lambda i, f: None, batch=100, block_ms=0)
            reads[batches] = reads_during(server, lambda w=worker, n=batches: w.run(max_messages=100 * n))
            assert worker.stats.processed == 100 * batches and lag(r, "s", f"g{batches}").pending == 0
        assert reads[20] - reads[10] == 10, reads
        ensure_group(r, "s", "one-by-one")
        worker = Worker(r, "s", "one-by-one", "c", lambda i, f: None, batch=100, block_ms=0)
        steps = reads_during(server, lambda: [worker.process_once() for _ in range(10)])
        assert steps >= reads[10] + 9  # process_once acknowledges before it returns: one round trip more a batch
        r.close()


def test_run_stopped_by_an_event_leaves_nothing_pending(r, ns):
    stream, stop, seen = ns.key("s"), threading.Event(), []
    ensure_group(r, stream, "g")
    fill(r, stream, 25)

    def handler(entry_id, fields):
        seen.append(entry_id)
        if len(seen) == 25:
            stop.set()

    worker = Worker(r, stream, "g", "c", handler, batch=10, block_ms=5)
    assert worker.run(until=stop) == 25
    assert lag(r, stream, "g").pending == 0 and worker.stats.processed == 25


class Shutdown(BaseException):
    """Raised by a handler past the worker's `except Exception`, as SystemExit or KeyboardInterrupt would be."""


def test_run_stopped_by_an_error_past_the_handler_acknowledges_what_it_handled(r, ns):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 30)

    def handler(entry_id, fields):
        if fields["n"] == "24":
            raise Shutdown

    worker = Worker(r, stream, "g", "c", handler, batch=10, block_ms=5)
    with pytest.raises(Shutdown):
        worker.run()
    pending = [p["message_id"] for p in r.xpending_range(stream, "g", "-", "+", 30)]
    assert pending == ids[24:30] and worker.stats.processed == 24  # the rest of its batch: not handled


def crashing_worker(spec: dict, stream: str, batch: int) -> None:
    """Handles one batch (each entry recorded), then dies by SIGKILL before the next read: its XACK never left."""
    import os
    import signal

    import redis

    r = redis.Redis(**spec, decode_responses=True)

    def handler(entry_id, fields):
        r.rpush(f"{stream}:handled", entry_id)
        if r.llen(f"{stream}:handled") == batch:
            os.kill(os.getpid(), signal.SIGKILL)

    Worker(r, stream, "g", "doomed", handler, batch=batch, block_ms=5).run()


def test_a_worker_killed_between_a_batch_and_the_next_read_loses_nothing(r, ns):
    import multiprocessing

    from labkit.clients import connection_spec

    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 25)
    process = multiprocessing.get_context("spawn").Process(target=crashing_worker,
                                                           args=(connection_spec(r), stream, 10))
    process.start()
    process.join(120)
    assert process.exitcode == -9  # killed, not finished
    assert r.lrange(f"{stream}:handled", 0, -1) == ids[:10]  # handled...
    assert [p["message_id"] for p in r.xpending_range(stream, "g", "-", "+", 30)] == ids[:10]  # ...not acked
    seen = []
    rescuer = Worker(r, stream, "g", "rescuer", lambda i, f: seen.append(i), batch=10, block_ms=5,
                     claim_idle_ms=50)
    assert eventually(lambda: rescuer.process_once() is not None and len(seen) >= 25)
    assert Counter(seen) == Counter(ids) and lag(r, stream, "g").pending == 0  # its batch redelivered, once


def test_a_stall_during_the_pipelined_read_leaves_no_batch_hidden_until_reclaim():
    """The server freezes while the XACK of a batch and the next read are in flight: the read times out, yet
    the server runs it when it thaws and delivers the rest to this consumer, a reply nobody reads. The same
    worker run again finds them in its own pending entries at once (no reclaim, which would wait
    `claim_idle_ms` and count a delivery more), and the timeout is raised without another XACK to the frozen
    server first (it would wait out a second socket timeout)."""
    with spawn(modules=False) as server:
        r, admin = server.client(socket_timeout=0.5), server.client()
        ids = fill(admin, "s", 15)
        ensure_group(admin, "s", "g")

        def handler(entry_id, fields):
            if entry_id == ids[9]:  # the last of the first batch: the server freezes before the next read
                server.pause()

        worker = Worker(r, "s", "g", "c", handler, batch=10, block_ms=10, claim_idle_ms=60_000)
        try:
            with labkit.trace(r, show=False) as t, pytest.raises(redis.TimeoutError):
                worker.run(max_messages=15)
        finally:
            server.resume()
        assert t.names(handshake=True)[-2:] == ["XACK", "XREADGROUP"]  # no XACK (nor connection) after it
        assert eventually(lambda: admin.xpending("s", "g")["pending"] == 5)  # delivered, the reply never read
        deadline = time.monotonic() + 10  # only spent when the rest waits for a reclaim (60 s)
        assert worker.run(max_messages=5, until=lambda: time.monotonic() > deadline) == 5
        assert worker.stats.claimed == 0 and worker.stats.processed == 15 and lag(admin, "s", "g").pending == 0
        r.close(), admin.close()


def test_entries_handled_after_the_handler_calls_the_worker_are_still_acknowledged(r, ns):
    """A handler that calls its own worker (here `reclaim()`, which acknowledges what is waiting first)
    must not make the worker drop the acknowledgements of the entries it handles afterwards."""
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 10)

    def handler(entry_id, fields):
        if entry_id == ids[2]:
            worker.reclaim()

    worker = Worker(r, stream, "g", "c", handler, batch=10, block_ms=5)
    assert worker.run(max_messages=10) == 10
    assert lag(r, stream, "g").pending == 0 and worker.stats.processed == 10


def test_run_with_max_messages_below_a_batch_takes_no_more(r, ns):
    """run(max_messages=3) with batches of 10 reads (or reclaims) only 3: the rest stay for other workers."""
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    ids = fill(r, stream, 25)
    seen = []
    worker = Worker(r, stream, "g", "c", lambda i, f: seen.append(i), batch=10, block_ms=5)
    assert worker.run(max_messages=3) == 3 and seen == ids[:3]
    assert lag(r, stream, "g").pending == 0 and lag(r, stream, "g").entries_read == 3
    r.xreadgroup("g", "dead", {stream: ">"}, count=10)  # ids[3:13], left pending by a consumer that died
    age(r, stream, ids[3:13])
    rescuer = Worker(r, stream, "g", "rescuer", lambda i, f: seen.append(i), batch=10, block_ms=5)
    assert rescuer.run(max_messages=4) == 4 and seen[3:] == ids[3:7] and rescuer.stats.claimed == 4
    assert lag(r, stream, "g").consumers["dead"]["pending"] == 6 and lag(r, stream, "g").entries_read == 13


@pytest.mark.parametrize("deletes", ["the stream", "the group"])
def test_a_stream_or_group_deleted_while_the_worker_runs_is_a_clear_error(r, ns, deletes):
    stream = ns.key("s")
    ensure_group(r, stream, "g")
    fill(r, stream, 20)

    def handler(entry_id, fields):
        if fields["n"] == "4":
            r.delete(stream) if deletes == "the stream" else r.xgroup_destroy(stream, "g")

    worker = Worker(r, stream, "g", "c", handler, batch=10, block_ms=5)
    with pytest.raises(ConfigError, match=r"No group 'g' on stream .* ensure_group\(r, stream, group\)"):
        worker.run()
    assert worker.stats.processed == 10  # its batch handled, and acknowledged as far as anything is left to
