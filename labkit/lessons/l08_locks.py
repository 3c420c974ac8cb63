"""Lesson 08, distributed locks (`notebooks/08_locks.ipynb`): experiments with real processes and servers
(lost updates with and without a lock, a lock holder frozen past its TTL, a job that keeps its lease, a
fencing token going backwards after a failover, Redlock contenders splitting the vote), their pictures,
and the exercise checks."""

from __future__ import annotations

import contextlib
import functools
import heapq
import itertools
import multiprocessing
import os
import random
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from labkit import scripts, validate
from labkit.clients import connection_spec
from labkit.errors import ConfigError, LockNotHeld
from labkit.keys import Namespace
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.locks import FencedStore, Lock, Redlock
from labkit.server import Server, replicated, spawn
from labkit.server.topology import wait_until


# -- lost updates, with real processes --------------------------------------------------------------------
@dataclass(frozen=True)
class Exclusion:
    """What `processes` processes counted, each adding 1 `increments` times by GET then SET: first without
    the lock, then with it."""

    expected: int
    without_lock: int
    with_lock: int


def _increment(spec: dict, prefix: str, increments: int, start) -> None:
    """A process adding 1 to a counter by GET then SET (a read-modify-write): a round without the lock, then
    a round with it, each begun together with the other processes."""
    r = redis.Redis(**spec, decode_responses=True)
    lock = Lock(r, "counter", ttl_ms=5000, blocking_timeout=30, prefix=prefix)
    for counter, locked in ((f"{prefix}:free", False), (f"{prefix}:locked", True)):
        start.wait(60)
        for _ in range(increments):
            if locked:
                lock.acquire()
            r.set(counter, int(r.get(counter) or 0) + 1)
            if locked:
                lock.release()
    r.close()


def mutual_exclusion(r: redis.Redis, prefix: str, *, processes: int = 4, increments: int = 200) -> Exclusion:
    """`processes` processes each increment a shared counter `increments` times, without then with the lock
    (the same processes: starting Python costs more than the rounds)."""
    validate.integer(processes, "processes")
    validate.integer(increments, "increments")
    r.delete(f"{prefix}:free", f"{prefix}:locked")
    ctx, spec = multiprocessing.get_context("spawn"), connection_spec(r)
    start = ctx.Barrier(processes)
    workers = [ctx.Process(target=_increment, args=(spec, prefix, increments, start)) for _ in range(processes)]
    for p in workers:
        p.start()
    for p in workers:
        p.join()
    counted = [int(r.get(f"{prefix}:{name}") or 0) for name in ("free", "locked")]
    return Exclusion(processes * increments, *counted)


# -- the paused holder, on a timeline -------------------------------------------------------------------
EVENTS = ("holder 1 acquires", "holder 1 frozen", "holder 2 acquires", "holder 2 writes", "holder 1 resumed",
          "holder 1 writes", "holder 1 releases")


@dataclass
class PausedHolder:
    """What happened when a lock holder was frozen (SIGSTOP) past its TTL, then woke up and wrote.
    `events` are in ms from the moment holder 1 sent its acquisition, on this machine's monotonic clock
    (one clock for every process), in the order of `EVENTS`."""

    fenced: bool
    ttl_ms: int
    first_fence: int
    second_fence: int
    first_lock_lost: bool  # the first holder's release found someone else's token
    stale_write_accepted: bool
    final_value: str | None
    events: dict[str, float] = field(default_factory=dict)

    @property
    def lease_ends(self) -> float:
        """When holder 1's lease ran out at the earliest: its TTL after it sent the acquisition."""
        return float(self.ttl_ms)

    def in_order(self) -> bool:
        """Whether the events happened in the order of `EVENTS`, holder 2 only after holder 1's lease ended
        (1 ms of slack: the server counts expiry in whole milliseconds)."""
        times = [self.events[name] for name in EVENTS]
        return times == sorted(times) and self.events["holder 2 acquires"] >= self.lease_ends - 1


def _paused_writer(spec: dict, prefix: str, ttl_ms: int, fenced: bool, conn) -> None:
    """The first holder, a process: takes the lock, reports its fence, and writes once told to go."""
    r = redis.Redis(**spec, decode_responses=True)
    lock = Lock(r, "resource", ttl_ms=ttl_ms, prefix=prefix)
    store = FencedStore(r, "resource", prefix=prefix)
    sent = time.monotonic()
    lock.acquire()
    conn.send((sent, time.monotonic(), lock.fence))
    conn.recv()  # "go": sent while this process is stopped, so it arrives only after SIGCONT
    writing = time.monotonic()
    if fenced:
        accepted = store.write(lock.fence, "written by the paused holder")
    else:
        r.set(f"{prefix}:plain", "written by the paused holder")
        accepted = True
    try:
        lock.release()
        lost = False
    except LockNotHeld:
        lost = True
    conn.send((writing, time.monotonic(), accepted, lost))
    r.close()


def _await(conn, process, what: str, timeout: float = 60) -> None:
    """Wait for `process` to send on `conn`; raise at once if it died, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not conn.poll(0.05):
        if not process.is_alive():
            raise RuntimeError(f"the holder process exited (code {process.exitcode}) before it could {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the holder process did not {what} within {timeout:.0f} s")


def paused_holder(r: redis.Redis, prefix: str, *, fenced: bool, ttl_ms: int = 200) -> PausedHolder:
    """A holder PROCESS takes the lock and is frozen with SIGSTOP past its TTL; a second client takes the
    lock and writes; the first is resumed and writes too. With `fenced`, writes go through a FencedStore.
    Every step is timed for the timeline (`plot_paused_holders`)."""
    ctx, spec = multiprocessing.get_context("spawn"), connection_spec(r)
    ours, theirs = ctx.Pipe()
    holder = ctx.Process(target=_paused_writer, args=(spec, prefix, ttl_ms, fenced, theirs))
    holder.start()
    at: dict[str, float] = {}
    try:
        _await(ours, holder, "take the lock")
        start, at["holder 1 acquires"], first_fence = ours.recv()
        os.kill(holder.pid, signal.SIGSTOP)
        at["holder 1 frozen"] = time.monotonic()
        ours.send("go")
        # the second holder's lock must outlast the rest of the experiment (a process to wake and write) on
        # a busy machine too: a minute, released below
        second = Lock(r, "resource", ttl_ms=60_000, blocking_timeout=ttl_ms * 5 / 1000, prefix=prefix)
        if not second.acquire():
            raise TimeoutError("the second client never got the lock: did the first one's TTL not run out?")
        at["holder 2 acquires"] = time.monotonic()
        if fenced:
            FencedStore(r, "resource", prefix=prefix).write(second.fence, "written by the second holder")
        else:
            r.set(f"{prefix}:plain", "written by the second holder")
        at["holder 2 writes"] = time.monotonic()
        at["holder 1 resumed"] = time.monotonic()
        os.kill(holder.pid, signal.SIGCONT)
        _await(ours, holder, "write and release once resumed")
        at["holder 1 writes"], at["holder 1 releases"], accepted, lost = ours.recv()
        second.release()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
        holder.join(timeout=10)
        if holder.is_alive():
            holder.kill()
            holder.join()
    final = FencedStore(r, "resource", prefix=prefix).read() if fenced else r.get(f"{prefix}:plain")
    events = {name: (at[name] - start) * 1000 for name in EVENTS}
    return PausedHolder(fenced, ttl_ms, first_fence, second.fence, lost, accepted, final, events)


def plot_paused_holders(*runs: PausedHolder) -> None:
    """One timeline per run: holder 1's lease and its freeze, holder 2's lease, and the writes the resource
    received, drawn from the run's own timestamps."""
    import matplotlib.pyplot as plt  # here, not at the top: the worker processes import this module

    figure, axes = plt.subplots(len(runs), 1, figsize=(8.5, 1.7 * len(runs) + 0.6), sharex=True, squeeze=False)
    end = max(run.events["holder 1 releases"] for run in runs) * 1.25
    for ax, run in zip(axes[:, 0], runs, strict=True):
        e = run.events
        ax.barh(2, run.lease_ends, height=0.5, color="tab:blue", alpha=0.35, label="holder 1's lease (TTL)")
        ax.barh(2, e["holder 1 resumed"] - e["holder 1 frozen"], left=e["holder 1 frozen"], height=0.5,
                color="none", edgecolor="gray", hatch="///", label="holder 1 frozen (SIGSTOP)")
        ax.barh(1, end - e["holder 2 acquires"], left=e["holder 2 acquires"], height=0.5, color="tab:orange",
                alpha=0.35, label="holder 2 holds the lock")
        ax.axvline(run.lease_ends, color="tab:blue", linestyle="--", linewidth=1)
        ax.plot(e["holder 2 writes"], 0.2, "o", color="tab:orange", markersize=8)
        ax.annotate("holder 2 writes", (e["holder 2 writes"], 0.2), xytext=(-8, 0), textcoords="offset points",
                    ha="right", va="center", fontsize=8)
        verdict_text = "accepted: holder 2's write is lost" if run.stale_write_accepted else "refused: stale token"
        ax.plot(e["holder 1 writes"], -0.25, "X" if run.stale_write_accepted else "s", markersize=9,
                color="tab:red" if run.stale_write_accepted else "black")
        ax.annotate(f"holder 1 writes, {verdict_text}", (e["holder 1 writes"], -0.25), xytext=(-8, 0),
                    textcoords="offset points", ha="right", va="center", fontsize=8)
        ax.set_yticks([0, 1, 2], ["resource", f"holder 2 (token {run.second_fence})",
                                  f"holder 1 (token {run.first_fence})"])
        ax.set(xlim=(0, end), ylim=(-0.7, 2.6))
        ax.set_title(("with a fencing token" if run.fenced else "without fencing")
                     + f": a {run.ttl_ms} ms lease (dashed line: it ends)", fontsize=10)
    bars = [h for h in axes[0, 0].get_legend_handles_labels()[0] if not hasattr(h, "get_xdata")]
    figure.legend(bars, [b.get_label() for b in bars], loc="lower center", ncol=3, fontsize=8, frameon=False)
    axes[-1, 0].set_xlabel("ms since holder 1 sent its acquisition (one monotonic clock for both processes)")
    figure.tight_layout(rect=(0, 0.07, 1, 1))
    plt.show()


# -- a long job under a lease, with a rival waiting -------------------------------------------------------
@dataclass(frozen=True)
class RivalRace:
    """A job that made side effects under a lock while a rival waited for the same lock."""

    side_effects: int
    after_rival: int  # side effects made after the rival had taken the lock
    stopped: bool  # the job stopped on LockNotHeld (its extend was refused)
    rival_waited_ms: float  # from the job's acquisition to the rival's

    @property
    def overlapped(self) -> bool:
        return self.after_rival > 0


def race_a_rival(r: redis.Redis, prefix: str, job: Callable[[Lock, list[float]], None], *,
                 ttl_ms: int = 600) -> RivalRace:
    """Take a lock with a `ttl_ms` lease and run `job(lock, done)`, which appends the time of each side
    effect to `done`; meanwhile a rival thread waits for the same lock and takes it as soon as it is free.
    A `LockNotHeld` from the job ends it (`stopped`)."""
    lock = Lock(r, "job", ttl_ms=ttl_ms, prefix=prefix)
    lock.acquire()
    started, taken = time.monotonic(), []

    def rival() -> None:
        theirs = Lock(r, "job", ttl_ms=60_000, blocking_timeout=60, prefix=prefix)
        if theirs.acquire():
            taken.append(time.monotonic())
            theirs.release()

    waiting = threading.Thread(target=rival, daemon=True)
    waiting.start()
    done: list[float] = []
    stopped = False
    try:
        job(lock, done)
    except LockNotHeld:
        stopped = True
    finally:
        with contextlib.suppress(LockNotHeld):  # a lost lock is what the job's outcome already says
            lock.release()
        waiting.join(60)
    rival_at = taken[0] if taken else float("inf")
    return RivalRace(len(done), sum(t > rival_at for t in done), stopped, (rival_at - started) * 1000)


# -- where a fencing token comes from ---------------------------------------------------------------------
@dataclass(frozen=True)
class Failover:
    """Fencing tokens a primary issued, and the first one its replica issued once promoted."""

    before: list[int]  # tokens the primary issued, in order
    confirmed: list[int]  # WAIT 1's reply after each: how many replicas had it
    replica_had: int  # the highest token the replica had applied when the primary died
    after: int  # the first token the promoted replica issued
    granted_while_held: bool  # the promoted replica gave the lock away while the last lease had time left


def _wait_link_down(replica: Server) -> None:
    wait_until(lambda: replica.info("replication")["master_link_status"] == "down", 30,
               "the replica to notice that its primary died")


def failover_token(prefix: str, *, lost: int = 2) -> Failover:
    """A primary and one replica; one acquisition is replicated (WAIT says so), then the replica stops
    applying the primary's stream (CLIENT PAUSE WRITE) while `lost` more are issued, the last one still held
    (with `lost=0`, nothing is missing from the replica: the control);
    the primary is killed, the replica promoted (REPLICAOF NO ONE), and asked for the lock again. No
    process is frozen here, so the clients have labkit's stated timeouts (5 s) and no retry: a probe's
    1 s timed out once in nine runs on a machine at load 12; the topology's own waits use probes."""
    validate.integer(lost, "lost", minimum=0)
    with replicated(1) as pair:
        primary, replica = pair.primary.client(), pair.replicas[0].client()
        tokens, confirmed = [], []

        def acquire(release: bool) -> None:
            lock = Lock(primary, "invoice", ttl_ms=60_000, blocking_timeout=0, prefix=prefix)
            if not lock.acquire():
                raise RuntimeError("the lock was not free: an earlier holder did not release it")
            tokens.append(lock.fence)
            confirmed.append(primary.wait(1, 200))
            if release:
                lock.release()

        acquire(release=True)
        replica.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
        try:
            for i in range(lost):
                acquire(release=i < lost - 1)  # the last holder keeps its lock
            pair.primary.kill()
            _wait_link_down(pair.replicas[0])
            replica_had = int(replica.get(Lock(replica, "invoice", prefix=prefix).fence_key) or 0)
            replica.execute_command("REPLICAOF", "NO", "ONE")
        finally:
            replica.execute_command("CLIENT", "UNPAUSE")
        promoted = Lock(replica, "invoice", ttl_ms=60_000, blocking_timeout=0, prefix=prefix)
        granted = promoted.acquire()
        primary.close()
        replica.close()
        return Failover(tokens, confirmed, replica_had, promoted.fence or 0, granted)


def restart_tokens(prefix: str, *, appendonly: bool, acquisitions: int = 3) -> tuple[list[int], int]:
    """Tokens from a server before it is killed (SIGKILL) and started again on the same data directory,
    and the first one after. Without persistence (labkit's default) the counter starts over; with the
    append-only file (`appendfsync always`) it goes on."""
    config = {"appendonly": True, "appendfsync": "always"} if appendonly else {}
    with spawn(modules=False, **config) as solo:
        before, first = [], solo.client()
        lock = Lock(first, "invoice", ttl_ms=60_000, prefix=prefix)
        for _ in range(acquisitions):
            lock.acquire()
            before.append(lock.fence)
            lock.release()
        first.close()
        solo.kill()
        solo.start()
        fresh = solo.client()
        wait_until(lambda: fresh.info("persistence")["loading"] == 0, 30, "the restarted server to load its data")
        lock = Lock(fresh, "invoice", ttl_ms=60_000, prefix=prefix)
        lock.acquire()
        fresh.close()
        return before, lock.fence


def invoices() -> sqlite3.Connection:
    """An in-memory SQLite database with one open invoice (id 42) and a `fence` column: the highest fencing
    token that wrote the row; and a `version` column that every write increments."""
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE invoice (id INTEGER PRIMARY KEY, status TEXT NOT NULL, "
               "fence INTEGER NOT NULL DEFAULT 0, version INTEGER NOT NULL DEFAULT 0)")
    db.execute("INSERT INTO invoice (id, status) VALUES (42, 'open')")
    db.commit()
    return db


# -- Redlock under contention: why the retry delay is random ----------------------------------------------
@dataclass(frozen=True)
class Attempt:
    """One Redlock attempt by one contender, at simulated times (ms)."""

    contender: int
    number: int  # 0 for its first attempt
    start_ms: float
    end_ms: float
    won: int  # nodes that said yes
    held: bool  # a majority: it held the lock


@dataclass
class Contention:
    """Every attempt of every contender, with fixed or random retry delays."""

    retry: str
    nodes: int
    contenders: int
    attempts: list[Attempt]

    @property
    def quorum(self) -> int:
        return self.nodes // 2 + 1

    @property
    def holders(self) -> int:
        """Contenders that held the lock at some attempt."""
        return len({a.contender for a in self.attempts if a.held})

    @property
    def split_votes(self) -> int:
        """Attempts that won some nodes but no majority: the vote was split between contenders."""
        return sum(0 < a.won < self.quorum for a in self.attempts)


def contention(clients: list[redis.Redis], key: str, *, retry: str, contenders: int = 5, attempts: int = 6,
               far_ms: float = 50, retry_delay_ms: float = 200, hold_ms: float = 20, jitter_ms: float = 10,
               seed: int = 8) -> Contention:
    """Redlock's attempts by `contenders` clients that all want the lock at once. Each client sits next to
    one node and `far_ms` (a round trip, plus up to `jitter_ms`) from the others, as clients in different
    zones do. An attempt SETs on every node at once and decides when the last reply is in; a failed one
    releases everywhere, then waits `retry_delay_ms` ("fixed") or a random time up to it ("random").

    Time is simulated: the commands are sent one by one, in the order that network would deliver them,
    to real servers, which decide every SET NX. On a loaded machine, threads could not keep the few
    milliseconds of lockstep this needs, and the count would measure the machine's load instead."""
    if retry not in ("fixed", "random"):
        raise ConfigError(f"retry must be 'fixed' or 'random', got {retry!r}.")
    validate.integer(contenders, "contenders")
    validate.integer(attempts, "attempts")
    rng = random.Random(seed)
    n = len(clients)
    release = [scripts.register(c, "locks/release") for c in clients]
    pending: list = []
    order = itertools.count()
    log: list[Attempt] = []

    def at(t: float, action: Callable, *args) -> None:
        heapq.heappush(pending, (t, next(order), functools.partial(action, *args)))

    def one_way(c: int) -> list[float]:
        return [0.0 if i == c % n else far_ms / 2 + rng.uniform(0, jitter_ms / 2) for i in range(n)]

    def release_everywhere(c: int, t: float, token: str) -> float:
        delays = one_way(c)
        for i in range(n):
            at(t + delays[i], release[i], [key], [token])
        return t + 2 * max(delays)

    def attempt(c: int, number: int, start: float) -> None:
        token, said_yes, delays = f"{c}.{number}", [], one_way(c)
        for i in range(n):
            at(start + delays[i], lambda i: said_yes.append(bool(clients[i].set(key, token, nx=True, px=60_000))), i)
        last_reply = start + 2 * max(delays)
        at(last_reply, decide, c, number, start, last_reply, token, said_yes)

    def decide(c: int, number: int, start: float, now: float, token: str, said_yes: list[bool]) -> None:
        won = sum(said_yes)
        log.append(Attempt(c, number, start, now, won, won >= n // 2 + 1))
        if won >= n // 2 + 1:
            release_everywhere(c, now + hold_ms, token)
            return
        done = release_everywhere(c, now, token)
        if number + 1 < attempts:
            nxt = done + (retry_delay_ms if retry == "fixed" else rng.uniform(0, retry_delay_ms))
            at(nxt, attempt, c, number + 1, nxt)

    for c in range(contenders):
        begin = rng.uniform(0, jitter_ms / 2)
        at(begin, attempt, c, 0, begin)
    while pending:
        heapq.heappop(pending)[2]()
    for client in clients:
        client.delete(key)
    return Contention(retry, n, contenders, sorted(log, key=lambda a: (a.contender, a.start_ms)))


def plot_contention(*runs: Contention) -> None:
    """Each contender's attempts on a time line, one panel per run: split votes, attempts that found the
    lock held, and the attempt that held it."""
    import matplotlib.pyplot as plt

    _, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 2.6), sharey=True, squeeze=False)
    end = max(a.end_ms for run in runs for a in run.attempts) * 1.05
    styles = {"split vote": "tab:red", "lock held by another": "lightgray", "held the lock": "tab:green"}
    for ax, run in zip(axes[0], runs, strict=True):
        for a in run.attempts:
            kind = "held the lock" if a.held else ("split vote" if a.won else "lock held by another")
            ax.barh(a.contender, max(a.end_ms - a.start_ms, end / 150), left=a.start_ms, height=0.6,
                    color=styles[kind], edgecolor="black", linewidth=0.4)
        ax.set(xlim=(0, end), xlabel="simulated ms",
               title=f"{run.retry} retry delay: {run.holders} of {run.contenders} held it, "
                     f"{run.split_votes} split votes")
        ax.title.set_fontsize(9)
    axes[0, 0].set_yticks(range(runs[0].contenders), [f"client {c}" for c in range(runs[0].contenders)])
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for color in styles.values()]
    axes[0, -1].legend(handles, list(styles), fontsize=7, loc="upper right")
    plt.tight_layout()
    plt.show()


class OneNodeAtATime(Redlock):
    """`Redlock` asking its nodes one after another, as a simple loop does: each slow node adds its wait.
    labkit's Redlock asks them all at once; lesson 08 times the two side by side."""

    def _on_every_node(self, *command):
        return [_ask(node, command) for node in self.nodes]


def _ask(node: redis.Redis, command: tuple) -> object:
    """One node's reply to `command`, or its error (a node down or slow counts as a no)."""
    try:
        return node.execute_command(*command)
    except (redis.RedisError, OSError) as err:
        return err


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
