"""Lesson 08, distributed locks (`notebooks/08_locks.ipynb`): experiments with real processes (lost updates
with and without a lock, a lock holder frozen past its TTL) and the exercise checks."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import redis

from labkit import validate
from labkit.clients import connection_spec
from labkit.errors import LockNotHeld
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.locks import FencedStore, Lock, Redlock


# -- experiments with real processes --------------------------------------------------------------------
def _increment(spec: dict, prefix: str, increments: int, use_lock: bool, start) -> None:
    """A process adding 1 to a counter `increments` times by GET then SET (a read-modify-write)."""
    r = redis.Redis(**spec, decode_responses=True)
    counter = f"{prefix}:counter"
    r.ping()
    start.wait()  # every process begins together
    for _ in range(increments):
        lock = Lock(r, f"{prefix}:counter", ttl_ms=5000, blocking_timeout=30, prefix=prefix) if use_lock else None
        if lock:
            lock.acquire()
        value = int(r.get(counter) or 0)
        r.set(counter, value + 1)
        if lock:
            lock.release()


def mutual_exclusion(r: redis.Redis, prefix: str, *, processes: int = 4, increments: int = 200,
                     use_lock: bool = True) -> tuple[int, int]:
    """`processes` processes each increment a shared counter `increments` times; returns (expected, counted)."""
    validate.integer(processes, "processes")
    validate.integer(increments, "increments")
    r.delete(f"{prefix}:counter")
    ctx, spec = multiprocessing.get_context("spawn"), connection_spec(r)
    start = ctx.Barrier(processes)
    workers = [ctx.Process(target=_increment, args=(spec, prefix, increments, use_lock, start))
               for _ in range(processes)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    return processes * increments, int(r.get(f"{prefix}:counter") or 0)


@dataclass
class PausedHolder:
    """What happened when a lock holder was frozen (SIGSTOP) past its TTL, then woke up and wrote."""

    first_fence: int
    second_fence: int
    first_lock_lost: bool  # the first holder's release found someone else's token
    stale_write_accepted: bool
    final_value: str | None


def _paused_writer(spec: dict, prefix: str, ttl_ms: int, fenced: bool, conn) -> None:
    """The first holder, a process: takes the lock, reports its fence, and writes once told to go."""
    r = redis.Redis(**spec, decode_responses=True)
    lock = Lock(r, "resource", ttl_ms=ttl_ms, prefix=prefix)
    lock.acquire()
    conn.send(lock.fence)
    conn.recv()  # "go": sent while this process is stopped, so it arrives only after SIGCONT
    if fenced:
        accepted = FencedStore(r, "resource", prefix=prefix).write(lock.fence, "written by the paused holder")
    else:
        r.set(f"{prefix}:plain", "written by the paused holder")
        accepted = True
    try:
        lock.release()
        lost = False
    except LockNotHeld:
        lost = True
    conn.send((accepted, lost))


def paused_holder(r: redis.Redis, prefix: str, *, fenced: bool, ttl_ms: int = 200) -> PausedHolder:
    """A holder PROCESS takes the lock and is frozen with SIGSTOP past its TTL; a second client takes the
    lock and writes; the first is resumed and writes too. With `fenced`, writes go through a FencedStore."""
    ctx, spec = multiprocessing.get_context("spawn"), connection_spec(r)
    ours, theirs = ctx.Pipe()
    holder = ctx.Process(target=_paused_writer, args=(spec, prefix, ttl_ms, fenced, theirs))
    holder.start()
    try:
        if not ours.poll(30):
            raise TimeoutError("the holder process did not take the lock within 30 s")
        first_fence = ours.recv()
        os.kill(holder.pid, signal.SIGSTOP)
        ours.send("go")
        # the second holder's lock must outlast the rest of the experiment (a process to wake and write) on
        # a busy machine too: a minute, released below
        second = Lock(r, "resource", ttl_ms=60_000, blocking_timeout=ttl_ms * 5 / 1000, prefix=prefix)
        if not second.acquire():
            raise TimeoutError("the second client never got the lock: did the first one's TTL not run out?")
        if fenced:
            FencedStore(r, "resource", prefix=prefix).write(second.fence, "written by the second holder")
        else:
            r.set(f"{prefix}:plain", "written by the second holder")
        os.kill(holder.pid, signal.SIGCONT)
        accepted, lost = ours.recv()
        second.release()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.join(timeout=10)
        if holder.is_alive():
            holder.kill()
            holder.join()
    final = FencedStore(r, "resource", prefix=prefix).read() if fenced else r.get(f"{prefix}:plain")
    return PausedHolder(first_fence, second.fence, lost, accepted, final)


class OneNodeAtATime(Redlock):
    """`Redlock` asking its nodes one after another, as a simple loop does: each slow node adds its wait.
    labkit's Redlock asks them all at once; lesson 08 times the two side by side."""

    def _on_every_node(self, call):
        return [call(node) for node in self.nodes]


# -- exercise checks ------------------------------------------------------------------------------------
class _RacyClient(redis.Redis):
    """A real client of the same server that, right after a GET of the lock returns our token, lets the
    lock expire and another client take it: the moment a two-step release is exposed to."""

    lock_key = ""
    rival_token = "rival"
    raced = False

    def execute_command(self, *args, **options):
        reply = super().execute_command(*args, **options)
        if args and str(args[0]).upper() == "GET" and args[1] == self.lock_key and reply is not None:
            redis.Redis(connection_pool=self.connection_pool).set(self.lock_key, self.rival_token, px=5000)
            self.raced = True
        return reply


@check
def check_safe_release(r: redis.Redis, ns: Namespace, release: Callable[[redis.Redis, str, str], bool]) -> Result:
    """`release(r, key, token)` deletes the lock at `key` only if it holds `token`, atomically,
    and returns whether it did."""
    key = ns.key("check", "lock")
    problems = []
    r.set(key, "mine", px=5000)
    if not release(r, key, "mine") or r.exists(key):
        problems.append("releasing our own lock did not delete it (or did not return True).")
    r.set(key, "someone-else", px=5000)
    if release(r, key, "mine") or r.get(key) != "someone-else":
        problems.append("it deleted (or claimed to release) a lock held by someone else: compare the token first.")
    racy = _RacyClient(connection_pool=r.connection_pool)
    racy.lock_key = key
    r.set(key, "mine", px=5000)
    release(racy, key, "mine")
    if not problems and racy.raced and r.get(key) != racy.rival_token:
        problems.append("between your GET and your DEL the lock expired and another client took it; your DEL "
                        "removed their lock. Compare and delete in one step: a Lua script.")
    r.delete(key)
    return verdict(problems, "it releases only its own lock, and atomically (a rival's lock survived the race).")


@check
def check_redlock_validity(validity: Callable[[int, int, float, float], float]) -> Result:
    """`validity(acquired, nodes, elapsed_ms, ttl_ms)` is the time left in ms for a Redlock that
    won `acquired` of `nodes` in `elapsed_ms`: ttl - elapsed - drift (ttl * 0.01 + 2 ms) with a strict
    majority, else 0."""
    cases = [  # (acquired, nodes, elapsed_ms, ttl_ms, expected, what a wrong answer usually got wrong)
        (5, 5, 0, 10_000, 9898, "subtract the clock drift allowance, ttl * 0.01 + 2 ms"),
        (3, 3, 400, 1000, 588, "subtract the time spent acquiring"),
        (3, 3, 995, 1000, 0, "after 995 ms of a 1000 ms TTL nothing is left once drift is counted: return 0, "
                             "never a negative validity"),
        (2, 5, 10, 1000, 0, "2 of 5 is not a majority: a quorum hard-coded as 2 lets two clients both hold it"),
        (2, 4, 10, 1000, 0, "2 of 4 is not a strict majority (n // 2 + 1 = 3)"),
        (3, 5, 10, 1000, 978, "3 of 5 is a majority"),
        (2, 3, 10, 1000, 978, "2 of 3 is a majority"),
    ]
    for acquired, nodes, elapsed, ttl, expected, hint in cases:
        got = validity(acquired, nodes, elapsed, ttl)
        if got is None or abs(float(got) - expected) > 0.5:
            return Result(False, f"validity({acquired}, {nodes}, {elapsed}, {ttl}) gave {got}, expected {expected}: "
                                 f"{hint}.")
    return Result(True, "majority, elapsed time and drift all counted.")
