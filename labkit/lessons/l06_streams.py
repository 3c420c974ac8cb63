"""Lesson 06, streams (`notebooks/06_streams.ipynb`): the crash test (worker processes SIGKILLed while
orders flow), deleting and trimming with the consumer groups in mind on every installed engine, and the
exercise checks."""

from __future__ import annotations

import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import redis

from labkit import validate
from labkit.clients import connection_spec
from labkit.errors import ConfigError
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.server import Capabilities
from labkit.streams import Worker, ensure_group, lag
from labkit.tracing import trace


# -- 6.4 deleting and trimming with the groups in mind (XDELEX, XACKDEL, ACKED) ----------------------------
@dataclass
class RefPolicies:
    """What one server answered to the same deletions and trims of a stream that a group is reading: a number
    where it did it, the error's text where it refused."""

    server: str  # engine and version
    supported: bool  # capabilities().stream_ack_delete
    left_after_acked_trim: int | str  # entries left of 1,000 after XTRIM MAXLEN = 100 ACKED (10 acked, 10 pending)
    pending_after_xdel: int  # the group's pending count after XDEL of one of its 10 pending entries
    pending_after_delref: int | str  # ... then after XDELEX DELREF of another
    ackdel_reply: list | str  # XACKDEL's reply for a third pending entry
    pending_after_ackdel: int  # ... and the pending count after it


def _answer(call: Callable):
    try:
        return call()
    except redis.ResponseError as err:
        return f"refused ({str(err).split(',')[0]})"


def ref_policies(r: redis.Redis, caps: Capabilities, entries: int = 1000) -> RefPolicies:
    """On a server of its own (stream `s` is this experiment's; run it with `on_each_engine`): `entries`
    entries, group g has read 20 and acknowledged 10; then XTRIM MAXLEN = 100 ACKED, XDEL of a pending entry,
    XDELEX DELREF of another, XACKDEL of a third."""
    validate.integer(entries, "entries (ref_policies reads 20, acknowledges 10 and trims to MAXLEN 100)",
                     minimum=101)
    with r.pipeline(transaction=False) as pipe:
        for n in range(entries):
            pipe.xadd("s", {"n": n})
        ids = pipe.execute()
    r.xgroup_create("s", "g", id="0")
    r.xreadgroup("g", "c1", {"s": ">"}, count=20)
    r.xack("s", "g", *ids[:10])

    def pending() -> int:
        return r.xpending("s", "g")["pending"]

    trimmed = _answer(lambda: r.execute_command("XTRIM", "s", "MAXLEN", "=", 100, "ACKED"))
    left = r.xlen("s") if isinstance(trimmed, int) else trimmed
    r.xdel("s", ids[10])
    after_xdel = pending()
    delref = _answer(lambda: r.execute_command("XDELEX", "s", "DELREF", "IDS", 1, ids[11]))
    after_delref = pending() if isinstance(delref, list) else delref
    ackdel = _answer(lambda: r.execute_command("XACKDEL", "s", "g", "IDS", 1, ids[12]))
    return RefPolicies(caps.server, caps.stream_ack_delete, left, after_xdel, after_delref,
                       ackdel, pending())


# -- the crash test -------------------------------------------------------------------------------------
@dataclass
class CrashResult:
    """What SIGKILLed workers did to `messages` orders: counted from what the handlers recorded."""

    messages: int
    processed: int  # distinct orders whose effect was recorded
    lost: int
    duplicates: int  # handler runs beyond the first, per order, summed
    kills: int
    naive_total: int  # INCRBY per handler run: counts duplicates twice
    duplicated_amount: int  # what the extra runs added to the naive total
    idempotent_total: int  # one ledger entry per order id: duplicates change nothing
    expected_total: int
    seconds: float
    pending_after: int
    claim_idle_ms: int  # how long a dead worker's entries wait before another worker's XAUTOCLAIM takes them
    kill_times: list[tuple[float, str]]  # (seconds since the start, worker killed)
    progress: list[tuple[float, int, int]]  # (seconds since the start, orders added, orders recorded)


def _crash_worker(spec: dict, stream: str, group: str, consumer: str, prefix: str, claim_idle_ms: int,
                  work_ms: float) -> None:
    """A worker process: each order's effect goes to a naive total and to a ledger keyed by order id, then
    the handler spends `work_ms` on the rest of its work (a receipt to send) before the batch is acked."""
    r = redis.Redis(**spec, decode_responses=True)
    r.set(f"{prefix}:ready:{consumer}", os.getpid())

    def handle(entry_id: str, fields: dict) -> None:
        pipe = r.pipeline(transaction=True)
        pipe.hincrby(f"{prefix}:runs", fields["order"], 1)
        pipe.incrby(f"{prefix}:naive-total", int(fields["amount"]))
        pipe.hsetnx(f"{prefix}:ledger", fields["order"], fields["amount"])
        pipe.execute()
        time.sleep(work_ms / 1000)

    Worker(r, stream, group, consumer, handle, batch=20, block_ms=50, claim_idle_ms=claim_idle_ms).run()


def _victim(r: redis.Redis, procs: dict, prefix: str, stream: str, group: str, rng: random.Random,
            killed: Counter, wait_s: float = 5.0) -> str:
    """A worker process that has started working and holds unacknowledged entries, waiting up to `wait_s`
    for one (failing that, any worker): of those, one killed least often so far (ties at random), so the
    kills spread over every worker rather than follow the seeded generator's luck."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        pending = {c["name"]: c["pending"] for c in r.xinfo_consumers(stream, group)}
        busy = [name for name, process in sorted(procs.items())
                if r.get(f"{prefix}:ready:{name}") == str(process.pid) and pending.get(name, 0) > 0]
        if busy:
            fewest = min(killed[name] for name in busy)
            return rng.choice([name for name in busy if killed[name] == fewest])
        time.sleep(0.005)
    return rng.choice(sorted(procs))


def crash_test(r: redis.Redis, prefix: str, *, messages: int = 10_000, workers: int = 3, rate: float = 5000,
               kills: int = 10, seed: int = 0, claim_idle_ms: int = 2000, work_ms: float = 0.5,
               timeout: float = 60) -> CrashResult:
    """Orders flow into a stream at `rate`/s while worker PROCESSES are SIGKILLed at random moments.

    Each kill picks a worker that is running (not still starting) and holds unacknowledged entries, the one
    killed least often so far (ties at random). Each
    killed worker restarts under its name, except the last, which stays dead: its pending entries can
    only come back through XAUTOCLAIM. A handler records its effect, then works `work_ms` more before
    its batch is acknowledged: a kill in that window makes the entries run again (a duplicate).
    Keys live under `prefix`; the caller cleans them.
    """
    if messages <= 0 or workers < 2 or kills < 0:
        raise ConfigError("crash_test needs messages > 0, at least 2 workers and kills >= 0.")
    stream, group, rng = f"{prefix}:orders", "billing", random.Random(seed)
    ensure_group(r, stream, group)
    ctx, spec = multiprocessing.get_context("spawn"), connection_spec(r)

    def start(name: str):
        process = ctx.Process(target=_crash_worker, args=(spec, stream, group, name, prefix, claim_idle_ms, work_ms),
                              daemon=True)
        process.start()
        return process

    procs = {f"worker-{i}": start(f"worker-{i}") for i in range(workers)}
    amounts = [rng.randint(1, 100) for _ in range(messages)]

    def produce() -> None:
        began = time.monotonic()
        for first in range(0, messages, 50):
            time.sleep(max(0.0, began + first / rate - time.monotonic()))
            pipe = r.pipeline(transaction=False)
            for order in range(first, min(first + 50, messages)):
                pipe.xadd(stream, {"order": order, "amount": amounts[order]})
            pipe.execute()

    began, kill_times, progress, sampling = time.monotonic(), [], [], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.05):
            pipe = r.pipeline(transaction=False)
            pipe.xlen(stream)
            pipe.hlen(f"{prefix}:ledger")
            added, recorded = pipe.execute()
            progress.append((time.monotonic() - began, added, recorded))

    producer, sampler = threading.Thread(target=produce, daemon=True), threading.Thread(target=sample, daemon=True)
    producer.start()
    sampler.start()
    try:
        for k in range(kills):
            time.sleep(rng.uniform(0.5, 1.5) * messages / rate / max(kills, 1))
            name = _victim(r, procs, prefix, stream, group, rng, Counter(name for _, name in kill_times))
            procs[name].kill()  # SIGKILL
            kill_times.append((time.monotonic() - began, name))
            procs[name].join()
            if k < kills - 1 or len(procs) <= 2:
                procs[name] = start(name)
            else:
                del procs[name]  # stays dead: only XAUTOCLAIM brings its entries back
        producer.join()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (r.hlen(f"{prefix}:ledger") < messages
                                               or lag(r, stream, group).pending):  # the last XACKs land
            time.sleep(0.02)
    finally:
        sampling.set()
        sampler.join()
        for process in procs.values():
            process.kill()
            process.join()
    runs = {int(order): int(count) for order, count in r.hgetall(f"{prefix}:runs").items()}
    ledger = [int(v) for v in r.hvals(f"{prefix}:ledger")]
    return CrashResult(messages, len(ledger), messages - len(ledger), sum(runs.values()) - len(runs), kills,
                       int(r.get(f"{prefix}:naive-total") or 0),
                       sum(amounts[order] * (count - 1) for order, count in runs.items()), sum(ledger), sum(amounts),
                       time.monotonic() - began, lag(r, stream, group).pending, claim_idle_ms, kill_times, progress)


def plot_crash(result: CrashResult) -> None:
    """Orders added and orders recorded over time, each SIGKILL a vertical line labelled with its worker."""
    import matplotlib.pyplot as plt

    t, added, recorded = zip(*result.progress, strict=True)
    _, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(t, added, label="orders added (XLEN)")
    ax.plot(t, recorded, label="orders recorded (ledger)")
    for at, name in result.kill_times:
        ax.axvline(at, color="tab:red", alpha=0.5, lw=1)
        ax.annotate(name, (at, result.messages), rotation=90, fontsize=7, va="top", ha="right", color="tab:red")
    ax.set(xlabel="seconds since the first order", ylabel="orders", title=f"{len(result.kill_times)} SIGKILLs "
           "(red, the worker hit) while orders flow")
    ax.legend(loc="lower right")
    plt.show()


# -- exercise checks ------------------------------------------------------------------------------------
@check
def check_ack_after_success(r: redis.Redis, ns: Namespace, consume_batch: Callable) -> Result:
    """`consume_batch(r, stream, group, consumer, handle)` reads one batch with `>`, calls
    `handle(entry_id, fields)` for each entry, and acknowledges exactly those whose handler returned."""
    stream, group = ns.key("check", "ack"), "check"
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    ids = [r.xadd(stream, {"n": n}) for n in range(5)]
    handled = []

    def handle(entry_id: str, fields: dict) -> None:
        if fields["n"] == "2":
            raise ValueError("the payment service is down")
        handled.append(entry_id)

    try:
        consume_batch(r, stream, group, "checker", handle)
    except Exception as err:
        r.delete(stream)
        return Result(False, f"your function raised {type(err).__name__}: {err}. Catch the handler's error per "
                             "entry, so one bad entry does not stop the batch (and leave it unacknowledged).")
    pending = {row["message_id"] for row in r.xpending_range(stream, group, "-", "+", 10)}
    r.delete(stream)
    problems = []
    if ids[2] not in pending:
        problems.append("the entry whose handler failed was acknowledged: it is lost. Acknowledge only after "
                        "the handler returns.")
    if set(handled) & pending:
        problems.append(f"{len(set(handled) & pending)} entries handled successfully are still pending: XACK them, "
                        "or they will be delivered again.")
    if len(handled) != 4:
        problems.append(f"the handler ran for {len(handled)} of the 4 good entries: read them all with `>`.")
    return verdict(problems, "4 entries handled and acknowledged; the failed one stays pending for a retry.")


@check
def check_reclaim_all(r: redis.Redis, ns: Namespace, reclaim: Callable, *, min_idle_ms: int = 500) -> Result:
    """`reclaim(r, stream, group, consumer, min_idle_ms)` claims every entry idle longer than
    `min_idle_ms` and returns their ids, following XAUTOCLAIM's cursor page by page (its default COUNT) and
    coping with its third element.

    The pending list is sparse, as in a real group: 1,100 entries a live consumer has just taken (not
    idle), then 250 a dead consumer left (5 of them deleted from the stream since). The first default page
    (COUNT 100, at most 1,000 entries examined) is then empty, with a cursor that is not 0-0."""
    stream, group = ns.key("check", "reclaim"), "check"
    busy_count, dead_count = 1100, 250
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = r.pipeline(transaction=False)
    for n in range(busy_count + dead_count):
        pipe.xadd(stream, {"n": n})
    ids = pipe.execute()
    busy, dead = ids[:busy_count], ids[busy_count:]
    r.xreadgroup(group, "died", {stream: ">"}, count=len(ids))
    r.xdel(stream, *dead[:5])  # trimmed away while pending
    time.sleep(min_idle_ms / 1000 + 0.02)
    r.xclaim(stream, group, "alive", min_idle_time=0, message_ids=busy, justid=True)  # idle 0: not claimable
    try:
        with trace(r, show=False) as sent:
            claimed = list(reclaim(r, stream, group, "rescuer", min_idle_ms))
    except ValueError as err:
        r.delete(stream)
        return Result(False, f"{type(err).__name__}: {err}. Since 7.0 XAUTOCLAIM replies with three elements "
                             "(cursor, entries, deleted ids): unpack three, or index the reply.")
    owners = {c["name"]: c["pending"] for c in r.xinfo_consumers(stream, group)}
    r.delete(stream)
    calls = sent.names().count("XAUTOCLAIM")
    expected = set(dead[5:])
    problems = []
    if set(claimed) & set(busy):
        problems.append(f"you claimed {len(set(claimed) & set(busy))} entries that were not idle for "
                        f"{min_idle_ms} ms: pass min_idle_ms on to XAUTOCLAIM's min-idle-time.")
    elif set(claimed) != expected:
        problems.append(f"you returned {len(set(claimed))} ids; 245 entries were claimable (250 idle, 5 of them "
                        "deleted from the stream), behind 1,100 that were not idle. XAUTOCLAIM claims at most "
                        "COUNT (default 100) per call and examines at most 10 x COUNT: a page can be empty while "
                        "more is left. Call it again with the cursor it returns until the cursor is 0-0, "
                        "never stopping on an empty page.")
    elif calls < 2:
        problems.append("one XAUTOCLAIM call claimed everything: a COUNT that large examines up to ten times "
                        "COUNT pending entries in one command, while every other client waits, and a bigger "
                        "pending list would still need the cursor. Keep the default COUNT and follow the cursor.")
    if owners.get("rescuer", 0) != 245:
        problems.append(f"{owners.get('rescuer', 0)} entries are pending under the rescuer afterwards, expected the "
                        "245 you claimed.")
    return verdict(problems, f"all 245 idle live entries claimed in {calls} pages (the first one empty), the 5 "
                             "deleted ones dropped from the pending list, the 1,100 busy ones left alone.")


# -- ordering -------------------------------------------------------------------------------------------
def key_inversions(finished: list[tuple[object, int]]) -> int:
    """How many times an entry finished after a later entry of the same key: `finished` holds (key, sequence)
    in finishing order."""
    last: dict[object, int] = {}
    inversions = 0
    for key, sequence in finished:
        if sequence < last.get(key, -1):
            inversions += 1
        last[key] = max(sequence, last.get(key, -1))
    return inversions


# -- exercise 3 -----------------------------------------------------------------------------------------
@check
def check_idempotent_effect(r: redis.Redis, ns: Namespace, record: Callable) -> Result:
    """`record(r, ledger, entry_id, fields)` records `fields["amount"]` for `fields["order"]` in the hash
    `ledger` (order id -> amount) once per order: a redelivered entry and an order a producer sent twice
    (two entry IDs) change nothing."""
    stream, ledger, group = ns.key("check", "idem"), ns.key("check", "idem-ledger"), "check"
    r.delete(stream, ledger)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    orders = {"A-1": 30, "A-2": 45, "A-3": 12}
    for order in ("A-1", "A-2", "A-3", "A-3"):  # A-3 twice: the producer retried after a lost reply
        r.xadd(stream, {"order": order, "amount": orders[order]})
    deliveries = r.xreadgroup(group, "first", {stream: ">"})[0][1]
    deliveries += r.xreadgroup(group, "first", {stream: "0"}, count=2)[0][1]  # delivered again
    try:
        for entry_id, fields in deliveries:
            record(r, ledger, entry_id, fields)
    except Exception as err:
        r.delete(stream, ledger)
        return Result(False, f"your function raised {type(err).__name__}: {err}.")
    got = r.hgetall(ledger)
    r.delete(stream, ledger)
    expected = {order: str(amount) for order, amount in orders.items()}
    problems = []
    if any(key not in orders for key in got):
        problems.append(f"the ledger has {len(got)} rows keyed {sorted(got)[:2]}...: key it by the order id (the "
                        "business id). A producer's retry makes a new entry ID for the same order.")
    elif got != expected:
        problems.append(f"the ledger says {got}, expected {expected}: a second delivery of an order must change "
                        "nothing (HSETNX, SET NX), not add again.")
    return verdict(problems, "each order recorded once: redeliveries and the producer's retry changed nothing.")
