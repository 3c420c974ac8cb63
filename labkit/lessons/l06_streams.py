"""Lesson 06, streams (`notebooks/06_streams.ipynb`): the exercise checks."""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from labkit.keys import Namespace
from labkit.lessons import Result, verdict


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


def check_reclaim_all(r: redis.Redis, ns: Namespace, reclaim: Callable) -> Result:
    """`reclaim(r, stream, group, consumer, min_idle_ms)` claims every entry idle longer than
    `min_idle_ms` and returns their ids, following XAUTOCLAIM's cursor and coping with its third element."""
    stream, group = ns.key("check", "reclaim"), "check"
    r.delete(stream)
    r.xgroup_create(stream, group, id="0", mkstream=True)
    pipe = r.pipeline(transaction=False)
    for n in range(250):
        pipe.xadd(stream, {"n": n})
    ids = pipe.execute()
    r.xreadgroup(group, "died", {stream: ">"}, count=250)
    r.xdel(stream, *ids[:5])  # trimmed away while pending
    time.sleep(0.02)
    try:
        claimed = list(reclaim(r, stream, group, "rescuer", 10))
    except ValueError as err:
        r.delete(stream)
        return Result(False, f"{type(err).__name__}: {err}. Since 7.0 XAUTOCLAIM replies with three elements "
                             "(cursor, entries, deleted ids): unpack three, or index the reply.")
    left = r.xpending(stream, group)["pending"]
    r.delete(stream)
    expected = set(ids[5:])
    problems = []
    if set(claimed) != expected:
        problems.append(f"you returned {len(set(claimed))} ids; 245 entries were claimable (250 pending, 5 of them "
                        "deleted from the stream). XAUTOCLAIM claims at most COUNT (default 100) per call: call it "
                        "again with the cursor it returns until the cursor is 0-0.")
    if left != 245:
        problems.append(f"{left} entries are pending afterwards, expected the 245 you now own.")
    return verdict(problems, "all 245 live entries claimed, the 5 deleted ones dropped from the pending list.")
