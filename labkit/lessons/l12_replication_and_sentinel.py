"""Lesson 12, replication and Sentinel (`notebooks/12_replication_and_sentinel.ipynb`): experiments on replicated
sets and Sentinel topologies it starts (offsets and lag, acknowledged writes lost at failover, WAIT and its cost,
stale reads from replicas, failover time against down-after-milliseconds, the errors a client sees, split brain,
partial and full resync), the pictures, and the exercise checks. Every experiment runs on servers it spawns.

Probes of a member that may be paused or dead use the members' probe clients (1 s, no retry); every paused
process is resumed in a `finally`; every topology is a context manager."""

from __future__ import annotations

import itertools
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import redis

from labkit.clients import options
from labkit.errors import ServerUnavailable
from labkit.lessons import Result, check, verdict
from labkit.lessons import skip as skip  # lessons say `lesson.skip(...)` where a part cannot run here
from labkit.replication import retry
from labkit.server import Server, replicated, sentinel, spawn
from labkit.server.topology import SentinelTopology, wait_until

VALUE = "v" * 100  # every value written in these experiments: 100 bytes
REDIS_PY_DEFAULT_RETRY = {"base": 0.01, "cap": 1.0, "retries": 10}  # redis-py 8's own, for Redis(host=...)


def in_parallel(calls: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run experiments that mostly wait (for a failover, for a timer) at the same time; their results by name."""
    with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
        futures = {name: pool.submit(call) for name, call in calls.items()}
        return {name: future.result() for name, future in futures.items()}


def write_keys(r: redis.Redis, prefix: str, first: int, last: int, value: str = VALUE) -> None:
    """SET `prefix:i` for i in [first, last), pipelined: each one acknowledged by the primary."""
    with r.pipeline(transaction=False) as pipe:
        for i in range(first, last):
            pipe.set(f"{prefix}:{i}", value)
        pipe.execute()


def count_keys(r: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in r.scan_iter(match=f"{prefix}:*", count=1000))


def pause_writes(server: Server, ms: int) -> None:
    """`CLIENT PAUSE ms WRITE` on `server`: on a replica it also stops applying its primary's stream, so it
    falls behind by exactly what is written meanwhile (reads are still served, from the old data)."""
    server.probe().execute_command("CLIENT", "PAUSE", ms, "WRITE")


def unpause(server: Server) -> None:
    server.probe().execute_command("CLIENT", "UNPAUSE")


def promote(replica: Server) -> None:
    """`REPLICAOF NO ONE`: what Sentinel (or an operator) does to the chosen replica in a failover."""
    replica.probe().replicaof("NO", "ONE")


def wait_link_down(replica: Server, timeout: float = 10) -> None:
    """Until the replica has seen its primary go (it has read everything the primary's socket still held)."""
    wait_until(lambda: replica.probe().info("replication")["master_link_status"] == "down", timeout,
               f"replica {replica.port} to see its primary gone")


def wait_caught_up(primary: Server, replica: Server, timeout: float = 30) -> None:
    """Until the replica is linked, not syncing, and has applied everything the primary has."""

    def caught_up() -> bool:
        link = replica.probe().info("replication")
        return (link.get("master_link_status") == "up" and not link.get("master_sync_in_progress")
                and link["slave_repl_offset"] == primary.probe().info("replication")["master_repl_offset"])

    wait_until(caught_up, timeout, f"replica {replica.port} to catch up")


# -- 12.1 asynchronous replication ----------------------------------------------------------------------
@dataclass(frozen=True)
class OffsetTrace:
    """Replication offsets sampled while a writer ran: the primary's (bytes it has sent into the stream) and
    the replica's (bytes it has applied), and the window in which the replica was paused."""

    times: list[float]
    primary: list[int]
    replica: list[int]
    paused: tuple[float, float]

    @property
    def behind(self) -> list[int]:
        return [p - r for p, r in zip(self.primary, self.replica, strict=True)]

    def max_behind(self, start: float, end: float) -> int:
        return max(self._behind_between(start, end), default=0)

    def typical_behind(self, start: float, end: float) -> float:
        """The median gap between `start` and `end` (one descheduled sample cannot move it)."""
        return statistics.median(self._behind_between(start, end) or [0])

    def _behind_between(self, start: float, end: float) -> list[int]:
        return [b for t, b in zip(self.times, self.behind, strict=True) if start <= t < end]


def _steady_writer(r: redis.Redis, prefix: str, stop: threading.Event, every_s: float = 0.001) -> None:
    i = 0
    while not stop.is_set():
        r.set(f"{prefix}:{i % 1000}", VALUE)
        i += 1
        time.sleep(every_s)


def offsets_while_writing(duration_s: float = 2.0, pause_at_s: float = 0.7, pause_ms: int = 600,
                          every_s: float = 0.02) -> OffsetTrace:
    """A writer SETs 100-byte values about every millisecond for `duration_s`; the replica is paused
    (`CLIENT PAUSE WRITE`) for `pause_ms` from `pause_at_s`; both offsets are sampled every `every_s`, the
    replica's first. After the writer stops, one last sample once the replica has caught up."""
    times, primary_offsets, replica_offsets = [], [], []
    with replicated(replicas=1) as topo:
        stop = threading.Event()
        writer = threading.Thread(target=_steady_writer, args=(topo.primary.client(), "order", stop))
        started = time.monotonic()
        writer.start()
        paused_at = None
        try:
            while (now := time.monotonic() - started) < duration_s:
                if paused_at is None and now >= pause_at_s:
                    pause_writes(topo.replicas[0], pause_ms)
                    paused_at = time.monotonic() - started
                replica_offset = topo.replicas[0].probe().info("replication")["slave_repl_offset"]
                primary_offset = topo.primary.probe().info("replication")["master_repl_offset"]
                times.append(now)
                primary_offsets.append(primary_offset)
                replica_offsets.append(replica_offset)
                time.sleep(every_s)
        finally:
            stop.set()
            writer.join()
        wait_caught_up(topo.primary, topo.replicas[0])
        times.append(time.monotonic() - started)
        replica_offsets.append(topo.replicas[0].probe().info("replication")["slave_repl_offset"])
        primary_offsets.append(topo.primary.probe().info("replication")["master_repl_offset"])
    return OffsetTrace(times, primary_offsets, replica_offsets, (paused_at, paused_at + pause_ms / 1000))


def plot_offsets(trace: OffsetTrace) -> None:
    fig, (offsets, behind) = plt.subplots(1, 2, figsize=(10, 2.8))
    base = trace.primary[0]
    offsets.plot(trace.times, [(p - base) / 1e3 for p in trace.primary], label="primary: master_repl_offset")
    offsets.plot(trace.times, [(r - base) / 1e3 for r in trace.replica], "--", label="replica: slave_repl_offset")
    behind.plot(trace.times, [b / 1e3 for b in trace.behind], color="tab:red")
    for ax in (offsets, behind):
        ax.axvspan(*trace.paused, color="gray", alpha=0.2, label="replica paused")
        ax.set(xlabel="seconds")
        ax.grid(alpha=0.3)
    offsets.set(ylabel="KB", title="replication offsets (KB since the first sample)")
    behind.set(ylabel="KB", title="how far the replica is behind", ylim=(0, None))
    offsets.legend(fontsize=7)
    fig.tight_layout()
    plt.show()


# -- 12.2 acknowledged writes lost at failover ----------------------------------------------------------
@dataclass(frozen=True)
class FailoverLoss:
    """Writes the primary acknowledged before it was killed and its replica promoted: `healthy` ones written
    while the replica kept up, `frozen` ones written while it was frozen; how many of each the promoted
    replica had, and how many a WAIT after each write had confirmed (None: no WAIT), and how long a write that
    WAIT did not confirm took."""

    freeze: str
    healthy: int
    frozen: int
    healthy_kept: int
    frozen_kept: int
    confirmed: int | None = None
    confirmed_kept: int | None = None
    unconfirmed_wait_ms: float | None = None  # median time a write WAIT did not confirm took
    frozen_stream_bytes: int = 0  # the replication stream the frozen writes made (master_repl_offset's growth)

    @property
    def frozen_kept_bytes(self) -> int:
        """About how much of the frozen writes' stream reached the replica anyway (their share kept)."""
        return round(self.frozen_stream_bytes * self.frozen_kept / self.frozen) if self.frozen else 0

    @property
    def lost(self) -> int:
        return self.healthy + self.frozen - self.healthy_kept - self.frozen_kept


FREEZES = ("sigstop", "client-pause")


def _write_each(r: redis.Redis, prefix: str, count: int, wait_ms: int | None, value: str = VALUE
                ) -> tuple[list[int], list[float]]:
    """SET `prefix:i` one at a time; with `wait_ms`, `WAIT 1 wait_ms` after each, on the same connection
    (WAIT counts the replicas that have this connection's writes). Returns the indexes WAIT confirmed, and
    how long (ms) each write that was not confirmed took."""
    if wait_ms is None:
        write_keys(r, prefix, 0, count, value)
        return [], []
    confirmed, unconfirmed_ms = [], []
    with r.pipeline(transaction=False) as pipe:  # one connection for the SET and its WAIT
        for i in range(count):
            started = time.perf_counter()
            _, replicas = pipe.set(f"{prefix}:{i}", value).wait(1, wait_ms).execute()
            if replicas >= 1:
                confirmed.append(i)
            else:
                unconfirmed_ms.append((time.perf_counter() - started) * 1000)
    return confirmed, unconfirmed_ms


def writes_lost_at_failover(freeze: str, frozen: int, *, healthy: int = 100, wait_ms: int | None = None,
                            value_size: int = len(VALUE)) -> FailoverLoss:
    """`healthy` writes, then the replica is frozen (`freeze`: "sigstop", the process stopped, or
    "client-pause", `CLIENT PAUSE WRITE`: it stops applying the stream) and `frozen` more writes of
    `value_size` bytes; with `wait_ms`, each write is followed by `WAIT 1 wait_ms`. The primary is killed
    (SIGKILL), the replica thawed and promoted once it has seen its primary go, and what it holds is counted."""
    if freeze not in FREEZES:
        raise ValueError(f"freeze is one of {FREEZES}, got {freeze!r}")
    with replicated(replicas=1) as topo:
        primary, replica = topo.primary, topo.replicas[0]
        r = primary.client()
        confirmed, _ = _write_each(r, "healthy", healthy, wait_ms)
        wait_caught_up(primary, replica)
        if freeze == "sigstop":
            replica.pause()
        else:
            pause_writes(replica, 60_000)
        try:
            offset = primary.probe().info("replication")["master_repl_offset"]
            frozen_confirmed, unconfirmed_ms = _write_each(r, "frozen", frozen, wait_ms, "v" * value_size)
            stream_bytes = primary.probe().info("replication")["master_repl_offset"] - offset
            confirmed += [healthy + i for i in frozen_confirmed]
            primary.kill()
        finally:
            if freeze == "sigstop":
                replica.resume()
        wait_link_down(replica)
        promote(replica)
        if freeze == "client-pause":
            unpause(replica)
        c = replica.client()
        healthy_kept, frozen_kept = count_keys(c, "healthy"), count_keys(c, "frozen")
        confirmed_kept = sum(c.exists(f"healthy:{i}") if i < healthy else c.exists(f"frozen:{i - healthy}")
                             for i in confirmed) if wait_ms is not None else None
    return FailoverLoss(freeze, healthy, frozen, healthy_kept, frozen_kept,
                        len(confirmed) if wait_ms is not None else None, confirmed_kept,
                        statistics.median(unconfirmed_ms) if unconfirmed_ms else None, stream_bytes)


def socket_buffer_limits() -> dict[str, str]:
    """This machine's TCP buffer sizes (min, default, max bytes): how much a stopped process's kernel may hold."""
    limits = {}
    for name in ("tcp_rmem", "tcp_wmem"):
        try:
            with open(f"/proc/sys/net/ipv4/{name}") as sysctl:
                limits[f"net.ipv4.{name}"] = " ".join(sysctl.read().split())
        except OSError:  # not Linux: nothing to print
            limits[f"net.ipv4.{name}"] = "unknown here"
    return limits


def plot_losses(losses: dict[str, FailoverLoss]) -> None:
    """Per run, the writes acknowledged while the replica was frozen: kept by the promoted replica, and lost."""
    names = list(losses)
    _, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1))
    kept = [x.frozen_kept / x.frozen * 100 for x in losses.values()]
    ax.barh(names, kept, color="tab:green", label="on the promoted replica")
    ax.barh(names, [100 - k for k in kept], left=kept, color="tab:red", label="lost")
    for row, loss in enumerate(losses.values()):
        ax.annotate(f"lost {loss.lost:,} of {loss.frozen:,}", (101, row), va="center", fontsize=8,
                    annotation_clip=False)
    ax.set(xlabel="% of the writes acknowledged while the replica was frozen", xlim=(0, 100),
           title="acknowledged writes after a failover")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, -0.15))
    plt.show()


# -- 12.3 WAIT ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WaitCost:
    """Microseconds per write in the fastest round, one client, no pipelining: `SET` alone, `SET` + `PING` (a
    second round trip to the primary), and `SET` + `WAIT 1` (a second round trip that also goes through the
    replica); how many WAITs were sent, and how many `REPLCONF GETACK` requests the replica answered meanwhile."""

    set_us: float
    ping_us: float
    wait_us: float
    waits: int
    getacks: int


def _time_writes(r: redis.Redis, extra: tuple | None, count: int) -> float:
    """Seconds for `count` SETs, each followed on the same connection by `extra` (a command) if given."""
    conn = r.connection_pool.get_connection()
    try:
        started = time.perf_counter()
        for i in range(count):
            conn.send_command("SET", f"order:{i % 100}", VALUE)
            conn.read_response()
            if extra:
                conn.send_command(*extra)
                conn.read_response()
        return time.perf_counter() - started
    finally:
        r.connection_pool.release(conn)


def wait_cost(rounds: int = 15, batch: int = 100) -> WaitCost:
    """Time the three kinds of write in turns (interleaved rounds of `batch` writes); per write, the fastest round
    of each (the cost itself: a busy machine only ever adds to it)."""
    samples: dict[str, list[float]] = {"set": [], "ping": [], "wait": []}
    extras = {"set": None, "ping": ("PING",), "wait": ("WAIT", 1, 1000)}
    with replicated(replicas=1) as topo:
        r = topo.primary.client()
        before = _replconf_calls(topo.replicas[0])
        for _ in range(rounds):
            for name, extra in extras.items():
                samples[name].append(_time_writes(r, extra, batch) / batch * 1e6)
        getacks = _replconf_calls(topo.replicas[0]) - before
    return WaitCost(*(min(samples[name]) for name in extras), rounds * batch, getacks)


def plot_wait_cost(cost: WaitCost) -> None:
    _, ax = plt.subplots(figsize=(7, 2.2))
    labels, values = ["SET", "SET + PING", "SET + WAIT 1"], [cost.set_us, cost.ping_us, cost.wait_us]
    ax.barh(labels, values, color=["tab:gray", "tab:blue", "tab:orange"])
    for row, value in enumerate(values):
        ax.annotate(f"{value:.0f} µs", (value, row), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set(xlabel="µs per write (fastest round)", title="what a WAIT adds to each write", xlim=(0, max(values) * 1.25))
    ax.invert_yaxis()
    plt.show()


def _replconf_calls(replica: Server) -> int:
    """REPLCONF commands the replica has run: the GETACK requests its primary sent it."""
    return replica.probe().info("commandstats").get("cmdstat_replconf", {}).get("calls", 0)


@dataclass(frozen=True)
class WaitVersusWaitaof:
    """One write on a primary whose replica keeps no AOF, then with one: what `WAIT 1` and `WAITAOF 0 1` said
    each time, and the milliseconds a `SET` + `WAITAOF 0 1` took once the replica fsyncs (`always`)."""

    without_aof: tuple[int, list[int]]
    with_aof: tuple[int, list[int]]
    waitaof_ms: float


def wait_versus_waitaof(timeout_ms: int = 200, writes: int = 20) -> WaitVersusWaitaof:
    with replicated(replicas=1) as topo:
        r = topo.primary.client()

        def both() -> tuple[int, list[int]]:
            with r.pipeline(transaction=False) as pipe:
                replies = pipe.set("order:1", "paid").wait(1, timeout_ms).execute_command(
                    "WAITAOF", 0, 1, timeout_ms).execute()
            return replies[1], replies[2]

        without = both()
        replica = topo.replicas[0].probe()
        replica.config_set("appendfsync", "always")
        replica.config_set("appendonly", "yes")
        wait_until(lambda: both()[1] == [0, 1], 30, "the replica's AOF to be rewritten and counted")
        with_aof = both()
        started = time.perf_counter()
        for _ in range(writes):
            both()
        waitaof_ms = (time.perf_counter() - started) / writes * 1000
    return WaitVersusWaitaof(without, with_aof, waitaof_ms)


# -- 12.4 reading from replicas -------------------------------------------------------------------------
@dataclass(frozen=True)
class StaleReads:
    """Read-your-writes against a replica: `pairs` times, SET a new value on the primary then GET it from the
    replica. `stale` reads returned the old value; `in_pauses` pairs fell entirely inside a replica pause
    (`in_pauses_stale` of them stale); `from_primary` reads went to the primary instead (after a WAIT that
    did not confirm); `after_pauses_stale` stale reads touched no pause at all, made after one had ended (the
    replica still catching up); `pauses` is how many pauses the run saw."""

    pairs: int
    stale: int
    in_pauses: int = 0
    in_pauses_stale: int = 0
    from_primary: int = 0
    after_pauses_stale: int = 0
    pauses: int = 0

    @property
    def rate(self) -> float:
        return self.stale / self.pairs


def _load(r: redis.Redis, stop: threading.Event) -> None:
    """A write load: pipelines of 50 SETs of 1 KB, as fast as one client goes."""
    big = "x" * 1000
    while not stop.is_set():
        with r.pipeline(transaction=False) as pipe:
            for i in range(50):
                pipe.set(f"load:{i}", big)
            pipe.execute()


def _pauser(replica: Server, every_s: float, pause_ms: int, stop: threading.Event,
            windows: list[tuple[float, float]]) -> None:
    """Pause the replica for `pause_ms` every `every_s`; record for each pause the window a client can be
    sure it covered: from the reply to CLIENT PAUSE to the moment it was sent plus `pause_ms`."""
    while not stop.is_set():
        sent = time.monotonic()
        pause_writes(replica, pause_ms)
        windows.append((time.monotonic(), sent + pause_ms / 1000))
        stop.wait(every_s)


def _pairs(primary: redis.Redis, replica: redis.Redis, count: int, wait_ms: int | None,
           until: Callable[[list, int], bool] = lambda rows, from_primary: True
           ) -> tuple[list[tuple[float, float, bool]], int]:
    """(start, end, stale) of each write-then-read, at least `count` of them and until `until(rows, from_primary)`
    (asked every 50 pairs), and how many reads went to the primary."""
    rows, from_primary = [], 0
    with primary.pipeline(transaction=False) as pipe:
        for i in itertools.count():
            if i >= count and i % 50 == 0 and until(rows, from_primary):
                break
            started = time.monotonic()
            pipe.set("ryw", i)
            if wait_ms is not None:
                pipe.wait(1, wait_ms)
            replies = pipe.execute()
            source = replica
            if wait_ms is not None and replies[1] < 1:
                source, from_primary = primary, from_primary + 1
            value = source.get("ryw")
            rows.append((started, time.monotonic(), value != str(i)))
    return rows, from_primary


def read_your_writes(pairs: int = 2000, *, load: bool = False, pause_every_s: float | None = None,
                     pause_ms: int = 50, wait_ms: int | None = None, min_pauses: int = 0) -> StaleReads:
    """`pairs` write-then-read pairs (write to the primary, read the same key from the replica), optionally
    under a write load, with the replica paused for `pause_ms` every `pause_every_s` (and pairs made until
    `min_pauses` pauses have passed), and with `WAIT 1 wait_ms` after each write (reading from the primary
    when it did not confirm)."""
    with replicated(replicas=1) as topo:
        primary, replica = topo.primary.client(), topo.replicas[0].client()
        stop, windows, helpers = threading.Event(), [], []
        if load:
            helpers.append(threading.Thread(target=_load, args=(topo.primary.client(), stop)))
        if pause_every_s:
            helpers.append(threading.Thread(target=_pauser, args=(topo.replicas[0], pause_every_s, pause_ms, stop,
                                                                   windows)))
        for helper in helpers:
            helper.start()
        deadline = time.monotonic() + 30

        def enough(rows: list, from_primary: int) -> bool:  # a busy machine makes pairs slow: go on until some
            if time.monotonic() > deadline or len(windows) < min_pauses:  # fell in a pause
                return time.monotonic() > deadline
            if not min_pauses:
                return True
            if wait_ms is not None:  # with WAIT nothing is stale: until a WAIT has met a pause (and timed out)
                return from_primary > 0
            inside, after = _around_pauses(rows, list(windows))
            return len(inside) >= 20 and sum(after) > 0

        try:
            rows, from_primary = _pairs(primary, replica, pairs, wait_ms, until=enough)
        finally:
            stop.set()
            for helper in helpers:
                helper.join()
    inside, after = _around_pauses(rows, windows)
    return StaleReads(len(rows), sum(stale for _, _, stale in rows), len(inside), sum(inside), from_primary,
                      sum(after), len(windows))


def _around_pauses(rows: list[tuple[float, float, bool]], windows: list[tuple[float, float]]
                   ) -> tuple[list[bool], list[bool]]:
    """The stale flags of the pairs made entirely inside a pause, and of those made after a pause, in none."""
    inside = [stale for start, end, stale in rows if any(a <= start and end <= b for a, b in windows)]
    after = [stale for start, end, stale in rows if not any(start < b and end > a for a, b in windows)
             and any(b <= start for _, b in windows)]
    return inside, after


def plot_stale(runs: dict[str, StaleReads]) -> None:
    names = list(runs)
    _, ax = plt.subplots(figsize=(8, 0.5 * len(names) + 1))
    ax.barh(names, [x.rate * 100 for x in runs.values()], color="tab:orange")
    for i, x in enumerate(runs.values()):
        ax.annotate(f"{x.stale:,} of {x.pairs:,}", (x.rate * 100, i), va="center", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    ax.set(xlabel="% of reads that missed the write just made", xlim=(0, 100),
           title="read-your-writes against a replica")
    ax.invert_yaxis()
    plt.show()


# -- 12.5 Sentinel --------------------------------------------------------------------------------------
class SentinelEvents:
    """Every event the given sentinels publish (`+sdown`, `+odown`, `+switch-master`...), with the time it
    arrived and the port of the sentinel that said it: a context manager, subscribed (PSUBSCRIBE *) to each
    before it returns."""

    def __init__(self, *watchers: Server) -> None:
        self.events: list[tuple[float, int, str, str]] = []
        self._subscriptions: list[tuple[int, redis.Redis, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            for watcher in watchers:
                client = watcher.client(socket_timeout=2.0)
                pubsub = client.pubsub()
                self._subscriptions.append((watcher.port, client, pubsub))
                pubsub.psubscribe("*")
                wait_until(lambda p=pubsub: (m := p.get_message(timeout=0.05)) is not None
                           and m["type"] == "psubscribe", 10, "a sentinel to confirm the subscription")
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        live = list(self._subscriptions)
        while live and not self._stop.is_set():
            for entry in list(live):
                port, _, pubsub = entry
                try:
                    message = pubsub.get_message(timeout=0.01)
                except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError):
                    live.remove(entry)  # that sentinel went away
                    continue
                if message and message["type"] == "pmessage":
                    self.events.append((time.monotonic(), port, message["channel"], message["data"]))

    def names(self) -> list[str]:
        return [name for _, _, name, _ in self.events]

    def steps(self, since: float) -> list[tuple[float, str, str]]:
        """The failover as the sentinel that led it told it: (seconds after `since`, event, details) for each
        event of `FAILOVER_STEPS`."""
        leader = next((port for _, port, name, _ in self.events if name == "+elected-leader"), None)
        steps = []
        for at, port, name, data in self.events:
            if port == leader and at >= since and name in FAILOVER_STEPS:
                steps.append((at - since, name, data))
                if name == "+switch-master":
                    break
        return steps

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for _, client, pubsub in self._subscriptions:
            pubsub.close()
            client.close()

    def __enter__(self) -> SentinelEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


FAILOVER_STEPS = ("+sdown", "+odown", "+try-failover", "+elected-leader", "+selected-slave",
                  "+failover-state-send-slaveof-noone", "+promoted-slave", "+switch-master")


def sentinel_settings(topo: SentinelTopology) -> dict[str, Any]:
    """What the first sentinel says about the primary it watches, the fields this lesson talks about."""
    state = topo.sentinels[0].probe().sentinel_master(topo.master_name)
    fields = ("ip", "port", "flags", "quorum", "down-after-milliseconds", "failover-timeout", "num-slaves",
              "num-other-sentinels")
    return {name: state[name] for name in fields}


def ckquorum(watcher: Server, master_name: str) -> str:
    """`SENTINEL CKQUORUM`: can the sentinels still agree that the primary is down and authorise a failover?"""
    try:
        return str(watcher.probe().execute_command("SENTINEL", "CKQUORUM", master_name))
    except redis.ResponseError as err:
        return str(err)


class FailoverDrill:
    """Writers, each through its own client, writing a new key every `every_s` while the primary is killed
    (after `before_s`); they go on for `after_s` once the sentinels report the new primary. A drill is the
    workload of a `labkit.widgets.FailoverTimeline`: `drill.counts` and `drill.events` feed it. Given the
    sentinels' `watched` events, it adds the leader's `MARKED_STEPS` to `events` at the end, for the figure."""

    MARKED_STEPS = ("+sdown", "+promoted-slave")

    def __init__(self, topo: SentinelTopology, writers: dict[str, Callable[[str], object]], *,
                 every_s: float = 0.005, before_s: float = 1.0, after_s: float = 1.5,
                 watched: SentinelEvents | None = None) -> None:
        self.topo, self.writers, self.watched = topo, writers, watched
        self.every_s, self.before_s, self.after_s = every_s, before_s, after_s
        self.counts = {name: {"ok": 0, "errors": 0} for name in writers}
        self.errors: dict[str, Counter] = {name: Counter() for name in writers}
        self.successes: dict[str, list[float]] = {name: [] for name in writers}
        self.finished: dict[str, float] = {}  # when each writer's last write returned (a stuck one ends late)
        self.events: list[tuple[float, str]] = []
        self.killed_at = self.switched_at = 0.0

    def __call__(self, stop: threading.Event) -> None:
        writers_stop = threading.Event()
        threads = [threading.Thread(target=self._write, args=(name, write, writers_stop))
                   for name, write in self.writers.items()]
        for thread in threads:
            thread.start()
        try:
            if stop.wait(self.before_s):
                return
            old = self.topo.primary
            self.killed_at = time.monotonic()
            self.events.append((self.killed_at, "primary killed"))
            old.kill()
            self.topo.wait_for_new_primary(old, timeout=30)
            self.switched_at = time.monotonic()
            self.events.append((self.switched_at, "all sentinels name the new primary"))
            stop.wait(self.after_s)
            if self.watched is not None:
                self.events.extend((self.killed_at + at, name) for at, name, _ in self.watched.steps(self.killed_at)
                                   if name in self.MARKED_STEPS)
        finally:
            writers_stop.set()
            for thread in threads:
                thread.join()

    def _write(self, name: str, write: Callable[[str], object], stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                write(f"{name}:{i}")
                self.counts[name]["ok"] += 1
                self.successes[name].append(time.monotonic())
            except Exception as err:  # every error a writer sees is what the drill counts
                self.counts[name]["errors"] += 1
                self.errors[name][type(err).__name__] += 1
            i += 1
            time.sleep(max(0.0, self.every_s - (time.monotonic() - started)))
        self.finished[name] = time.monotonic()

    def ok_after(self, name: str, moment: float) -> int:
        """Writes of `name` acknowledged after `moment` (a time.monotonic())."""
        return sum(at > moment for at in self.successes[name])

    def longest_gap(self, name: str) -> float:
        """The longest time `name` went without a successful write: between two of them, or from its last one
        until its last write returned (a write that waited, or one stuck in retries, counts as a gap)."""
        times = self.successes[name] + [self.finished.get(name, 0.0)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


def redis_py_retry_budget_s(base: float = REDIS_PY_DEFAULT_RETRY["base"], cap: float = REDIS_PY_DEFAULT_RETRY["cap"],
                            retries: int = REDIS_PY_DEFAULT_RETRY["retries"]) -> float:
    """The longest redis-py's Retry with ExponentialWithJitterBackoff can wait in all: after failure n it sleeps
    a random time up to min(cap, base * 2**n)."""
    return sum(min(cap, base * 2**n) for n in range(1, retries + 1))


def connection_settings(client: redis.Redis) -> dict[str, Any]:
    """The timeouts and retries of the connections `client` makes (built, not connected): what redis-py chose."""
    conn = client.connection_pool.make_connection()
    return {"socket_timeout": conn.socket_timeout, "connect_timeout": conn.socket_connect_timeout,
            "retries": conn.retry.get_retries()}


def failover_time(down_after_ms: int) -> float:
    """Seconds from SIGKILL of the primary until a majority of the sentinels name the promoted replica."""
    with sentinel(replicas=1, sentinels=3, down_after_ms=down_after_ms) as topo:
        old = topo.primary
        killed = time.monotonic()
        old.kill()
        topo.wait_for_new_primary(old, timeout=30 + 2 * down_after_ms / 1000)
        return time.monotonic() - killed


def failover_times(settings: Sequence[int] = (500, 2000, 4000)) -> dict[int, float]:
    """`failover_time` for each down-after-milliseconds, each on its own topology, all at once."""
    times = in_parallel({str(ms): lambda ms=ms: failover_time(ms) for ms in settings})
    return {ms: times[str(ms)] for ms in settings}


def plot_failover_times(times: dict[int, float]) -> None:
    settings = [ms / 1000 for ms in times]
    _, ax = plt.subplots(figsize=(7, 2.8))
    labels = [f"{ms:,} ms" for ms in times]
    ax.bar(labels, list(times.values()), color="tab:blue", label="failover (kill to new primary)")
    ax.bar(labels, settings, color="tab:gray", alpha=0.6, width=0.5, label="down-after-milliseconds")
    for i, seconds in enumerate(times.values()):
        ax.annotate(f"{seconds:.2f} s", (i, seconds), ha="center", va="bottom", fontsize=8)
    ax.set(xlabel="down-after-milliseconds", ylabel="seconds", title="Sentinel failover time follows the setting",
           ylim=(0, max(times.values()) * 1.2))
    ax.legend(fontsize=8, loc="upper left")
    plt.show()


# -- 12.6 split brain -----------------------------------------------------------------------------------
MIN_REPLICAS = {"min-replicas-to-write": 1, "min-replicas-max-lag": 2}


@dataclass(frozen=True)
class SplitBrain:
    """The old primary, paused until a failover had happened and then resumed, as seen by a client that
    cached its address: writes it acknowledged and refused (NOREPLICAS) until it was demoted, how long that
    took, how many of its writes the new primary had once it rejoined, and what the new primary answered
    to a write while its only replica was gone; and how the old primary resynchronised (`sync_full` and
    `sync_partial_ok` on the new primary, counted from the failover)."""

    failover_s: float
    accepted: int
    refused: int
    demoted_after_s: float
    survived: int
    new_primary_refused: str | None
    full_syncs: int = 0
    partial_syncs: int = 0


def _until_demoted(stale: redis.Redis, timeout: float = 60) -> tuple[int, int, float]:
    """Write through `stale` every 10 ms until the server answers READONLY or drops us: (accepted, refused
    with NOREPLICAS, seconds)."""
    accepted = refused = 0
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            stale.set(f"split:{accepted + refused}", VALUE)
            accepted += 1
        except redis.ResponseError as err:
            if not str(err).startswith("NOREPLICAS"):
                break
            refused += 1
        except redis.ConnectionError:
            break  # demoted: the server closes its clients' connections when it turns into a replica
        time.sleep(0.01)
    return accepted, refused, time.monotonic() - started


def split_brain(**config: Any) -> SplitBrain:
    """A primary, a replica and three sentinels (down-after 1000 ms); `config` goes to both data nodes. A
    client keeps the primary's address. The primary is paused (SIGSTOP) until the sentinels have promoted the
    replica, then resumed; the client writes to it until it is demoted; the new primary is asked, once the
    old one has resynced from it, how many of those writes it has."""
    with sentinel(replicas=1, sentinels=3, down_after_ms=1000, **config) as topo:
        old = topo.primary
        stale = old.client(socket_timeout=0.5)
        wait_until(lambda: stale.set("ready", 1), 10, "the primary to accept writes")  # NOREPLICAS at first
        paused = time.monotonic()
        old.pause()
        try:
            new = topo.wait_for_new_primary(old, timeout=30)
            failover_s = time.monotonic() - paused
        finally:
            old.resume()
        before = new.probe().info("stats")
        try:
            new.probe().set("while-alone", 1)
            refused_alone = None
        except redis.ResponseError as err:
            refused_alone = str(err).split(".")[0]
        accepted, refused, seconds = _until_demoted(stale)
        wait_caught_up(new, old)
        survived = count_keys(new.client(), "split")
        after = new.probe().info("stats")
    return SplitBrain(failover_s, accepted, refused, seconds, survived, refused_alone,
                      after["sync_full"] - before["sync_full"], after["sync_partial_ok"] - before["sync_partial_ok"])


def split_brains() -> dict[str, SplitBrain]:
    """`split_brain` without protection and with `MIN_REPLICAS`, side by side."""
    return in_parallel({"no protection": split_brain,
                        "min-replicas-to-write 1, max-lag 2": lambda: split_brain(**MIN_REPLICAS)})


def plot_split_brains(runs: dict[str, SplitBrain]) -> None:
    names = list(runs)
    _, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1))
    accepted = [x.accepted for x in runs.values()]
    ax.barh(names, [x.survived for x in runs.values()], color="tab:green", label="acknowledged, survived")
    ax.barh(names, [x.accepted - x.survived for x in runs.values()], left=[x.survived for x in runs.values()],
            color="tab:red", label="acknowledged, lost")
    ax.barh(names, [x.refused for x in runs.values()], left=accepted, color="tab:gray", label="refused (NOREPLICAS)")
    for row, run in enumerate(runs.values()):
        ax.annotate(f"{run.accepted - run.survived:,} lost, {run.refused:,} refused", (run.accepted + run.refused, row),
                    xytext=(4, 0), textcoords="offset points", va="center", fontsize=8, annotation_clip=False)
    ax.set(xlabel="writes sent to the old primary between its resume and its demotion",
           title="split brain: a client that kept the old primary's address")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.show()


@dataclass(frozen=True)
class Isolation:
    """A primary whose only replica froze (SIGSTOP) while a client kept writing every 5 ms: writes it
    refused while the replica was healthy, seconds from the freeze to the first NOREPLICAS (None: still
    accepting at `limit_s`), and writes it acknowledged meanwhile, each one lost if the replica's side
    takes over."""

    refused_healthy: int
    refused_after_s: float | None
    acknowledged_alone: int


def isolated_primary(config: dict[str, Any], *, healthy_s: float = 1.0, limit_s: float = 6.0,
                     ready_s: float = 3.0) -> Isolation:
    """Write for `healthy_s` to a primary with `config` and a healthy replica, freeze the replica, and keep
    writing until the primary refuses or `limit_s` has passed. The primary may refuse writes for up to a
    second after its replica synced (it counts good replicas once a second): the first write is retried for
    `ready_s`."""
    with replicated(replicas=1, **config) as topo:
        r = topo.primary.client()
        wait_until(lambda: r.set("ready", 1), ready_s, "the primary to accept a first write")
        refused_healthy, n = 0, 0
        started = time.monotonic()
        while time.monotonic() - started < healthy_s:
            refused_healthy += not _accepted(r, f"healthy:{n}")
            n += 1
            time.sleep(0.005)
        topo.replicas[0].pause()
        try:
            frozen, alone = time.monotonic(), 0
            while (elapsed := time.monotonic() - frozen) < limit_s:
                if not _accepted(r, f"alone:{alone}"):
                    return Isolation(refused_healthy, elapsed, alone)
                alone += 1
                time.sleep(0.005)
            return Isolation(refused_healthy, None, alone)
        finally:
            topo.replicas[0].resume()


def isolated_primaries(max_lags: Sequence[int] = (2, 3)) -> dict[int, Isolation]:
    """`isolated_primary` with `min-replicas-to-write 1` and each `min-replicas-max-lag`, all at once."""
    runs = in_parallel({str(lag): lambda lag=lag: isolated_primary(
        {"min-replicas-to-write": 1, "min-replicas-max-lag": lag}) for lag in max_lags})
    return {lag: runs[str(lag)] for lag in max_lags}


def _accepted(r: redis.Redis, key: str) -> bool:
    try:
        r.set(key, VALUE)
        return True
    except redis.ResponseError as err:
        if str(err).startswith("NOREPLICAS"):
            return False
        raise


# -- 12.7 replica restarts: partial and full resync -----------------------------------------------------
def default_backlog() -> int:
    """This engine's `repl-backlog-size` out of the box, in bytes."""
    with spawn(modules=False) as server:
        return int(server.probe().config_get("repl-backlog-size")["repl-backlog-size"])


@dataclass(frozen=True)
class Resync:
    """A replica restarted (SIGTERM, then started again) while `missed_bytes` of writes went to its primary:
    how it resynced (`partial`: PSYNC continued from the backlog, `full`: a whole snapshot), the keys it
    had afterwards, seconds from its start until it had caught up, and the bytes the primary sent it to
    catch up (`total_net_repl_output_bytes`)."""

    missed_bytes: int
    kind: str
    keys: int
    seconds: float
    sent_bytes: int = 0


def replica_restart(*, persistence: bool, missed_keys: int, backlog: str = "1mb", keys: int = 1000) -> Resync:
    """Primary and replica hold `keys` keys; the replica is stopped cleanly (with `persistence`, it has save
    points, so it writes a snapshot that records its replication id and offset), `missed_keys` 1-KB values
    are written, the replica is started again and the primary's sync counters say how it caught up."""
    config = {"repl_backlog_size": backlog} | ({"save": "3600 1"} if persistence else {})
    with replicated(replicas=1, **config) as topo:
        primary, replica = topo.primary, topo.replicas[0]
        # random values: a snapshot cannot compress them away, so a full sync sends what the dataset weighs
        write_keys(primary.client(), "order", 0, keys, value=secrets.token_hex(50))
        wait_caught_up(primary, replica)
        before = primary.probe().info("stats")
        replica.terminate()
        offset = primary.probe().info("replication")["master_repl_offset"]
        write_keys(primary.client(), "missed", 0, missed_keys, value=secrets.token_hex(500))
        missed = primary.probe().info("replication")["master_repl_offset"] - offset
        started = time.monotonic()
        replica.start()
        wait_caught_up(primary, replica)
        seconds = time.monotonic() - started
        after = primary.probe().info("stats")
        partial = after["sync_partial_ok"] - before["sync_partial_ok"]
        full = after["sync_full"] - before["sync_full"]
        kind = "partial" if (partial, full) == (1, 0) else "full" if (partial, full) == (0, 1) else f"{partial}/{full}"
        sent = after["total_net_repl_output_bytes"] - before["total_net_repl_output_bytes"]
        return Resync(missed, kind, replica.client().dbsize(), seconds, sent)


def plot_resyncs(runs: dict[str, Resync], backlog_bytes: int) -> None:
    """What each restarted replica had missed against the backlog, and what the primary sent it."""
    names = list(runs)
    _, ax = plt.subplots(figsize=(8, 0.6 * len(names) + 1.2))
    colors = ["tab:green" if run.kind == "partial" else "tab:red" for run in runs.values()]
    ax.barh(names, [run.missed_bytes / 2**20 for run in runs.values()], color=colors, alpha=0.5,
            label="stream missed (MB)")
    ax.barh(names, [run.sent_bytes / 2**20 for run in runs.values()], height=0.25, color=colors,
            label="sent to catch up (MB)")
    ax.axvline(backlog_bytes / 2**20, color="black", linestyle="--", linewidth=1)
    ax.annotate("backlog", (backlog_bytes / 2**20, 1), xycoords=("data", "axes fraction"), rotation=90,
                va="top", ha="right", fontsize=8)
    for row, run in enumerate(runs.values()):
        ax.annotate(f"{run.kind} resync", (max(run.missed_bytes, run.sent_bytes) / 2**20, row), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8, annotation_clip=False)
    ax.set(xlabel="MB", title="a restarted replica: partial if what it missed is still in the backlog")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    plt.show()


# -- common mistakes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WaitThenFailover:
    """A write confirmed (or not) by `WAIT numreplicas`, then the primary and the replica that had the write
    lost together, the other replica promoted: WAIT's reply and whether the write survived."""

    numreplicas: int
    wait_reply: int
    survived: bool

    @property
    def confirmed(self) -> bool:
        return self.wait_reply >= self.numreplicas


def wait_then_failover(numreplicas: int) -> WaitThenFailover:
    """Two replicas; one is behind (`CLIENT PAUSE WRITE`). A write, `WAIT numreplicas 200`; then the primary
    and the up-to-date replica die together (one rack), and the lagging one is promoted."""
    with replicated(replicas=2) as topo:
        rack_mate, other = topo.replicas
        pause_writes(other, 60_000)
        with topo.primary.client().pipeline(transaction=False) as pipe:
            _, reply = pipe.set("payment:17", "captured").wait(numreplicas, 200).execute()
        topo.primary.kill()
        rack_mate.kill()
        wait_link_down(other)
        promote(other)
        unpause(other)
        survived = other.client().exists("payment:17") == 1
    return WaitThenFailover(numreplicas, reply, survived)


@dataclass(frozen=True)
class WaitThenCrash:
    """A write confirmed by `WAIT 1` (and, with an AOF, by `WAITAOF 0 1`), then primary and replica killed
    together (a power cut) and the replica started again: was the write still there?"""

    wait_reply: int
    waitaof_reply: list[int] | None
    survived: bool


def wait_then_crash(aof: bool) -> WaitThenCrash:
    """SET + WAIT 1 (+ WAITAOF 0 1 when both data nodes keep an AOF with `appendfsync always`), on one connection;
    SIGKILL both; start the replica again from its directory and look for the key."""
    config = {"appendonly": "yes", "appendfsync": "always"} if aof else {}
    with replicated(replicas=1, **config) as topo:
        replica = topo.replicas[0]
        with topo.primary.client().pipeline(transaction=False) as pipe:
            pipe.set("payment:17", "paid").wait(1, 1000)
            if aof:
                pipe.execute_command("WAITAOF", 0, 1, 1000)
            replies = pipe.execute()
        topo.primary.kill()
        replica.kill()
        replica.start()
        wait_until(lambda: replica.probe().info("persistence")["loading"] == 0, 30, "the replica to load its data")
        survived = bool(replica.probe().exists("payment:17"))
    return WaitThenCrash(replies[1], replies[2] if aof else None, survived)


@dataclass(frozen=True)
class CachedAddress:
    """After a failover, `writes` writes by a client that kept the old primary's address and by one that asks
    Sentinel (`master_for`, with `labkit.replication.retry`): how many each got acknowledged."""

    writes: int
    cached_ok: int
    sentinel_ok: int
    cached_error: str


def cached_address(writes: int = 50) -> CachedAddress:
    """A failover with `down-after-milliseconds 500`, then `writes` writes by each client."""
    with sentinel(replicas=1, sentinels=3, down_after_ms=500) as topo:
        host, port = topo.master_address()
        cached = redis.Redis(host=host, port=port, password=topo.primary.password, decode_responses=True,
                             **options(timeout=0.5))
        follower = topo.master_for(socket_timeout=0.5)
        cached.set("before", 1)
        follower.set("before", 1)
        old = topo.primary
        old.kill()
        topo.wait_for_new_primary(old)
        cached_ok, sentinel_ok, error = 0, 0, ""
        for i in range(writes):
            try:
                cached.set(f"after:{i}", 1)
                cached_ok += 1
            except redis.RedisError as err:
                error = f"{type(err).__name__}: {str(err)[:60]}"
            retry(lambda i=i: follower.set(f"after:{i}", 1), deadline_s=5)
            sentinel_ok += 1
        cached.close()
        follower.close()
    return CachedAddress(writes, cached_ok, sentinel_ok, error)


@dataclass(frozen=True)
class SentinelsAfterALoss:
    """`sentinels` sentinels (quorum `quorum`); the primary and `lost` sentinels die together (one machine). What
    the first survivor's CKQUORUM said, the events it saw (each with its subject: `master`, `sentinel`...),
    its flags for the primary at the end, and whether a failover happened."""

    sentinels: int
    quorum: int
    ckquorum: str
    events: list[str]
    flags: str
    failed_over: bool

    def saw(self, name: str) -> bool:
        return any(event.split()[0] == name for event in self.events)


def primary_and_a_sentinel_lost(sentinels: int, quorum: int, *, lost: int = 1, give_up_s: float = 12,
                                watch_s: float = 3.0) -> SentinelsAfterALoss:
    """Kill the primary and the first `lost` sentinels at once; watch the next one until it names a new primary
    (+switch-master) or reports that it could not get elected (-failover-abort-not-elected). When fewer than
    `quorum` sentinels survive, neither can happen: watch it for `watch_s` seconds after its +sdown instead."""
    with sentinel(replicas=1, sentinels=sentinels, quorum=quorum, down_after_ms=500,
                  failover_timeout_ms=2000) as topo:
        survivor = topo.sentinels[lost]
        with SentinelEvents(survivor) as watched:
            for dead in topo.sentinels[:lost]:
                dead.kill()
            topo.primary.kill()
            if sentinels - lost >= quorum:
                ends = {"+switch-master", "-failover-abort-not-elected"}
                wait_until(lambda: ends & set(watched.names()), give_up_s,
                           "the surviving sentinel to fail over or give up")
            else:
                wait_until(lambda: "+sdown" in watched.names(), give_up_s, "the surviving sentinel's +sdown")
                time.sleep(watch_s)  # watching for something that must not happen: a bounded wait is the experiment
            quiet = ("+sentinel", "+slave", "+new-epoch", "+config-update-from", "-role-change")
            events = [f"{name} {str(data).split()[0]}" if name.endswith("down") else name
                      for _, _, name, data in watched.events if not name.startswith(quiet)]
        flags = survivor.probe().sentinel_master(topo.master_name)["flags"]
        return SentinelsAfterALoss(sentinels, quorum, ckquorum(survivor, topo.master_name), events, flags,
                                   any(event == "+switch-master" for event in events))


@dataclass(frozen=True)
class DefaultTimers:
    """A sentinel left at its defaults: its timers, what it said `watched_s` after the primary was killed, and
    how long a failover then took once down-after-milliseconds was set to `set_ms`."""

    down_after_ms: int
    failover_timeout_ms: int
    flags_after_kill: str
    watched_s: float
    set_ms: int
    failover_s: float


def default_timers(watched_s: float = 4.0, set_ms: int = 1000) -> DefaultTimers:
    """Kill the primary of a sentinel left at its defaults, read its flags `watched_s` later, then set
    down-after-milliseconds to `set_ms` and time the failover from there (the primary has been silent for
    longer already, so that is the failover's own steps)."""
    with sentinel(replicas=1, sentinels=1, down_after_ms=None, failover_timeout_ms=None) as topo:
        state = topo.sentinels[0].probe().sentinel_master(topo.master_name)
        old = topo.primary
        old.kill()
        time.sleep(watched_s)  # watching for something that must not happen: a bounded wait is the experiment
        flags = topo.sentinels[0].probe().sentinel_master(topo.master_name)["flags"]
        started = time.monotonic()
        topo.sentinels[0].probe().sentinel_set(topo.master_name, "down-after-milliseconds", set_ms)
        topo.wait_for_new_primary(old, timeout=30)
        return DefaultTimers(state["down-after-milliseconds"], state["failover-timeout"], flags, watched_s, set_ms,
                             time.monotonic() - started)


# -- exercise 1: bound what a split brain can lose ------------------------------------------------------
SPLIT_BRAIN_BOUND_S = 4.0  # the spec: acknowledge writes for at most this long after losing every replica
_SPLIT_BRAIN_DIRECTIVES = {"min-replicas-to-write", "min-replicas-max-lag"}
_OLD_NAMES = {"min-slaves-to-write": "min-replicas-to-write", "min-slaves-max-lag": "min-replicas-max-lag"}
_CHECK_LIMIT_S = SPLIT_BRAIN_BOUND_S + 1.0  # how long the check keeps writing to an isolated primary


def _int_directive(config: dict[str, Any], name: str, default: int) -> int | None:
    value = config.get(name, default)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@check
def check_split_brain_bound(config: Any) -> Result:
    """`config`: directives for a primary with one replica. It must never refuse a write while its replica
    is healthy, and, once cut off from its replica, acknowledge writes for at most `SPLIT_BRAIN_BOUND_S`
    seconds. The check reads the directives, then proves them: it writes for half a second with the replica
    healthy, freezes the replica (SIGSTOP) and writes until the primary refuses."""
    if not isinstance(config, dict):
        return Result(False, f"give a dict of directives such as {{'min-replicas-to-write': 1}}, got {config!r}.")
    named = {str(k).replace("_", "-"): v for k, v in config.items()}
    directives = {_OLD_NAMES.get(name, name): v for name, v in named.items()}
    unknown = set(directives) - _SPLIT_BRAIN_DIRECTIVES
    if unknown:
        return Result(False, f"only {' and '.join(sorted(_SPLIT_BRAIN_DIRECTIVES))} matter here, not "
                             f"{', '.join(sorted(unknown))}.")
    to_write = _int_directive(directives, "min-replicas-to-write", 0)
    max_lag = _int_directive(directives, "min-replicas-max-lag", 10)
    if to_write is None or max_lag is None or to_write < 0 or max_lag < 0:
        return Result(False, f"both directives take whole numbers of at least 0, got {config!r}.")
    if to_write and max_lag == 1:
        return Result(False, "min-replicas-max-lag 1 leaves no room for one late acknowledgement: a healthy replica "
                             "acknowledges once a second and the lag is counted in whole seconds, so one ACK a few "
                             "milliseconds late reads as a lag of 2 and the primary refuses writes while healthy.")
    try:
        run = isolated_primary(directives, healthy_s=0.5, limit_s=_CHECK_LIMIT_S)
    except ServerUnavailable as err:  # did not start, or never accepted a first write
        return Result(False, f"with these directives the primary never accepted a write ({err}): "
                             f"min-replicas-to-write {to_write} asks for more replicas than the one it has?")
    problems = []
    if run.refused_healthy:
        problems.append(f"the primary refused {run.refused_healthy} writes while its replica was healthy: "
                        f"min-replicas-to-write {to_write} asks for more replicas than it has, or "
                        f"min-replicas-max-lag {max_lag} is shorter than the once-a-second acknowledgement.")
    if run.refused_after_s is None:
        why = ("min-replicas-to-write 0 or min-replicas-max-lag 0 switches the check off" if not (to_write and max_lag)
               else f"min-replicas-max-lag {max_lag} lets it go on for that long and more")
        problems.append(f"cut off from its replica, it acknowledged {run.acknowledged_alone:,} writes in "
                        f"{_CHECK_LIMIT_S:g} s and was still accepting: {why}.")
    elif run.refused_after_s > SPLIT_BRAIN_BOUND_S + 0.5:
        problems.append(f"it acknowledged writes for {run.refused_after_s:.1f} s after the freeze: more than "
                        f"{SPLIT_BRAIN_BOUND_S:g} s.")
    elif max_lag + 2 > SPLIT_BRAIN_BOUND_S:
        problems.append(f"it refused after {run.refused_after_s:.1f} s this time, but with min-replicas-max-lag "
                        f"{max_lag} the refusal starts up to {max_lag + 2} s after the freeze (the window of 12.6: "
                        f"between max-lag - 1 and max-lag + 2 s): more than {SPLIT_BRAIN_BOUND_S:g} s.")
    if problems:
        return verdict(problems, "")
    return Result(True, f"cut off from its replica, the primary refused writes (NOREPLICAS) after "
                        f"{run.refused_after_s:.1f} s (bound: {SPLIT_BRAIN_BOUND_S:g} s): at most "
                        f"{run.acknowledged_alone:,} acknowledged writes "
                        f"(one client writing every 5 ms) were at risk; none refused while the replica was healthy.")


# -- exercise 2: a retry that survives a failover without counting twice --------------------------------
COUNTER = "account:17:balance"


class CheckOver(BaseException):
    """Raised by the check's clients once a scenario is over, so that a learner's loop that never gives up
    (and catches every Exception) cannot keep running in the background. Not an Exception on purpose."""


class _Faults:
    """Fault injection for the check's clients. `lose` says which reply of the next operation is lost (the
    command reaches the server and runs, then the connection drops before the client reads its reply):
    "first", the reply to its first command; "write", the reply to the command that changed the counter (read
    on a side connection, `counter`, before each command and after its reply). Once `over` is set, every
    command raises `CheckOver`."""

    def __init__(self, counter: Callable[[], Any] = lambda: None) -> None:
        self.lose: str | None = None
        self.over = False
        self.counter = counter

    def connection_class(self, base: type) -> type:
        faults = self

        class Faulty(base):
            _armed = _drop_next = False
            _before: Any = None

            def connect_check_health(self, *args, **kwargs):  # the handshake's own commands are not counted
                self._armed = False
                super().connect_check_health(*args, **kwargs)
                self._armed = True

            def send_packed_command(self, command, check_health=True):
                if faults.over:
                    raise CheckOver("this scenario of the check is over")
                if self._armed and faults.lose == "write":
                    self._before = faults.counter()
                super().send_packed_command(command, check_health)
                if self._armed and faults.lose == "first":
                    faults.lose, self._drop_next = None, True

            def read_response(self, *args, **kwargs):
                response = super().read_response(*args, **kwargs)
                if self._armed and faults.lose == "write" and faults.counter() != self._before:
                    faults.lose, self._drop_next = None, True
                if self._drop_next:
                    self._drop_next = False
                    self.disconnect()
                    raise redis.ConnectionError("connection lost before the reply arrived (injected by the check)")
                return response

        return Faulty


def _faulty_client(server: Server, faults: _Faults, timeout: float) -> redis.Redis:
    """A client of `server` (`timeout` s, no retry) whose connections obey `faults`."""
    kwargs = {"host": server.host, "port": server.port, "password": server.password, "decode_responses": True,
              **options(timeout=timeout)}
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=faults.connection_class(redis.Connection),
                                                            **kwargs))


def _call(apply_once: Callable, args: tuple, limit_s: float) -> tuple[bool, Any]:
    """Run `apply_once(*args)` in a thread: (finished within `limit_s`, what it returned or raised)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(apply_once(*args))
        except Exception as err:  # the learner's code: any error is an outcome to judge
            outcome.append(err)
        except CheckOver:
            pass  # judged already: the scenario ended while it was still trying

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    return (not thread.is_alive()), (outcome[0] if outcome else None)


LOST_REPLIES = {"first": "the reply to its first command", "write": "the reply to the command that changed the counter"}


def _lost_reply_scenario(apply_once: Callable, ops_each: int = 2) -> list[str]:
    """Operations of 10, `ops_each` losing the reply to their first command, then `ops_each` losing the reply to
    the command that changed the counter: each must add exactly 10."""
    with spawn(modules=False) as server:
        side = server.probe()
        faults = _Faults(counter=lambda: side.get(COUNTER))
        r = _faulty_client(server, faults, timeout=0.5)
        try:
            for op, lose in enumerate([lose for lose in LOST_REPLIES for _ in range(ops_each)]):
                before = int(side.get(COUNTER) or 0)
                faults.lose = lose
                finished, outcome = _call(apply_once, (r, f"op-{op}", COUNTER, 10, 3.0), 10)
                faults.lose = None
                if not finished:
                    return [f"when {LOST_REPLIES[lose]} was lost, it had not returned after 10 s."]
                if isinstance(outcome, Exception):
                    return [f"when {LOST_REPLIES[lose]} was lost, it raised {type(outcome).__name__}: {outcome}. "
                            "Retry on ConnectionError and TimeoutError until the deadline."]
                added = int(side.get(COUNTER) or 0) - before
                if added != 10:
                    times = "twice" if added == 20 else f"{added / 10:g} times"
                    return [f"when {LOST_REPLIES[lose]} was lost (the command ran), an operation of 10 added "
                            f"{added}: it was counted {times}. The retry cannot know whether the first attempt "
                            "ran: record the operation's id and apply the write in one atomic step, only if that "
                            "id is new (a Lua script, or MULTI/EXEC under WATCH), so that a retry finds the id."]
        finally:
            faults.over = True
            r.close()
    return []


def _failover_scenario(apply_once: Callable, ops: int = 12) -> list[str]:
    with sentinel(replicas=1, sentinels=3, down_after_ms=500) as topo:
        r = topo.master_for(socket_timeout=0.5)
        failures, old = [], topo.primary
        for op in range(ops):
            if op == 3:
                old.kill()
            finished, outcome = _call(apply_once, (r, f"op-{op}", COUNTER, 1, 10.0), 15)
            if not finished or isinstance(outcome, Exception):
                failures.append(f"operation {op}: " + ("no answer after 15 s" if not finished else
                                                       f"{type(outcome).__name__}: {outcome}"))
            time.sleep(0.05)
        topo.wait_for_new_primary(old)
        with topo.master_for() as reader:  # a busy machine can make a sentinel doubt the new primary for a moment
            total = int(retry(lambda: reader.get(COUNTER), deadline_s=30) or 0)
        r.close()
    if failures:
        return [f"during a failover (about 2 s) it gave up: {failures[0]}. Keep retrying until the deadline it "
                "is given, with a short pause between attempts; master_for finds the new primary by itself."]
    if total != ops:
        return [f"{ops} operations of 1 across a failover left the counter at {total}."]
    return []


def _no_primary_scenario(apply_once: Callable, deadline_s: float = 1.0) -> list[str]:
    faults = _Faults()
    with spawn(modules=False) as server:
        r = _faulty_client(server, faults, timeout=0.25)
        r.ping()
        server.pause()
        try:
            started = time.monotonic()
            finished, outcome = _call(apply_once, (r, "op-late", COUNTER, 1, deadline_s), deadline_s + 10)
            took = time.monotonic() - started
        finally:
            faults.over = True  # a loop still running meets CheckOver at its next command
            server.resume()
        r.close()
    if not finished:
        return [f"with no primary answering and a deadline of {deadline_s:g} s it had not returned after "
                f"{deadline_s + 10:g} s: stop retrying at the deadline."]
    if not isinstance(outcome, Exception):
        return [f"with no primary answering it returned {outcome!r} instead of raising: a caller must learn "
                "that the operation was not applied (raise the last error at the deadline)."]
    if took > deadline_s + 1.5:
        return [f"with a deadline of {deadline_s:g} s it gave up only after {took:.1f} s: never start a new "
                "attempt, nor sleep, past the deadline."]
    return []


@check
def check_failover_retry(apply_once: Any) -> Result:
    """`apply_once(r, op_id, key, amount, deadline_s)` adds `amount` to the integer at `key` exactly once for
    `op_id`, retrying through connection errors and timeouts until `deadline_s`, and raises if it could not
    apply it by then. Three scenarios, in this order, stopping at the first that fails: a reply is lost (the
    command ran: the first command's, then the one that changed the counter); a Sentinel failover in the middle
    of twelve operations; no primary answering at all (the server frozen)."""
    if not callable(apply_once):
        return Result(False, f"give a function apply_once(r, op_id, key, amount, deadline_s), got {apply_once!r}.")
    for scenario in (_lost_reply_scenario, _failover_scenario, _no_primary_scenario):
        problems = scenario(apply_once)
        if problems:
            return verdict(problems, "")
    return Result(True, "a lost reply did not count an operation twice, a failover cost no operation, and with no "
                        "primary it gave up at its deadline.")
